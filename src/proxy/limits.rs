//! A route's request limit and token budgets as the client sees them: the 429s, and OpenAI's
//! `x-ratelimit-*` headers on every answer of a limited route (the official SDKs read them
//! and back off on their own).

use super::answer::Reply;
use super::context::Ctx;
use crate::config::RateLimitKey;
use crate::metrics;
use crate::runtime::policy::budget::{BucketId, Budget, Rate, Standing};
use crate::runtime::router::Route;
use crate::runtime::Snapshot;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(86_400);

/// The budgets that apply to this request: its key's per minute and per day, and the
/// route's `token_limit`.
pub(super) fn budgets_of(ctx: &Ctx, route: &Route, headers: &HeaderMap) -> Vec<Budget> {
    let mut out = Vec::new();
    if let Some(k) = &ctx.client.key {
        let id = hex::encode(k.id());
        for (limit, per, window) in [
            (k.tokens_per_minute, MINUTE, "minute"),
            (k.tokens_per_day, DAY, "day"),
        ] {
            if let Some(limit) = limit {
                out.push(Budget {
                    id: BucketId {
                        budget: format!("key:{id}/{window}"),
                        who: Vec::new(),
                    },
                    rate: Rate { limit, per },
                    metric_key: k.name.clone(),
                    shared: k.shared,
                });
            }
        }
    }
    if let Some(tl) = &route.config.token_limit {
        let who = match &tl.key {
            RateLimitKey::ClientIp => ctx
                .client
                .ip
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
            RateLimitKey::ApiKey => ctx
                .client
                .key
                .as_ref()
                .map(|k| k.id().to_vec())
                .unwrap_or_default(),
            RateLimitKey::Header(h) => headers
                .get(h)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        };
        out.push(Budget {
            id: BucketId {
                budget: format!("route:{}", route.name),
                who,
            },
            rate: Rate {
                limit: tl.tokens,
                per: tl.per.get(),
            },
            metric_key: None,
            shared: tl.shared,
        });
    }
    out
}

/// Checks the request's token budgets and notes their headers. `Some(429)` when one is spent
/// (`Some(503)` when a shared one cannot be read and `on_error: deny`).
pub(super) async fn check_tokens(
    ctx: &mut Ctx,
    snap: &Snapshot,
    route: &Route,
    headers: &HeaderMap,
) -> Option<Reply> {
    let budgets = budgets_of(ctx, route, headers);
    if budgets.is_empty() {
        return None;
    }
    let checked = snap.budgets.check(&budgets, snap.store.as_deref()).await;
    ctx.tokens.budgets = budgets;
    let Ok(standings) = checked else {
        let answer = Reply::text(
            503,
            "the shared token budget cannot be checked, retry later",
        )
        .header(http::header::RETRY_AFTER, HeaderValue::from(1u64));
        return Some(answer);
    };
    let tightest = standings.iter().min_by_key(|s| s.remaining)?;
    push_token_headers(&mut ctx.client.limit_headers, tightest);
    let wait = standings.iter().map(|s| s.retry_after).max()?;
    if wait.is_zero() {
        return None;
    }
    metrics::TOKEN_LIMITED
        .with_label_values(&[route.name.as_str()])
        .inc();
    let answer = Reply::text(429, "the token budget is spent, retry later")
        .code("rate_limit_exceeded")
        .header(http::header::RETRY_AFTER, seconds(wait));
    Some(answer)
}

/// Notes the request limit's headers: what a window admits and what this client has left.
pub(super) fn note_requests(ctx: &mut Ctx, allowed: isize, remaining: u64) {
    let h = &mut ctx.client.limit_headers;
    h.push((LIMIT_REQUESTS, HeaderValue::from(allowed.max(0) as u64)));
    h.push((REMAINING_REQUESTS, HeaderValue::from(remaining)));
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The request limit's headers on its 429.
pub(super) fn requests_spent(ctx: &mut Ctx, allowed: isize, reset: Duration) {
    note_requests(ctx, allowed, 0);
    ctx.client
        .limit_headers
        .push((RESET_REQUESTS, duration_value(reset)));
}

fn push_token_headers(h: &mut Vec<(HeaderName, HeaderValue)>, s: &Standing) {
    h.push((LIMIT_TOKENS, HeaderValue::from(s.limit)));
    h.push((REMAINING_TOKENS, HeaderValue::from(s.remaining)));
    h.push((RESET_TOKENS, duration_value(s.reset)));
}

/// Whole seconds, at least 1, for `Retry-After`.
pub(super) fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs_f64().ceil().max(1.0) as u64)
}

/// OpenAI's form of a reset time: `250ms`, `1.5s`, `6m0s`, `2h3m4s`.
fn duration_value(d: Duration) -> HeaderValue {
    let ms = d.as_millis() as u64;
    let text = if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = ms as f64 / 1000.0;
        format!("{}s", (s * 10.0).round() / 10.0)
    } else {
        let secs = ms / 1000;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            format!("{h}h{m}m{s}s")
        } else {
            format!("{m}m{s}s")
        }
    };
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0s"))
}

/// Takes an estimate from the request's budgets as soon as its body is known, so that
/// requests admitted at the same time (or waiting in the queue) see each other: a quarter
/// of the body's bytes for the prompt, plus the completion it may ask for.
pub(super) fn reserve(ctx: &mut Ctx, body: &[u8]) {
    let (Some(snap), false) = (&ctx.snapshot, ctx.tokens.budgets.is_empty()) else {
        return;
    };
    let asked = super::openai::max_tokens_of(body).unwrap_or(0);
    let estimate = (body.len() as u64 / 4)
        .saturating_add(asked)
        .min(i64::MAX as u64) as i64;
    snap.budgets
        .charge(&ctx.tokens.budgets, estimate, snap.store.as_ref());
    ctx.tokens.reserved = estimate;
}

/// Settles the request with its budgets, once: the usage the backend reported, or, when
/// none was seen (the client left, the answer was too large to read, the backend sent none),
/// an estimate from the bytes that went each way — never less than what was reserved.
/// Called as the answer's last bytes go out, so the client's next request already sees it.
pub(super) fn charge(ctx: &mut Ctx, bytes: Option<(usize, usize)>) {
    if ctx.tokens.charged || ctx.tokens.budgets.is_empty() {
        return;
    }
    let Some(snap) = ctx.snapshot.clone() else {
        return;
    };
    let reserved = ctx.tokens.reserved;
    let total = match (ctx.tokens.used, bytes) {
        (Some(used), _) => used.min(i64::MAX as u64) as i64,
        // Answered here (404, 429, 503): no backend did any work.
        (None, Some(_)) if ctx.attempt.tries == 0 => 0,
        (None, Some((up, down))) => (((up + down) / 4) as i64).max(reserved),
        (None, None) => return,
    };
    snap.budgets
        .charge(&ctx.tokens.budgets, total - reserved, snap.store.as_ref());
    ctx.tokens.charged = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_times_read_like_openai_s() {
        let v = |ms: u64| duration_value(Duration::from_millis(ms));
        assert_eq!(v(250), "250ms");
        assert_eq!(v(1500), "1.5s");
        assert_eq!(v(360_000), "6m0s");
        assert_eq!(v(7_384_000), "2h3m4s");
    }
}
