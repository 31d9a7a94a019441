//! The `ProxyHttp` implementation: where a request goes, hook by hook.
//!
//! In order: `early_request_filter` stops the head deadline; `request_filter` ([`request`])
//! gives the request its id and client IP, normalises the path, applies the edge's
//! allow/deny, matches the route and applies its policies (allow/deny, CORS preflight, auth,
//! rate limit, body size), answers `respond` routes and, on OpenAI routes ([`gateway`]),
//! reads the body's model; `upstream_peer` ([`upstream`]) picks a healthy backend not tried
//! yet; [`retry`] decides on failures; the header filters add what the upstream and the
//! client should see; `logging` writes the access log and metrics.

pub mod access_log;
mod admission;
mod answer;
pub mod connection;
mod context;
pub mod filters;
mod gateway;
mod limits;
pub mod openai;
pub mod redirect;
mod request;
mod retry;
mod upstream;

use crate::metrics;
use crate::runtime::queue::Refused;
use crate::runtime::State;
use answer::Reply;
use async_trait::async_trait;
use bytes::Bytes;
use connection::HeadGuard;
pub use context::Ctx;
use filters::body;
use filters::{client_ip, headers, request_id};
use openai::UsageScanner;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
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

#[async_trait]
impl ProxyHttp for Edge {
    /// On the heap: Pingora keeps the context inside the request's future, which it builds on
    /// the stack and then moves, twice per request; boxed, the context's 832 bytes are not
    /// copied along (docs/benchmarks.md, "the context on the heap").
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new())
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Box<Ctx>) -> Result<()> {
        if let Some(guard) = session.as_downstream().stream().and_then(HeadGuard::of) {
            guard.disarm();
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        self.admit(session, ctx).await
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        upstream::choose_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(retry::after_connect_failure(ctx));
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let again = retry::after_proxy_error(session, ctx, &e);
        e.set_retry(again);
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if let Some(prefix) = &route.config.strip_prefix {
            headers::strip_prefix(req, prefix)?;
        }
        let trusted = ctx.snapshot.as_ref().is_some_and(|s| {
            ctx.client
                .peer_ip
                .is_some_and(|ip| client_ip::is_trusted(ip, &s.edge.trusted_proxies))
        });
        headers::forwarded(
            req,
            &headers::Forwarded {
                client_ip: ctx.client.ip,
                peer_trusted: trusted,
                peer_ip: ctx.client.peer_ip,
                host: &ctx.client.host,
                tls: self.listener.tls,
            },
        )?;
        req.insert_header(request_id::HEADER, ctx.client.request_id.clone())?;
        if route.keys.is_some() {
            // The client's key is for switchyard; it never goes upstream.
            req.remove_header(&http::header::AUTHORIZATION);
            req.remove_header("x-api-key");
        }
        if let Some(value) = ctx
            .attempt
            .backend
            .as_ref()
            .and_then(|m| m.meta.authorization.clone())
        {
            req.insert_header(http::header::AUTHORIZATION, value)?;
        }
        if let (true, Some(replay)) = (ctx.body.rewritten, &ctx.body.replay) {
            req.remove_header(&http::header::TRANSFER_ENCODING);
            req.insert_header(http::header::CONTENT_LENGTH, replay.0.len().to_string())?;
        }
        headers::edit_request(req, &route.request_headers)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        if let Some(replay) = &ctx.body.replay {
            replay.apply(body, end_of_stream);
            return Ok(());
        }
        if !ctx.upgrade && !end_of_stream {
            let now = Instant::now();
            if ctx.body.deadline.is_some_and(|d| now > d) {
                return Error::e_explain(
                    HTTPStatus(408),
                    "edge.body_timeout: the body came too slowly",
                );
            }
            if ctx.pace().too_slow(session.body_bytes_read() as u64, now) {
                request::count_slow_body(ctx);
                return Error::e_explain(
                    HTTPStatus(408),
                    "edge.min_body_rate: the body is too slow",
                );
            }
        }
        if let Some(held) = ctx.body.held.as_mut() {
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
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.attempt.upstream_ms = ctx
            .attempt
            .upstream_started
            .map(|t| t.elapsed().as_secs_f64() * 1000.0);
        let (Some(route), Some(member)) = (ctx.route.clone(), ctx.attempt.backend.clone()) else {
            return Ok(());
        };
        let Some(pool) = route.pool() else {
            return Ok(());
        };
        pool.record_outcome(&member, status >= 500);
        if retry::retry_on_status(session, ctx, &route, pool, &member, status) {
            return Error::e_explain(HTTPStatus(status), "retry_on: trying another backend");
        }
        if (status == 429 || status >= 500) && retry::fall_back(ctx, status) {
            return Error::e_explain(HTTPStatus(status), "falling back to the next model");
        }
        if ctx.openai.on {
            let ct = resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            ctx.openai.usage = UsageScanner::for_content_type(ct);
            let sse = matches!(ctx.openai.usage, Some(UsageScanner::Sse { .. }));
            if ctx.openai.hide_usage && sse {
                // Events are removed: the length the backend sent no longer holds.
                resp.remove_header(&http::header::CONTENT_LENGTH);
                ctx.openai.usage_filter = Some(openai::UsageHider::default());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        ctx.attempt.response_started = true;
        resp.insert_header(request_id::HEADER, ctx.client.request_id.clone())?;
        for (name, value) in &ctx.client.limit_headers {
            resp.insert_header(name.clone(), value.clone())?;
        }
        if let (true, Some(model)) = (ctx.openai.on, &ctx.openai.model) {
            resp.insert_header(gateway::MODEL_HEADER, model.as_str())?;
        }
        if let Some(tls) = ctx.security(self.listener.tls) {
            headers::security(resp, tls)?;
        }
        if let Some(route) = &ctx.route {
            if let (Some(origin), Some(cors)) = (&ctx.client.cors_origin, &route.cors) {
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
        ctx: &mut Box<Ctx>,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Error::e_explain(HTTPStatus(504), "route timeouts.total passed");
        }
        if end_of_stream {
            // The backend is done: its slot goes to the next request (or the queue) before
            // the client sees the end, not after logging.
            ctx.attempt.inflight = None;
        }
        if ctx.openai.on {
            self.observe_openai(body.as_deref(), end_of_stream, ctx);
            if let Some(hider) = ctx.openai.usage_filter.as_mut() {
                let chunk = body.take().unwrap_or_default();
                *body = Some(hider.filter(&chunk, end_of_stream));
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = retry::status_for(e);
        if code == 0 || ctx.attempt.response_started || session.response_written().is_some() {
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let reason = match code {
            413 => "request body too large",
            503 => match ctx.queue.refused {
                Some(Refused::Full) => "every backend is busy and the queue is full, retry later",
                Some(Refused::Closed) => "the pool's queue was removed by a reload, retry",
                Some(_) => "every backend stayed busy while the request waited, retry later",
                None if ctx.attempt.all_full => "every backend is busy, retry later",
                None => "no healthy backend",
            },
            504 => "upstream timed out",
            408 => "request body too slow",
            502 => "bad gateway",
            _ if ctx.attempt.retrying_status == Some(code) => "every backend answered an error",
            _ => "error",
        };
        // After a 413 the rest of the body is drained (bounded) so the client can read it.
        let keepalive = code == 413;
        let mut answer = Reply::text(code, reason);
        if keepalive {
            session.set_total_drain_timeout(Some(body::DRAIN_TIME));
        } else {
            answer = answer.closing();
        }
        if ctx.attempt.all_full {
            answer = answer.kind("server_overloaded").header(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        if let Err(err) = self.reply(session, ctx, answer).await {
            log::debug!("cannot send the error answer: {err}");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: keepalive,
        }
    }

    /// An answered failure (502, 503, 504, a client gone) is in the access log; Pingora's
    /// ERROR "Fail to proxy" line is kept for faults of the proxy itself.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Box<Ctx>, e: &Error) -> bool {
        retry::answered(e)
    }

    /// A retry is counted in `switchyard_retries_total` and in the access log's `tries`.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Box<Ctx>,
        _e: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        limits::charge(
            ctx,
            Some((session.body_bytes_read(), session.body_bytes_sent())),
        );
        if let Some(guard) = session.as_downstream().stream().and_then(HeadGuard::of) {
            guard.rearm();
        }
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
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
        let client_ip = ctx.client.ip.map(headers::IpText::new);
        let line = access_log::Line {
            time: crate::logsink::now(),
            request_id: request_id::text(&ctx.client.request_id),
            listener: &self.listener.name,
            client_ip: client_ip.as_ref().map(headers::IpText::as_str),
            method: req.method.as_str(),
            host: &ctx.client.host,
            path: req.uri.path(),
            route: ctx.route.as_ref().map(|r| r.name.as_str()),
            pool: ctx.pool_name(),
            backend: ctx.attempt.backend.as_ref().map(|m| &*m.label),
            status,
            bytes_in: session.body_bytes_read(),
            bytes_out: session.body_bytes_sent(),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            upstream_ms: ctx.attempt.upstream_ms,
            tries: ctx.attempt.tries,
            error: e.map(|e| e.etype().as_str()),
            queued_ms: ctx.queue.waited.map(|d| d.as_secs_f64() * 1000.0),
            priority: ctx.queue.priority.map(|p| p.as_str()),
            tokens: ctx.tokens.used,
            model: ctx.openai.model.as_deref(),
            fallback_from: ctx
                .openai
                .first
                .as_deref()
                .filter(|first| ctx.openai.model.as_deref() != Some(*first)),
        };
        let fields = ctx
            .snapshot
            .as_ref()
            .map(|s| s.edge.access_log_fields.as_slice());
        access_log::write(&line, fields.unwrap_or_default());
    }
}
