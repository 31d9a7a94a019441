//! The `ProxyHttp` implementation: where a request goes, hook by hook.
//!
//! `request_filter` decides (id, client IP, ACL, route, local answers, body limit);
//! `upstream_peer` picks a healthy backend not tried yet; the header filters add what the
//! upstream and the client should see; `logging` writes the access log and metrics.

pub mod access_log;
pub mod filters;
mod gateway;
pub mod head_deadline;
pub mod openai;
pub mod redirect;
mod respond;

use crate::metrics;
use crate::runtime::pool::NoBackend;
use crate::runtime::pool::{InflightGuard, Member};
use crate::runtime::router::{RequestView, Route, Target};
use crate::runtime::snapshot::EdgePolicy;
use crate::runtime::{HashOn, Snapshot, State};
use async_trait::async_trait;
use bytes::Bytes;
use filters::auth::{self, ClientKey};
use filters::body::{self, Declared, Held, Replay};
use filters::cors::Cors;
use filters::path::{self, BadPath};
use filters::{acl, client_ip, headers, request_id};
use head_deadline::HeadGuard;
use openai::UsageScanner;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use respond::{text, Local};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which listener a proxy instance serves.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub tls: bool,
}

pub struct Edge {
    pub state: Arc<State>,
    pub listener: Listener,
}

/// Per-request state. The snapshot is loaded once and kept for the whole request.
pub struct Ctx {
    started: Instant,
    snapshot: Option<Arc<Snapshot>>,
    route: Option<Arc<Route>>,
    request_id: String,
    client_ip: Option<IpAddr>,
    peer_ip: Option<IpAddr>,
    host: String,
    deadline: Option<Instant>,
    tries: u32,
    tried: Vec<SocketAddr>,
    backend: Option<Member>,
    inflight: Option<InflightGuard>,
    held: Option<Held>,
    /// A body read before choosing the backend, replayed in full to it.
    replay: Option<Replay>,
    response_started: bool,
    upgrade: bool,
    openai: bool,
    model: Option<String>,
    key: Option<ClientKey>,
    /// A backend status that `retry_on` turned into another attempt.
    retrying_status: Option<u16>,
    /// Every backend was at `max_inflight`: answer 503 with `Retry-After`.
    all_full: bool,
    usage: Option<UsageScanner>,
    first_byte: bool,
    /// The request's `Origin`, when the route's CORS allows it.
    cors_origin: Option<http::HeaderValue>,
    /// When the request body must be complete (`edge.body_timeout`).
    body_deadline: Option<Instant>,
    /// When the last attempt was handed to a backend, and how long its answer head took.
    upstream_started: Option<Instant>,
    upstream_ms: Option<f64>,
}

impl Ctx {
    fn pool_name(&self) -> Option<&str> {
        self.route.as_ref()?.pool().map(|p| p.name.as_str())
    }

    fn security(&self, tls: bool) -> Option<bool> {
        let on = match (&self.route, &self.snapshot) {
            (Some(r), Some(s)) => r.config.security_headers.unwrap_or(s.edge.security_headers),
            (None, Some(s)) => s.edge.security_headers,
            _ => true,
        };
        on.then_some(tls)
    }

    /// `edge.min_body_rate`, counted from the end of the request head.
    fn pace(&self) -> body::Pace {
        let rate = self
            .snapshot
            .as_ref()
            .map(|s| s.edge.min_body_rate)
            .unwrap_or_default();
        body::Pace::new(self.started, rate.bytes_per_second, rate.grace.get())
    }
}

/// Keeps the connection for the next request for `edge.keepalive_timeout`, when the client
/// asked for that: HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`, closes
/// after the answer (Pingora's own setter keeps an HTTP/1.0 connection open).
fn keep_alive(session: &mut Session, snap: &Snapshot) {
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(snap.edge.keepalive_timeout.as_secs().max(1)));
    }
}

/// Puts the normalised path into the request target (the query untouched), so that routing,
/// every policy, the access log and the backend see the same path. A target kept verbatim
/// by Pingora (absolute-form, not UTF-8) is rewritten too: the backend gets what was checked.
fn normalize_target(req: &mut RequestHeader, edge: &EdgePolicy) -> std::result::Result<(), BadPath> {
    let rules = path::Rules {
        merge_slashes: edge.merge_slashes,
        escaped_slashes: edge.escaped_slashes,
    };
    let normal = path::normalize(req.uri.path(), rules)?;
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    if matches!(normal, std::borrow::Cow::Borrowed(_)) && from_uri == Some(req.raw_path()) {
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

impl Edge {
    async fn local(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        status: u16,
        body: Bytes,
        keepalive: bool,
    ) -> Result<bool> {
        self.local_with(session, ctx, status, body, keepalive, None, &[])
            .await
    }

    /// A local answer; on OpenAI routes errors are `{"error":{"message","type","code"}}`.
    #[allow(clippy::too_many_arguments)]
    async fn local_with(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        status: u16,
        body: Bytes,
        keepalive: bool,
        code: Option<&str>,
        extra: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<bool> {
        let (body, content_type) = if ctx.openai && status >= 400 {
            let message = String::from_utf8_lossy(&body);
            let message = message
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim();
            (
                openai::error_body(status, message, code),
                "application/json",
            )
        } else {
            (body, "text/plain; charset=utf-8")
        };
        let mut extra = extra.to_vec();
        if let (Some(origin), Some(cors)) = (
            &ctx.cors_origin,
            ctx.route.as_ref().and_then(|r| r.cors.as_ref()),
        ) {
            if status != 204 {
                extra.extend(cors.response_headers(origin));
            }
        }
        Local {
            status,
            body,
            content_type,
            request_id: &ctx.request_id,
            extra: &extra,
            security: ctx.security(self.listener.tls),
            edits: ctx.route.as_ref().map(|r| &r.response_headers),
            keepalive,
        }
        .send(session)
        .await?;
        Ok(true)
    }

    /// The policies of the matched route, in order, for proxied and `respond` routes alike:
    /// allow/deny, CORS preflight, auth, rate limit, the declared body size. `Some(done)` when
    /// one of them answered.
    async fn route_policies(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<Option<bool>> {
        if !acl::permits(ctx.client_ip, &route.allow, &route.deny) {
            let msg = text(403, "forbidden");
            return self.local(session, ctx, 403, msg, true).await.map(Some);
        }
        if let Some(cors) = &route.cors {
            let headers = &session.req_header().headers;
            if Cors::is_preflight(&session.req_header().method, headers) {
                let answered = match cors.allowed_origin(headers) {
                    Some(origin) => {
                        let extra = cors.preflight_headers(origin, headers);
                        self.local_with(session, ctx, 204, Bytes::new(), true, None, &extra)
                            .await
                    }
                    None => {
                        let msg = text(403, "origin not allowed");
                        self.local(session, ctx, 403, msg, true).await
                    }
                };
                return answered.map(Some);
            }
            ctx.cors_origin = cors.allowed_origin(headers).cloned();
        }
        if let Some(keys) = &route.keys {
            match auth::check(&session.req_header().headers, keys) {
                Some(k) => ctx.key = Some(k.clone()),
                None => {
                    let www = [(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer"),
                    )];
                    let msg = Bytes::from("Incorrect or missing API key.");
                    return self
                        .local_with(session, ctx, 401, msg, true, None, &www)
                        .await
                        .map(Some);
                }
            }
        }
        if let Some(limiter) = &route.rate {
            let headers = &session.req_header().headers;
            if let Err(limited) = limiter.check(ctx.client_ip, headers, ctx.key.as_ref()) {
                metrics::RATE_LIMITED
                    .with_label_values(&[route.name.as_str()])
                    .inc();
                let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let extra = [(http::header::RETRY_AFTER, http::HeaderValue::from(secs))];
                let msg = text(429, "too many requests");
                return self
                    .local_with(session, ctx, 429, msg, true, None, &extra)
                    .await
                    .map(Some);
            }
        }
        let limit = route.config.max_body.0;
        if let Declared::Over(_) = self.declared_body(session, limit) {
            return self.refuse_body(session, ctx, limit).await.map(Some);
        }
        Ok(None)
    }

    fn declared_body(&self, session: &Session, limit: u64) -> Declared {
        let cl = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH);
        body::declared(cl.map(|v| v.as_bytes()), limit)
    }

    /// Answers 408 to a body slower than `edge.min_body_rate` and closes the connection.
    async fn refuse_slow_body(&self, session: &mut Session, ctx: &Ctx) -> Result<bool> {
        if let Some(route) = &ctx.route {
            metrics::SLOW_BODIES
                .with_label_values(&[route.name.as_str()])
                .inc();
        }
        let msg = text(408, "request body too slow");
        self.local(session, ctx, 408, msg, false).await
    }

    /// Answers 413, then reads (and drops) a bounded part of the body so that a client still
    /// sending it sees the answer instead of a reset.
    async fn refuse_body(&self, session: &mut Session, ctx: &Ctx, limit: u64) -> Result<bool> {
        self.local(session, ctx, 413, text(413, "request body too large"), true)
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

fn host_of(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether the request's body can be sent once more: none, pre-read, or still in Pingora's
/// retry buffer.
fn body_replayable(session: &Session, ctx: &Ctx) -> bool {
    ctx.replay.is_some() || (ctx.held.is_none() && !session.as_ref().retry_buffer_truncated())
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The bytes a `consistent_hash` pool hashes for this request.
fn hash_key<'a>(
    how: &HashOn,
    req: &'a RequestHeader,
    client: &'a Option<IpAddr>,
    buf: &'a mut [u8; 16],
) -> &'a [u8] {
    match how {
        HashOn::ClientIp => match client {
            Some(IpAddr::V4(v4)) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            Some(IpAddr::V6(v6)) => {
                *buf = v6.octets();
                &buf[..]
            }
            None => b"",
        },
        HashOn::Header(name) => req.headers.get(name).map(|v| v.as_bytes()).unwrap_or(b""),
        HashOn::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_bytes())
            .unwrap_or(b""),
        HashOn::Query(name) => req
            .uri
            .query()
            .and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_bytes())
            })
            .unwrap_or(b""),
    }
}

fn status_for(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
        | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => 502,
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => 504,
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            snapshot: None,
            route: None,
            request_id: String::new(),
            client_ip: None,
            peer_ip: None,
            host: String::new(),
            deadline: None,
            tries: 0,
            tried: Vec::new(),
            backend: None,
            inflight: None,
            held: None,
            replay: None,
            response_started: false,
            upgrade: false,
            openai: false,
            model: None,
            key: None,
            retrying_status: None,
            all_full: false,
            usage: None,
            first_byte: false,
            cors_origin: None,
            body_deadline: None,
            upstream_started: None,
            upstream_ms: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        if let Some(guard) = session.as_downstream().stream().and_then(HeadGuard::of) {
            guard.disarm();
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snap = self.state.snapshot();
        ctx.snapshot = Some(snap.clone());
        if crate::runtime::draining() {
            session.set_keepalive(None);
        } else {
            keep_alive(session, &snap);
        }
        let req = session.req_header();
        ctx.request_id = request_id::pick(&req.headers);
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical());
        ctx.client_ip = client_ip::resolve(ctx.peer_ip, &req.headers, &snap.edge.trusted_proxies);
        ctx.host = host_of(req).to_string();
        ctx.body_deadline = Some(ctx.started + snap.edge.body_timeout);

        if let Err(why) = normalize_target(session.req_header_mut(), &snap.edge) {
            let msg = Bytes::from(format!("400 bad path: {why}\n"));
            return self.local(session, ctx, 400, msg, false).await;
        }
        if !acl::permits(ctx.client_ip, &snap.edge.allow, &snap.edge.deny) {
            return self
                .local(session, ctx, 403, text(403, "forbidden"), true)
                .await;
        }
        let req = session.req_header();
        if !session.is_http2() && req.version == http::Version::HTTP_11 && ctx.host.is_empty() {
            return self
                .local(session, ctx, 400, text(400, "missing Host header"), false)
                .await;
        }
        let view = RequestView {
            method: &req.method,
            host: &ctx.host,
            path: req.uri.path(),
            query: req.uri.query(),
            headers: &req.headers,
        };
        let Some(route) = snap.router.find(&view).cloned() else {
            return self
                .local(session, ctx, 404, text(404, "no route"), true)
                .await;
        };
        ctx.route = Some(route.clone());
        ctx.openai = route.config.openai;
        if let Some(done) = self.route_policies(session, ctx, &route).await? {
            return Ok(done);
        }
        if let Target::Respond {
            status,
            body,
            headers,
        } = &route.target
        {
            return self
                .local_with(session, ctx, *status, body.clone(), true, None, headers)
                .await;
        }
        if ctx.openai {
            if let Some(done) = self.openai_request(session, ctx, &route).await? {
                return Ok(done);
            }
        }
        let limit = route.config.max_body.0;
        if ctx.replay.is_none()
            && !session.is_body_empty()
            && matches!(self.declared_body(session, limit), Declared::Unknown)
        {
            ctx.held = Some(Held::new(limit));
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
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::explain(InternalError, "no route in context"))?;
        let pool = route
            .pool()
            .ok_or_else(|| Error::explain(InternalError, "route has no pool"))?;
        let mut buf = [0u8; 16];
        let key = match &pool.hash_on {
            Some(how) => hash_key(how, session.req_header(), &ctx.client_ip, &mut buf),
            None => b"",
        };
        let tried = &ctx.tried;
        let (member, slot) =
            match pool.select_reserved(key, ctx.model.as_deref(), |a| !tried.contains(a)) {
                Ok(chosen) => chosen,
                Err(why) => {
                    if let Some(status) = ctx.retrying_status {
                        let msg = format!("pool {}: the last backend answered {status}", pool.name);
                        return Error::e_explain(HTTPStatus(status), msg);
                    }
                    if !ctx.tried.is_empty() {
                        let msg = format!("pool {}: every attempt failed", pool.name);
                        return Error::e_explain(HTTPStatus(502), msg);
                    }
                    ctx.all_full = why == NoBackend::AllFull;
                    let msg = match why {
                        NoBackend::AllFull => {
                            format!("pool {}: every backend is at max_inflight", pool.name)
                        }
                        NoBackend::Unavailable => format!("pool {}: no healthy backend", pool.name),
                    };
                    return Error::e_explain(HTTPStatus(503), msg);
                }
            };
        ctx.retrying_status = None;
        if ctx.tries > 0 {
            metrics::RETRIES
                .with_label_values(&[route.name.as_str()])
                .inc();
        }
        ctx.tries += 1;
        let read = if ctx.upgrade {
            route.config.timeouts.websocket_idle.map(|d| d.get())
        } else {
            None
        }
        .or(route.config.timeouts.read.map(|d| d.get()))
        .unwrap_or(pool.config.timeouts.read.get());
        let read = match ctx.deadline {
            Some(d) => read.min(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ),
            None => read,
        };
        let peer = pool.peer(&member, read);
        ctx.inflight = Some(slot);
        ctx.upstream_started = Some(Instant::now());
        ctx.backend = Some(member);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(m), Some(pool)) = (&ctx.backend, ctx.route.as_ref().and_then(|r| r.pool())) {
            metrics::CONNECT_FAILURES
                .with_label_values(&[pool.name.as_str(), &m.addr.to_string()])
                .inc();
            pool.record_outcome(m, true);
            ctx.tried.push(m.addr);
        }
        let retries = ctx.route.as_ref().map(|r| r.config.retries).unwrap_or(0);
        // Nothing reached the backend, so another one may always be tried.
        e.set_retry(ctx.tries <= retries);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(m) = &ctx.backend {
            ctx.tried.push(m.addr);
        }
        if ctx.retrying_status.is_some() {
            // `upstream_response_filter` already decided: another backend gets it.
            e.set_retry(true);
            return e;
        }
        let retries = ctx.route.as_ref().map(|r| r.config.retries).unwrap_or(0);
        // The request reached the backend: replay it only if that cannot do harm twice.
        let replayable =
            is_idempotent(&session.req_header().method) && body_replayable(session, ctx);
        e.set_retry(
            replayable
                && e.esource() == &ErrorSource::Upstream
                && !ctx.response_started
                && ctx.tries <= retries,
        );
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if let Some(prefix) = &route.config.strip_prefix {
            headers::strip_prefix(req, prefix)?;
        }
        let trusted = ctx.snapshot.as_ref().is_some_and(|s| {
            ctx.peer_ip
                .is_some_and(|ip| client_ip::is_trusted(ip, &s.edge.trusted_proxies))
        });
        headers::forwarded(
            req,
            &headers::Forwarded {
                client_ip: ctx.client_ip,
                peer_trusted: trusted,
                peer_ip: ctx.peer_ip,
                host: &ctx.host,
                tls: self.listener.tls,
            },
        )?;
        req.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        if route.keys.is_some() {
            // The client's key is for switchyard; it never goes upstream.
            req.remove_header(&http::header::AUTHORIZATION);
            req.remove_header("x-api-key");
        }
        if let Some(value) = ctx
            .backend
            .as_ref()
            .and_then(|m| m.meta.authorization.clone())
        {
            req.insert_header(http::header::AUTHORIZATION, value)?;
        }
        headers::edit_request(req, &route.request_headers)?;
        let _ = session;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(replay) = &ctx.replay {
            replay.apply(body, end_of_stream);
            return Ok(());
        }
        if !ctx.upgrade && !end_of_stream {
            let now = Instant::now();
            if ctx.body_deadline.is_some_and(|d| now > d) {
                return Error::e_explain(
                    HTTPStatus(408),
                    "edge.body_timeout: the body came too slowly",
                );
            }
            if ctx.pace().too_slow(session.body_bytes_read() as u64, now) {
                if let Some(route) = &ctx.route {
                    metrics::SLOW_BODIES
                        .with_label_values(&[route.name.as_str()])
                        .inc();
                }
                return Error::e_explain(HTTPStatus(408), "edge.min_body_rate: the body is too slow");
            }
        }
        if let Some(held) = ctx.held.as_mut() {
            match held.push(body.take(), end_of_stream) {
                Ok(out) => *body = out,
                Err(total) => {
                    return Error::e_explain(
                        HTTPStatus(413),
                        format!("request body over max_body ({total} bytes so far)"),
                    )
                }
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_ms = ctx
            .upstream_started
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        let (Some(route), Some(member)) = (ctx.route.clone(), ctx.backend.clone()) else {
            return Ok(());
        };
        let Some(pool) = route.pool() else {
            return Ok(());
        };
        pool.record_outcome(&member, status >= 500);
        // retry_on: another backend, if the request can be sent again and one is left.
        let wants_retry = route.retry_statuses.contains(&status)
            && ctx.tries <= route.config.retries
            && body_replayable(session, ctx);
        if wants_retry {
            let mut tried = ctx.tried.clone();
            tried.push(member.addr);
            let model = ctx.model.as_deref();
            if pool.select(b"", model, |a| !tried.contains(a)).is_ok() {
                ctx.retrying_status = Some(status);
                metrics::RETRIES
                    .with_label_values(&[route.name.as_str()])
                    .inc();
                return Error::e_explain(HTTPStatus(status), "retry_on: trying another backend");
            }
        }
        if ctx.openai {
            let ct = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            ctx.usage = UsageScanner::for_content_type(ct);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.response_started = true;
        resp.insert_header(request_id::HEADER, ctx.request_id.as_str())?;
        if let Some(tls) = ctx.security(self.listener.tls) {
            headers::security(resp, tls)?;
        }
        if let Some(route) = &ctx.route {
            if let (Some(origin), Some(cors)) = (&ctx.cors_origin, &route.cors) {
                for (name, value) in cors.response_headers(origin) {
                    if name == http::header::VARY {
                        headers::add_vary(resp, &value)?;
                    } else {
                        resp.insert_header(name, value)?;
                    }
                }
            }
            headers::edit_response(resp, &route.response_headers)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(HTTPStatus(504), "route timeouts.total passed");
        }
        if ctx.openai {
            self.observe_openai(body.as_deref(), end_of_stream, ctx);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let code = status_for(e);
        if code == 0 || ctx.response_started || session.response_written().is_some() {
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let reason = match code {
            413 => "request body too large",
            503 if ctx.all_full => "every backend is busy, retry later",
            503 => "no healthy backend",
            504 => "upstream timed out",
            408 => "request body too slow",
            502 => "bad gateway",
            _ if ctx.retrying_status == Some(code) => "every backend answered an error",
            _ => "error",
        };
        // After a 413 the rest of the body is drained (bounded) so the client can read it.
        let keepalive = code == 413;
        if keepalive {
            session.set_total_drain_timeout(Some(body::DRAIN_TIME));
        }
        let retry_after = [(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        )];
        let extra: &[_] = if ctx.all_full { &retry_after } else { &[] };
        let sent = self
            .local_with(
                session,
                ctx,
                code,
                text(code, reason),
                keepalive,
                None,
                extra,
            )
            .await;
        if let Err(err) = sent {
            log::debug!("cannot send the error answer: {err}");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: keepalive,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(guard) = session.as_downstream().stream().and_then(HeadGuard::of) {
            guard.rearm();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx.route.as_ref().map(|r| r.name.as_str());
        let pool = ctx.pool_name();
        let elapsed = ctx.started.elapsed();
        match &ctx.route {
            Some(r) => r.metrics.observe(status, elapsed.as_secs_f64()),
            None => {
                let mut code = itoa::Buffer::new();
                metrics::REQUESTS
                    .with_label_values(&["none", "none", code.format(status)])
                    .inc();
            }
        }
        let log_on = ctx.snapshot.as_ref().is_none_or(|s| s.edge.access_log);
        if !log_on {
            return;
        }
        let req = session.req_header();
        let line = access_log::Line {
            time: access_log::now_rfc3339(),
            request_id: &ctx.request_id,
            listener: &self.listener.name,
            client_ip: ctx.client_ip.map(|ip| ip.to_string()),
            method: req.method.as_str(),
            host: &ctx.host,
            path: req.uri.path(),
            route,
            pool,
            backend: ctx.backend.as_ref().map(|m| m.addr.to_string()),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: ctx.upstream_ms,
            tries: ctx.tries,
            error: e.map(|e| e.etype().as_str().to_string()),
        };
        let fields = ctx
            .snapshot
            .as_ref()
            .map(|s| s.edge.access_log_fields.as_slice());
        access_log::write(&line, fields.unwrap_or_default());
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
    }
}
