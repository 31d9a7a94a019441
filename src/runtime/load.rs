//! `balance: least_load`: each backend's own load, scraped from its Prometheus endpoint every
//! `load.interval`, and the score the pool balances on.
//!
//! An engine knows what this proxy cannot: requests queued inside it and how full its KV
//! cache is. Between two scrapes the score adds what this proxy sent since the last one
//! (its in-flight count now minus then), so a burst does not all land on the backend that
//! looked idle. A backend whose metrics cannot be read is balanced on its in-flight count
//! and flagged (`switchyard_backend_load_readable` 0, `/status`); it stays healthy.

use super::pool::{Member, Pool};
use crate::config::LoadNames;
use parking_lot::Mutex;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// What the last scrape of one backend said.
#[derive(Debug, Clone)]
pub struct EngineLoad {
    pub waiting: f64,
    pub running: f64,
    /// KV cache in use, 0–1 (0 when the engine does not say).
    pub cache: f64,
    /// This proxy's in-flight count at the scrape, to correct the score between scrapes.
    pub inflight_then: usize,
    pub at: Instant,
}

/// The last scrape of a backend: its load, or why it could not be read.
#[derive(Debug, Default)]
pub struct LoadState {
    pub last: Mutex<Option<Result<EngineLoad, String>>>,
}

/// Scrapes older than this many intervals no longer count.
const STALE_AFTER: u32 = 3;

impl LoadState {
    /// The engine's load now: the scraped requests plus what was sent since. `None` when
    /// there is no fresh, readable scrape.
    pub fn estimate(&self, inflight_now: usize, interval: Duration) -> Option<f64> {
        let last = self.last.lock();
        let load = last.as_ref()?.as_ref().ok()?;
        if load.at.elapsed() > interval * STALE_AFTER {
            return None;
        }
        let sent_since = inflight_now as f64 - load.inflight_then as f64;
        Some((load.waiting + load.running + sent_since).max(0.0) + load.cache)
    }

    fn store(&self, result: Result<EngineLoad, String>) {
        *self.last.lock() = Some(result);
    }
}

/// The score `least_load` balances on: the engine's estimate, else the in-flight count.
pub fn score(member: &Member, interval: Duration) -> f64 {
    let inflight = member.stats.inflight.load(Ordering::Relaxed);
    member
        .stats
        .load
        .estimate(inflight, interval)
        .unwrap_or(inflight as f64)
}

static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap_or_default()
});

/// Reads every backend of `pool` once, at the same time.
pub async fn scrape(pool: &Pool) {
    let Some(load) = &pool.config.load else {
        return;
    };
    let names = load.names();
    let interval = load.interval.get();
    let scheme = if pool.config.tls.settings().is_some() {
        "https"
    } else {
        "http"
    };
    let members = pool.lb.members();
    let reads = members.iter().map(|m| {
        let url = format!("{scheme}://{}{}", m.addr, load.metrics_path);
        let names = &names;
        async move {
            let inflight_then = m.stats.inflight.load(Ordering::Relaxed);
            let result = read(&url, names, interval)
                .await
                .map(|(waiting, running, cache)| EngineLoad {
                    waiting,
                    running,
                    cache,
                    inflight_then,
                    at: Instant::now(),
                });
            publish(pool, m, &result);
            m.stats.load.store(result);
        }
    });
    futures::future::join_all(reads).await;
}

fn publish(pool: &Pool, m: &Member, result: &Result<EngineLoad, String>) {
    let addr = m.addr.to_string();
    let was_ok = m.stats.load.last.lock().as_ref().is_none_or(|r| r.is_ok());
    match result {
        Ok(_) if !was_ok => log::info!("pool {}: backend {addr}: load metrics readable again", pool.name),
        Err(e) if was_ok => log::warn!("pool {}: backend {addr}: cannot read load metrics ({e}); balancing on its in-flight count", pool.name),
        _ => {}
    }
    crate::metrics::BACKEND_LOAD_READABLE
        .with_label_values(&[pool.name.as_str(), addr.as_str()])
        .set(result.is_ok() as i64);
}

async fn read(url: &str, names: &LoadNames, timeout: Duration) -> Result<(f64, f64, f64), String> {
    let answer = CLIENT
        .get(url)
        .timeout(timeout.max(Duration::from_millis(100)))
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !answer.status().is_success() {
        return Err(format!("{url} answered {}", answer.status()));
    }
    let text = answer
        .text()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let samples = parse_exposition(&text)?;
    let sum = |wanted: &[String]| -> Option<f64> {
        // The first name the engine exposes (older versions renamed some), summed over its
        // label sets (one per model, say).
        wanted.iter().find_map(|name| {
            let mut found = samples.iter().filter(|(n, _)| n == name).peekable();
            found.peek()?;
            Some(found.map(|(_, v)| *v).sum())
        })
    };
    let waiting = sum(&names.queue);
    let running = sum(&names.running);
    if waiting.is_none() && running.is_none() {
        return Err(format!(
            "{url} has none of {:?}",
            names.queue.iter().chain(&names.running).collect::<Vec<_>>()
        ));
    }
    let cache = sum(&names.cache).unwrap_or(0.0).clamp(0.0, 1.0);
    Ok((waiting.unwrap_or(0.0), running.unwrap_or(0.0), cache))
}

/// Every sample of a Prometheus text exposition as (metric name, value).
fn parse_exposition(text: &str) -> Result<Vec<(String, f64)>, String> {
    let owned;
    let text = if text.ends_with('\n') {
        text
    } else {
        owned = format!("{text}\n");
        &owned
    };
    let (_, families) = nom_openmetrics::parser::prometheus(text)
        .map_err(|_| "the answer is not in the Prometheus text format".to_string())?;
    Ok(families
        .iter()
        .flat_map(|f| f.samples.iter())
        .map(|s| (s.name().to_string(), s.number()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_engine_metric_names_with_colons_and_labels() {
        let text = "# HELP vllm:num_requests_waiting Requests waiting.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"a\"} 3.0\nvllm:num_requests_waiting{model_name=\"b\"} 2.0\n# TYPE tgi_queue_size gauge\ntgi_queue_size 7\n";
        let samples = parse_exposition(text).expect("parsed");
        let waiting: f64 = samples
            .iter()
            .filter(|(n, _)| n == "vllm:num_requests_waiting")
            .map(|(_, v)| v)
            .sum();
        assert_eq!(waiting, 5.0);
        assert!(samples.contains(&("tgi_queue_size".to_string(), 7.0)));
        assert!(parse_exposition("<html>busy</html>").is_err());
    }

    #[test]
    fn the_estimate_adds_what_was_sent_since_the_scrape() {
        let state = LoadState::default();
        let second = Duration::from_secs(1);
        assert_eq!(state.estimate(3, second), None);
        state.store(Ok(EngineLoad {
            waiting: 2.0,
            running: 4.0,
            cache: 0.5,
            inflight_then: 1,
            at: Instant::now(),
        }));
        assert_eq!(state.estimate(1, second), Some(6.5));
        assert_eq!(state.estimate(4, second), Some(9.5));
        state.store(Err("down".into()));
        assert_eq!(state.estimate(4, second), None);
    }
}
