//! The rules for `routes:`: names, targets, matchers and the policies of each route.

use super::{Read, Validator};
use crate::config::stage::Lenient;
use crate::config::values::RateLimitKey;
use crate::config::{AuthConfig, CorsConfig, RateLimitConfig, RouteConfig, RouteMatch};
use std::collections::HashSet;

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
                if rl.key == RateLimitKey::ApiKey && r.auth.is_none() {
                    self.err(
                        format!("{p}.rate_limit.key"),
                        "api_key counts the keys that pass the route's auth: add auth, or count by client_ip",
                    );
                }
            }
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
            ("openai", r.openai),
            ("retry_on", r.retry_on_set()),
            ("strip_prefix", r.strip_prefix.is_some()),
            ("request_headers", !r.request_headers.is_empty()),
            ("timeouts.read", r.timeouts.read.is_some()),
            ("timeouts.total", r.timeouts.total.is_some()),
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
