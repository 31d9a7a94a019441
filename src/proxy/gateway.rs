//! The `openai: true` side of the request path: `/v1/models`, reading the body's model, and
//! time-to-first-token and token usage as the answer streams past.

use super::answer::{text, Local, Reply};
use super::context::Ctx;
use super::filters::body::{self, PreRead, Replay};
use super::openai::{self, UsageScanner};
use super::Edge;
use crate::config::AffinityKey;
use crate::metrics;
use crate::runtime::router::Route;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::proxy::Session;

/// The model that served the request, on every proxied answer of an OpenAI route.
pub(super) const MODEL_HEADER: &str = "x-switchyard-model";

impl Edge {
    /// Keys, `/v1/models` and the model of the body, for `openai: true` routes.
    /// `Some(done)` when the request was answered here.
    pub(super) async fn openai_request(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<Option<bool>> {
        let method = session.req_header().method.clone();
        let pool = route.pool().cloned();
        if method == http::Method::GET && session.req_header().uri.path().ends_with("/models") {
            let mut models = pool.as_ref().map(|p| p.models()).unwrap_or_default();
            let aliases = &route.config.openai.models().aliases;
            let named: Vec<String> = aliases
                .iter()
                .filter(|(_, target)| models.contains(target))
                .map(|(alias, _)| alias.clone())
                .collect();
            models.extend(named);
            models.sort();
            models.dedup();
            if let Some(k) = &ctx.client.key {
                let names = route.config.openai.models();
                models.retain(|m| k.allows(m) || k.allows(names.resolve(m)));
            }
            let owner = pool
                .as_ref()
                .map(|p| p.name.as_str())
                .unwrap_or("switchyard");
            let local = Local {
                status: 200,
                body: openai::models_list(&models, owner),
                content_type: "application/json",
                request_id: &ctx.client.request_id,
                extra: &[],
                security: ctx.security(self.listener.tls),
                edits: Some(&route.response_headers),
                keepalive: true,
            };
            local.send(session).await?;
            return Ok(Some(true));
        }
        if method != http::Method::POST {
            return Ok(None);
        }
        let limit = route.config.max_body.0;
        let deadline = ctx
            .body
            .deadline
            .unwrap_or_else(|| ctx.started + std::time::Duration::from_secs(60));
        let body = match body::pre_read(session, limit, deadline, ctx.pace()).await? {
            PreRead::Body(b) => b,
            PreRead::TooLarge => return self.refuse_body(session, ctx, limit).await.map(Some),
            PreRead::TooSlow => return self.refuse_slow_body(session, ctx).await.map(Some),
            PreRead::Unreplayable(b) if !session.is_http2() => {
                let model = openai::model_of(&b).ok();
                super::limits::reserve(ctx, &b);
                body::refeed_h1(session, b).await?;
                if let Some(snap) = &ctx.snapshot {
                    super::request::keep_alive(session, snap);
                }
                return match model {
                    Some(m) => self.choose_model(session, ctx, route, m, None).await,
                    None => self.openai_bad_body(session, ctx).await,
                };
            }
            PreRead::Unreplayable(_) => {
                let msg = text(
                    411,
                    "send Content-Length with HTTP/2 request bodies over 64 KiB",
                );
                return self
                    .reply(session, ctx, Reply::new(411, msg))
                    .await
                    .map(Some);
            }
        };
        match openai::model_of(&body) {
            Ok(m) => {
                self.choose_model(session, ctx, route, m, Some(Replay(body)))
                    .await
            }
            Err(_) => self.openai_bad_body(session, ctx).await,
        }
    }

    async fn openai_bad_body(&self, session: &mut Session, ctx: &Ctx) -> Result<Option<bool>> {
        let msg = Bytes::from("the request body must be a JSON object with a \"model\"");
        self.reply(session, ctx, Reply::new(400, msg))
            .await
            .map(Some)
    }

    /// Accepts the requested model (its alias resolved) if the pool serves it, or it has a
    /// fallback chain, and the key may use it.
    async fn choose_model(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
        requested: String,
        replay: Option<Replay>,
    ) -> Result<Option<bool>> {
        let models = route.config.openai.models();
        let model = models.resolve(&requested).to_string();
        let pool = route.pool();
        let served = pool.as_ref().is_some_and(|p| {
            p.config
                .backends
                .iter()
                .any(|b| b.models.is_empty() || b.models.contains(&model))
        });
        let known = served || models.fallbacks.contains_key(&model);
        let allowed = ctx
            .client
            .key
            .as_ref()
            .is_none_or(|k| k.allows(&model) || k.allows(&requested));
        if !known || !allowed {
            let msg = Bytes::from(format!(
                "The model `{requested}` does not exist or you do not have access to it."
            ));
            let answer = Reply::new(404, msg).code("model_not_found");
            return self.reply(session, ctx, answer).await.map(Some);
        }
        let mut replay = replay;
        if model != requested {
            if let Some(body) = replay
                .as_ref()
                .and_then(|r| openai::with_model(&r.0, &model))
            {
                replay = Some(Replay(body));
                ctx.body.rewritten = true;
            }
        }
        let affinity = pool.and_then(|p| p.config.affinity.as_ref());
        if let Some(a) = affinity.filter(|a| a.key == AffinityKey::PromptPrefix) {
            ctx.openai.prefix_key = replay
                .as_ref()
                .and_then(|r| openai::prompt_prefix(&r.0, a.prefix_bytes));
        }
        if let Some(r) = &replay {
            super::limits::reserve(ctx, &r.0);
        }
        ctx.openai.first = Some(model.clone());
        ctx.openai.model = Some(model);
        ctx.body.replay = replay.map(|r| self.with_usage_asked(ctx, r));
        Ok(None)
    }

    /// A budgeted stream must report its usage: when the client did not ask for it, the body
    /// asks, and the answer's usage chunk is hidden again.
    fn with_usage_asked(&self, ctx: &mut Ctx, replay: Replay) -> Replay {
        if ctx.tokens.budgets.is_empty() {
            return replay;
        }
        match openai::ask_for_usage(&replay.0) {
            Some(body) => {
                ctx.openai.hide_usage = true;
                ctx.body.rewritten = true;
                Replay(body)
            }
            None => replay,
        }
    }

    /// Time to first token and token usage, read as the answer streams past.
    pub(super) fn observe_openai(&self, chunk: Option<&[u8]>, end: bool, ctx: &mut Ctx) {
        let Some(route) = &ctx.route else { return };
        let label = route.model_label(ctx.openai.model.as_deref());
        if let Some(c) = chunk.filter(|c| !c.is_empty()) {
            if !ctx.openai.first_byte {
                ctx.openai.first_byte = true;
                metrics::OPENAI_TTFT
                    .with_label_values(&[label])
                    .observe(ctx.started.elapsed().as_secs_f64());
            }
            if let Some(u) = ctx.openai.usage.as_mut() {
                u.feed(c);
            }
        }
        if end {
            if let Some(usage) = ctx.openai.usage.take().and_then(UsageScanner::finish) {
                metrics::OPENAI_TOKENS
                    .with_label_values(&[label, "prompt"])
                    .inc_by(usage.prompt);
                metrics::OPENAI_TOKENS
                    .with_label_values(&[label, "completion"])
                    .inc_by(usage.completion);
                ctx.tokens.used = Some(usage.prompt.saturating_add(usage.completion));
                super::limits::charge(ctx, None);
            }
        }
    }
}
