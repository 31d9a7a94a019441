//! The running state: the current snapshot behind one `ArcSwap`, and how it is replaced.

mod health;
pub mod load;
mod member;
pub mod placement;
pub mod policy;
pub mod pool;
pub mod queue;
pub mod router;
pub mod snapshot;
pub mod supervisor;

pub use health::BackendHealth;
pub use pool::{HashOn, Pool};
pub use snapshot::Snapshot;

use crate::config::diff::{self, Summary};
use crate::config::store::{self, History};
use crate::config::{self, ConfigError, ListenerSettings, Loaded};
use crate::tls::CertStore;
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Set once SIGTERM or SIGQUIT arrives: answers then close their connection, so clients move
/// to the new process (or go away) before Pingora drops idle keep-alive connections.
pub static DRAINING: std::sync::LazyLock<Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// What started a reload; also the `source` label of `config_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Startup,
    File,
    Signal,
    Admin,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Startup => "startup",
            Source::File => "file",
            Source::Signal => "signal",
            Source::Admin => "admin",
        }
    }
}

/// The outcome of the last reload, for `/status` and the logs.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    pub source: Source,
    pub ok: bool,
    pub error: Option<String>,
    #[serde(with = "unix_secs")]
    pub at: SystemTime,
    /// Listener, admin address or `server:` changes that only a new process applies
    /// (`systemctl reload` hands over to one).
    pub restart_required: bool,
}

mod unix_secs {
    pub(super) fn serialize<S: serde::Serializer>(
        t: &std::time::SystemTime,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        s.serialize_f64(secs)
    }
}

/// Why an edit of the file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the file changed since it was read (its ETag is now \"{current}\")")]
    Stale { current: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the new config is invalid")]
    Invalid(ConfigError),
    #[error("cannot write the config: {0}")]
    Io(#[from] std::io::Error),
}

/// An `If-Match` precondition: `*` (any version) or the ETags (sha256 hex) a caller accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    Any,
    Tags(Vec<String>),
}

impl IfMatch {
    pub fn matches(&self, hash: &str) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tags(tags) => tags.iter().any(|t| t == hash),
        }
    }
}

/// The result of an applied edit.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub old_hash: String,
    pub hash: String,
    pub changes: Summary,
    pub restart_required: bool,
}

/// Everything the proxy, the admin app and the supervisor share.
pub struct State {
    pub path: PathBuf,
    current: ArcSwap<Snapshot>,
    /// Certificates of each TLS listener, by listener name. Listeners are fixed at start.
    pub certs: Vec<(String, Arc<CertStore>)>,
    /// What only a new process applies, as it was when this one started.
    started: Started,
    pub last_reload: Mutex<ReloadStatus>,
    reloading: tokio::sync::Mutex<()>,
    /// The answers ACME CAs are waiting for, given by the listeners.
    #[cfg(feature = "rustls")]
    pub acme: Arc<crate::tls::acme::Challenges>,
}

impl State {
    pub fn new(path: PathBuf, first: Snapshot, certs: Vec<(String, Arc<CertStore>)>) -> Self {
        let c = &first.loaded.config;
        let started = Started {
            listeners: c.listeners.clone(),
            admin_listen: c.admin.listen.clone(),
            server: c.server.clone(),
        };
        let first = Arc::new(first);
        first.activate(None);
        State {
            path,
            current: ArcSwap::new(first),
            certs,
            started,
            last_reload: Mutex::new(ReloadStatus {
                source: Source::Startup,
                ok: true,
                error: None,
                at: SystemTime::now(),
                restart_required: false,
            }),
            reloading: tokio::sync::Mutex::new(()),
            #[cfg(feature = "rustls")]
            acme: Arc::default(),
        }
    }

    /// The key authorization for an http-01 challenge at `path`, if one is pending.
    pub fn acme_http01(&self, path: &str) -> Option<String> {
        #[cfg(feature = "rustls")]
        return self.acme.http01(path);
        #[cfg(not(feature = "rustls"))]
        return None;
    }

    /// The snapshot new requests use.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    fn base(&self) -> Option<&Path> {
        self.path.parent()
    }

    /// Re-reads the file and applies it. With `only_if_changed`, an unchanged file is a no-op.
    pub async fn reload(&self, source: Source, only_if_changed: bool) -> Result<bool, ConfigError> {
        let _one_at_a_time = self.reloading.lock().await;
        let parsed = config::load_file(
            &self.path,
            Some(&|c| crate::tls::check_files(c, self.base())),
        );
        let loaded = match parsed {
            Ok(l) => l,
            Err(e) => {
                self.record(source, Err(&e));
                return Err(e);
            }
        };
        if only_if_changed && loaded.hash == self.current.load().loaded.hash {
            return Ok(false);
        }
        self.swap_in(loaded, source).await;
        Ok(true)
    }

    /// Rewrites the file through `edit` (given the file's current text) and applies it.
    ///
    /// Edits are serialized with reloads. The new text is validated, then `check` sees the
    /// running config and the new one and may still refuse the change. Only a change that
    /// would be made is held to `if_match`, the ETag (sha256) the caller last saw: the file is
    /// read from disk, so a hand edit in between is detected, never overwritten. The old text
    /// goes to the history before the new one is written.
    pub async fn replace_file(
        &self,
        source: Source,
        if_match: Option<&IfMatch>,
        edit: impl FnOnce(&str) -> Result<String, WriteError>,
        check: impl FnOnce(&Loaded, &Loaded) -> Result<(), WriteError>,
    ) -> Result<Applied, WriteError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = std::fs::read_to_string(&self.path)?;
        let old_hash = config::hash_bytes(current.as_bytes());
        let text = edit(&current)?;
        let loaded = config::parse(
            &text,
            &config::process_env,
            Some(&|c| crate::tls::check_files(c, self.base())),
        )
        .map_err(WriteError::Invalid)?;
        let old = self.snapshot();
        check(&old.loaded, &loaded)?;
        if if_match.is_some_and(|m| !m.matches(&old_hash)) {
            return Err(WriteError::Stale { current: old_hash });
        }
        let keep = loaded.config.admin.history.max(1);
        History::beside(&self.path, keep).save(&current)?;
        store::write_atomic(&self.path, text.as_bytes())?;
        let changes = diff::summarize(&old.loaded.config, &loaded.config);
        let hash = loaded.hash.clone();
        self.swap_in(loaded, source).await;
        Ok(Applied {
            old_hash,
            hash,
            changes,
            restart_required: self.restart_required(),
        })
    }

    /// The kept earlier versions of the file.
    pub fn history(&self) -> History {
        History::beside(
            &self.path,
            self.snapshot().loaded.config.admin.history.max(1),
        )
    }

    /// Builds a snapshot from an already validated config and makes it current.
    async fn swap_in(&self, loaded: Loaded, source: Source) {
        let hash = loaded.hash.clone();
        let previous = self.snapshot();
        let next = Arc::new(Snapshot::build(loaded, Some(&previous)).await);
        self.reload_certificates(&next);
        self.current.store(next.clone());
        next.activate(Some(&previous));
        self.record(source, Ok(()));
        log::info!(
            "config {} applied (source: {})",
            &hash[..12.min(hash.len())],
            source.as_str()
        );
    }

    fn reload_certificates(&self, next: &Snapshot) {
        for l in &next.loaded.config.listeners {
            let (Some(tls), Some((_, store))) =
                (&l.tls, self.certs.iter().find(|(n, _)| *n == l.name))
            else {
                continue;
            };
            if let Err(e) = store.reload(tls, self.base()) {
                log::error!("listener {}: keeping the current certificates: {e}", l.name);
            }
        }
    }

    fn record(&self, source: Source, result: Result<(), &ConfigError>) {
        let restart_required = match result {
            Ok(()) => self.restart_required(),
            Err(_) => false,
        };
        if restart_required {
            log::warn!(
                "listener, admin.listen or server: changes apply only in a new process (SIGHUP / systemctl reload hands over)"
            );
        }
        if let Err(e) = result {
            log::error!(
                "config reload ({}) rejected, the running config stays:\n{}",
                source.as_str(),
                e.render(&self.path.display().to_string())
            );
        }
        let mut status = self.last_reload.lock();
        *status = ReloadStatus {
            source,
            ok: result.is_ok(),
            error: result
                .err()
                .map(|e| e.render(&self.path.display().to_string())),
            at: SystemTime::now(),
            restart_required,
        };
        // Counted last, so whoever sees the count also finds the log line and the status.
        crate::metrics::reload(source.as_str(), result.is_ok());
    }

    /// Whether the current config changes what only a new process applies: listeners, the
    /// admin address or `server:` settings.
    pub fn restart_required(&self) -> bool {
        let now = &self.current.load().loaded.config;
        let key = |l: &ListenerSettings| {
            (
                l.name.clone(),
                l.listen.clone(),
                l.tls.is_some(),
                l.tls.as_ref().and_then(|t| t.acme.clone()),
                l.redirect_to_https,
            )
        };
        now.admin.listen != self.started.admin_listen
            || now.server != self.started.server
            || now
                .listeners
                .iter()
                .map(key)
                .ne(self.started.listeners.iter().map(key))
    }

    /// The upgrade socket this process was started with (the one Pingora sends to).
    pub fn started_upgrade_sock(&self) -> &str {
        &self.started.server.upgrade_sock
    }
}

struct Started {
    listeners: Vec<ListenerSettings>,
    admin_listen: String,
    server: config::ServerSettings,
}
