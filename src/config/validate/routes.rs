//! The rules for `routes:`: names, targets, matchers and the policies of each route.

use super::{Read, Validator};
use crate::config::stage::Lenient;
use crate::config::values::RateLimitKey;
use crate::config::{ApiKey, AuthConfig, CorsConfig, RateLimitConfig, RouteConfig, RouteMatch};
use std::collections::HashSet;

const NEEDS_STORE: &str =
    "a shared limit is counted in Redis: set store.redis (it is never silently local)";
const NEEDS_OPENAI: &str =
    "token budgets count the usage that OpenAI-compatible backends report: set openai: true";

impl Validator {
    pub(super) fn routes(&mut self, c: &Read) {
        let mut names = HashSet::new();
        for (i, r) in c.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            if r.name.is_empty() {
                self.err(format!("{p}.name"), "must not be empty");
            } else if !names.insert(r.name.as_str()) {
                self.err(
                    format!("{p}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            match (&r.pool, &r.respond) {
                (Some(_), Some(_)) => self.err(&p, "give either pool or respond, not both"),
                (None, None) => self.err(&p, "give a pool to forward to or a respond answer"),
                (Some(pool), None) => match c.pools.get(pool) {
                    None => self.err(format!("{p}.pool"), format!("no pool named {pool:?}")),
                    Some(pc) if pc.backends.is_empty() => self.err(
                        format!("{p}.pool"),
                        format!("pool {pool:?} has no backends"),
                    ),
                    Some(_) => {}
                },
                (None, Some(resp)) => {
                    if !(100..=599).contains(&resp.status) {
                        self.err(format!("{p}.respond.status"), "not an HTTP status");
                    }
                }
            }
            self.route_match(&format!("{p}.match"), &r.matcher);
            if let Some(auth) = &r.auth {
                self.auth(&format!("{p}.auth"), auth);
            }
            if let Some(rl) = &r.rate_limit {
                self.rate_limit(&format!("{p}.rate_limit"), rl);
                if rl.shared && c.store.redis.is_none() {
                    self.err(format!("{p}.rate_limit.shared"), NEEDS_STORE);
                }
                if rl.key == RateLimitKey::ApiKey && r.auth.is_none() {
                    self.err(
                        format!("{p}.rate_limit.key"),
                        "api_key counts the keys that pass the route's auth: add auth, or count by client_ip",
                    );
                }
            }
            self.token_limits(&p, r, c.store.redis.is_some());
            self.models(&format!("{p}.openai"), r.openai.models());
            if r.respond.is_some() {
                self.respond_only(&p, r);
            }
            if let Some(cors) = &r.cors {
                self.cors(&format!("{p}.cors"), cors);
            }
            self.cidrs(&format!("{p}.allow"), &r.allow);
            self.cidrs(&format!("{p}.deny"), &r.deny);
            if let Some(s) = &r.strip_prefix {
                if !s.starts_with('/') {
                    self.err(format!("{p}.strip_prefix"), "must start with /");
                }
            }
            if r.max_body.0 == 0 {
                self.err(format!("{p}.max_body"), "must be more than 0");
            }
            if r.timeouts.read.is_some_and(|d| d.get().is_zero()) {
                self.err(format!("{p}.timeouts.read"), "must be more than 0");
            }
            if r.timeouts.total.is_some_and(|d| d.get().is_zero()) {
                self.err(format!("{p}.timeouts.total"), "must be more than 0");
            }
        }
    }

    /// A `respond` route answers by itself: options about a backend would be accepted and do
    /// nothing, so they are refused.
    fn respond_only(&mut self, p: &str, r: &RouteConfig<Lenient>) {
        let ignored = [
            ("openai", r.openai.is_on()),
            ("retry_on", r.retry_on_set()),
            ("strip_prefix", r.strip_prefix.is_some()),
            ("request_headers", !r.request_headers.is_empty()),
            ("timeouts.read", r.timeouts.read.is_some()),
            ("timeouts.total", r.timeouts.total.is_some()),
            ("priority", r.priority.is_some()),
            ("token_limit", r.token_limit.is_some()),
            (
                "timeouts.websocket_idle",
                r.timeouts.websocket_idle.is_some(),
            ),
        ];
        for (key, set) in ignored {
            if set {
                self.err(
                    format!("{p}.{key}"),
                    "has no effect on a respond route (nothing is sent to a backend)",
                );
            }
        }
    }

    fn rate_limit(&mut self, p: &str, rl: &RateLimitConfig) {
        if rl.requests == 0 {
            self.err(format!("{p}.requests"), "must be at least 1");
        }
        if rl.per.get() < std::time::Duration::from_secs(1) {
            self.err(format!("{p}.per"), "must be at least 1s");
        }
    }

    /// Token budgets count the usage OpenAI-compatible backends report, so they need
    /// `openai: true`; an `api_key` count needs the route's keys.
    fn token_limits(&mut self, p: &str, r: &RouteConfig<Lenient>, has_store: bool) {
        let keys = r.auth.iter().flat_map(|a| a.api_keys.iter());
        for (i, k) in keys.enumerate() {
            let ApiKey::Scoped(k) = k else { continue };
            if k.shared && !has_store {
                self.err(format!("{p}.auth.api_keys[{i}].shared"), NEEDS_STORE);
            }
            for (name, v) in [
                ("tokens_per_minute", k.tokens_per_minute),
                ("tokens_per_day", k.tokens_per_day),
            ] {
                let at = format!("{p}.auth.api_keys[{i}].{name}");
                match v {
                    Some(0) => self.err(at, "must be at least 1"),
                    Some(_) if !r.openai.is_on() => self.err(at, NEEDS_OPENAI),
                    _ => {}
                }
            }
        }
        let Some(tl) = &r.token_limit else { return };
        let at = format!("{p}.token_limit");
        if tl.shared && !has_store {
            self.err(format!("{at}.shared"), NEEDS_STORE);
        }
        if tl.tokens == 0 {
            self.err(format!("{at}.tokens"), "must be at least 1");
        }
        if tl.per.get() < std::time::Duration::from_secs(1) {
            self.err(format!("{at}.per"), "must be at least 1s");
        }
        if tl.key == RateLimitKey::ApiKey && r.auth.is_none() {
            self.err(
                format!("{at}.key"),
                "api_key counts the keys that pass the route's auth: add auth, or count by client_ip",
            );
        }
        if !r.openai.is_on() && r.respond.is_none() {
            self.err(at, NEEDS_OPENAI);
        }
    }

    /// Aliases and fallback chains name real models, and a chain never comes back to its start.
    fn models(&mut self, p: &str, m: &crate::config::OpenAiModels) {
        for (from, to) in &m.aliases {
            if from.trim().is_empty() || to.trim().is_empty() {
                self.err(format!("{p}.aliases"), "model names must not be empty");
            }
        }
        for (first, chain) in &m.fallbacks {
            let at = format!("{p}.fallbacks.{first}");
            if chain.is_empty() {
                self.err(&at, "list at least one model to fall back to");
            }
            let mut seen = HashSet::from([first.as_str()]);
            for model in chain {
                if model.trim().is_empty() || !seen.insert(model.as_str()) {
                    self.err(&at, format!("{model:?} is empty or already in the chain"));
                }
            }
        }
    }

    fn cors(&mut self, p: &str, cors: &CorsConfig) {
        if cors.allow_origins.is_empty() {
            self.err(
                format!("{p}.allow_origins"),
                "list at least one origin (or *)",
            );
        }
        for (i, o) in cors.allow_origins.iter().enumerate() {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/'));
            if !ok {
                self.err(
                    format!("{p}.allow_origins[{i}]"),
                    "write scheme://host[:port] (no path) or *",
                );
            }
        }
        if cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
            self.err(
                format!("{p}.allow_credentials"),
                "browsers refuse credentials with origin *",
            );
        }
    }

    fn auth(&mut self, p: &str, auth: &AuthConfig<Lenient>) {
        if auth.api_keys.is_empty() {
            self.err(
                format!("{p}.api_keys"),
                "list at least one key (or remove auth)",
            );
        }
        for (i, k) in auth.api_keys.iter().enumerate() {
            self.secret(
                format!("{p}.api_keys[{i}]"),
                k.secret(),
                16,
                " (or sha256:<hex> of a key)",
            );
        }
    }

    fn route_match(&mut self, p: &str, m: &RouteMatch) {
        if let Some(prefix) = &m.path_prefix {
            if !prefix.starts_with('/') {
                self.err(format!("{p}.path_prefix"), "must start with /");
            }
        }
    }
}
