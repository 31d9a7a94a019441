//! `GET /status`: what runs, where it came from, and every backend's state.

use crate::config::Priority;
use crate::runtime::pool::Member;
use crate::runtime::State;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// The last scrape of a `least_load` backend's own metrics.
fn load_of(m: &Member) -> Value {
    match m.stats.load.last.lock().as_ref() {
        None => json!({"readable": false, "error": "not read yet"}),
        Some(Ok(l)) => json!({
            "readable": true,
            "waiting": l.waiting,
            "running": l.running,
            "cache": l.cache,
            "age_ms": l.at.elapsed().as_millis() as u64,
        }),
        Some(Err(e)) => json!({"readable": false, "error": e}),
    }
}

pub(super) fn status(state: &State) -> Value {
    let snap = state.snapshot();
    let last = state.last_reload.lock().clone();
    let loaded_at = snap
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let pools: serde_json::Map<String, Value> = snap
        .pools
        .iter()
        .map(|(name, pool)| {
            let backends: Vec<Value> = pool
                .lb
                .members()
                .iter()
                .map(|m| {
                    let h = pool.lb.health.get(&m.addr).unwrap_or_default();
                    let h = serde_json::to_value(&h).unwrap_or(Value::Null);
                    json!({
                        "address": m.meta.address,
                        "resolved": m.addr.to_string(),
                        "weight": m.meta.weight,
                        "healthy": pool.is_healthy(m),
                        "drain": m.meta.drain,
                        "consecutive_failures": h["consecutive_failures"],
                        "last_check": h["last_check"],
                        "last_error": h["last_error"],
                        "inflight": m.stats.inflight.load(Ordering::Relaxed),
                        "ejected": m.stats.is_ejected(),
                        "load": pool.config.load.as_ref().map(|_| load_of(m)),
                    })
                })
                .collect();
            let queue = pool.queue.as_ref().map(|q| {
                let settings = q.settings();
                let depths = q.depths();
                let waiting: serde_json::Map<String, Value> = Priority::ALL
                    .iter()
                    .zip(depths)
                    .map(|(p, n)| (p.as_str().to_string(), json!(n)))
                    .collect();
                json!({
                    "max": settings.max,
                    "timeout": settings.timeout,
                    "waiting": depths.iter().sum::<usize>(),
                    "by_priority": waiting,
                })
            });
            (
                name.clone(),
                json!({ "balance": pool.config.balance, "backends": backends, "queue": queue }),
            )
        })
        .collect();
    json!({
        "config_hash": snap.loaded.hash,
        "loaded_at": loaded_at,
        "last_reload": last,
        "pools": pools,
    })
}
