//! The request path's small steps, one concern per file, in the order they run.

pub mod body;
pub mod client_ip;
pub mod headers;
pub mod path;
pub mod request_id;
