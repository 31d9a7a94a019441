//! `request_filter`, step by step: who is asking, the normalised path, the edge's allow/deny,
//! the route, then the route's policies in order (allow/deny, CORS preflight, auth, rate
//! limit, token budgets, body size), for proxied and `respond` routes alike.

use super::answer::Reply;
use super::context::Ctx;
use super::filters::body::{self, Declared, Held};
use super::filters::path::{self, BadPath};
use super::filters::{client_ip, request_id};
use super::limits;
use super::Edge;
use crate::metrics;
use crate::runtime::policy::cors::Cors;
use crate::runtime::policy::rate_limit::Limiter;
use crate::runtime::policy::shared::{Decision, Refused};
use crate::runtime::policy::{acl, auth};
use crate::runtime::router::{RequestView, Route, Target};
use crate::runtime::snapshot::EdgePolicy;
use crate::runtime::Snapshot;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::borrow::Cow;
use std::time::Instant;

impl Edge {
    /// Everything before a backend is chosen; `Ok(true)` when the request was answered here.
    pub(super) async fn admit(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.state.snapshot();
        ctx.snapshot = Some(snap.clone());
        if crate::runtime::draining() {
            session.set_keepalive(None);
        } else {
            keep_alive(session, &snap);
        }
        identify(session, ctx, &snap);
        if let Err(why) = normalize_target(session.req_header_mut(), &snap.edge) {
            let msg = Bytes::from(format!("400 bad path: {why}\n"));
            return self
                .reply(session, ctx, Reply::new(400, msg).closing())
                .await;
        }
        // Before the ACL: the CA's validators come from wherever they like.
        if !self.listener.tls {
            if let Some(answer) = self.state.acme_http01(session.req_header().uri.path()) {
                return self
                    .reply(session, ctx, Reply::new(200, Bytes::from(answer)))
                    .await;
            }
        }
        if !acl::permits(ctx.client.ip, &snap.edge.allow, &snap.edge.deny) {
            return self
                .reply(session, ctx, Reply::text(403, "forbidden"))
                .await;
        }
        let req = session.req_header();
        if !session.is_http2()
            && req.version == http::Version::HTTP_11
            && ctx.client.host.is_empty()
        {
            let missing = Reply::text(400, "missing Host header").closing();
            return self.reply(session, ctx, missing).await;
        }
        let view = RequestView {
            method: &req.method,
            host: &ctx.client.host,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
        };
        let Some(route) = snap.router.find(&view).cloned() else {
            return self.reply(session, ctx, Reply::text(404, "no route")).await;
        };
        ctx.route = Some(route.clone());
        ctx.openai.on = route.config.openai.is_on();
        if let Some(done) = self.route_policies(session, ctx, &route).await? {
            return Ok(done);
        }
        if let Target::Respond {
            status,
            body,
            headers,
        } = &route.target
        {
            let answer = Reply::new(*status, body.clone()).headers(headers);
            return self.reply(session, ctx, answer).await;
        }
        if ctx.openai.on {
            if let Some(done) = self.openai_request(session, ctx, &route).await? {
                return Ok(done);
            }
        }
        prepare_body(session, ctx, &route);
        Ok(false)
    }

    /// The policies of the matched route, in order. `Some(done)` when one of them answered.
    async fn route_policies(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<Option<bool>> {
        if !acl::permits(ctx.client.ip, &route.allow, &route.deny) {
            return self
                .reply(session, ctx, Reply::text(403, "forbidden"))
                .await
                .map(Some);
        }
        if let Some(cors) = &route.cors {
            let headers = &session.req_header().headers;
            if Cors::is_preflight(&session.req_header().method, headers) {
                let answer = match cors.allowed_origin(headers) {
                    Some(origin) => Reply::new(204, Bytes::new())
                        .headers(&cors.preflight_headers(origin, headers)),
                    None => Reply::text(403, "origin not allowed"),
                };
                return self.reply(session, ctx, answer).await.map(Some);
            }
            ctx.client.cors_origin = cors.allowed_origin(headers).cloned();
        }
        if let Some(keys) = &route.keys {
            match auth::check(&session.req_header().headers, keys) {
                Some(k) => ctx.client.key = Some(k.clone()),
                None => {
                    let answer = Reply::new(401, Bytes::from("Incorrect or missing API key."))
                        .header(
                            http::header::WWW_AUTHENTICATE,
                            http::HeaderValue::from_static("Bearer"),
                        );
                    return self.reply(session, ctx, answer).await.map(Some);
                }
            }
        }
        if let Some(limiter) = &route.rate {
            if let Some(refused) = self.count_request(session, ctx, route, limiter).await {
                return self.reply(session, ctx, refused).await.map(Some);
            }
        }
        if let Some(snap) = ctx.snapshot.clone() {
            let headers = &session.req_header().headers;
            if let Some(spent) = limits::check_tokens(ctx, &snap, route, headers).await {
                return self.reply(session, ctx, spent).await.map(Some);
            }
        }
        let limit = route.config.max_body.0;
        if let Declared::Over(_) = declared_body(session, limit) {
            return self.refuse_body(session, ctx, limit).await.map(Some);
        }
        Ok(None)
    }

    /// Counts the request against the route's limit, on this node or, with `shared: true`,
    /// in `store.redis`. The refusal to send when it is over (or the store is down and
    /// `on_error: deny`); the limit's headers are noted either way.
    async fn count_request(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        route: &Route,
        limiter: &Limiter,
    ) -> Option<Reply> {
        let headers = &session.req_header().headers;
        let who = limiter.who(ctx.client.ip, headers, ctx.client.key.as_ref());
        let store = ctx.snapshot.as_ref().and_then(|s| s.store.clone());
        let decision = match store.filter(|_| limiter.config.shared) {
            Some(store) => store.decide(&route.name, limiter, &who).await,
            None => Decision {
                allowed: limiter.allowed,
                result: limiter.check_who(&who).map_err(Refused::Limited),
            },
        };
        match decision.result {
            Ok(left) => {
                limits::note_requests(ctx, decision.allowed, left);
                None
            }
            Err(Refused::Limited(limited)) => {
                metrics::RATE_LIMITED
                    .with_label_values(&[route.name.as_str()])
                    .inc();
                limits::requests_spent(ctx, decision.allowed, limited.retry_after);
                let answer = Reply::text(429, "too many requests").header(
                    http::header::RETRY_AFTER,
                    limits::seconds(limited.retry_after),
                );
                Some(answer)
            }
            Err(Refused::Unavailable) => Some(
                Reply::text(503, "the shared rate limit cannot be checked, retry later")
                    .header(http::header::RETRY_AFTER, http::HeaderValue::from(1u64)),
            ),
        }
    }

    /// Answers 408 to a body slower than `edge.min_body_rate` and closes the connection.
    pub(super) async fn refuse_slow_body(&self, session: &mut Session, ctx: &Ctx) -> Result<bool> {
        count_slow_body(ctx);
        let answer = Reply::text(408, "request body too slow").closing();
        self.reply(session, ctx, answer).await
    }

    /// Answers 413, then reads (and drops) a bounded part of the body so that a client still
    /// sending it sees the answer instead of a reset.
    pub(super) async fn refuse_body(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        limit: u64,
    ) -> Result<bool> {
        self.reply(session, ctx, Reply::text(413, "request body too large"))
            .await?;
        let budget = limit.saturating_mul(2);
        let deadline = Instant::now() + body::DRAIN_TIME;
        let mut drained = 0u64;
        let complete = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, session.read_request_body()).await {
                Ok(Ok(Some(chunk))) => {
                    drained += chunk.len() as u64;
                    if drained > budget {
                        break false;
                    }
                }
                Ok(Ok(None)) => break true,
                _ => break false,
            }
        };
        if !complete {
            session.set_keepalive(None);
        }
        Ok(true)
    }
}

/// Counts a request answered 408 for `edge.min_body_rate`.
pub(super) fn count_slow_body(ctx: &Ctx) {
    if let Some(route) = &ctx.route {
        metrics::SLOW_BODIES
            .with_label_values(&[route.name.as_str()])
            .inc();
    }
}

/// The request id, the client's address (through trusted proxies) and the host.
fn identify(session: &Session, ctx: &mut Ctx, snap: &Snapshot) {
    let req = session.req_header();
    ctx.client.request_id = request_id::pick(&req.headers);
    ctx.client.peer_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical());
    ctx.client.ip =
        client_ip::resolve(ctx.client.peer_ip, &req.headers, &snap.edge.trusted_proxies);
    ctx.client.host = host_of(req).to_string();
    ctx.body.deadline = Some(ctx.started + snap.edge.body_timeout);
}

/// How the body of a proxied request is watched on its way up, and its timeouts.
fn prepare_body(session: &mut Session, ctx: &mut Ctx, route: &Route) {
    let limit = route.config.max_body.0;
    if ctx.body.replay.is_none()
        && !session.is_body_empty()
        && matches!(declared_body(session, limit), Declared::Unknown)
    {
        ctx.body.held = Some(Held::new(limit));
    }
    if session.is_upgrade_req() {
        ctx.upgrade = true;
        if let Some(idle) = route.config.timeouts.websocket_idle {
            session.set_read_timeout(Some(idle.get()));
        }
    } else if let Some(snap) = &ctx.snapshot {
        // A body that stalls is cut after this; one that trickles, at its deadline.
        session.set_read_timeout(Some(snap.edge.body_timeout));
    }
    ctx.deadline = route.config.timeouts.total.map(|t| ctx.started + t.get());
}

fn declared_body(session: &Session, limit: u64) -> Declared {
    body::declared(&session.req_header().headers, limit)
}

/// Keeps the connection for the next request for `edge.keepalive_timeout`, when the client
/// asked for that: HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`, closes
/// after the answer (Pingora's own setter keeps an HTTP/1.0 connection open).
pub(super) fn keep_alive(session: &mut Session, snap: &Snapshot) {
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(snap.edge.keepalive_timeout.as_secs().max(1)));
    }
}

/// Puts the normalised path into the request target (the query untouched), so that routing,
/// every policy, the access log and the backend see the same path. A target kept verbatim
/// by Pingora (absolute-form, not UTF-8) is rewritten too: the backend gets what was checked.
fn normalize_target(
    req: &mut RequestHeader,
    edge: &EdgePolicy,
) -> std::result::Result<(), BadPath> {
    let rules = path::Rules {
        merge_slashes: edge.merge_slashes,
        escaped_slashes: edge.escaped_slashes,
    };
    let normal = path::normalize(req.uri.path(), rules)?;
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    if matches!(normal, Cow::Borrowed(_)) && from_uri == Some(req.raw_path()) {
        return Ok(());
    }
    let mut target = normal.into_owned();
    if let Some(q) = req.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|_| BadPath::BadEscape)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| BadPath::BadEscape)?;
    req.set_uri(uri);
    Ok(())
}

fn host_of(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    // `api.example.com.` is the same name as `api.example.com`: it must meet the same routes.
    let host = strip_port(raw);
    host.strip_suffix('.').unwrap_or(host)
}

pub(super) fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match crate::config::split_host_port(host) {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
        let req = RequestHeader::build("GET", b"/", None).expect("request");
        let mut req = req;
        req.insert_header("host", "API.example.com.:8080")
            .expect("host");
        assert_eq!(host_of(&req), "API.example.com");
    }
}
