//! switchyard: an edge proxy for HTTP APIs on Pingora.
//!
//! A request's way through the code: `serve` wires listeners to [`proxy::Edge`], which looks
//! up the current [`runtime::Snapshot`] (built from [`config`]), matches a route in
//! [`runtime::router`], picks a backend from a [`runtime::Pool`], and logs through
//! [`proxy::access_log`] and [`metrics`]. [`runtime::supervisor`] swaps snapshots and runs
//! health checks; [`handover`] hands the sockets to a new process on `systemctl reload`; [`admin`] serves the admin listener; [`tls`] holds listener certificates; [`proxy_protocol`] reads the header an L4 balancer sends first; [`fleet`] compares the nodes of a fleet.

pub mod admin;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod handover;
pub mod logsink;
pub mod metrics;
pub mod process_log;
pub mod proxy;
pub mod proxy_protocol;
pub mod runtime;
pub mod serve;
pub mod tcp;
pub mod tls;
