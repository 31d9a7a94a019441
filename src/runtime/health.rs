//! Active health checks, built from a pool's `health_check` settings.
//!
//! Pingora's checks keep their counters private, so each one is wrapped in a [`Recorder`]
//! that notes every result: `/status` and the `backend_healthy` gauge read that table.

use crate::config::{CheckKind, HealthCheckConfig, UpstreamTlsSettings};
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::prelude::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

/// What the checks last said about one backend address.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackendHealth {
    pub healthy: bool,
    pub consecutive_failures: u64,
    pub consecutive_successes: u64,
    #[serde(serialize_with = "unix_time")]
    pub last_check: Option<SystemTime>,
    pub last_error: Option<String>,
}

fn unix_time<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Health observations of one pool, shared by the check and the readers.
#[derive(Debug, Default)]
pub struct HealthTable {
    by_addr: Mutex<HashMap<SocketAddr, BackendHealth>>,
}

impl HealthTable {
    pub fn get(&self, addr: &SocketAddr) -> Option<BackendHealth> {
        self.lock().get(addr).cloned()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<SocketAddr, BackendHealth>> {
        self.by_addr.lock()
    }

    fn record(&self, addr: SocketAddr, result: &pingora::Result<()>) {
        let mut map = self.lock();
        let h = map.entry(addr).or_insert_with(|| BackendHealth {
            healthy: true,
            ..Default::default()
        });
        h.last_check = Some(SystemTime::now());
        match result {
            Ok(()) => {
                h.consecutive_successes += 1;
                h.consecutive_failures = 0;
                h.last_error = None;
            }
            Err(e) => {
                h.consecutive_failures += 1;
                h.consecutive_successes = 0;
                h.last_error = Some(e.to_string());
            }
        }
    }

    fn set_healthy(&self, addr: SocketAddr, healthy: bool) {
        self.lock().entry(addr).or_default().healthy = healthy;
    }
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}

struct Recorder {
    pool: String,
    inner: Box<dyn HealthCheck + Send + Sync>,
    table: Arc<HealthTable>,
}

#[async_trait]
impl HealthCheck for Recorder {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let result = self.inner.check(target).await;
        if let Some(addr) = inet(target) {
            self.table.record(addr, &result);
        }
        result
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let Some(addr) = inet(target) {
            self.table.set_healthy(addr, healthy);
            crate::metrics::set_backend_healthy(&self.pool, &addr.to_string(), healthy);
            // The one line for the transition (Pingora's own, which prints the whole
            // `Backend`, is dropped by process_log).
            if healthy {
                log::warn!("pool {}: backend {addr} is up again", self.pool);
            } else {
                let why = self.table.get(&addr).and_then(|h| h.last_error);
                // Pingora's error text pads its parts with spaces.
                let why = why.map_or_else(
                    || "its check failed".to_string(),
                    |w| w.split_whitespace().collect::<Vec<_>>().join(" "),
                );
                log::warn!("pool {}: backend {addr} is down: {why}", self.pool);
            }
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        format!("pool {}: backend {}", self.pool, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.inner.health_threshold(success)
    }
}

/// The check for a pool, or `None` for `kind: none` (every backend counts as healthy).
pub(super) fn build(
    pool: &str,
    cfg: &HealthCheckConfig,
    tls: Option<&UpstreamTlsSettings>,
    default_host: &str,
    table: Arc<HealthTable>,
) -> Option<Box<dyn HealthCheck + Send + Sync>> {
    let inner: Box<dyn HealthCheck + Send + Sync> = match cfg.kind {
        CheckKind::None => return None,
        CheckKind::Tcp => {
            let mut c = match tls.and_then(|t| t.sni.as_deref()) {
                Some(sni) => TcpHealthCheck::new_tls(sni),
                None => TcpHealthCheck::new(),
            };
            c.consecutive_success = cfg.healthy_after;
            c.consecutive_failure = cfg.unhealthy_after;
            c.peer_template.options.connection_timeout = Some(cfg.timeout.get());
            c.peer_template.options.total_connection_timeout = Some(cfg.timeout.get());
            c
        }
        CheckKind::Http => Box::new(http_check(cfg, tls, default_host)),
    };
    Some(Box::new(Recorder {
        pool: pool.to_string(),
        inner,
        table,
    }))
}

fn http_check(
    cfg: &HealthCheckConfig,
    tls: Option<&UpstreamTlsSettings>,
    default_host: &str,
) -> HttpHealthCheck {
    let host = cfg
        .host
        .clone()
        .or_else(|| tls.and_then(|t| t.sni.clone()))
        .unwrap_or_else(|| default_host.to_string());
    let mut c = HttpHealthCheck::new(&host, tls.is_some());
    if let Some(t) = tls {
        c.peer_template.options.verify_cert = t.verify;
        c.peer_template.options.verify_hostname = t.verify;
    }
    if let Ok(mut req) = RequestHeader::build("GET", cfg.path.as_bytes(), None) {
        if req.insert_header("Host", &host).is_ok()
            && req.insert_header("User-Agent", "switchyard-health").is_ok()
        {
            c.req = req;
        }
    }
    c.consecutive_success = cfg.healthy_after;
    c.consecutive_failure = cfg.unhealthy_after;
    c.peer_template.options.connection_timeout = Some(cfg.timeout.get());
    c.peer_template.options.total_connection_timeout = Some(cfg.timeout.get());
    c.peer_template.options.read_timeout = Some(cfg.timeout.get());
    let expect = cfg.expect.clone();
    c.validator = Some(Box::new(move |resp: &ResponseHeader| {
        let code = resp.status.as_u16();
        if expect.contains(&code) {
            Ok(())
        } else {
            Error::e_explain(
                ErrorType::CustomCode("unexpected health status", code),
                format!("health check answered {code}"),
            )
        }
    }));
    c
}
