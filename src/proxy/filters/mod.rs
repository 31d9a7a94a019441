//! The request path's small steps, one concern per file, in the order they run.

pub mod acl;
pub mod auth;
pub mod body;
pub mod client_ip;
pub mod cors;
pub mod headers;
pub mod path;
pub mod rate_limit;
pub mod request_id;
