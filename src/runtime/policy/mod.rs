//! The route and edge policies compiled from the config: what the request path and the TCP
//! listeners apply, built once per snapshot.

pub mod acl;
pub mod auth;
pub mod budget;
pub mod cors;
pub mod rate_limit;
