//! `upstream_peer`: a healthy backend of the route's pool that has not been tried yet, with
//! its `max_inflight` slot taken in the same step, or, when the pool has a queue and every
//! backend is full, the first slot that frees.

use super::admission;
use super::context::Ctx;
use super::retry;
use crate::config::AffinityKey;
use crate::metrics;
use crate::runtime::pool::{client_ip_key, InflightGuard, Member, NoBackend, Pool};
use crate::runtime::queue::{Queue, Refused};
use crate::runtime::HashOn;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn choose_peer(session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| Error::explain(InternalError, "no route in context"))?;
    let pool = route
        .pool()
        .cloned()
        .ok_or_else(|| Error::explain(InternalError, "route has no pool"))?;
    let (member, slot) = loop {
        let failed = match pick(session, ctx, &pool) {
            Pick::Chosen(chosen) => break chosen,
            Pick::Queue(queue, key) => {
                match admission::wait_for_slot(session, ctx, &route, &queue, key).await {
                    Ok(chosen) => break chosen,
                    Err(Refused::Gone) => {
                        return Err(Error::explain(
                            ConnectionClosed,
                            "the client left while its request waited in the queue",
                        )
                        .into_down())
                    }
                    Err(why) => Failed::Queue(why),
                }
            }
            Pick::None(why) => Failed::Now(why),
        };
        // No backend can take this model: the next one of its fallback chain may.
        if ctx.attempt.retrying_status.is_none() && retry::fall_back(ctx, 0) {
            ctx.openai.fell_back = true;
            continue;
        }
        return match failed {
            Failed::Now(why) => no_backend(ctx, &pool, why),
            Failed::Queue(why) => {
                ctx.attempt.all_full = true;
                ctx.queue.refused = Some(why);
                let msg = format!("pool {}: queue {}", pool.name, why.as_str());
                Error::e_explain(HTTPStatus(503), msg)
            }
        };
    };
    ctx.attempt.retrying_status = None;
    if ctx.attempt.tries > 0 {
        metrics::RETRIES
            .with_label_values(&[route.name.as_str()])
            .inc();
    }
    ctx.attempt.tries += 1;
    let timeouts = &route.config.timeouts;
    let read = ctx
        .upgrade
        .then_some(timeouts.websocket_idle)
        .flatten()
        .or(timeouts.read)
        .map_or(pool.config.timeouts.read.get(), |d| d.get());
    let read = match ctx.deadline {
        Some(d) => read.min(
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ),
        None => read,
    };
    let peer = pool.peer(&member, read);
    ctx.attempt.inflight = Some(slot);
    ctx.attempt.upstream_started = Some(Instant::now());
    ctx.attempt.backend = Some(member);
    Ok(Box::new(peer))
}

enum Failed {
    Now(NoBackend),
    Queue(Refused),
}

enum Pick {
    Chosen((Member, InflightGuard)),
    /// Wait in the pool's queue, with the request's hash key.
    Queue(Arc<Queue>, Vec<u8>),
    None(NoBackend),
}

/// A backend now, or a place in the queue: when every backend is full, or when others wait
/// already (a new request does not jump the line). Retries never queue.
fn pick(session: &Session, ctx: &Ctx, pool: &Pool) -> Pick {
    let mut buf = [0u8; 16];
    let key = match (&pool.config.affinity, &pool.hash_on) {
        (Some(a), _) => affinity_key(&a.key, session.req_header(), ctx),
        (None, Some(how)) => hash_key(how, session.req_header(), &ctx.client.ip, &mut buf),
        (None, None) => b"",
    };
    // Retries and fallbacks take what is free now.
    let queue = pool
        .queue
        .as_ref()
        .filter(|_| ctx.attempt.tries == 0 && !ctx.openai.fell_back);
    let tried = &ctx.attempt.tried;
    if let Some(q) = queue.filter(|q| q.waiting() > 0) {
        // Others wait: take a place, unless no usable backend serves the model at all.
        let model = ctx.openai.model.as_deref();
        return match pool.select(key, model, |a| !tried.contains(a)) {
            Err(NoBackend::Unavailable) => Pick::None(NoBackend::Unavailable),
            _ => Pick::Queue(q.clone(), key.to_vec()),
        };
    }
    let chosen = pool.select_reserved(key, ctx.openai.model.as_deref(), |a| !tried.contains(a));
    match (chosen, queue) {
        (Ok(chosen), _) => Pick::Chosen(chosen),
        (Err(NoBackend::AllFull), Some(q)) => Pick::Queue(q.clone(), key.to_vec()),
        (Err(why), _) => Pick::None(why),
    }
}

/// The error that becomes the answer when no backend was picked.
fn no_backend(ctx: &mut Ctx, pool: &Pool, why: NoBackend) -> Result<Box<HttpPeer>> {
    if let Some(status) = ctx.attempt.retrying_status {
        let msg = format!("pool {}: the last backend answered {status}", pool.name);
        return Error::e_explain(HTTPStatus(status), msg);
    }
    if !ctx.attempt.tried.is_empty() {
        let msg = format!("pool {}: every attempt failed", pool.name);
        return Error::e_explain(HTTPStatus(502), msg);
    }
    ctx.attempt.all_full = why == NoBackend::AllFull;
    let msg = match why {
        NoBackend::AllFull => format!("pool {}: every backend is at max_inflight", pool.name),
        NoBackend::Unavailable => format!("pool {}: no healthy backend", pool.name),
    };
    Error::e_explain(HTTPStatus(503), msg)
}

/// What `affinity` keeps together for this request: the start of its prompt, or a header.
fn affinity_key<'a>(key: &AffinityKey, req: &'a RequestHeader, ctx: &'a Ctx) -> &'a [u8] {
    match key {
        AffinityKey::PromptPrefix => ctx.openai.prefix_key.as_deref().unwrap_or(b""),
        AffinityKey::Header(name) => req.headers.get(name).map_or(&b""[..], |v| v.as_bytes()),
    }
}

/// The bytes a `consistent_hash` pool hashes for this request.
fn hash_key<'a>(
    how: &HashOn,
    req: &'a RequestHeader,
    client: &Option<IpAddr>,
    buf: &'a mut [u8; 16],
) -> &'a [u8] {
    match how {
        HashOn::ClientIp => client_ip_key(*client, buf),
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
