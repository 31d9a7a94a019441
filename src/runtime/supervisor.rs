//! The one background service: it watches the config file, handles SIGHUP, runs the health
//! checks of whatever pools the current snapshot holds, and refreshes DNS names.
//!
//! Pingora fixes its services at start, so pools that come and go with reloads cannot each
//! have a background service of their own; this loop serves them all.

use super::pool::{has_hostnames, resolve};
use super::{Source, State};
use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// How long to wait for an editor's burst of events to settle.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the loop wakes for health checks, DNS and the stat fallback.
const TICK: Duration = Duration::from_millis(200);

/// What the process does around reloads that the supervisor cannot do itself: telling the
/// service manager it is ready, and handing over to a new binary or new listeners on SIGHUP.
/// `serve` passes the real one; the supervisor never knows how it is done.
#[async_trait]
pub trait Lifecycle: Send + Sync {
    /// Waits until every address listens, then says so (systemd's `READY=1`).
    async fn announce_ready(&self, listen: Vec<String>);
    /// After a SIGHUP reload: upgrade the process if the binary or the listeners changed.
    async fn upgrade_if_needed(&self, state: &State);
}

pub struct Supervisor {
    pub state: Arc<State>,
    pub lifecycle: Arc<dyn Lifecycle>,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let _watcher = watch_folder(&self.state.path, tx);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut tick = tokio::time::interval(TICK);
        let mut stamp = file_stamp(&self.state.path);
        let mut dns_due: HashMap<String, Instant> = HashMap::new();
        let lifecycle = Arc::clone(&self.lifecycle);
        let listen = self.listen_addresses();
        tokio::spawn(async move { lifecycle.announce_ready(listen).await });
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = rx.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    stamp = file_stamp(&self.state.path);
                    let _ = self.state.reload(Source::File, true).await;
                }
                Some(()) = recv_signal(&mut hup) => {
                    log::info!("SIGHUP: reloading {}", self.state.path.display());
                    let _ = self.state.reload(Source::Signal, false).await;
                    self.lifecycle.upgrade_if_needed(&self.state).await;
                }
                _ = tick.tick() => {
                    // Fallback for file systems where inotify says nothing.
                    let now = file_stamp(&self.state.path);
                    if now != stamp {
                        stamp = now;
                        let _ = self.state.reload(Source::File, true).await;
                    }
                    self.run_due_checks();
                    self.run_due_scrapes();
                    self.dispatch_queues();
                    self.refresh_dns(&mut dns_due).await;
                }
            }
        }
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

impl Supervisor {
    /// Every address this process listens on, as it started.
    fn listen_addresses(&self) -> Vec<String> {
        let c = &self.state.snapshot().loaded.config;
        let mut all: Vec<String> = c.listeners.iter().map(|l| l.listen.clone()).collect();
        all.push(c.admin.listen.clone());
        all
    }

    /// Starts the health check of every pool whose interval has come, each in its own task.
    fn run_due_checks(&self) {
        let snapshot = self.state.snapshot();
        let now = Instant::now();
        for pool in snapshot.pools.values() {
            let lb = pool.lb.clone();
            let queue = pool.queue.clone();
            let Some(every) = lb.check_every else {
                continue;
            };
            {
                let mut next = lb.next_check.lock();
                if *next > now || lb.checking.swap(true, Ordering::AcqRel) {
                    continue;
                }
                *next = now + every;
            }
            tokio::spawn(async move {
                lb.balancer.backends().run_health_check(true).await;
                lb.checking.store(false, Ordering::Release);
                // A backend that came back has room for the waiting requests.
                if let Some(q) = queue {
                    q.dispatch();
                }
            });
        }
    }

    /// Gives free slots to waiting requests even when no release said so: a slot taken
    /// before a reload added the queue, an ejection that ended, a DNS refresh that added a
    /// backend.
    fn dispatch_queues(&self) {
        for pool in self.state.snapshot().pools.values() {
            if let Some(q) = &pool.queue {
                q.dispatch();
            }
        }
    }

    /// Reads the engines' load metrics of every `least_load` pool whose interval has come.
    fn run_due_scrapes(&self) {
        let snapshot = self.state.snapshot();
        let now = Instant::now();
        for pool in snapshot.pools.values() {
            let Some(load) = &pool.config.load else {
                continue;
            };
            {
                let mut next = pool.lb.next_scrape.lock();
                if *next > now || pool.lb.scraping.swap(true, Ordering::AcqRel) {
                    continue;
                }
                *next = now + load.interval.get();
            }
            let pool = pool.clone();
            tokio::spawn(async move {
                super::load::scrape(&pool).await;
                pool.lb.scraping.store(false, Ordering::Release);
            });
        }
    }

    /// Re-resolves host-name backends every `dns_refresh`.
    async fn refresh_dns(&self, due: &mut HashMap<String, Instant>) {
        let snapshot = self.state.snapshot();
        let now = Instant::now();
        for (name, pool) in &snapshot.pools {
            if !has_hostnames(&pool.config) {
                continue;
            }
            let next = due
                .entry(name.clone())
                .or_insert(now + pool.config.dns_refresh.get());
            if *next > now {
                continue;
            }
            *next = now + pool.config.dns_refresh.get();
            let fresh = resolve(&pool.config.backends).await;
            let current = pool.lb.members();
            let same = fresh.len() == current.len()
                && fresh
                    .iter()
                    .zip(current.iter())
                    .all(|(a, b)| a.addr == b.addr);
            if !same && !fresh.is_empty() {
                log::info!(
                    "pool {name}: DNS answers changed, {} members now",
                    fresh.len()
                );
                pool.lb
                    .set_members(fresh, pool.config.affinity.is_some())
                    .await;
            }
        }
    }
}

/// Watches the config's folder (files are replaced by rename) for events on the file itself.
fn watch_folder(path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let file_name = path.file_name()?.to_os_string();
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(file_name.as_os_str()))
            {
                let _ = tx.send(());
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&folder, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                log::warn!("cannot watch {}: {e}; polling instead", folder.display());
                None
            }
        },
        Err(e) => {
            log::warn!("no file watcher ({e}); polling instead");
            None
        }
    }
}

/// Size and modification time: enough to notice a change without reading the file.
fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}
