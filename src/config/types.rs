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
use super::values::{Cidr, HashOn};
use super::values::{MethodName, RetryOn, TlsVersion};
use super::HostPort;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Unsupported = Option<serde_yaml::Value>;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct Config<S: Stage = Checked> {
    /// The format version; the file must say it (only 1 is known).
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// Process settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminSettings<S>,
    /// The listening sockets.
    #[serde(default)]
    pub listeners: Vec<ListenerSettings>,
    /// Upstream pools, by name.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig<S>>,
    /// Routes, in match order: the first match wins, no match → 404.
    #[serde(default)]
    pub routes: Vec<RouteConfig<S>>,
    /// Global policies.
    #[serde(default)]
    pub edge: EdgeConfig<S>,
    /// Where shared limits are counted.
    #[serde(default)]
    pub store: super::StoreConfig,
}

/// Process settings (Pingora's `ServerConf`); a change applies in a new process (SIGHUP upgrade).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Worker threads per listener service: the cores the proxy may use.
    #[serde(default = "d::threads")]
    pub threads: usize,
    /// Written in daemon mode (`-d`).
    #[serde(default = "d::pid_file")]
    pub pid_file: String,
    /// The socket of the listener handover for `-u` upgrades.
    #[serde(default = "d::upgrade_sock")]
    pub upgrade_sock: String,
    /// After SIGTERM/SIGQUIT, how long requests in flight may finish.
    #[serde(default = "d::grace_period")]
    pub grace_period_seconds: u64,
    /// Then how long the runtimes get to stop.
    #[serde(default = "d::graceful_shutdown_timeout")]
    pub graceful_shutdown_timeout_seconds: u64,
    /// Idle upstream connections kept per process for reuse.
    #[serde(default = "d::keepalive_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// Let idle worker threads take tasks from busy ones. Off by default: each worker runs
    /// its own connections, like nginx's workers, which measured ~7 % less CPU per request.
    #[serde(default)]
    pub work_stealing: bool,
    /// The process log on stderr (not the access log): `text` lines, or `json` lines for
    /// journald and log shippers. `--log-format` wins over it.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Where ACME account keys and certificates are kept (files 0600), across restarts.
    #[serde(default = "d::state_dir")]
    pub state_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
            log_format: LogFormat::Text,
            state_dir: d::state_dir(),
        }
    }
}

/// The admin listener: `/health`, `/metrics`, `/status` and the config API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct AdminSettings<S: Stage = Checked> {
    /// `ip:port` of the admin listener.
    #[serde(default = "d::admin_listen")]
    pub listen: String,
    /// The key of the admin API (at least 32 characters), or `sha256:<hex>` of it.
    #[serde(default)]
    pub api_key: Option<S::Of<Secret>>,
    /// Previous file versions kept for the admin API.
    #[serde(default = "d::history")]
    pub history: usize,
    /// `/metrics` asks for the admin key too.
    #[serde(default)]
    pub metrics_require_key: bool,
    /// Not supported yet: refused when set.
    #[serde(default)]
    #[schemars(with = "()")]
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

/// What a listener serves: `http` (HTTP/1.1, HTTP/2, h2c) or `tcp` (bytes tunnelled to a pool's backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

/// A listening socket; listeners are fixed per process (a change applies through the SIGHUP upgrade).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    /// Unique name, the `listener` label of metrics.
    pub name: String,
    /// `ip:port`, unique across listeners and the admin listener.
    pub listen: String,
    /// `http`, or `tcp` to tunnel bytes to a backend of `pool`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Terminate TLS (http listeners); plaintext listeners also accept h2c.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 308 to `https://host:PORT/...`.
    #[serde(default)]
    pub redirect_to_https: Option<u16>,
    /// `tcp`: the pool whose backends get the tunnels.
    #[serde(default)]
    pub pool: Option<String>,
    /// `tcp`: a tunnel silent this long in both directions is closed (default 1h).
    #[serde(default)]
    pub idle: Option<Dur>,
    /// `tcp`: further backends tried when a connect fails (default 2).
    #[serde(default)]
    pub retries: Option<u32>,
    /// Read a PROXY protocol header (v1 or v2) before anything else on each connection; its
    /// client address becomes the client's for policies, logs and forwarded headers.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolSettings>,
    /// `protocol: tcp` only: open every backend connection with a PROXY header of this
    /// version, carrying the client's address.
    #[serde(default)]
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolSettings {
    /// The balancers allowed to send the header (CIDRs); a connection from anywhere else
    /// is closed before a byte is read.
    pub trusted: Vec<Cidr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    V1,
    V2,
}

/// TLS on a listener; the certificate is chosen by SNI. ALPN offers h2 then http/1.1.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM files, re-read on every reload.
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    /// Names (DNS or IP) of an in-memory self-signed certificate made at start.
    #[serde(default)]
    pub self_signed: Vec<String>,
    /// The lowest TLS version accepted ("1.2"; "1.3" is not supported yet).
    #[serde(default)]
    pub min_version: TlsVersion,
    /// A certificate from an ACME CA (Let's Encrypt), issued and renewed by the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<super::AcmeConfig>,
}

/// A PEM certificate chain and its key; relative names are taken from the config file's folder.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// The certificate chain (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

/// How a pool picks a backend (weights are honoured).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    ConsistentHash,
    LeastRequests,
    /// The lowest load the engines report (`load`), corrected by what was sent since.
    LeastLoad,
}

/// An upstream pool: its backends, how one is chosen, checked and connected to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct PoolConfig<S: Stage = Checked> {
    /// `round_robin`, `random`, `consistent_hash` (needs `hash_on`) or `least_requests`.
    #[serde(default)]
    pub balance: Balance,
    /// `client_ip | header:NAME | cookie:NAME | query:NAME`, for `consistent_hash`.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Active health checks.
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    /// Eject a backend after consecutive 5xx answers or connect failures.
    #[serde(default)]
    pub passive_health: Option<PassiveHealth>,
    /// Connect, read, write and idle timeouts to the backends.
    #[serde(default)]
    pub timeouts: PoolTimeouts,
    /// TLS to the backends: `false`, `true` or `{sni, verify}`.
    #[serde(default)]
    pub tls: UpstreamTls,
    /// How often backends given as `host:port` are resolved again.
    #[serde(default = "d::dns_refresh")]
    pub dns_refresh: Dur,
    /// The backends; a pool used by a route needs at least one.
    #[serde(default)]
    pub backends: Vec<BackendConfig<S>>,
    /// Wait for a free `max_inflight` slot instead of answering 503 at once.
    #[serde(default)]
    pub queue: Option<super::admission::QueueConfig>,
    /// Where `least_load` reads each backend's own load.
    #[serde(default)]
    pub load: Option<super::placement::LoadConfig>,
    /// Keep requests that share a prompt prefix (or a session header) on one backend.
    #[serde(default)]
    pub affinity: Option<super::placement::AffinityConfig>,
}

/// How backends are checked: `http` (a GET of `path`), `tcp` (a connect) or `none` (every backend counts as healthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    #[default]
    Tcp,
    None,
}

/// Active health checks of the pool's backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// `http`, `tcp` or `none`.
    #[serde(default)]
    pub kind: CheckKind,
    /// The path an `http` check asks for.
    #[serde(default = "d::health_path")]
    pub path: String,
    /// Host header of HTTP checks (default: the backend's address).
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses an `http` check accepts.
    #[serde(default = "d::expect")]
    pub expect: Vec<u16>,
    /// Time between checks.
    #[serde(default = "d::check_interval")]
    pub interval: Dur,
    /// Connect (and answer, for `http`) timeout of a check.
    #[serde(default = "d::check_timeout")]
    pub timeout: Dur,
    /// Consecutive successes that mark a backend up.
    #[serde(default = "d::healthy_after")]
    pub healthy_after: usize,
    /// Consecutive failures that mark a backend down.
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

/// Timeouts of connections to the pool's backends.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolTimeouts {
    /// TCP connect; a TLS handshake gets twice this.
    #[serde(default = "d::connect")]
    pub connect: Dur,
    /// Each read from the backend: time to first byte, and the gap between streamed chunks.
    #[serde(default = "d::read")]
    pub read: Dur,
    /// Each write to the backend.
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

/// `tls: false | true | {sni, verify}` for connections to the backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
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

/// TLS to the backends.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
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

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, bound = "")]
pub struct BackendConfig<S: Stage = Checked> {
    /// `ip:port`, `[ipv6]:port` or `host:port` (a name resolved at run time).
    pub address: S::Of<HostPort>,
    /// Relative weight, 1 to 256.
    #[serde(default = "d::weight")]
    pub weight: usize,
    /// No new requests; requests in flight finish.
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

/// Eject a backend after consecutive 5xx answers or connect failures.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// 5xx answers or connect failures in a row that eject a backend.
    #[serde(default = "d::passive_failures")]
    pub consecutive_failures: u32,
    /// How long an ejected backend gets no requests.
    #[serde(default = "d::eject_for")]
    pub eject_for: Dur,
}

/// Default values, one function each because serde's `default =` takes a path.
pub(in crate::config) mod d {
    use super::{Dur, Size};

    pub(in crate::config) fn yes() -> bool {
        true
    }
    pub(in crate::config) fn state_dir() -> String {
        "/var/lib/switchyard".into()
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
    pub(in crate::config) fn load_interval() -> Dur {
        Dur::secs(1)
    }
    pub(in crate::config) fn metrics_path() -> String {
        "/metrics".into()
    }
    pub(in crate::config) fn prefix_bytes() -> usize {
        2048
    }
    pub(in crate::config) fn max_load_factor() -> f64 {
        1.25
    }
    pub(in crate::config) fn log_format() -> String {
        "json".into()
    }
}
