//! Token budgets: `tokens_per_minute` / `tokens_per_day` of a client key and a route's
//! `token_limit`, counted from the usage the backends report.
//!
//! Each budget is a token bucket that holds at most `limit` tokens and refills at
//! `limit / per`. A request is admitted while its buckets are above zero; its usage is taken
//! when the answer ends, so one request may take a bucket below zero (a request that starts
//! within budget completes) and the next waits until it refills. Buckets live in a
//! [`LocalStore`] that outlives reloads; a changed limit applies to the running level.
//! Budgets with `shared: true` are kept in `store.redis` instead (see [`super::shared`]).

use super::shared::SharedStore;
use crate::config::OnStoreError;
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

struct Bucket {
    level: f64,
    at: Instant,
    rate: Rate,
}

impl Bucket {
    fn refilled(&self, rate: Rate, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second();
        (self.level + gained).min(rate.limit as f64)
    }
}

/// Buckets in this process's memory (every budget without `shared: true`).
pub struct LocalStore {
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<BucketId, Bucket>,
    /// The size at which full buckets (the same as absent ones) are swept out next: doubled
    /// after each sweep, so a sweep costs O(1) per new bucket.
    tidy_at: usize,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                tidy_at: TIDY_FROM,
            }),
        }
    }
}

const TIDY_FROM: usize = 10_000;

impl LocalStore {
    /// The bucket's level now (full when never used).
    fn level(&self, id: &BucketId, rate: Rate) -> f64 {
        let now = Instant::now();
        self.buckets
            .lock()
            .map
            .get(id)
            .map_or(rate.limit as f64, |b| b.refilled(rate, now))
    }

    /// Takes `tokens` from the bucket (a negative amount gives back a reservation that was
    /// too large); its level after.
    fn take(&self, id: &BucketId, rate: Rate, tokens: i64) -> f64 {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.map.len() >= buckets.tidy_at && !buckets.map.contains_key(id) {
            // Each bucket by its own rate: one that has refilled is the same as none.
            buckets
                .map
                .retain(|_, b| b.refilled(b.rate, now) < b.rate.limit as f64);
            buckets.tidy_at = (buckets.map.len() * 2).max(TIDY_FROM);
        }
        let b = buckets.map.entry(id.clone()).or_insert(Bucket {
            level: rate.limit as f64,
            at: now,
            rate,
        });
        b.level = b.refilled(rate, now) - tokens as f64;
        b.at = now;
        b.rate = rate;
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
    /// Counted in `store.redis` (when the snapshot has one).
    pub shared: bool,
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
            reset: seconds(missing / rate),
            // A bucket at exactly zero admits nothing: wait for the first whole token.
            retry_after: if level > 0.0 {
                Duration::ZERO
            } else {
                seconds((below + 1.0) / rate)
            },
        }
    }
}

/// A duration from seconds that may be huge (a bucket far below zero), capped at a day.
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.min(86_400.0)).unwrap_or(Duration::ZERO)
}

/// The budgets of a process, kept across reloads.
#[derive(Clone)]
pub struct Budgets {
    store: Arc<LocalStore>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            store: Arc::new(LocalStore::default()),
        }
    }
}

/// A shared budget could not be read and `on_error: deny`.
#[derive(Debug)]
pub struct Unavailable;

impl Budgets {
    /// The standing of each budget; the request may start when none is spent. Shared
    /// budgets are read from `shared` (one round trip); when it does not answer, its
    /// `on_error` decides.
    pub async fn check(
        &self,
        budgets: &[Budget],
        shared: Option<&SharedStore>,
    ) -> Result<Vec<Standing>, Unavailable> {
        let mut levels = self.local_levels(budgets, shared.is_some(), None);
        if let Some(store) = shared.filter(|_| budgets.iter().any(|b| b.shared)) {
            let ids = shared_ids(budgets);
            match store.buckets(&ids, 0).await {
                Some(remote) => fill_shared(budgets, &mut levels, remote),
                None => match store.config.on_error {
                    OnStoreError::Allow => fill_shared(budgets, &mut levels, full(&ids)),
                    OnStoreError::Deny => return Err(Unavailable),
                    OnStoreError::Local => {
                        let own = self.node_share(budgets, store, 0);
                        fill_shared(budgets, &mut levels, own);
                    }
                },
            }
        }
        publish(budgets, &levels);
        Ok(budgets
            .iter()
            .zip(&levels)
            .map(|(b, l)| b.standing(*l))
            .collect())
    }

    /// Takes `tokens` from every budget a request was admitted under (negative: gives back
    /// the part of a reservation the request did not use). Shared budgets are charged in
    /// the background: the answer never waits for Redis.
    pub fn charge(&self, budgets: &[Budget], tokens: i64, shared: Option<&Arc<SharedStore>>) {
        if tokens == 0 {
            return;
        }
        let levels = self.local_levels(budgets, shared.is_some(), Some(tokens));
        publish_some(budgets, &levels);
        let Some(store) = shared.filter(|_| budgets.iter().any(|b| b.shared)) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (me, store) = (self.clone(), store.clone());
        let budgets: Vec<Budget> = budgets.iter().filter(|b| b.shared).cloned().collect();
        runtime.spawn(async move {
            let ids = shared_ids(&budgets);
            let levels = match store.buckets(&ids, tokens).await {
                Some(levels) => levels,
                None if store.config.on_error == OnStoreError::Local => {
                    me.node_share(&budgets, &store, tokens)
                }
                None => return,
            };
            publish(&budgets, &levels);
        });
    }

    /// The levels of the budgets kept on this node (after taking `take`); shared ones, when
    /// there is a store, are left NaN for the caller to fill.
    fn local_levels(&self, budgets: &[Budget], has_store: bool, take: Option<i64>) -> Vec<f64> {
        budgets
            .iter()
            .map(|b| match take {
                _ if b.shared && has_store => f64::NAN,
                Some(t) => self.store.take(&b.id, b.rate, t),
                None => self.store.level(&b.id, b.rate),
            })
            .collect()
    }

    /// `on_error: local`: the shared budgets counted on this node alone, each limit divided
    /// by `store.redis.nodes`.
    fn node_share(&self, budgets: &[Budget], store: &SharedStore, take: i64) -> Vec<f64> {
        let nodes = store.config.nodes.unwrap_or(1).max(1);
        budgets
            .iter()
            .filter(|b| b.shared)
            .map(|b| {
                let rate = Rate {
                    limit: (b.rate.limit / nodes).max(1),
                    per: b.rate.per,
                };
                match take {
                    0 => self.store.level(&b.id, rate),
                    t => self.store.take(&b.id, rate, t),
                }
            })
            .collect()
    }
}

fn shared_ids(budgets: &[Budget]) -> Vec<(&BucketId, Rate)> {
    budgets
        .iter()
        .filter(|b| b.shared)
        .map(|b| (&b.id, b.rate))
        .collect()
}

fn full(ids: &[(&BucketId, Rate)]) -> Vec<f64> {
    ids.iter().map(|(_, r)| r.limit as f64).collect()
}

/// Puts the shared budgets' levels, in order, where `local_levels` left them out.
fn fill_shared(budgets: &[Budget], levels: &mut [f64], shared: Vec<f64>) {
    let slots = budgets
        .iter()
        .zip(levels.iter_mut())
        .filter(|(b, _)| b.shared);
    for ((_, slot), level) in slots.zip(shared) {
        *slot = level;
    }
}

/// [`publish`] for the budgets whose level is known now.
fn publish_some(budgets: &[Budget], levels: &[f64]) {
    let known: Vec<(Budget, f64)> = budgets
        .iter()
        .zip(levels)
        .filter(|(_, l)| !l.is_nan())
        .map(|(b, l)| (b.clone(), *l))
        .collect();
    let (b, l): (Vec<Budget>, Vec<f64>) = known.into_iter().unzip();
    publish(&b, &l);
}

/// `switchyard_tokens_budget_remaining{key}`: a named key's tightest budget.
fn publish(budgets: &[Budget], levels: &[f64]) {
    let mut tightest: Vec<(&str, f64)> = Vec::new();
    for (b, level) in budgets.iter().zip(levels) {
        let Some(key) = b.metric_key.as_deref() else {
            continue;
        };
        match tightest.iter_mut().find(|(k, _)| *k == key) {
            Some((_, l)) => *l = l.min(*level),
            None => tightest.push((key, *level)),
        }
    }
    for (key, level) in tightest {
        crate::metrics::TOKENS_BUDGET_REMAINING
            .with_label_values(&[key])
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
            shared: false,
        }
    }

    fn check(budgets: &Budgets, b: &[Budget]) -> Vec<Standing> {
        futures::executor::block_on(budgets.check(b, None)).expect("local budgets always answer")
    }

    #[test]
    fn a_request_within_budget_may_overdraw_it_and_the_next_waits() {
        let budgets = Budgets::default();
        let b = [budget(30, 60)];
        assert_eq!(check(&budgets, &b)[0].remaining, 30);
        budgets.charge(&b, 18, None);
        let s = check(&budgets, &b)[0];
        assert_eq!(s.remaining, 12);
        assert_eq!(s.retry_after, Duration::ZERO);
        budgets.charge(&b, 18, None);
        let s = check(&budgets, &b)[0];
        assert_eq!(s.remaining, 0);
        // 6 below zero, refilling at 0.5 tokens/s: 14 s to the first whole token.
        assert!((s.retry_after.as_secs_f64() - 14.0).abs() < 0.1, "{s:?}");
        assert!((s.reset.as_secs_f64() - 72.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn a_lower_limit_applies_to_the_running_level() {
        let budgets = Budgets::default();
        budgets.charge(&[budget(1000, 60)], 10, None);
        assert_eq!(check(&budgets, &[budget(100, 60)])[0].remaining, 100);
    }
}
