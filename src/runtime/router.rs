//! Routes compiled for matching: first match wins, and matching allocates nothing.

use super::policy::auth::ClientKey;
use super::policy::cors::Cors;
use super::policy::rate_limit::Limiter;
use super::pool::Pool;
use super::snapshot::nets;
use crate::config::{HeaderKey, HeaderOps, HeaderText, HostPattern, RetryOn, RouteConfig};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The parts of a request that routes match on.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port; any case.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// What a matched route does with the request.
pub enum Target {
    Pool(Arc<Pool>),
    Respond {
        status: u16,
        body: bytes::Bytes,
        headers: Vec<(HeaderName, HeaderValue)>,
    },
}

/// Header edits, parsed once.
#[derive(Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    fn compile(ops: &HeaderOps) -> Self {
        HeaderEdits {
            set: header_pairs(&ops.set),
            remove: ops.remove.iter().map(|n| n.0.clone()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

fn header_pairs(map: &BTreeMap<HeaderKey, HeaderText>) -> Vec<(HeaderName, HeaderValue)> {
    map.iter()
        .map(|(n, v)| (n.0.clone(), v.0.clone()))
        .collect()
}

pub struct Route {
    pub name: String,
    pub config: RouteConfig,
    /// Client keys; `None` when the route has no `auth`.
    pub keys: Option<Vec<ClientKey>>,
    /// Backend statuses that send a replayable request to another backend.
    pub retry_statuses: Vec<u16>,
    /// Every model the route's pool names in its config (bounded metric labels).
    pub models: HashSet<String>,
    /// Shared with the previous snapshot's route of the same name and limit, so counters
    /// survive reloads.
    pub rate: Option<Arc<Limiter>>,
    pub cors: Option<Cors>,
    pub metrics: crate::metrics::RouteMetrics,
    pub target: Target,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    hosts: Vec<HostPattern>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, String)>,
    query: Vec<(String, String)>,
}

impl Route {
    pub fn compile(
        config: &RouteConfig,
        pools: &BTreeMap<String, Arc<Pool>>,
        previous: Option<&Route>,
    ) -> Option<Route> {
        let target = match (&config.pool, &config.respond) {
            (Some(p), _) => Target::Pool(pools.get(p)?.clone()),
            (None, Some(r)) => Target::Respond {
                status: r.status,
                body: bytes::Bytes::from(r.body.clone()),
                headers: header_pairs(&r.headers),
            },
            (None, None) => return None,
        };
        let m = &config.matcher;
        let models = match &target {
            Target::Pool(p) => p
                .config
                .backends
                .iter()
                .flat_map(|b| b.models.iter().cloned())
                .collect(),
            Target::Respond { .. } => HashSet::new(),
        };
        Some(Route {
            name: config.name.clone(),
            keys: config
                .auth
                .as_ref()
                .map(|a| a.api_keys.iter().map(ClientKey::compile).collect()),
            retry_statuses: config
                .retry_on
                .iter()
                .filter_map(|r| match r {
                    RetryOn::Status(s) => Some(*s),
                    RetryOn::ConnectError => None,
                })
                .collect(),
            models,
            rate: config.rate_limit.as_ref().map(|rl| {
                previous
                    .and_then(|p| p.rate.clone())
                    .filter(|l| l.config == *rl)
                    .unwrap_or_else(|| Arc::new(Limiter::new(rl)))
            }),
            cors: config.cors.as_ref().map(Cors::new),
            metrics: crate::metrics::RouteMetrics::new(&config.name, config.pool.as_deref()),
            target,
            allow: nets(&config.allow),
            deny: nets(&config.deny),
            request_headers: HeaderEdits::compile(&config.request_headers),
            response_headers: HeaderEdits::compile(&config.response_headers),
            hosts: m.host.clone(),
            path_prefix: m.path_prefix.clone(),
            methods: m.methods.iter().map(|x| x.0.clone()).collect(),
            headers: m
                .headers
                .iter()
                .map(|(n, v)| (n.0.clone(), v.clone()))
                .collect(),
            query: m
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config: config.clone(),
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(req.method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| under_prefix(req.path, p))
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| h.matches(req.host)))
            && self.headers.iter().all(|(name, want)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .any(|v| v.as_bytes().eq_ignore_ascii_case(want.as_bytes()))
            })
            && self.query.iter().all(|(k, v)| query_has(req.query, k, v))
    }

    /// The metric label for a model: its name when configured, else `other`.
    pub fn model_label<'a>(&self, model: Option<&'a str>) -> &'a str {
        match model {
            Some(m) if self.models.contains(m) => m,
            _ => "other",
        }
    }

    pub fn pool(&self) -> Option<&Arc<Pool>> {
        match &self.target {
            Target::Pool(p) => Some(p),
            Target::Respond { .. } => None,
        }
    }
}

/// Whether `path` is `prefix` or lies under it, segment by segment: `/api` covers `/api`,
/// `/api/` and `/api/x`, never `/apiv2`. A prefix ending in `/` covers what starts with it.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn query_has(query: Option<&str>, key: &str, value: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| match pair.split_once('=') {
            Some((k, v)) => k == key && v == value,
            None => pair == key && value.is_empty(),
        })
    })
}

/// The routes in config order, indexed so that a lookup checks only the routes that could
/// match: by exact host, then by the whole path segments of `path_prefix`. Each index list is
/// in config order, and the lowest-numbered match over all visited lists wins, so the answer
/// is always the one a linear scan in config order gives.
#[derive(Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    by_host: HashMap<String, PathTrie>,
    /// Routes without a host matcher, or with a `*.` wildcard among their hosts.
    any_host: PathTrie,
}

/// Route numbers placed at the node of their prefix's complete segments: `/api/v1/` sits at
/// `api` → `v1`, `/api/v` and `/` at the root.
#[derive(Default)]
struct PathTrie {
    here: Vec<usize>,
    children: HashMap<String, PathTrie>,
}

impl PathTrie {
    fn insert(&mut self, prefix: Option<&str>, route: usize) {
        let mut node = self;
        for segment in complete_segments(prefix.unwrap_or("")) {
            node = node.children.entry(segment.to_string()).or_default();
        }
        node.here.push(route);
    }

    /// The lowest-numbered route along `path`'s segments that `matches` accepts.
    fn first_match(&self, path: &str, matches: impl Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut node = Some(self);
        let mut segments = complete_segments(path);
        while let Some(n) = node {
            let limit = best.unwrap_or(usize::MAX);
            if let Some(&i) = n
                .here
                .iter()
                .take_while(|&&i| i < limit)
                .find(|&&i| matches(i))
            {
                best = Some(i);
            }
            node = segments.next().and_then(|s| n.children.get(s));
        }
        best
    }
}

/// The segments of a path that a `/` closes: `/a/b/c` gives `a`, `b`.
fn complete_segments(path: &str) -> impl Iterator<Item = &str> {
    let body = path.strip_prefix('/').unwrap_or("");
    let closed = body.rfind('/').map_or("", |end| &body[..end]);
    closed.split('/').filter(|_| !closed.is_empty())
}

impl Router {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let mut by_host: HashMap<String, PathTrie> = HashMap::new();
        let mut any_host = PathTrie::default();
        for (i, r) in routes.iter().enumerate() {
            let prefix = r.path_prefix.as_deref();
            let exact: Option<Vec<&str>> = r
                .hosts
                .iter()
                .map(|h| match h {
                    HostPattern::Exact(h) => Some(h.as_str()),
                    HostPattern::Suffix(_) => None,
                })
                .collect();
            match exact {
                Some(hosts) if !hosts.is_empty() => {
                    for h in hosts {
                        by_host.entry(h.to_string()).or_default().insert(prefix, i);
                    }
                }
                _ => any_host.insert(prefix, i),
            }
        }
        Router {
            routes,
            by_host,
            any_host,
        }
    }

    /// The first route in config order that matches the request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        let matches = |i: usize| self.routes[i].matches(req);
        let host: Cow<'_, str> = if req.host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(req.host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(req.host)
        };
        let by_host = self
            .by_host
            .get(host.as_ref())
            .and_then(|t| t.first_match(req.path, matches));
        let any = self.any_host.first_match(req.path, matches);
        let best = match (by_host, any) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        self.routes.get(best)
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index answers exactly what a scan in config order answers.
    #[test]
    fn index_agrees_with_a_linear_scan() {
        let yaml = r#"
- {name: a, match: {host: [api.example.com], path_prefix: /v1/chat/}, respond: {status: 200}}
- {name: b, match: {path_prefix: /v1/}, respond: {status: 200}}
- {name: c, match: {host: ["*.example.com"], path_prefix: /v1/chat/x}, respond: {status: 200}}
- {name: d, match: {host: [api.example.com, other.example.com]}, respond: {status: 200}}
- {name: e, match: {path_prefix: /v1/chat/completions, methods: [POST]}, respond: {status: 200}}
- {name: f, match: {path_prefix: /v}, respond: {status: 200}}
- {name: g, match: {host: [api.example.com], path_prefix: /}, respond: {status: 200}}
- {name: h, match: {}, respond: {status: 200}}
"#;
        let configs: Vec<RouteConfig> = serde_yaml::from_str(yaml).expect("routes");
        let routes: Vec<Arc<Route>> = configs
            .iter()
            .map(|c| Arc::new(Route::compile(c, &BTreeMap::new(), None).expect("route")))
            .collect();
        let router = Router::new(routes.clone());
        let headers = HeaderMap::new();
        for host in [
            "api.example.com",
            "API.Example.com",
            "x.example.com",
            "other.example.com",
            "none",
        ] {
            for path in [
                "/",
                "/v",
                "/v1",
                "/v1/",
                "/v1/chat/",
                "/v1/chat/x",
                "/v1/chat/completions",
                "/w/x/y",
            ] {
                for method in [Method::GET, Method::POST] {
                    let view = RequestView {
                        method: &method,
                        host,
                        path,
                        query: None,
                        headers: &headers,
                    };
                    let linear = routes
                        .iter()
                        .find(|r| r.matches(&view))
                        .map(|r| r.name.clone());
                    let indexed = router.find(&view).map(|r| r.name.clone());
                    assert_eq!(indexed, linear, "{method} {host}{path}");
                }
            }
        }
    }

    #[test]
    fn segments_closed_by_a_slash() {
        fn all(p: &str) -> Vec<&str> {
            complete_segments(p).collect()
        }
        assert_eq!(all("/api/v1/"), ["api", "v1"]);
        assert_eq!(all("/api/v1"), ["api"]);
        assert!(all("/api").is_empty());
        assert!(all("/").is_empty());
        assert!(all("").is_empty());
    }

    #[test]
    fn whole_segment_prefixes() {
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/", "/api"));
        assert!(under_prefix("/api/x", "/api"));
        assert!(!under_prefix("/apiv2", "/api"));
        assert!(under_prefix("/v1/x", "/v1/"));
        assert!(!under_prefix("/v1", "/v1/"));
        assert!(under_prefix("/anything", "/"));
    }

    #[test]
    fn query_pairs() {
        assert!(query_has(Some("a=1&kernel=de441"), "kernel", "de441"));
        assert!(!query_has(Some("kernel=de440"), "kernel", "de441"));
        assert!(!query_has(None, "kernel", "de441"));
    }
}
