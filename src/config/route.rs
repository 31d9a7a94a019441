//! The `routes:` list: what a route matches and the policies it applies.

use super::secret::Secret;
use super::stage::{Checked, Stage};
use super::types::d;
use super::units::{Dur, Size};
use super::values::{Cidr, HeaderKey, HeaderText, HostPattern, MethodName, RateLimitKey, RetryOn};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct RouteConfig<S: Stage = Checked> {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub respond: Option<Respond>,
    /// Model-aware routing, `/v1/models`, OpenAI-shaped errors and token metrics.
    #[serde(default)]
    pub openai: bool,
    #[serde(default)]
    pub auth: Option<AuthConfig<S>>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default = "d::max_body")]
    pub max_body: Size,
    #[serde(default = "d::retries")]
    pub retries: u32,
    #[serde(default = "d::retry_on")]
    pub retry_on: Vec<RetryOn>,
    /// Only clients in these networks reach the route (empty = everyone).
    #[serde(default)]
    pub allow: Vec<S::Of<Cidr>>,
    /// Clients in these networks get 403 on this route.
    #[serde(default)]
    pub deny: Vec<S::Of<Cidr>>,
    #[serde(default)]
    pub timeouts: RouteTimeouts,
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub request_headers: HeaderOps,
    #[serde(default)]
    pub response_headers: HeaderOps,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    /// Per-route override of `edge.security_headers`.
    #[serde(default)]
    pub security_headers: Option<bool>,
}

/// `requests` per `per` (a fixed window), counted per `key`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: u64,
    pub per: Dur,
    /// `client_ip | api_key | header:NAME`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Extra requests allowed in a window on top of `requests`.
    #[serde(default)]
    pub burst: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`) or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default = "d::cors_methods")]
    pub allow_methods: Vec<MethodName>,
    /// Request headers a page may send; empty = whatever the preflight asks for.
    #[serde(default)]
    pub allow_headers: Vec<HeaderKey>,
    #[serde(default)]
    pub expose_headers: Vec<HeaderKey>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub max_age: Option<Dur>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct AuthConfig<S: Stage = Checked> {
    #[serde(default)]
    pub api_keys: Vec<ApiKey<S>>,
}

/// A client key: plain, `${VAR}` or `sha256:<hex>`, optionally named and limited to models.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct ScopedKey<S: Stage = Checked> {
    pub key: S::Of<Secret>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub host: Vec<HostPattern>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<MethodName>,
    #[serde(default)]
    pub headers: BTreeMap<HeaderKey, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "d::respond_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<HeaderKey, HeaderText>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, Default)]
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

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<HeaderKey, HeaderText>,
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
