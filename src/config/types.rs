//! The YAML file's shape (docs/configuration.md). Unknown fields are errors everywhere.
//!
//! The types that hold a value which must not stop the reading at the first bad one take a
//! [`Stage`] (see `stage.rs`); the runtime sees them as `Checked`, the default.
//!
//! Keys of features that are not built yet are typed as raw YAML values so that they are
//! recognised, and `validate` rejects them with "not supported yet" instead of ignoring them.

use super::edge::EdgeConfig;
use super::route::RouteConfig;
use super::secret::{Bearer, Secret};
use super::stage::{Checked, Stage};
use super::units::{Dur, Size};
use super::values::HashOn;
use super::values::{MethodName, RetryOn, TlsVersion};
use super::HostPort;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Unsupported = Option<serde_yaml::Value>;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct Config<S: Stage = Checked> {
    /// The format version; the file must say it (only 1 is known).
    pub version: u32,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub admin: AdminSettings<S>,
    #[serde(default)]
    pub listeners: Vec<ListenerSettings>,
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig<S>>,
    #[serde(default)]
    pub routes: Vec<RouteConfig<S>>,
    #[serde(default)]
    pub edge: EdgeConfig<S>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    #[serde(default = "d::threads")]
    pub threads: usize,
    #[serde(default = "d::pid_file")]
    pub pid_file: String,
    #[serde(default = "d::upgrade_sock")]
    pub upgrade_sock: String,
    #[serde(default = "d::grace_period")]
    pub grace_period_seconds: u64,
    #[serde(default = "d::graceful_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle upstream connections kept per process for reuse.
    #[serde(default = "d::keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// Let idle worker threads take tasks from busy ones. Off by default: each worker runs
    /// its own connections, like nginx's workers, which measured ~7 % less CPU per request.
    #[serde(default)]
    pub work_stealing: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: d::threads(),
            pid_file: d::pid_file(),
            upgrade_sock: d::upgrade_sock(),
            grace_period_seconds: d::grace_period(),
            graceful_shutdown_timeout_seconds: d::graceful_shutdown_timeout(),
            upstream_keepalive_pool_size: d::keepalive_pool(),
            work_stealing: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct AdminSettings<S: Stage = Checked> {
    #[serde(default = "d::admin_listen")]
    pub listen: String,
    /// The key of the admin API (at least 32 characters), or `sha256:<hex>` of it.
    #[serde(default)]
    pub api_key: Option<S::Of<Secret>>,
    #[serde(default = "d::history")]
    pub history: usize,
    #[serde(default)]
    pub metrics_require_key: bool,
    #[serde(default)]
    pub tls: Unsupported,
}

impl<S: Stage> Default for AdminSettings<S> {
    fn default() -> Self {
        AdminSettings {
            listen: d::admin_listen(),
            api_key: None,
            history: d::history(),
            metrics_require_key: false,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    pub name: String,
    pub listen: String,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 308 to `https://host:PORT/...`.
    #[serde(default)]
    pub redirect_to_https: Option<u16>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub idle: Option<Dur>,
    #[serde(default)]
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    /// Names (DNS or IP) of an in-memory self-signed certificate made at start.
    #[serde(default)]
    pub self_signed: Vec<String>,
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct PoolConfig<S: Stage = Checked> {
    #[serde(default)]
    pub balance: Balance,
    /// `client_ip | header:NAME | cookie:NAME | query:NAME`, for `consistent_hash`.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Eject a backend after consecutive 5xx answers or connect failures.
    #[serde(default)]
    pub passive_health: Option<PassiveHealth>,
    #[serde(default)]
    pub timeouts: PoolTimeouts,
    #[serde(default)]
    pub tls: UpstreamTls,
    #[serde(default = "d::dns_refresh")]
    pub dns_refresh: Dur,
    #[serde(default)]
    pub backends: Vec<BackendConfig<S>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    #[default]
    Tcp,
    None,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(default)]
    pub kind: CheckKind,
    #[serde(default = "d::health_path")]
    pub path: String,
    /// Host header of HTTP checks (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "d::expect")]
    pub expect: Vec<u16>,
    #[serde(default = "d::check_interval")]
    pub interval: Dur,
    #[serde(default = "d::check_timeout")]
    pub timeout: Dur,
    #[serde(default = "d::healthy_after")]
    pub healthy_after: usize,
    #[serde(default = "d::unhealthy_after")]
    pub unhealthy_after: usize,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            path: d::health_path(),
            host: None,
            expect: d::expect(),
            interval: d::check_interval(),
            timeout: d::check_timeout(),
            healthy_after: d::healthy_after(),
            unhealthy_after: d::unhealthy_after(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTimeouts {
    #[serde(default = "d::connect")]
    pub connect: Dur,
    #[serde(default = "d::read")]
    pub read: Dur,
    #[serde(default = "d::write")]
    pub write: Dur,
    /// How long an idle pooled upstream connection stays reusable.
    #[serde(default = "d::idle")]
    pub idle: Dur,
}

impl Default for PoolTimeouts {
    fn default() -> Self {
        PoolTimeouts {
            connect: d::connect(),
            read: d::read(),
            write: d::write(),
            idle: d::idle(),
        }
    }
}

/// `tls: false | true | {sni, verify, ca}` for connections to the backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UpstreamTls {
    Enabled(bool),
    Settings(UpstreamTlsSettings),
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls::Enabled(false)
    }
}

impl UpstreamTls {
    /// The effective settings, or `None` for plaintext.
    pub fn settings(&self) -> Option<UpstreamTlsSettings> {
        match self {
            UpstreamTls::Enabled(false) => None,
            UpstreamTls::Enabled(true) => Some(UpstreamTlsSettings::default()),
            UpstreamTls::Settings(s) => Some(s.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSettings {
    /// Server name sent and verified (default: the backend's host name).
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the backend's certificate against the system's trusted roots.
    #[serde(default = "d::yes")]
    pub verify: bool,
}

impl Default for UpstreamTlsSettings {
    fn default() -> Self {
        UpstreamTlsSettings {
            sni: None,
            verify: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, bound = "")]
pub struct BackendConfig<S: Stage = Checked> {
    /// `ip:port`, `[ipv6]:port` or `host:port` (a name resolved at run time).
    pub address: S::Of<HostPort>,
    #[serde(default = "d::weight")]
    pub weight: usize,
    #[serde(default)]
    pub drain: bool,
    /// Models this backend serves (OpenAI routes); empty = any model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Sent to the backend as `Authorization: Bearer` instead of the client's key.
    #[serde(default)]
    pub api_key: Option<S::Of<Bearer>>,
    /// At most this many requests at once; a full backend is skipped.
    #[serde(default)]
    pub max_inflight: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default = "d::passive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "d::eject_for")]
    pub eject_for: Dur,
}

/// Default values, one function each because serde's `default =` takes a path.
pub(in crate::config) mod d {
    use super::{Dur, Size};

    pub(in crate::config) fn yes() -> bool {
        true
    }
    pub(in crate::config) fn threads() -> usize {
        2
    }
    pub(in crate::config) fn pid_file() -> String {
        "/tmp/switchyard.pid".into()
    }
    pub(in crate::config) fn upgrade_sock() -> String {
        "/tmp/switchyard_upgrade.sock".into()
    }
    pub(in crate::config) fn grace_period() -> u64 {
        10
    }
    pub(in crate::config) fn graceful_shutdown_timeout() -> u64 {
        5
    }
    pub(in crate::config) fn keepalive_pool() -> usize {
        128
    }
    pub(in crate::config) fn admin_listen() -> String {
        "127.0.0.1:9901".into()
    }
    pub(in crate::config) fn history() -> usize {
        20
    }
    pub(in crate::config) fn health_path() -> String {
        "/health".into()
    }
    pub(in crate::config) fn expect() -> Vec<u16> {
        vec![200]
    }
    pub(in crate::config) fn check_interval() -> Dur {
        Dur::secs(5)
    }
    pub(in crate::config) fn check_timeout() -> Dur {
        Dur::secs(2)
    }
    pub(in crate::config) fn healthy_after() -> usize {
        2
    }
    pub(in crate::config) fn unhealthy_after() -> usize {
        3
    }
    pub(in crate::config) fn connect() -> Dur {
        Dur::secs(2)
    }
    pub(in crate::config) fn read() -> Dur {
        Dur::secs(60)
    }
    pub(in crate::config) fn write() -> Dur {
        Dur::secs(60)
    }
    pub(in crate::config) fn idle() -> Dur {
        Dur::secs(90)
    }
    pub(in crate::config) fn dns_refresh() -> Dur {
        Dur::secs(30)
    }
    pub(in crate::config) fn weight() -> usize {
        1
    }
    pub(in crate::config) fn max_body() -> Size {
        Size(1 << 20)
    }
    pub(in crate::config) fn retries() -> u32 {
        2
    }
    pub(in crate::config) fn retry_on() -> Vec<super::RetryOn> {
        vec![super::RetryOn::ConnectError]
    }
    pub(in crate::config) fn cors_methods() -> Vec<super::MethodName> {
        [http::Method::GET, http::Method::HEAD, http::Method::POST]
            .into_iter()
            .map(super::MethodName)
            .collect()
    }
    pub(in crate::config) fn passive_failures() -> u32 {
        5
    }
    pub(in crate::config) fn eject_for() -> Dur {
        Dur::secs(30)
    }
    pub(in crate::config) fn respond_status() -> u16 {
        200
    }
    pub(in crate::config) fn websocket_idle_opt() -> Option<Dur> {
        Some(Dur::secs(3600))
    }
    pub(in crate::config) fn header_timeout() -> Dur {
        Dur::secs(10)
    }
    pub(in crate::config) fn body_timeout() -> Dur {
        Dur::secs(60)
    }
    pub(in crate::config) fn keepalive_timeout() -> Dur {
        Dur::secs(60)
    }
    pub(in crate::config) fn min_body_bytes_per_second() -> u64 {
        240
    }
    pub(in crate::config) fn min_body_grace() -> Dur {
        Dur::secs(5)
    }
    pub(in crate::config) fn log_format() -> String {
        "json".into()
    }
}
