//! Token budgets: `tokens_per_minute` / `tokens_per_day` of a client key and a route's
//! `token_limit`, counted from the usage the backends report.
//!
//! Each budget is a token bucket that holds at most `limit` tokens and refills at
//! `limit / per`. A request is admitted while its buckets are above zero; its usage is taken
//! when the answer ends, so one request may take a bucket below zero (a request that starts
//! within budget completes) and the next waits until it refills. Buckets live in a
//! [`CounterStore`] that outlives reloads; a changed limit applies to the running level.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which bucket: what it limits and whose usage it counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketId {
    /// `key:<digest>/minute`, `route:<name>`, …: which budget.
    pub budget: String,
    /// Whose usage: a client address, key id or header value; empty for a key's own budget.
    pub who: Vec<u8>,
}

/// A bucket's size and refill time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub limit: u64,
    pub per: Duration,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.limit as f64 / self.per.as_secs_f64().max(0.001)
    }
}

/// Where bucket levels are kept. Node-local here; a shared store (Redis) implements the same
/// two calls.
pub trait CounterStore: Send + Sync {
    /// The bucket's level now (full when never used).
    fn level(&self, id: &BucketId, rate: Rate) -> f64;
    /// Takes `tokens` from the bucket; its level after.
    fn take(&self, id: &BucketId, rate: Rate, tokens: u64) -> f64;
}

struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, rate: Rate, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second();
        (self.level + gained).min(rate.limit as f64)
    }
}

/// Buckets in this process's memory.
#[derive(Default)]
pub struct LocalStore {
    buckets: Mutex<HashMap<BucketId, Bucket>>,
}

/// Past this many buckets, full ones (which are the same as absent) are dropped.
const TIDY_ABOVE: usize = 100_000;

impl CounterStore for LocalStore {
    fn level(&self, id: &BucketId, rate: Rate) -> f64 {
        let now = Instant::now();
        self.buckets
            .lock()
            .get(id)
            .map_or(rate.limit as f64, |b| b.refilled(rate, now))
    }

    fn take(&self, id: &BucketId, rate: Rate, tokens: u64) -> f64 {
        let now = Instant::now();
        let mut map = self.buckets.lock();
        if map.len() > TIDY_ABOVE && !map.contains_key(id) {
            map.retain(|_, b| b.level < rate.limit as f64 || b.at + rate.per > now);
        }
        let b = map.entry(id.clone()).or_insert(Bucket {
            level: rate.limit as f64,
            at: now,
        });
        b.level = b.refilled(rate, now) - tokens as f64;
        b.at = now;
        b.level
    }
}

/// One budget that applies to a request.
#[derive(Debug, Clone)]
pub struct Budget {
    pub id: BucketId,
    pub rate: Rate,
    /// The key's name, for `switchyard_tokens_budget_remaining` (named keys only).
    pub metric_key: Option<String>,
}

/// What a budget looks like to the client: OpenAI's `x-ratelimit-*-tokens` values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// Until it is above zero (zero while it is).
    pub retry_after: Duration,
}

impl Budget {
    pub fn standing(&self, level: f64) -> Standing {
        let rate = self.rate.per_second();
        let missing = (self.rate.limit as f64 - level).max(0.0);
        let below = (-level).max(0.0);
        Standing {
            limit: self.rate.limit,
            remaining: level.max(0.0).floor() as u64,
            reset: Duration::from_secs_f64(missing / rate),
            // A bucket at exactly zero admits nothing: wait for the first whole token.
            retry_after: if level > 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((below + 1.0) / rate)
            },
        }
    }
}

/// The budgets of a process, kept across reloads.
#[derive(Clone)]
pub struct Budgets {
    store: Arc<dyn CounterStore>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            store: Arc::new(LocalStore::default()),
        }
    }
}

impl Budgets {
    /// The standing of each budget; the request may start when none is spent.
    pub fn check(&self, budgets: &[Budget]) -> Vec<Standing> {
        budgets
            .iter()
            .map(|b| {
                let level = self.store.level(&b.id, b.rate);
                publish(b, level);
                b.standing(level)
            })
            .collect()
    }

    /// Takes a finished request's usage from every budget it was admitted under.
    pub fn charge(&self, budgets: &[Budget], tokens: u64) {
        for b in budgets {
            let level = self.store.take(&b.id, b.rate, tokens);
            publish(b, level);
        }
    }
}

fn publish(b: &Budget, level: f64) {
    if let Some(key) = &b.metric_key {
        crate::metrics::TOKENS_BUDGET_REMAINING
            .with_label_values(&[key.as_str()])
            .set(level.floor() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64, per: u64) -> Budget {
        Budget {
            id: BucketId {
                budget: "t".into(),
                who: b"x".to_vec(),
            },
            rate: Rate {
                limit,
                per: Duration::from_secs(per),
            },
            metric_key: None,
        }
    }

    #[test]
    fn a_request_within_budget_may_overdraw_it_and_the_next_waits() {
        let budgets = Budgets::default();
        let b = [budget(30, 60)];
        assert_eq!(budgets.check(&b)[0].remaining, 30);
        budgets.charge(&b, 18);
        let s = budgets.check(&b)[0];
        assert_eq!(s.remaining, 12);
        assert_eq!(s.retry_after, Duration::ZERO);
        budgets.charge(&b, 18);
        let s = budgets.check(&b)[0];
        assert_eq!(s.remaining, 0);
        // 6 below zero, refilling at 0.5 tokens/s: 14 s to the first whole token.
        assert!((s.retry_after.as_secs_f64() - 14.0).abs() < 0.1, "{s:?}");
        assert!((s.reset.as_secs_f64() - 72.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn a_lower_limit_applies_to_the_running_level() {
        let budgets = Budgets::default();
        budgets.charge(&[budget(1000, 60)], 10);
        assert_eq!(budgets.check(&[budget(100, 60)])[0].remaining, 100);
    }
}
