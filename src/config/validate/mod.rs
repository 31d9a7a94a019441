//! Semantic checks that serde cannot express. Every problem is collected, none stops the walk.

use super::stage::{Lenient, Parsed, Text};
use super::types::*;
use super::values::{Cidr, HashOn};
use super::Problem;
use super::{is_acme_domain, AcmeChallenge, AcmeConfig};
use super::{EdgeConfig, QueueConfig, Secret, TlsVersion};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// The config as read, whose rejected values are reported here with the rest.
type Read = Config<Lenient>;

pub(super) fn validate(c: &Read) -> Vec<Problem> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    v.config(c);
    v.problems
}

/// The largest backend weight. The balancers hold one slot per unit of weight (160 ring
/// points each for consistent hashing), so an unbounded weight is an unbounded allocation.
pub(super) const MAX_WEIGHT: usize = 256;
/// The most requests one pool's queue holds (each waiting request holds its body).
const MAX_QUEUE: usize = 10_000;

mod routes;

struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.problems.push(Problem::new(path, msg));
    }

    fn unsupported(&mut self, path: &str, value: &Unsupported, issue: &str) {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            self.err(path, format!("not supported yet ({issue})"));
        }
    }

    /// The value, or `None` after reporting why its text was rejected.
    fn parsed<'a, T: Text>(&mut self, path: impl Into<String>, v: &'a Parsed<T>) -> Option<&'a T> {
        match v {
            Parsed::Ok(v) => Some(v),
            Parsed::Rejected { error, .. } => {
                self.err(path, error.clone());
                None
            }
        }
    }

    fn cidrs(&mut self, path: &str, list: &[Parsed<Cidr>]) {
        for (i, c) in list.iter().enumerate() {
            self.parsed(format!("{path}[{i}]"), c);
        }
    }

    /// A key clients present: rejected text, or a plain key shorter than `min` characters.
    fn secret(&mut self, path: String, key: &Parsed<Secret>, min: usize, hint: &str) {
        if let Some(n) = self.parsed(path.clone(), key).and_then(Secret::plain_chars) {
            if n < min {
                self.err(
                    path,
                    format!("too short: use at least {min} characters{hint}"),
                );
            }
        }
    }

    fn config(&mut self, c: &Read) {
        if c.version != 1 {
            self.err("version", "only version 1 is known");
        }
        if c.server.threads == 0 {
            self.err("server.threads", "must be at least 1");
        }
        self.admin(&c.admin);
        self.listeners(c);
        for (name, pool) in &c.pools {
            self.pool(name, pool);
        }
        self.routes(c);
        self.edge(&c.edge);
        if let Some(r) = &c.store.redis {
            self.redis(r);
        }
    }

    /// A Redis URL the client accepts, a timeout a request can afford, a node count.
    fn redis(&mut self, r: &super::RedisStoreConfig) {
        if !r.url.starts_with("redis://") && !r.url.starts_with("rediss://") {
            self.err("store.redis.url", "must start with redis:// or rediss://");
        } else if let Err(e) = redis::Client::open(r.url.as_str()) {
            self.err("store.redis.url", format!("not a Redis URL: {e}"));
        }
        let t = r.timeout.get();
        if t.is_zero() || t > std::time::Duration::from_secs(10) {
            self.err("store.redis.timeout", "must be between 1ms and 10s");
        }
        if r.nodes == Some(0) {
            self.err("store.redis.nodes", "must be at least 1");
        }
    }

    fn admin(&mut self, a: &AdminSettings<Lenient>) {
        if a.listen.parse::<SocketAddr>().is_err() {
            self.err(
                "admin.listen",
                format!("invalid address {:?}; write ip:port", a.listen),
            );
        }
        if let Some(key) = &a.api_key {
            self.secret(
                "admin.api_key".into(),
                key,
                32,
                " of secret (or sha256:<hex> of one)",
            );
        }
        self.unsupported("admin.tls", &a.tls, "admin TLS comes with the admin API");
    }

    fn listeners(&mut self, c: &Read) {
        let mut names = HashSet::new();
        let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
        if let Ok(a) = c.admin.listen.parse::<SocketAddr>() {
            addrs.insert(a, "admin.listen".into());
        }
        for (i, l) in c.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            if l.name.is_empty() {
                self.err(format!("{p}.name"), "must not be empty");
            } else if !names.insert(l.name.as_str()) {
                self.err(
                    format!("{p}.name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            match l.listen.parse::<SocketAddr>() {
                Err(_) => self.err(
                    format!("{p}.listen"),
                    format!("invalid address {:?}; write ip:port", l.listen),
                ),
                Ok(a) => {
                    if let Some(other) = addrs.insert(a, p.clone()) {
                        self.err(
                            format!("{p}.listen"),
                            format!("{a} is already used by {other}"),
                        );
                    }
                }
            }
            match l.protocol {
                Protocol::Tcp => {
                    if l.tls.is_some() {
                        self.err(format!("{p}.tls"), "a tcp listener cannot terminate TLS");
                    }
                    if l.redirect_to_https.is_some() {
                        self.err(format!("{p}.redirect_to_https"), "only for http listeners");
                    }
                    match l.pool.as_deref().map(|name| (name, c.pools.get(name))) {
                        None => self.err(format!("{p}.pool"), "a tcp listener needs a pool"),
                        Some((name, None)) => {
                            self.err(format!("{p}.pool"), format!("no pool named {name:?}"));
                        }
                        Some((name, Some(pool))) if pool.backends.is_empty() => self.err(
                            format!("{p}.pool"),
                            format!("pool {name:?} has no backends"),
                        ),
                        Some((name, Some(pool)))
                            if pool
                                .hash_on
                                .as_ref()
                                .is_some_and(|h| *h != HashOn::ClientIp) =>
                        {
                            self.err(
                                format!("{p}.pool"),
                                format!("pool {name:?} hashes on a request part; a tcp listener has only the client IP (hash_on: client_ip)"),
                            );
                        }
                        Some(_) => {}
                    }
                }
                Protocol::Http => {
                    for (key, set) in [
                        ("pool", l.pool.is_some()),
                        ("idle", l.idle.is_some()),
                        ("retries", l.retries.is_some()),
                    ] {
                        if set {
                            self.err(format!("{p}.{key}"), "only for protocol: tcp listeners");
                        }
                    }
                }
            }
            self.proxy_protocol(&p, l);
            if l.redirect_to_https == Some(0) {
                self.err(format!("{p}.redirect_to_https"), "must be a port number");
            }
            if let Some(tls) = &l.tls {
                self.listener_tls(&format!("{p}.tls"), tls);
                if let Some(acme) = &tls.acme {
                    self.acme(&format!("{p}.tls.acme"), acme, &c.listeners);
                }
            }
        }
    }

    /// What a CA needs to issue: DNS names, an https directory, and for http-01 a plaintext
    /// listener to answer on.
    fn acme(&mut self, p: &str, acme: &AcmeConfig, listeners: &[ListenerSettings]) {
        if cfg!(not(feature = "rustls")) {
            self.err(p, "ACME needs the rustls build (the default features)");
        }
        if acme.domains.is_empty() {
            self.err(
                format!("{p}.domains"),
                "list the names the certificate is for",
            );
        }
        for (i, d) in acme.domains.iter().enumerate() {
            let holders = listeners
                .iter()
                .filter_map(|l| l.tls.as_ref()?.acme.as_ref())
                .filter(|a| a.domains.contains(d))
                .count();
            if holders > 1 {
                self.err(
                    format!("{p}.domains[{i}]"),
                    format!("{d:?} is in the acme domains of more than one listener; give each name to one listener"),
                );
            }
            if !is_acme_domain(d) {
                self.err(
                    format!("{p}.domains[{i}]"),
                    format!("{d:?} is not a lowercase DNS name (no wildcards or IP addresses)"),
                );
            }
        }
        if !acme.directory.starts_with("https://") {
            self.err(format!("{p}.directory"), "must be an https:// URL");
        }
        if acme
            .email
            .as_deref()
            .is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace))
        {
            self.err(format!("{p}.email"), "must be an email address");
        }
        if acme.renew_before.is_some_and(|r| r.get().is_zero()) {
            self.err(format!("{p}.renew_before"), "must be more than 0");
        }
        let plaintext = listeners
            .iter()
            .any(|l| l.protocol == Protocol::Http && l.tls.is_none());
        if acme.challenge == AcmeChallenge::Http01 && !plaintext {
            self.err(
                format!("{p}.challenge"),
                "http-01 is answered on a plaintext HTTP listener (port 80 for a public CA); add one (redirect_to_https is fine) or use tls-alpn-01",
            );
        }
    }

    /// `proxy_protocol` needs somebody to trust; `send_proxy_protocol` is for tunnels only
    /// (an HTTP listener's backends get the client in `X-Forwarded-For`).
    fn proxy_protocol(&mut self, p: &str, l: &ListenerSettings) {
        if let Some(pp) = &l.proxy_protocol {
            let path = format!("{p}.proxy_protocol.trusted");
            if pp.trusted.is_empty() {
                self.err(
                    &path,
                    "list the balancers that send the header; with none every connection is closed",
                );
            }
        }
        if l.send_proxy_protocol.is_some() && l.protocol != Protocol::Tcp {
            self.err(
                format!("{p}.send_proxy_protocol"),
                "only for protocol: tcp listeners",
            );
        }
    }

    fn listener_tls(&mut self, p: &str, tls: &ListenerTls) {
        if tls.min_version == TlsVersion::V1_3 {
            self.err(
                format!("{p}.min_version"),
                "\"1.3\" is not supported yet; TLS 1.2 and 1.3 are served",
            );
        }
        if tls.certificates.is_empty() && tls.self_signed.is_empty() && tls.acme.is_none() {
            self.err(
                p,
                "give certificates: [{cert, key}], self_signed: [names] or acme: {domains}",
            );
        }
        for (i, name) in tls.self_signed.iter().enumerate() {
            if name.trim().is_empty() {
                self.err(format!("{p}.self_signed[{i}]"), "must not be empty");
            }
        }
    }

    /// A queue waits for a `max_inflight` slot, so at least one backend must have a limit.
    fn queue(&mut self, p: &str, q: &QueueConfig, pool: &PoolConfig<Lenient>) {
        if q.max == 0 {
            self.err(format!("{p}.max"), "must be at least 1");
        } else if q.max > MAX_QUEUE {
            self.err(format!("{p}.max"), format!("must be at most {MAX_QUEUE}"));
        }
        if q.timeout.get().is_zero() {
            self.err(format!("{p}.timeout"), "must be more than 0");
        }
        if pool.backends.iter().all(|b| b.max_inflight.is_none()) {
            self.err(
                p,
                "a queue waits for a free max_inflight slot: set max_inflight on the backends",
            );
        }
    }

    /// `least_load` reads `load`, `load` is only read by `least_load`, and `affinity`
    /// replaces the key of `consistent_hash`.
    fn placement(&mut self, p: &str, pool: &PoolConfig<Lenient>) {
        match (pool.balance, &pool.load) {
            (Balance::LeastLoad, None) => self.err(
                format!("{p}.load"),
                "least_load reads the engines' metrics: give load: {engine: vllm} (or the metric names)",
            ),
            (Balance::LeastLoad, Some(load)) => {
                let names = load.names();
                if names.queue.is_empty() && names.running.is_empty() {
                    self.err(
                        format!("{p}.load"),
                        "name an engine (vllm, sglang, tgi, llamacpp) or the queue/running metrics",
                    );
                }
                if load.interval.get() < std::time::Duration::from_millis(100) {
                    self.err(format!("{p}.load.interval"), "must be at least 100ms");
                }
                if !load.metrics_path.starts_with('/') {
                    self.err(format!("{p}.load.metrics_path"), "must start with /");
                }
            }
            (_, Some(_)) => self.err(
                format!("{p}.load"),
                "load is read only with balance: least_load",
            ),
            (_, None) => {}
        }
        if let Some(a) = &pool.affinity {
            if pool.balance == Balance::ConsistentHash {
                self.err(
                    format!("{p}.affinity"),
                    "affinity already hashes: use it without balance: consistent_hash",
                );
            }
            if a.prefix_bytes == 0 {
                self.err(format!("{p}.affinity.prefix_bytes"), "must be at least 1");
            }
            if !(a.max_load_factor >= 1.0 && a.max_load_factor.is_finite()) {
                self.err(format!("{p}.affinity.max_load_factor"), "must be 1 or more");
            }
        }
    }

    fn pool(&mut self, name: &str, pool: &PoolConfig<Lenient>) {
        let p = format!("pools.{name}");
        if name.is_empty() {
            self.err("pools", "a pool name must not be empty");
        }
        match (pool.balance, &pool.hash_on) {
            (Balance::ConsistentHash, None) => {
                self.err(format!("{p}.hash_on"), "consistent_hash needs hash_on");
            }
            (Balance::ConsistentHash, Some(_)) => {}
            (_, Some(_)) => self.err(
                format!("{p}.hash_on"),
                "hash_on is used only with balance: consistent_hash",
            ),
            _ => {}
        }
        self.health_check(&format!("{p}.health_check"), &pool.health_check);
        if let Some(q) = &pool.queue {
            self.queue(&format!("{p}.queue"), q, pool);
        }
        self.placement(&p, pool);
        if let Some(ph) = &pool.passive_health {
            if ph.consecutive_failures == 0 {
                self.err(
                    format!("{p}.passive_health.consecutive_failures"),
                    "must be at least 1",
                );
            }
            if ph.eject_for.get().is_zero() {
                self.err(
                    format!("{p}.passive_health.eject_for"),
                    "must be more than 0",
                );
            }
        }
        for (key, d) in [
            ("connect", pool.timeouts.connect),
            ("read", pool.timeouts.read),
            ("write", pool.timeouts.write),
        ] {
            if d.get().is_zero() {
                self.err(format!("{p}.timeouts.{key}"), "must be more than 0");
            }
        }
        if pool.dns_refresh.get().is_zero() {
            self.err(format!("{p}.dns_refresh"), "must be more than 0");
        }
        let tls = pool.tls.settings();
        let mut seen = HashSet::new();
        for (i, b) in pool.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{i}]");
            if let Some(address) = self.parsed(format!("{bp}.address"), &b.address) {
                if !seen.insert(address.as_str()) {
                    self.err(
                        format!("{bp}.address"),
                        format!("duplicate backend {address}"),
                    );
                }
                let is_ip = address.socket_addr().is_some();
                if tls.as_ref().is_some_and(|t| t.verify && t.sni.is_none()) && is_ip {
                    self.err(
                        format!("{p}.tls.sni"),
                        format!(
                            "backend {address} is an IP address: set tls.sni to the name its \
                             certificate carries (an empty SNI would turn certificate \
                             verification off)"
                        ),
                    );
                }
            }
            if b.weight == 0 {
                self.err(
                    format!("{bp}.weight"),
                    "must be at least 1 (use drain: true to stop traffic)",
                );
            } else if b.weight > MAX_WEIGHT {
                self.err(
                    format!("{bp}.weight"),
                    format!("must be at most {MAX_WEIGHT} (weights are relative: scale them down)"),
                );
            }
            if b.max_inflight == Some(0) {
                self.err(format!("{bp}.max_inflight"), "must be at least 1");
            }
            for (j, m) in b.models.iter().enumerate() {
                if m.trim().is_empty() {
                    self.err(format!("{bp}.models[{j}]"), "must not be empty");
                }
            }
            if let Some(k) = &b.api_key {
                self.parsed(format!("{bp}.api_key"), k);
            }
        }
    }

    fn health_check(&mut self, p: &str, h: &HealthCheckConfig) {
        if h.kind == CheckKind::None {
            return;
        }
        if h.interval.get().is_zero() {
            self.err(format!("{p}.interval"), "must be more than 0");
        }
        if h.timeout.get().is_zero() {
            self.err(format!("{p}.timeout"), "must be more than 0");
        }
        if h.healthy_after == 0 {
            self.err(format!("{p}.healthy_after"), "must be at least 1");
        }
        if h.unhealthy_after == 0 {
            self.err(format!("{p}.unhealthy_after"), "must be at least 1");
        }
        if h.kind == CheckKind::Http {
            if !h.path.starts_with('/') {
                self.err(format!("{p}.path"), "must start with /");
            }
            if h.expect.is_empty() {
                self.err(format!("{p}.expect"), "list at least one status");
            }
            for (i, s) in h.expect.iter().enumerate() {
                if !(100..=599).contains(s) {
                    self.err(
                        format!("{p}.expect[{i}]"),
                        format!("{s} is not an HTTP status"),
                    );
                }
            }
        }
    }

    fn edge(&mut self, e: &EdgeConfig<Lenient>) {
        self.cidrs("edge.trusted_proxies", &e.trusted_proxies);
        self.cidrs("edge.allow", &e.allow);
        self.cidrs("edge.deny", &e.deny);
        if e.header_timeout.get().is_zero() {
            self.err("edge.header_timeout", "must be more than 0");
        }
        if e.body_timeout.get().is_zero() {
            self.err("edge.body_timeout", "must be more than 0");
        }
        if e.access_log.format != "json" {
            self.err("edge.access_log.format", "only json is known");
        }
    }
}
