//! One backend of a pool as the request path sees it: its settings, the counters that
//! outlive reloads (in flight, passive health, engine load), and the slot a request holds.

use super::load::LoadState;
use super::queue::Queue;
use crate::config::HostPort;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Per-backend settings that are not part of a Pingora `Backend`'s identity.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendMeta {
    /// The address as written in the config (`gpu-7.internal:8000`).
    pub address: HostPort,
    pub weight: usize,
    pub drain: bool,
    /// Models served; empty = any.
    pub models: Vec<String>,
    /// `Authorization` value for the backend, from its `api_key`.
    pub authorization: Option<http::HeaderValue>,
    pub max_inflight: Option<usize>,
}

impl BackendMeta {
    pub fn serves(&self, model: Option<&str>) -> bool {
        match model {
            Some(m) => self.models.is_empty() || self.models.iter().any(|x| x == m),
            None => true,
        }
    }
}

/// Live counters of one backend address, shared by every snapshot that has it.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub inflight: AtomicUsize,
    /// Consecutive 5xx answers or connect failures (passive health).
    pub failures: AtomicU32,
    /// Until when (ms since the process's start) passive health keeps it out; 0 = not ejected.
    pub(super) ejected_until: AtomicU64,
    /// The engine's own load, for `least_load`.
    pub load: LoadState,
}

impl BackendStats {
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }
}

pub(super) fn now_ms() -> u64 {
    static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

#[derive(Debug, Clone)]
pub struct Member {
    pub addr: SocketAddr,
    /// `addr` as text, made once: for the access log and metric labels of every request.
    pub label: Arc<str>,
    pub meta: Arc<BackendMeta>,
    pub stats: Arc<BackendStats>,
}

impl Member {
    pub(super) fn has_room(&self) -> bool {
        self.meta
            .max_inflight
            .is_none_or(|max| self.stats.inflight.load(Ordering::Relaxed) < max)
    }
}

/// Holds one unit of a backend's in-flight count until dropped; dropping it offers the
/// slot to the pool's queue, if it has one.
pub struct InflightGuard {
    stats: Arc<BackendStats>,
    queue: Option<Arc<Queue>>,
}

impl InflightGuard {
    /// Takes one of `member`'s `max_inflight` slots, atomically; `None` when it is full.
    pub(super) fn reserve(member: &Member, queue: Option<&Arc<Queue>>) -> Option<Self> {
        let max = member.meta.max_inflight.unwrap_or(usize::MAX);
        member
            .stats
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(InflightGuard {
            stats: member.stats.clone(),
            queue: queue.cloned(),
        })
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        // SeqCst pairs with the queue's count: either this release sees a request that just
        // queued, or that request's own dispatch sees the freed slot.
        self.stats.inflight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            q.dispatch();
        }
    }
}
