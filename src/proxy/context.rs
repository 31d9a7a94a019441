//! What one request carries from hook to hook, grouped by what it is about.

use super::filters::body::{Held, Pace, Replay};
use super::openai::{UsageHider, UsageScanner};
use crate::runtime::policy::auth::ClientKey;
use crate::runtime::pool::{InflightGuard, Member};
use crate::runtime::router::Route;
use crate::runtime::Snapshot;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// Per-request state. The snapshot is loaded once and kept for the whole request.
pub struct Ctx {
    pub(super) started: Instant,
    pub(super) snapshot: Option<Arc<Snapshot>>,
    pub(super) route: Option<Arc<Route>>,
    pub(super) client: Client,
    pub(super) attempt: Attempt,
    pub(super) body: BodyState,
    pub(super) openai: OpenAi,
    pub(super) queue: Queued,
    pub(super) tokens: Tokens,
    /// The route's `timeouts.total`, as an instant.
    pub(super) deadline: Option<Instant>,
    /// A WebSocket (or other) upgrade: no body deadlines, the idle limit instead.
    pub(super) upgrade: bool,
}

/// Who is asking: the request id and what the policies found out about the client.
pub(super) struct Client {
    pub(super) request_id: http::HeaderValue,
    pub(super) ip: Option<IpAddr>,
    /// The socket peer, which may be a trusted proxy in front.
    pub(super) peer_ip: Option<IpAddr>,
    pub(super) host: String,
    /// The route's key the request authenticated with.
    pub(super) key: Option<ClientKey>,
    /// The request's `Origin`, when the route's CORS allows it.
    pub(super) cors_origin: Option<http::HeaderValue>,
    /// `x-ratelimit-*` of the route's limits, for every answer.
    pub(super) limit_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl Default for Client {
    fn default() -> Client {
        Client {
            // Set by the first hook, before anything reads it.
            request_id: http::HeaderValue::from_static(""),
            ip: None,
            peer_ip: None,
            host: String::new(),
            key: None,
            cors_origin: None,
            limit_headers: Vec::new(),
        }
    }
}

/// The backends tried so far and the one being tried.
#[derive(Default)]
pub(super) struct Attempt {
    pub(super) tries: u32,
    pub(super) tried: Vec<SocketAddr>,
    pub(super) backend: Option<Member>,
    pub(super) inflight: Option<InflightGuard>,
    /// A backend status that `retry_on` turned into another attempt.
    pub(super) retrying_status: Option<u16>,
    /// Every backend was at `max_inflight`: answer 503 with `Retry-After`.
    pub(super) all_full: bool,
    /// An answer header went to the client: nothing may be retried any more.
    pub(super) response_started: bool,
    /// When the last attempt was handed to a backend, and how long its answer head took.
    pub(super) upstream_started: Option<Instant>,
    pub(super) upstream_ms: Option<f64>,
}

/// The request body on its way up.
#[derive(Default)]
pub(super) struct BodyState {
    /// A body without a declared length, counted against `max_body` as it streams.
    pub(super) held: Option<Held>,
    /// A body read before choosing the backend, replayed in full to it.
    pub(super) replay: Option<Replay>,
    /// The replayed body is not the client's (a model or `stream_options` rewritten): its
    /// length is sent anew.
    pub(super) rewritten: bool,
    /// When the request body must be complete (`edge.body_timeout`).
    pub(super) deadline: Option<Instant>,
}

/// The request's time in its pool's queue, if it waited there.
#[derive(Default)]
pub(super) struct Queued {
    pub(super) priority: Option<crate::config::Priority>,
    pub(super) waited: Option<std::time::Duration>,
    /// Why the queue gave no slot (answered 503).
    pub(super) refused: Option<crate::runtime::queue::Refused>,
}

/// The token budgets the request was admitted under, and what its answer used.
#[derive(Default)]
pub(super) struct Tokens {
    pub(super) budgets: Vec<crate::runtime::policy::budget::Budget>,
    /// Prompt and completion tokens of the answer's `usage`.
    pub(super) used: Option<u64>,
    /// Taken from the budgets when the body was read; settled at the end.
    pub(super) reserved: i64,
    pub(super) charged: bool,
}

/// The `openai: true` side of the request.
#[derive(Default)]
pub(super) struct OpenAi {
    pub(super) on: bool,
    /// The model the request is sent for now (after aliases and fallbacks).
    pub(super) model: Option<String>,
    /// The model it asked for, aliases resolved: where its fallback chain starts.
    pub(super) first: Option<String>,
    /// The start of its prompt, for `affinity: {key: prompt_prefix}`.
    pub(super) prefix_key: Option<Vec<u8>>,
    /// A fallback model was taken because no backend could take the one before.
    pub(super) fell_back: bool,
    pub(super) usage: Option<UsageScanner>,
    pub(super) first_byte: bool,
    /// The stream's usage chunk was asked for by switchyard, not the client: it is removed.
    pub(super) hide_usage: bool,
    pub(super) usage_filter: Option<UsageHider>,
}

impl Ctx {
    pub(super) fn new() -> Ctx {
        Ctx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            client: Client::default(),
            attempt: Attempt::default(),
            body: BodyState::default(),
            openai: OpenAi::default(),
            queue: Queued::default(),
            tokens: Tokens::default(),
            deadline: None,
            upgrade: false,
        }
    }

    pub(super) fn pool_name(&self) -> Option<&str> {
        self.route.as_ref()?.pool().map(|p| p.name.as_str())
    }

    /// `Some(tls)` when the answer gets the security headers.
    pub(super) fn security(&self, tls: bool) -> Option<bool> {
        let on = match (&self.route, &self.snapshot) {
            (Some(r), Some(s)) => r.config.security_headers.unwrap_or(s.edge.security_headers),
            (None, Some(s)) => s.edge.security_headers,
            _ => true,
        };
        on.then_some(tls)
    }

    /// `edge.min_body_rate`, counted from the end of the request head.
    pub(super) fn pace(&self) -> Pace {
        let rate = self
            .snapshot
            .as_ref()
            .map(|s| s.edge.min_body_rate)
            .unwrap_or_default();
        // Time in the queue is not the client's: the body is not read while it waits.
        let start = self.started + self.queue.waited.unwrap_or_default();
        Pace::new(start, rate.bytes_per_second, rate.grace.get())
    }

    pub(super) fn retries(&self) -> u32 {
        self.route.as_ref().map_or(0, |r| r.config.retries)
    }
}
