//! Per-route rate limits: `requests` per `per` window, counted per client IP, API key or
//! header value with pingora-limits' `Rate` (a count-min sketch: fixed memory, lock-free, may
//! overcount on hash collisions, never undercounts).

use super::auth::ClientKey;
use crate::config::{RateLimitConfig, RateLimitKey};
use http::HeaderMap;
use pingora_limits::rate::{Rate, RateComponents};
use std::net::IpAddr;
use std::time::Duration;

enum CountBy {
    ClientIp,
    /// The route's client key that the request authenticated with.
    Client,
    Header(http::HeaderName),
}

pub struct Limiter {
    pub config: RateLimitConfig,
    /// `requests + burst`: what one window admits.
    rate: Rate,
    key: CountBy,
    pub allowed: isize,
}

/// Over the limit: how long until the window ends.
pub struct Limited {
    pub retry_after: Duration,
}

impl Limiter {
    pub fn new(config: &RateLimitConfig) -> Limiter {
        let key = match &config.key {
            RateLimitKey::ClientIp => CountBy::ClientIp,
            RateLimitKey::ApiKey => CountBy::Client,
            RateLimitKey::Header(h) => CountBy::Header(h.clone()),
        };
        Limiter {
            config: config.clone(),
            rate: Rate::new(config.per.get()),
            key,
            allowed: (config.requests + config.burst).min(isize::MAX as u64) as isize,
        }
    }

    /// Counts one request; the requests its key has left in the window, or `Err` when it is
    /// over the limit. `api_key`
    /// counts by the key that passed the route's auth, never by what the client presented:
    /// inventing a new key per request must not make a new counter.
    pub fn check(
        &self,
        client: Option<IpAddr>,
        headers: &HeaderMap,
        key: Option<&ClientKey>,
    ) -> Result<u64, Limited> {
        let bytes: Vec<u8> = match &self.key {
            CountBy::ClientIp => client
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
            CountBy::Client => key.map(|k| k.id().to_vec()).unwrap_or_default(),
            CountBy::Header(h) => headers
                .get(h)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        };
        let seen = self.rate.observe(&bytes, 1);
        if seen <= self.allowed {
            return Ok((self.allowed - seen).max(0) as u64);
        }
        let left = self.rate.rate_with(&bytes, |c: RateComponents| {
            c.interval
                .mul_f64((1.0 - c.current_interval_fraction).clamp(0.0, 1.0))
        });
        Err(Limited { retry_after: left })
    }
}
