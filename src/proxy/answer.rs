//! Answers the proxy gives itself (404, 403, 413, 503, `respond` routes, redirects).

use super::context::Ctx;
use super::filters::{headers, request_id};
use super::{openai, Edge};
use crate::runtime::router::HeaderEdits;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A local answer with its request id and, when asked, the security headers.
pub(super) struct Local<'a> {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'a str,
    pub request_id: &'a HeaderValue,
    pub extra: &'a [(HeaderName, HeaderValue)],
    /// `Some(tls)` adds the security headers.
    pub security: Option<bool>,
    /// The route's `response_headers`, applied last.
    pub edits: Option<&'a HeaderEdits>,
    /// Keep the connection open afterwards (the request body was or will be drained).
    pub keepalive: bool,
}

impl Local<'_> {
    pub(super) fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut r = ResponseHeader::build(self.status, Some(6))?;
        r.insert_header("content-type", self.content_type)?;
        r.insert_header("content-length", self.body.len().to_string())?;
        r.insert_header(request_id::HEADER, self.request_id.clone())?;
        for (n, v) in self.extra {
            r.insert_header(n.clone(), v.clone())?;
        }
        if let Some(tls) = self.security {
            headers::security(&mut r, tls)?;
        }
        if let Some(edits) = self.edits {
            headers::edit_response(&mut r, edits)?;
        }
        Ok(r)
    }

    pub(super) async fn send(self, session: &mut Session) -> pingora::Result<()> {
        if !self.keepalive {
            session.set_keepalive(None);
        }
        let header = self.header()?;
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(header), head_only || self.body.is_empty())
            .await?;
        if !head_only && !self.body.is_empty() {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}

/// A short plain-text error body: `404 no route\n`.
pub(super) fn text(status: u16, reason: &str) -> Bytes {
    Bytes::from(format!("{status} {reason}\n"))
}

/// A local answer from one of the request's policies: a status and a body, and what else it
/// needs set by name. [`Edge::reply`] sends it, OpenAI-shaped on OpenAI routes, with the
/// request id, CORS, security headers and the route's `response_headers`.
pub(super) struct Reply {
    status: u16,
    body: Bytes,
    keepalive: bool,
    code: Option<&'static str>,
    kind: Option<&'static str>,
    extra: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub(super) fn new(status: u16, body: Bytes) -> Reply {
        Reply {
            status,
            body,
            keepalive: true,
            code: None,
            kind: None,
            extra: Vec::new(),
        }
    }

    /// A short plain-text answer: `404 no route`.
    pub(super) fn text(status: u16, reason: &str) -> Reply {
        Reply::new(status, text(status, reason))
    }

    /// The connection closes after the answer (the request may not have been read whole).
    pub(super) fn closing(mut self) -> Reply {
        self.keepalive = false;
        self
    }

    /// The `code` of an OpenAI error body.
    pub(super) fn code(mut self, code: &'static str) -> Reply {
        self.code = Some(code);
        self
    }

    /// The `type` of an OpenAI error body, when not the one the status implies.
    pub(super) fn kind(mut self, kind: &'static str) -> Reply {
        self.kind = Some(kind);
        self
    }

    pub(super) fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.extra.push((name, value));
        self
    }

    pub(super) fn headers(mut self, headers: &[(HeaderName, HeaderValue)]) -> Reply {
        self.extra.extend_from_slice(headers);
        self
    }
}

impl Edge {
    /// Sends a [`Reply`]; always `Ok(true)` (answered) unless writing failed.
    pub(super) async fn reply(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        reply: Reply,
    ) -> pingora::Result<bool> {
        let Reply {
            status,
            body,
            keepalive,
            code,
            kind,
            mut extra,
        } = reply;
        let (body, content_type) = if ctx.openai.on && status >= 400 {
            let message = String::from_utf8_lossy(&body);
            let message = message
                .trim()
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim();
            (
                openai::error_body(status, message, code, kind),
                "application/json",
            )
        } else {
            (body, "text/plain; charset=utf-8")
        };
        extra.extend(ctx.client.limit_headers.iter().cloned());
        if let (Some(origin), Some(cors)) = (
            &ctx.client.cors_origin,
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
            request_id: &ctx.client.request_id,
            extra: &extra,
            security: ctx.security(self.listener.tls),
            edits: ctx.route.as_ref().map(|r| &r.response_headers),
            keepalive,
        }
        .send(session)
        .await?;
        Ok(true)
    }
}
