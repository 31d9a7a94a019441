//! Answers the proxy gives itself (404, 403, 413, 503, `respond` routes, redirects).

use super::filters::{headers, request_id};
use crate::runtime::router::HeaderEdits;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// A local answer with its request id and, when asked, the security headers.
pub struct Local<'a> {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'a str,
    pub request_id: &'a str,
    pub extra: &'a [(HeaderName, HeaderValue)],
    /// `Some(tls)` adds the security headers.
    pub security: Option<bool>,
    /// The route's `response_headers`, applied last.
    pub edits: Option<&'a HeaderEdits>,
    /// Keep the connection open afterwards (the request body was or will be drained).
    pub keepalive: bool,
}

impl Local<'_> {
    pub fn header(&self) -> pingora::Result<ResponseHeader> {
        let mut r = ResponseHeader::build(self.status, Some(6))?;
        r.insert_header("content-type", self.content_type)?;
        r.insert_header("content-length", self.body.len().to_string())?;
        r.insert_header(request_id::HEADER, self.request_id)?;
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

    pub async fn send(self, session: &mut Session) -> pingora::Result<()> {
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
pub fn text(status: u16, reason: &str) -> Bytes {
    Bytes::from(format!("{status} {reason}\n"))
}
