//! When a request goes to another backend, decided in one place: a connect failure always
//! may (nothing was sent); a failure after sending only for a request that can do no harm
//! twice and whose body can be sent again; a `retry_on` status likewise, before any byte of
//! the answer reached the client.

use super::context::Ctx;
use crate::metrics;
use crate::runtime::pool::{Member, Pool};
use crate::runtime::router::Route;
use pingora::prelude::*;
use pingora::proxy::Session;

/// A connect attempt failed: the backend is marked, and another may be tried.
pub(super) fn after_connect_failure(ctx: &mut Ctx) -> bool {
    if let (Some(m), Some(pool)) = (
        &ctx.attempt.backend,
        ctx.route.as_ref().and_then(|r| r.pool()),
    ) {
        metrics::CONNECT_FAILURES
            .with_label_values(&[pool.name.as_str(), &m.label])
            .inc();
        pool.record_outcome(m, true);
        ctx.attempt.tried.push(m.addr);
    }
    ctx.attempt.tries <= ctx.retries()
}

/// The request failed after it reached a backend: whether another backend gets it.
pub(super) fn after_proxy_error(session: &Session, ctx: &mut Ctx, e: &Error) -> bool {
    if let Some(m) = &ctx.attempt.backend {
        ctx.attempt.tried.push(m.addr);
    }
    if ctx.attempt.retrying_status.is_some() {
        // `retry_on_status` already decided.
        return true;
    }
    is_idempotent(&session.req_header().method)
        && body_replayable(session, ctx)
        && e.esource() == &ErrorSource::Upstream
        && !ctx.attempt.response_started
        && ctx.attempt.tries <= ctx.retries()
}

/// `retry_on`: the backend answered a listed status, the request can be sent again and
/// another backend is left. The answer is then dropped and the request retried.
pub(super) fn retry_on_status(
    session: &Session,
    ctx: &mut Ctx,
    route: &Route,
    pool: &Pool,
    member: &Member,
    status: u16,
) -> bool {
    let wanted = route.retry_statuses.contains(&status)
        && ctx.attempt.tries <= route.config.retries
        && body_replayable(session, ctx);
    if !wanted {
        return false;
    }
    let mut tried = ctx.attempt.tried.clone();
    tried.push(member.addr);
    let model = ctx.openai.model.as_deref();
    if pool.select(b"", model, |a| !tried.contains(a)).is_err() {
        return false;
    }
    ctx.attempt.retrying_status = Some(status);
    metrics::RETRIES
        .with_label_values(&[route.name.as_str()])
        .inc();
    true
}

/// Switches an OpenAI request to the next model of its fallback chain (`openai.fallbacks`),
/// with `model` rewritten in its body; false when there is none, the client's key may not
/// use it, or the answer already started. `status` is what made the last attempt fail (0:
/// no backend could take it).
pub(super) fn fall_back(ctx: &mut Ctx, status: u16) -> bool {
    let Some(route) = ctx.route.clone() else {
        return false;
    };
    if !ctx.openai.on || ctx.attempt.response_started {
        return false;
    }
    let models = route.config.openai.models();
    let (Some(first), Some(mut current)) = (ctx.openai.first.clone(), ctx.openai.model.clone())
    else {
        return false;
    };
    let next = loop {
        let Some(next) = models.next_after(&first, &current) else {
            return false;
        };
        if ctx.client.key.as_ref().is_none_or(|k| k.allows(next)) {
            break next.to_string();
        }
        current = next.to_string();
    };
    let Some(body) = ctx
        .body
        .replay
        .as_ref()
        .and_then(|r| super::openai::with_model(&r.0, &next))
    else {
        return false;
    };
    let from = ctx.openai.model.replace(next.clone()).unwrap_or_default();
    ctx.body.replay = Some(super::filters::body::Replay(body));
    ctx.body.rewritten = true;
    // The next model's backends are new to this request.
    ctx.attempt.tried.clear();
    if status != 0 {
        ctx.attempt.retrying_status = Some(status);
    }
    metrics::OPENAI_FALLBACKS
        .with_label_values(&[route.name.as_str(), from.as_str(), next.as_str()])
        .inc();
    log::debug!(
        "route {}: request {} falls back from {from} to {next}",
        route.name,
        super::filters::request_id::text(&ctx.client.request_id)
    );
    true
}

/// Whether the request's body can be sent once more: none, pre-read, or still in Pingora's
/// retry buffer.
fn body_replayable(session: &Session, ctx: &Ctx) -> bool {
    ctx.body.replay.is_some()
        || (ctx.body.held.is_none() && !session.as_ref().retry_buffer_truncated())
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The status the client gets for a failed request; 0 when it is gone or cannot be answered.
pub(super) fn status_for(e: &Error) -> u16 {
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

/// Whether a failed request's error is for the access log only: the client got its answer
/// (a status this proxy chose, or a backend's or the client's own failure, which the
/// access log records with its `error` kind and the retries in `tries`). Anything else is a
/// fault of the proxy and stays an ERROR line.
pub(super) fn answered(e: &Error) -> bool {
    matches!(e.etype(), HTTPStatus(_))
        || matches!(e.esource(), ErrorSource::Upstream | ErrorSource::Downstream)
}
