//! Request limits that several nodes share, counted in Redis (`store.redis`).
//!
//! Each decision is one server-side Lua script, one round trip: a sliding-window log per
//! key (a sorted set of the admitted requests' times, taken from Redis's own clock so the
//! nodes' clocks do not matter). It trims what fell out of the window, admits when fewer
//! than the limit remain, and sets the key to expire with the window. No node reads and
//! writes a counter on its own, so concurrent nodes never admit more than the limit.
//!
//! Token budgets with `shared: true` are token buckets kept as a hash per key (its level and
//! when it was last taken from), refilled and taken from by one script as well; a request's
//! budgets are all read, or all charged, in one round trip.
//!
//! Redis slow or gone never holds a request longer than `timeout`: the decision then follows
//! `on_error`. Each worker thread opens a connection of its own on its first decision, so
//! that a round trip never wakes another thread; until it is up the thread borrows the
//! store's first connection, which lives on a thread of its own. Every connection reconnects
//! in the background (the `redis` crate's connection manager, with backoff).

use super::budget::{BucketId, Rate};
use super::rate_limit::{Limited, Limiter};
use crate::config::{OnStoreError, RateLimitConfig, RedisStoreConfig};
use crate::metrics;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// KEYS[1] the key; ARGV limit, window (µs), a unique member. Returns
/// `{admitted, remaining, wait_µs}`. Run twice with one member (a retry after a lost
/// answer), it admits once.
const SLIDING_WINDOW: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return {1, math.max(0, limit - count), 0}
end
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
";

/// KEYS the buckets; ARGV[1] the tokens to take from each (0: only read), then each bucket's
/// limit and refill time (µs). Returns each bucket's level after, as a string (Redis would
/// truncate a Lua number to an integer). A bucket expires once it would be full again.
const TOKEN_BUCKETS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local take = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local per = tonumber(ARGV[2 * i + 1])
  local stored = redis.call('HMGET', key, 'level', 'at')
  local level = limit
  if stored[1] then
    level = math.min(limit, tonumber(stored[1]) + (now - tonumber(stored[2])) * limit / per)
  end
  if take ~= 0 then
    level = level - take
    redis.call('HSET', key, 'level', string.format('%.6f', level), 'at', now)
    redis.call('PEXPIRE', key, math.max(1, math.ceil((limit - level) * per / limit / 1000)))
  end
  out[i] = string.format('%.6f', level)
end
return out
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("cannot start the Redis connection thread: {0}")]
    Thread(std::io::Error),
}

/// A shared limit's answer: admitted (with what is left), or refused.
pub struct Decision {
    /// What a window admits under the rule that decided (the node's share on `local`).
    pub allowed: isize,
    pub result: Result<u64, Refused>,
}

pub enum Refused {
    Limited(Limited),
    /// Redis did not decide and `on_error: deny`.
    Unavailable,
}

type Slot = Arc<ArcSwapOption<ConnectionManager>>;

thread_local! {
    /// This thread's own connection to each live store (see the module's comment).
    static OWN: RefCell<Vec<(Weak<()>, Slot)>> = const { RefCell::new(Vec::new()) };
}

pub struct SharedStore {
    pub config: RedisStoreConfig,
    client: redis::Client,
    /// The first connection, driven by the store's own thread.
    conn: Arc<OnceLock<ConnectionManager>>,
    /// Held while the store lives; the threads' connections end once it is gone.
    alive: Arc<()>,
    script: redis::Script,
    buckets: redis::Script,
    up: Arc<AtomicBool>,
    /// Makes each admitted request a distinct member of its key's set.
    node: u64,
    seq: AtomicU64,
    /// This node's own limiters for `on_error: local`, per route and limit.
    local: Mutex<Vec<(String, RateLimitConfig, Arc<Limiter>)>>,
    /// Dropped with the store: ends its connection thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl SharedStore {
    /// Starts connecting in the background; decisions fall back to `on_error` until then.
    pub fn start(config: &RedisStoreConfig) -> Result<Arc<SharedStore>, StoreError> {
        let client = redis::Client::open(config.url.as_str())?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let store = Arc::new(SharedStore {
            config: config.clone(),
            client: client.clone(),
            conn: Arc::new(OnceLock::new()),
            alive: Arc::new(()),
            script: redis::Script::new(SLIDING_WINDOW),
            buckets: redis::Script::new(TOKEN_BUCKETS),
            up: Arc::new(AtomicBool::new(false)),
            node: fastrand::u64(..),
            seq: AtomicU64::new(0),
            local: Mutex::new(Vec::new()),
            _stop: stop,
        });
        metrics::STORE_UP.set(0);
        let (conn, up, timeout) = (store.conn.clone(), store.up.clone(), config.timeout.get());
        std::thread::Builder::new()
            .name("switchyard-redis".into())
            .spawn(move || connect_thread(client, conn, up, timeout, stopped))
            .map_err(StoreError::Thread)?;
        Ok(store)
    }

    /// Whether the last decision (or the first connection) reached Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts one request of `who` against `limiter`'s limit on `route`, across the fleet.
    pub async fn decide(&self, route: &str, limiter: &Limiter, who: &[u8]) -> Decision {
        let timeout = self.config.timeout.get();
        let asked = tokio::time::timeout(timeout, self.ask(route, limiter, who)).await;
        let answer = asked.unwrap_or(Err(StoreError::Timeout(timeout)));
        match answer {
            Ok(decision) => {
                self.mark(true, None);
                decision
            }
            Err(e) => {
                metrics::STORE_ERRORS.inc();
                self.mark(false, Some(&e));
                self.fallback(route, limiter, who)
            }
        }
    }

    async fn ask(
        &self,
        route: &str,
        limiter: &Limiter,
        who: &[u8],
    ) -> Result<Decision, StoreError> {
        let allowed = limiter.allowed.max(1);
        let window = limiter.config.per.get().as_micros().min(i64::MAX as u128) as i64;
        let member = format!(
            "{:x}-{:x}",
            self.node,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut call = self.script.key(self.key(route, who));
        call.arg(allowed as i64).arg(window).arg(member);
        let (admitted, remaining, wait): (i64, i64, i64) = self.invoke(&call, true).await?;
        let result = if admitted == 1 {
            Ok(remaining.max(0) as u64)
        } else {
            Err(Refused::Limited(Limited {
                retry_after: Duration::from_micros(wait.max(0) as u64),
            }))
        };
        Ok(Decision {
            allowed: limiter.allowed,
            result,
        })
    }

    /// Runs `call`; a call safe to repeat runs once more if the connection had broken
    /// (Redis restarted, say): the connection manager reconnects on the failure, and one
    /// decision per thread would otherwise fall to `on_error` although Redis is back.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &redis::ScriptInvocation<'_>,
        repeatable: bool,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        match call.invoke_async(&mut conn).await {
            Err(e) if repeatable && (e.is_connection_dropped() || e.is_io_error()) => {
                Ok(call.invoke_async(&mut conn).await?)
            }
            answer => Ok(answer?),
        }
    }

    /// This thread's own connection once it is up, the store's first one until then.
    fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let own = OWN.with_borrow_mut(|own| {
            own.retain(|(store, _)| store.strong_count() > 0);
            let mine = own
                .iter()
                .find(|(store, _)| store.as_ptr() == Arc::as_ptr(&self.alive));
            match mine {
                Some((_, slot)) => slot.load_full().map(|c| ConnectionManager::clone(&c)),
                None => {
                    let slot = Slot::default();
                    own.push((Arc::downgrade(&self.alive), slot.clone()));
                    self.connect_here(slot);
                    None
                }
            }
        });
        own.or_else(|| self.conn.get().cloned())
            .ok_or(StoreError::NotConnected)
    }

    /// Opens this thread's connection on its own runtime, retrying while the store lives.
    fn connect_here(&self, slot: Slot) {
        let Ok(here) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (client, alive) = (self.client.clone(), Arc::downgrade(&self.alive));
        let config = manager_config(self.config.timeout.get());
        here.spawn(async move {
            let lives = || alive.strong_count() > 0;
            if let Some(c) = connect_with_backoff(&client, &config, lives, |_| {}).await {
                slot.store(Some(Arc::new(c)));
            }
            // The store replaced or removed: close this thread's connection, even if the
            // thread never asks again.
            while alive.strong_count() > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            slot.store(None);
        });
    }

    /// `prefix` `rl:` route `:` sha256(who): bounded, whatever the client sent.
    fn key(&self, route: &str, who: &[u8]) -> String {
        let who = hex::encode(Sha256::digest(who));
        format!("{}rl:{route}:{who}", self.config.prefix)
    }

    /// Takes `tokens` from each bucket (0: reads them) in Redis; their levels after, or
    /// `None` when Redis did not answer within `timeout` (counted, and logged on a change).
    pub async fn buckets(&self, buckets: &[(&BucketId, Rate)], tokens: i64) -> Option<Vec<f64>> {
        let timeout = self.config.timeout.get();
        let asked = tokio::time::timeout(timeout, self.ask_buckets(buckets, tokens)).await;
        match asked.unwrap_or(Err(StoreError::Timeout(timeout))) {
            Ok(levels) => {
                self.mark(true, None);
                Some(levels)
            }
            Err(e) => {
                metrics::STORE_ERRORS.inc();
                self.mark(false, Some(&e));
                None
            }
        }
    }

    async fn ask_buckets(
        &self,
        buckets: &[(&BucketId, Rate)],
        tokens: i64,
    ) -> Result<Vec<f64>, StoreError> {
        let mut call = self.buckets.prepare_invoke();
        call.arg(tokens);
        for (id, rate) in buckets {
            let who = hex::encode(Sha256::digest(&id.who));
            call.key(format!("{}tb:{}:{who}", self.config.prefix, id.budget));
            call.arg(rate.limit.max(1));
            call.arg(rate.per.as_micros().clamp(1, i64::MAX as u128) as i64);
        }
        // A charge is not run again: the lost answer may have followed a charge that happened.
        let levels: Vec<String> = self.invoke(&call, tokens == 0).await?;
        Ok(levels.iter().map(|l| l.parse().unwrap_or(0.0)).collect())
    }

    fn fallback(&self, route: &str, limiter: &Limiter, who: &[u8]) -> Decision {
        match self.config.on_error {
            OnStoreError::Allow => Decision {
                allowed: limiter.allowed,
                result: Ok(limiter.allowed.max(0) as u64),
            },
            OnStoreError::Deny => Decision {
                allowed: limiter.allowed,
                result: Err(Refused::Unavailable),
            },
            OnStoreError::Local => {
                let own = self.local_limiter(route, &limiter.config);
                Decision {
                    allowed: own.allowed,
                    result: own.check_who(who).map_err(Refused::Limited),
                }
            }
        }
    }

    /// This node's share of `config` on `route`, kept while the store lives.
    fn local_limiter(&self, route: &str, config: &RateLimitConfig) -> Arc<Limiter> {
        let mut local = self.local.lock();
        if let Some((_, _, l)) = local.iter().find(|(r, c, _)| r == route && c == config) {
            return l.clone();
        }
        let own = Arc::new(Limiter::share(config, self.config.nodes.unwrap_or(1)));
        local.retain(|(r, _, _)| r != route);
        local.push((route.to_string(), config.clone(), own.clone()));
        own
    }

    /// Logs each change between reachable and not, once.
    fn mark(&self, up: bool, why: Option<&StoreError>) {
        mark(&self.up, up, why);
    }
}

fn mark(state: &AtomicBool, up: bool, why: Option<&StoreError>) {
    if state.swap(up, Ordering::Relaxed) == up {
        return;
    }
    metrics::STORE_UP.set(i64::from(up));
    match why {
        None => log::info!("store.redis: reachable, shared limits are counted in Redis"),
        Some(e) => log::warn!("store.redis: {e}; shared limits follow on_error until it is back"),
    }
}

/// Connects, retrying with backoff (50 ms doubling to 2 s) while `keep_trying`; `failed`
/// hears of each failure.
async fn connect_with_backoff(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    keep_trying: impl Fn() -> bool,
    mut failed: impl FnMut(&redis::RedisError),
) -> Option<ConnectionManager> {
    let mut delay = Duration::from_millis(50);
    while keep_trying() {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(c) => return Some(c),
            Err(e) => failed(&e),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    None
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        // Backstops only: every decision has its own `timeout`.
        .set_connection_timeout(timeout.max(Duration::from_secs(1)))
        .set_response_timeout(timeout.max(Duration::from_secs(1)))
        .set_number_of_retries(0)
        .set_max_delay(2000)
}

/// Connects with backoff, then keeps the runtime that drives the connection alive until the
/// store is dropped. The connection manager reconnects on its own after that.
fn connect_thread(
    client: redis::Client,
    conn: Arc<OnceLock<ConnectionManager>>,
    up: Arc<AtomicBool>,
    timeout: Duration,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("store.redis: cannot start its runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        let connect = async {
            let mut first = true;
            let warn_once = |e: &redis::RedisError| {
                if std::mem::take(&mut first) {
                    log::warn!("store.redis: cannot connect ({e}); retrying, shared limits follow on_error");
                }
            };
            let config = manager_config(timeout);
            if let Some(c) = connect_with_backoff(&client, &config, || true, warn_once).await {
                let _ = conn.set(c);
                mark(&up, true, None);
            }
        };
        let mut stopped = stopped;
        tokio::select! {
            _ = connect => {
                let _ = (&mut stopped).await;
            }
            _ = &mut stopped => {}
        }
    });
}
