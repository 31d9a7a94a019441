//! The `routes:` list: what a route matches and the policies it applies.

use super::admission::{Priority, TokenLimitConfig};
use super::placement::OpenAiSetting;
use super::secret::Secret;
use super::stage::{Checked, Stage};
use super::types::d;
use super::units::{Dur, Size};
use super::values::{Cidr, HeaderKey, HeaderText, HostPattern, MethodName, RateLimitKey, RetryOn};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A route: what it matches, where it goes and the policies it applies. The first match wins.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct RouteConfig<S: Stage = Checked> {
    /// Unique name, the `route` label of metrics.
    pub name: String,
    /// What the route matches (default: everything).
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// The pool to forward to; exactly one of `pool` and `respond`.
    #[serde(default)]
    pub pool: Option<String>,
    /// Answer by the proxy itself; exactly one of `pool` and `respond`.
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Model-aware routing, `/v1/models`, OpenAI-shaped errors and token metrics; with a
    /// mapping, model aliases and fallbacks too.
    #[serde(default)]
    pub openai: OpenAiSetting,
    /// Client keys the route asks for.
    #[serde(default)]
    pub auth: Option<AuthConfig<S>>,
    /// Requests per window, counted per key; over → 429.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Larger request bodies get 413 before anything goes upstream.
    #[serde(default = "d::max_body")]
    pub max_body: Size,
    /// Further backends tried after a connect failure (or a failed idempotent request).
    #[serde(default = "d::retries")]
    pub retries: u32,
    /// What sends a replayable request to another backend: `connect_error` and 5xx statuses.
    #[serde(default = "d::retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Only clients in these networks reach the route (empty = everyone).
    #[serde(default)]
    pub allow: Vec<S::Of<Cidr>>,
    /// Clients in these networks get 403 on this route.
    #[serde(default)]
    pub deny: Vec<S::Of<Cidr>>,
    /// Read, total and WebSocket idle timeouts.
    #[serde(default)]
    pub timeouts: RouteTimeouts,
    /// Removed from the path before forwarding, whole segments only.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// Edits of the upstream request's headers.
    #[serde(default)]
    pub request_headers: HeaderOps,
    /// Edits of the answer's headers (also overrides security headers).
    #[serde(default)]
    pub response_headers: HeaderOps,
    /// CORS for browsers on other origins.
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Per-route override of `edge.security_headers`.
    #[serde(default)]
    pub security_headers: Option<bool>,
    /// The admission class of the route's requests; a client key's own priority wins.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Tokens per window, for routes without per-key budgets.
    #[serde(default)]
    pub token_limit: Option<TokenLimitConfig>,
}

/// `requests` per `per` (a fixed window), counted per `key`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window.
    pub requests: u64,
    /// The window, at least 1s.
    pub per: Dur,
    /// `client_ip | api_key | header:NAME`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Extra requests allowed in a window on top of `requests`.
    #[serde(default)]
    pub burst: u64,
    /// Counted in `store.redis`, across every node that shares it.
    #[serde(default)]
    pub shared: bool,
}

/// CORS: preflights answered, answers to allowed origins marked.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `*`.
    pub allow_origins: Vec<String>,
    /// Methods a page may use.
    #[serde(default = "d::cors_methods")]
    pub allow_methods: Vec<MethodName>,
    /// Request headers a page may send; empty = whatever the preflight asks for.
    #[serde(default)]
    pub allow_headers: Vec<HeaderKey>,
    /// Answer headers a page may read.
    #[serde(default)]
    pub expose_headers: Vec<HeaderKey>,
    /// Let pages send cookies and credentials (not with origin `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<Dur>,
}

/// Client keys, accepted from `Authorization: Bearer` or `X-API-Key`; missing or wrong → 401.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct AuthConfig<S: Stage = Checked> {
    /// `KEY`, `${VAR}`, `sha256:<hex>` or `{key, name, models}`; at least 16 characters.
    #[serde(default)]
    pub api_keys: Vec<ApiKey<S>>,
}

/// A client key: plain, `${VAR}` or `sha256:<hex>`, optionally named and limited to models.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged, bound = "")]
pub enum ApiKey<S: Stage = Checked> {
    Plain(S::Of<Secret>),
    Scoped(ScopedKey<S>),
}

impl<S: Stage> ApiKey<S> {
    /// The key itself (or its digest), however the entry is written.
    pub fn secret(&self) -> &S::Of<Secret> {
        match self {
            ApiKey::Plain(k) => k,
            ApiKey::Scoped(s) => &s.key,
        }
    }
}

/// A string is a plain key and a mapping a scoped one, each with its own errors (an
/// untagged enum would only say that nothing matched).
impl<'de, S: Stage> Deserialize<'de> for ApiKey<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<S>(std::marker::PhantomData<S>);
        impl<'de, S: Stage> serde::de::Visitor<'de> for Visit<S> {
            type Value = ApiKey<S>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key, or a mapping with `key`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiKey<S>, E> {
                use serde::de::IntoDeserializer;
                S::Of::<Secret>::deserialize(v.into_deserializer()).map(ApiKey::Plain)
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, m: M) -> Result<ApiKey<S>, M::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(m);
                ScopedKey::deserialize(de).map(ApiKey::Scoped)
            }
        }
        d.deserialize_any(Visit(std::marker::PhantomData))
    }
}

/// A client key with a name, optionally limited to some models.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct ScopedKey<S: Stage = Checked> {
    /// The key, or `sha256:<hex>` of it.
    pub key: S::Of<Secret>,
    /// A name for the key, in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// Models the key may ask for (OpenAI routes); empty = every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// The admission class of this key's requests (over the route's).
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Tokens this key may use per minute (OpenAI routes).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Tokens this key may use per day (OpenAI routes).
    #[serde(default)]
    pub tokens_per_day: Option<u64>,
    /// The key's budgets are counted in `store.redis`, across every node that shares it.
    #[serde(default)]
    pub shared: bool,
}

/// What a request must have to take the route; every part given must match.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact names (or addresses) or `*.` and a name; port ignored, any case.
    #[serde(default)]
    pub host: Vec<HostPattern>,
    /// A path prefix matched by whole segments on the normalised path.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Methods the route takes (default: all).
    #[serde(default)]
    pub methods: Vec<MethodName>,
    /// Headers that must be present with these values.
    #[serde(default)]
    pub headers: BTreeMap<HeaderKey, String>,
    /// `key=value` pairs that must be in the query string.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// An answer the proxy gives by itself, with no backend.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    /// The status of the answer.
    #[serde(default = "d::respond_status")]
    pub status: u16,
    /// The body of the answer.
    #[serde(default)]
    pub body: String,
    /// Headers of the answer.
    #[serde(default)]
    pub headers: BTreeMap<HeaderKey, HeaderText>,
}

/// Timeouts of requests on this route.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// Overrides the pool's read timeout (gap between upstream reads).
    #[serde(default)]
    pub read: Option<Dur>,
    /// Deadline for the whole request, from the first byte of its head to the last of the answer.
    #[serde(default)]
    pub total: Option<Dur>,
    /// How long an upgraded (WebSocket) connection may stay silent.
    #[serde(default = "d::websocket_idle_opt")]
    pub websocket_idle: Option<Dur>,
}

/// Header edits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Headers set (replacing any of the same name).
    #[serde(default)]
    pub set: BTreeMap<HeaderKey, HeaderText>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<HeaderKey>,
}

impl<S: Stage> RouteConfig<S> {
    /// Whether `retry_on` says something other than its default.
    pub fn retry_on_set(&self) -> bool {
        self.retry_on != d::retry_on()
    }
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}
