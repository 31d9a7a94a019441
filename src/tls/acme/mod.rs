//! Automatic certificates (RFC 8555) for listeners with `tls.acme`: a background service
//! that, per listener, serves the certificate kept in `server.state_dir` if there is one,
//! orders a new one when it is due (`renew_before` its end, by default a third of its
//! life), and installs it in the listener's [`CertStore`] for the next handshake. A failed
//! order is logged and counted and tried again with backoff; the old certificate serves
//! until then. The protocol is `instant-acme`'s; the challenges are answered by the
//! listeners themselves (http-01 by plaintext HTTP listeners, tls-alpn-01 before the TLS
//! handshake, [`alpn`]).

pub mod alpn;
mod challenges;
mod files;
mod order;

pub use challenges::{Challenges, HTTP01_PREFIX};

use crate::config::AcmeConfig;
use crate::tls::CertStore;
use async_trait::async_trait;
use files::Files;
use order::Orderer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first wait after a failed order; doubled after each failure, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The least time between two orders of one listener, when `renew_before` is longer than
/// the CA's certificates live (every new one is due at once); doubled after each such
/// order, up to [`MAX_INTERVAL`], so that a misconfiguration does not hammer a public CA.
const MIN_INTERVAL: Duration = Duration::from_secs(5);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How long to wait for the listener that answers the challenges to accept connections.
const LISTENER_WAIT: Duration = Duration::from_secs(10);

/// One listener's certificate.
pub struct Managed {
    pub listener: String,
    /// Where the challenges are answered: probed before the first order.
    pub answers_on: String,
    pub store: Arc<CertStore>,
    orderer: Orderer,
    /// When the first order is due (now, without a usable stored certificate).
    first_due: SystemTime,
}

impl Managed {
    pub fn new(
        listener: &str,
        answers_on: &str,
        acme: &AcmeConfig,
        state_dir: &Path,
        base: Option<&Path>,
        store: Arc<CertStore>,
        challenges: Arc<Challenges>,
    ) -> std::io::Result<Managed> {
        files::check_writable(&state_dir.join("acme"))?;
        let mut managed = Managed {
            listener: listener.to_string(),
            answers_on: answers_on.to_string(),
            store,
            orderer: Orderer {
                acme: acme.clone(),
                files: Files::new(state_dir, acme),
                base: base.map(Path::to_path_buf),
                challenges,
            },
            first_due: SystemTime::now(),
        };
        // Before the listeners serve: the stored certificate answers the first handshake.
        managed.first_due = managed.restore();
        Ok(managed)
    }

    /// Installs the stored certificate if it still covers the domains; when the next
    /// order is due.
    fn restore(&self) -> SystemTime {
        let stored = self.orderer.files.read_certificate();
        let Some(entry) = stored.and_then(|(chain, key)| self.usable(&chain, &key)) else {
            return SystemTime::now();
        };
        log::info!(
            "acme: listener {} serves the stored certificate for {}",
            self.listener,
            self.orderer.acme.domains.join(", ")
        );
        let due = self.due(&entry);
        self.store.install(entry.entry);
        due
    }

    fn usable(&self, chain: &[u8], key: &[u8]) -> Option<Issued> {
        let names = (
            self.orderer.files.cert.display().to_string(),
            self.orderer.files.key.display().to_string(),
        );
        let entry = match crate::tls::backend::pair_from_pem(chain, key, names) {
            Ok(e) => e,
            Err(e) => {
                log::error!(
                    "acme: listener {}: the stored certificate: {e}",
                    self.listener
                );
                return None;
            }
        };
        let covers = self
            .orderer
            .acme
            .domains
            .iter()
            .all(|d| entry.names.contains(d));
        let not_before = entry
            .key
            .end_entity_cert()
            .ok()
            .and_then(|c| not_before(c.as_ref()));
        let issued = Issued {
            not_before: not_before.unwrap_or(entry.not_after),
            entry,
        };
        (covers && issued.entry.not_after > unix_now()).then_some(issued)
    }

    /// `renew_before` the end, or a third of the life before it.
    fn due(&self, issued: &Issued) -> SystemTime {
        let (start, end) = (issued.not_before, issued.entry.not_after);
        let life = Duration::from_secs(end.saturating_sub(start).max(0) as u64);
        let before = self.orderer.acme.renew_before.map_or(life / 3, |r| r.get());
        if before >= life {
            log::warn!(
                "acme: listener {}: renew_before ({}) is not shorter than the certificate's life ({}): every certificate is due at once (orders from {}s apart, doubling)",
                self.listener,
                humantime::format_duration(before),
                humantime::format_duration(life),
                MIN_INTERVAL.as_secs()
            );
        }
        let end = UNIX_EPOCH + Duration::from_secs(end.max(0) as u64);
        end.checked_sub(before).unwrap_or(UNIX_EPOCH)
    }

    /// One order, stored and installed; when the next is due.
    async fn renew(&self) -> Result<SystemTime, String> {
        let issued = self.orderer.order().await.map_err(|e| {
            if e.account_unknown() {
                self.orderer.forget_account();
            }
            e.to_string()
        })?;
        let (chain, key) = (issued.chain.as_bytes(), issued.key.as_bytes());
        let usable = self
            .usable(chain, key)
            .ok_or("the CA's certificate does not cover the domains")?;
        if let Err(e) = self.orderer.files.write_certificate(chain, key) {
            log::error!(
                "acme: listener {}: cannot keep the certificate in {}: {e}; it serves until the process ends",
                self.listener,
                self.orderer.files.cert.display()
            );
        }
        let due = self.due(&usable);
        self.store.install(usable.entry);
        Ok(due)
    }

    async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut next = self.first_due;
        let mut backoff = FIRST_BACKOFF;
        let mut spacing = MIN_INTERVAL;
        let mut first = true;
        loop {
            let wait = next.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if std::mem::take(&mut first) {
                wait_for_listener(&self.answers_on).await;
            }
            let domains = self.orderer.acme.domains.join(", ");
            match self.renew().await {
                Ok(due) => {
                    crate::metrics::ACME_ORDERS.with_label_values(&["ok"]).inc();
                    log::info!(
                        "acme: listener {}: new certificate for {domains}",
                        self.listener
                    );
                    backoff = FIRST_BACKOFF;
                    let soonest = SystemTime::now() + spacing;
                    spacing = if due < soonest {
                        (spacing * 2).min(MAX_INTERVAL)
                    } else {
                        MIN_INTERVAL
                    };
                    next = due.max(soonest);
                }
                Err(e) => {
                    crate::metrics::ACME_ORDERS
                        .with_label_values(&["error"])
                        .inc();
                    log::error!(
                        "acme: listener {}: the order for {domains} failed: {e}; the current certificate serves, next try in {}",
                        self.listener,
                        humantime::format_duration(backoff)
                    );
                    next = SystemTime::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// A certificate with the start of its validity.
struct Issued {
    entry: crate::tls::Entry,
    not_before: i64,
}

/// Every listener's certificate, as one Pingora background service.
pub struct Service {
    pub managed: Vec<Managed>,
}

#[async_trait]
impl BackgroundService for Service {
    async fn start(&self, shutdown: ShutdownWatch) {
        for result in ["ok", "error"] {
            crate::metrics::ACME_ORDERS.with_label_values(&[result]);
        }
        let runs = self.managed.iter().map(|m| m.run(shutdown.clone()));
        futures::future::join_all(runs).await;
    }
}

/// Waits (bounded) until `listen` accepts, so the CA's first validation finds it.
async fn wait_for_listener(listen: &str) {
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        return;
    };
    let addr = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => ([127, 0, 0, 1], addr.port()).into(),
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    };
    let deadline = tokio::time::Instant::now() + LISTENER_WAIT;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn not_before(der: &[u8]) -> Option<i64> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_before.timestamp())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether `directory_ca` names a readable PEM certificate (part of checking a config).
pub fn check_directory_ca(path: &Path) -> Result<(), String> {
    order::read_ca(path).map(|_| ()).map_err(|e| e.to_string())
}
