//! Every Prometheus metric switchyard exports, registered in the default registry
//! that `pingora_prometheus` re-exports. Label values come from the config only.

use pingora_prometheus::prometheus::{
    self, register_gauge, register_gauge_vec, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Encoder, Gauge, GaugeVec,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, TextEncoder,
};
use std::sync::LazyLock;

macro_rules! metric {
    ($name:ident: $ty:ty = $reg:ident!($($arg:tt)*)) => {
        pub static $name: LazyLock<$ty> =
            LazyLock::new(|| $reg!($($arg)*).expect("metric names are unique and valid"));
    };
}

metric!(REQUESTS: IntCounterVec = register_int_counter_vec!(
    "switchyard_requests_total", "Requests answered, by route, pool and status code.",
    &["route", "pool", "code"]));
metric!(REQUEST_DURATION: HistogramVec = register_histogram_vec!(
    "switchyard_request_duration_seconds", "Time from request head to the end of the answer.",
    &["route"],
    vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]));
metric!(CONNECT_FAILURES: IntCounterVec = register_int_counter_vec!(
    "switchyard_upstream_connect_failures_total", "Failed connection attempts to a backend.",
    &["pool", "backend"]));
metric!(RETRIES: IntCounterVec = register_int_counter_vec!(
    "switchyard_retries_total", "Requests sent again to another backend.", &["route"]));
metric!(RATE_LIMITED: IntCounterVec = register_int_counter_vec!(
    "switchyard_rate_limited_total", "Requests refused with 429 by a route's rate limit.",
    &["route"]));
metric!(STORE_UP: IntGauge = register_int_gauge!(
    "switchyard_store_up", "1 while store.redis answers shared-limit decisions, else 0."));
metric!(STORE_ERRORS: IntCounter = register_int_counter!(
    "switchyard_store_errors_total",
    "Shared-limit decisions that store.redis did not answer in time (on_error decided)."));
metric!(SLOW_BODIES: IntCounterVec = register_int_counter_vec!(
    "switchyard_request_body_too_slow_total",
    "Requests answered 408 because the body came slower than edge.min_body_rate.",
    &["route"]));
metric!(TCP_CONNECTIONS: IntCounterVec = register_int_counter_vec!(
    "switchyard_tcp_connections_total", "Connections tunnelled by TCP listeners.", &["listener"]));
metric!(TCP_BYTES: IntCounterVec = register_int_counter_vec!(
    "switchyard_tcp_bytes_total", "Bytes tunnelled by TCP listeners, by direction.",
    &["listener", "direction"]));
metric!(PROXY_PROTOCOL_REJECTED: IntCounterVec = register_int_counter_vec!(
    "switchyard_proxy_protocol_rejected_total",
    "Connections closed before their PROXY protocol header was accepted, by listener and reason (untrusted, missing, malformed, timeout).",
    &["listener", "reason"]));
metric!(BACKEND_HEALTHY: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_backend_healthy", "1 while the backend passes its health checks.",
    &["pool", "backend"]));
metric!(BACKEND_EJECTED: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_backend_ejected", "1 while passive health keeps the backend out.",
    &["pool", "backend"]));
metric!(OPENAI_TOKENS: IntCounterVec = register_int_counter_vec!(
    "switchyard_openai_tokens_total", "Tokens reported in the usage of OpenAI answers.",
    &["model", "kind"]));
metric!(OPENAI_TTFT: HistogramVec = register_histogram_vec!(
    "switchyard_openai_time_to_first_token_seconds",
    "Time from the request to the first byte of the answer's body, OpenAI routes.",
    &["model"],
    vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0]));
metric!(CONFIG_RELOADS: IntCounterVec = register_int_counter_vec!(
    "switchyard_config_reloads_total", "Config loads, by what started them and how they ended.",
    &["source", "result"]));
metric!(LAST_RELOAD_OK: Gauge = register_gauge!(
    "switchyard_config_last_reload_success_timestamp_seconds",
    "Unix time of the last config load that was applied."));
metric!(DOWNSTREAM_CONNECTIONS: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_downstream_connections", "Open client connections, by listener.", &["listener"]));
metric!(TLS_EXPIRY: GaugeVec = register_gauge_vec!(
    "switchyard_tls_certificate_expiry_timestamp_seconds",
    "Unix time when a listener's certificate expires.", &["listener", "name"]));
metric!(ACME_ORDERS: IntCounterVec = register_int_counter_vec!(
    "switchyard_acme_orders_total",
    "Certificate orders to an ACME CA that ended, by result (ok, error).", &["result"]));
metric!(LOG_LINES_DROPPED: IntCounter = register_int_counter!(
    "switchyard_log_lines_dropped_total",
    "Log lines (access, audit, diagnostics) dropped because stdout or stderr did not keep up."));

metric!(QUEUE_DEPTH: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_queue_depth", "Requests waiting for a free max_inflight slot, by pool and priority.",
    &["pool", "priority"]));
metric!(QUEUE_WAIT: HistogramVec = register_histogram_vec!(
    "switchyard_queue_wait_seconds", "Time requests waited in a pool's queue (every way it ended).",
    &["pool"],
    vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]));
metric!(QUEUE_REJECTED: IntCounterVec = register_int_counter_vec!(
    "switchyard_queue_rejected_total",
    "Requests that left a pool's queue without a slot: full, timeout, gone (client left), closed (pool or queue removed).",
    &["pool", "reason"]));
metric!(TOKENS_BUDGET_REMAINING: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_tokens_budget_remaining",
    "Tokens a named client key may still use in its tightest budget (negative: over, until it refills).",
    &["key"]));
metric!(TOKEN_LIMITED: IntCounterVec = register_int_counter_vec!(
    "switchyard_token_limited_total", "Requests refused with 429 because a token budget was spent.",
    &["route"]));

metric!(BACKEND_LOAD_READABLE: IntGaugeVec = register_int_gauge_vec!(
    "switchyard_backend_load_readable",
    "1 while least_load reads the backend's own metrics; 0: balanced on its in-flight count.",
    &["pool", "backend"]));
metric!(OPENAI_FALLBACKS: IntCounterVec = register_int_counter_vec!(
    "switchyard_openai_fallbacks_total",
    "Requests sent to a fallback model because no backend could take the requested one.",
    &["route", "from", "to"]));

/// The reasons of `switchyard_queue_rejected_total`.
pub const QUEUE_REJECT_REASONS: [&str; 4] = ["full", "timeout", "gone", "closed"];

pub const RELOAD_SOURCES: &[&str] = &["startup", "file", "signal", "admin"];

/// Status codes whose `requests_total` handle a route keeps, so the common case costs no
/// label lookup.
const CACHED_CODES: [u16; 10] = [200, 201, 204, 206, 304, 400, 404, 429, 502, 503];

/// A route's metric handles, resolved once when the snapshot is built.
pub struct RouteMetrics {
    route: String,
    pool: String,
    duration: pingora_prometheus::prometheus::Histogram,
    codes: [std::sync::OnceLock<pingora_prometheus::prometheus::IntCounter>; CACHED_CODES.len()],
}

impl RouteMetrics {
    pub fn new(route: &str, pool: Option<&str>) -> Self {
        RETRIES.with_label_values(&[route]);
        SLOW_BODIES.with_label_values(&[route]);
        RATE_LIMITED.with_label_values(&[route]);
        RouteMetrics {
            route: route.to_string(),
            pool: pool.unwrap_or("none").to_string(),
            duration: REQUEST_DURATION.with_label_values(&[route]),
            codes: Default::default(),
        }
    }

    /// One answered request.
    pub fn observe(&self, code: u16, seconds: f64) {
        self.duration.observe(seconds);
        match CACHED_CODES.iter().position(|c| *c == code) {
            Some(i) => self.codes[i].get_or_init(|| self.counter(code)).inc(),
            None => self.counter(code).inc(),
        }
    }

    fn counter(&self, code: u16) -> pingora_prometheus::prometheus::IntCounter {
        let mut buf = itoa::Buffer::new();
        REQUESTS.with_label_values(&[self.route.as_str(), self.pool.as_str(), buf.format(code)])
    }
}

/// Creates the series that must exist before anything happens.
pub fn init() {
    for source in RELOAD_SOURCES {
        for result in ["ok", "error"] {
            CONFIG_RELOADS.with_label_values(&[source, result]);
        }
    }
    LazyLock::force(&LAST_RELOAD_OK);
    LazyLock::force(&LOG_LINES_DROPPED);
}

pub fn reload(source: &str, ok: bool) {
    CONFIG_RELOADS
        .with_label_values(&[source, if ok { "ok" } else { "error" }])
        .inc();
    if ok {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        LAST_RELOAD_OK.set(now);
    }
}

pub fn set_backend_ejected(pool: &str, backend: &str, ejected: bool) {
    BACKEND_EJECTED
        .with_label_values(&[pool, backend])
        .set(ejected as i64);
}

pub fn set_backend_healthy(pool: &str, backend: &str, healthy: bool) {
    BACKEND_HEALTHY
        .with_label_values(&[pool, backend])
        .set(healthy as i64);
}

pub fn observe_certificate(listener: &str, names: &[String], not_after: i64) {
    let name = names.first().map(String::as_str).unwrap_or("");
    TLS_EXPIRY
        .with_label_values(&[listener, name])
        .set(not_after as f64);
}

/// The text exposition of every registered metric.
pub fn encode() -> Vec<u8> {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut buf) {
        log::error!("cannot encode metrics: {e}");
    }
    buf
}
