//! `upstream_peer`: a healthy backend of the route's pool that has not been tried yet, with
//! its `max_inflight` slot taken in the same step.

use super::context::Ctx;
use crate::metrics;
use crate::runtime::pool::{client_ip_key, NoBackend};
use crate::runtime::HashOn;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub(super) fn choose_peer(session: &Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let route = ctx
        .route
        .clone()
        .ok_or_else(|| Error::explain(InternalError, "no route in context"))?;
    let pool = route
        .pool()
        .ok_or_else(|| Error::explain(InternalError, "route has no pool"))?;
    let mut buf = [0u8; 16];
    let key = match &pool.hash_on {
        Some(how) => hash_key(how, session.req_header(), &ctx.client.ip, &mut buf),
        None => b"",
    };
    let tried = &ctx.attempt.tried;
    let chosen = pool.select_reserved(key, ctx.openai.model.as_deref(), |a| !tried.contains(a));
    let (member, slot) = match chosen {
        Ok(chosen) => chosen,
        Err(why) => {
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
                NoBackend::AllFull => {
                    format!("pool {}: every backend is at max_inflight", pool.name)
                }
                NoBackend::Unavailable => format!("pool {}: no healthy backend", pool.name),
            };
            return Error::e_explain(HTTPStatus(503), msg);
        }
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
