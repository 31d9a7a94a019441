//! The `edge:` section: the global policies.

use super::stage::{Checked, Stage};
use super::types::d;
use super::units::Dur;
use super::values::Cidr;
use super::values::LogField;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The global policies, applied to every request before routing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct EdgeConfig<S: Stage = Checked> {
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<S::Of<Cidr>>,
    /// Only clients in these networks are served (empty = everyone).
    #[serde(default)]
    pub allow: Vec<S::Of<Cidr>>,
    /// Clients in these networks are refused (403), even when `allow` lists them.
    #[serde(default)]
    pub deny: Vec<S::Of<Cidr>>,
    /// Add `X-Content-Type-Options`, `X-Frame-Options`, `Referrer-Policy` (and HSTS on TLS) unless the backend set them.
    #[serde(default = "d::yes")]
    pub security_headers: bool,
    /// The access log.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// A client must send its whole request head within this (slowloris).
    #[serde(default = "d::header_timeout")]
    pub header_timeout: Dur,
    /// Idle client keep-alive connections are closed after this.
    #[serde(default = "d::keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// A request body must arrive whole within this, counted from the end of its head.
    #[serde(default = "d::body_timeout")]
    pub body_timeout: Dur,
    /// Repeated slashes in a path are merged into one before routing.
    #[serde(default = "d::yes")]
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and a raw `\` in a path: refused (400) or kept as they are.
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// A request body slower than this, after its grace period, is answered 408.
    #[serde(default)]
    pub min_body_rate: MinBodyRate,
}

/// What an encoded slash or backslash in a request path gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Keep,
}

/// The least rate a request body may arrive at once its grace period is over (Kestrel's
/// `MinRequestBodyDataRate`): a trickle is cut, a slow real upload survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MinBodyRate {
    /// 0 turns the check off.
    #[serde(default = "d::min_body_bytes_per_second")]
    pub bytes_per_second: u64,
    /// Counted from the request head; the rate is checked once it is over.
    #[serde(default = "d::min_body_grace")]
    pub grace: Dur,
}

impl Default for MinBodyRate {
    fn default() -> Self {
        MinBodyRate {
            bytes_per_second: d::min_body_bytes_per_second(),
            grace: d::min_body_grace(),
        }
    }
}

impl<S: Stage> Default for EdgeConfig<S> {
    fn default() -> Self {
        EdgeConfig {
            trusted_proxies: Vec::new(),
            allow: Vec::new(),
            deny: Vec::new(),
            security_headers: true,
            access_log: AccessLogConfig::default(),
            header_timeout: d::header_timeout(),
            keepalive_timeout: d::keepalive_timeout(),
            body_timeout: d::body_timeout(),
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::default(),
            min_body_rate: MinBodyRate::default(),
        }
    }
}

/// The access log: one JSON line per request on stdout.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write the access log.
    #[serde(default = "d::yes")]
    pub enabled: bool,
    /// `json`, the only format.
    #[serde(default = "d::log_format")]
    pub format: String,
    /// Only these fields in each line (empty = all of them).
    #[serde(default)]
    pub fields: Vec<LogField>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            format: d::log_format(),
            fields: Vec::new(),
        }
    }
}
