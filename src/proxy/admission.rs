//! Waiting in the pool's queue for a backend slot, and noticing a client that leaves while
//! it waits.

use super::context::Ctx;
use crate::config::Priority;
use crate::runtime::pool::{InflightGuard, Member};
use crate::runtime::queue::{Queue, Refused, Wants};
use crate::runtime::router::Route;
use pingora::prelude::*;
use pingora::proxy::Session;
use std::sync::Arc;

/// The request's admission class: its key's, else its route's, else `normal`. Nothing the
/// client sends can raise it.
pub(super) fn priority(ctx: &Ctx, route: &Route) -> Priority {
    ctx.client
        .key
        .as_ref()
        .and_then(|k| k.priority)
        .or(route.config.priority)
        .unwrap_or_default()
}

/// Who takes turns with whom inside a class: the key's name (or its id), else the client IP.
fn tenant(ctx: &Ctx) -> String {
    match &ctx.client.key {
        Some(k) => k.tenant(),
        None => ctx.client.ip.map(|ip| ip.to_string()).unwrap_or_default(),
    }
}

/// Waits for a slot of `queue`'s pool. The time waited moves the request's own deadlines
/// (body, total) on by as much: they are about the client and the backend, not the queue.
pub(super) async fn wait_for_slot(
    session: &mut Session,
    ctx: &mut Ctx,
    route: &Route,
    queue: &Arc<Queue>,
    hash_key: Vec<u8>,
) -> Result<(Member, InflightGuard), Refused> {
    let prio = priority(ctx, route);
    ctx.queue.priority = Some(prio);
    let wants = Wants {
        priority: prio,
        tenant: tenant(ctx),
        model: ctx.openai.model.clone(),
        hash_key,
    };
    let mut ticket = queue.enqueue(wants)?;
    let result = ticket.wait(client_gone(session)).await;
    let waited = ticket.waited();
    ctx.queue.waited = Some(waited);
    for deadline in [&mut ctx.body.deadline, &mut ctx.deadline] {
        if let Some(d) = deadline.as_mut() {
            *d += waited;
        }
    }
    result.map(|grant| (grant.member, grant.slot))
}

/// Resolves when the client closes its connection (HTTP/1) or resets its stream (HTTP/2).
///
/// HTTP/1 is watched with Pingora's idle read once the request body is complete (an OpenAI
/// request's body was read for its model): pipelined bytes that arrive are kept for the next
/// request, a FIN ends the wait. A request whose body is still unread is not watched (its
/// bytes must reach the backend); it leaves the queue at its timeout.
async fn client_gone(session: &mut Session) {
    let down = session.as_downstream_mut();
    if let Some(idle) = down.watch_h2_stream_close() {
        let _ = idle.await;
        return;
    }
    let body_done = down.is_body_empty() || down.is_body_done();
    if body_done {
        if let Err(e) = down.read_body_or_idle(true).await {
            // FIN or a reset; "data after the body" (pipelining off) is not a departure.
            if !matches!(e.etype(), ErrorType::ConnectError) {
                return;
            }
        }
    }
    std::future::pending::<()>().await;
}
