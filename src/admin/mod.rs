//! The admin listener: its own Pingora service, apart from the public listeners.
//!
//! The key is checked on the request head: a caller without it gets 401 and a closed
//! connection, and none of its body is read. Every write goes through
//! [`State::replace_file`]: the current file is read from disk, edited as raw YAML
//! (placeholders stay placeholders), validated, refused if it would shut the admin API's
//! callers out (unless `?allow_admin_close=true`), held to `If-Match`, written atomically with
//! the previous version kept in the history, and swapped in before the answer.

mod auth;
mod edit;
mod status;

use crate::config::{Loaded, Problem};
use crate::runtime::{IfMatch, Source, State, WriteError};
use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::percent_decode_str;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest admin request body read (a whole config file).
const MAX_BODY: usize = 4 << 20;

pub struct Admin {
    pub state: Arc<State>,
}

pub type Reply = http::Response<Vec<u8>>;

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .body(body)
        .unwrap_or_default()
}

pub fn json_reply(status: u16, value: Value) -> Reply {
    reply(status, "application/json", value.to_string().into_bytes())
}

fn error(status: u16, message: impl std::fmt::Display) -> Reply {
    json_reply(status, json!({ "error": message.to_string() }))
}

/// A 400 has one shape whatever was wrong: the first problem's message and place on top, and
/// every problem in `problems`.
fn invalid(problems: &[Problem]) -> Reply {
    let first = problems.first();
    json_reply(
        400,
        json!({
            "error": first.map(|p| p.message.clone()).unwrap_or_else(|| "invalid request".into()),
            "path": first.map(|p| p.path.clone()),
            "line": first.and_then(|p| p.line),
            "column": first.and_then(|p| p.column),
            "problems": problems,
        }),
    )
}

fn bad_request(message: impl Into<String>) -> Reply {
    invalid(&[Problem::new("", message)])
}

fn with_etag(mut r: Reply, hash: &str) -> Reply {
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{hash}\"")) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

/// The answer for a refused edit, with the first problem's place for invalid configs.
fn write_error(e: &WriteError) -> Reply {
    match e {
        WriteError::Stale { current } => with_etag(error(412, e), current),
        WriteError::NotFound(_) => error(404, e),
        WriteError::Conflict(_) => error(409, e),
        WriteError::BadRequest(m) => bad_request(m.clone()),
        WriteError::Invalid(c) => invalid(&c.problems()),
        WriteError::Io(_) => error(500, e),
    }
}

/// The request parts a handler needs, read once.
pub struct Call {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub client: String,
}

impl Call {
    /// The `If-Match` precondition, if the request has one: `*`, or the ETags listed (quoted
    /// or not; a weak one is compared like a strong one, the ETag being a hash). A value that
    /// names no ETag of ours simply matches no version of the file.
    fn if_match(&self) -> Option<IfMatch> {
        let mut values = self
            .headers
            .get_all(http::header::IF_MATCH)
            .iter()
            .peekable();
        values.peek()?;
        let mut tags = Vec::new();
        for v in values {
            for tag in String::from_utf8_lossy(v.as_bytes()).split(',') {
                let tag = tag.trim_matches([' ', '\t']);
                if tag == "*" {
                    return Some(IfMatch::Any);
                }
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                tags.push(tag.trim_matches('"').to_string());
            }
        }
        Some(IfMatch::Tags(tags))
    }

    /// `?allow_admin_close=true`: the caller knows the change closes the admin API.
    fn allow_admin_close(&self) -> Result<bool, String> {
        let mut allow = false;
        let pairs = self.query.as_deref().unwrap_or_default().split('&');
        for pair in pairs.filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode_str(k).decode_utf8_lossy() != "allow_admin_close" {
                continue;
            }
            allow = match percent_decode_str(v).decode_utf8_lossy().as_ref() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "allow_admin_close must be true or false, not {other:?}"
                    ))
                }
            };
        }
        Ok(allow)
    }
}

/// Reads the whole body of an authenticated request, at most `MAX_BODY` bytes.
async fn read_body(session: &mut ServerSession) -> Result<Bytes, Reply> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = || error(413, format!("body over {MAX_BODY} bytes"));
    if declared.is_some_and(|n| n > MAX_BODY) {
        drain(session).await;
        session.set_keepalive(None);
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    drain(session).await;
                    session.set_keepalive(None);
                    return Err(too_large());
                }
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return Err(bad_request(format!("cannot read the body: {e}")));
            }
        }
    }
    Ok(body.freeze())
}

/// Reads and drops a refused body (at most 4 × the limit, for at most 5 s), so that a client
/// still sending it can read the answer instead of a reset.
async fn drain(session: &mut ServerSession) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = 0usize;
    while seen <= 4 * MAX_BODY {
        match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(Some(chunk))) => seen += chunk.len(),
            _ => return,
        }
    }
}

fn unauthorized(closed: bool) -> Reply {
    let why = if closed {
        "the admin API is closed: set admin.api_key"
    } else {
        "missing or wrong admin key"
    };
    let mut r = error(401, why);
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The methods each admin resource answers (HEAD wherever GET), for `405` answers' `Allow`.
fn allowed(segs: &[&str]) -> Option<&'static str> {
    Some(match segs {
        ["health" | "metrics" | "status"] | ["config", "history"] => "GET, HEAD",
        ["config"] => "GET, HEAD, POST, PUT",
        ["config", "validate" | "reload" | "rollback"] => "POST",
        ["pools", _, "backends"] | ["pools", _, "backends", _, "drain"] => "POST",
        ["pools", _, "backends", _] => "DELETE",
        _ => return None,
    })
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Reply {
        let req = session.req_header();
        let (method, path, query, headers) = (
            req.method.clone(),
            req.uri.path().to_string(),
            req.uri.query().map(str::to_string),
            req.headers.clone(),
        );
        let client = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let snap = self.state.snapshot();
        let admin = &snap.loaded.config.admin;
        let open = match path.as_str() {
            "/health" => true,
            "/metrics" => !admin.metrics_require_key,
            _ => false,
        };
        let caller = auth::check(&headers, admin.api_key.as_ref());
        // The key is checked on the head alone. A refused request's body is neither read nor
        // drained: the connection is closed after the answer, however much was announced.
        // The open endpoints take no body either.
        let body = if open || caller.is_none() {
            if !session.is_body_empty() {
                session.set_keepalive(None);
            }
            if !open {
                session.set_keepalive(None);
                return unauthorized(admin.api_key.is_none());
            }
            Bytes::new()
        } else {
            match read_body(session).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        };
        drop(snap);
        let call = Call {
            method,
            path,
            query,
            headers,
            body,
            client,
        };
        let key_id = caller.map(|c| c.key_id).unwrap_or_default();
        let mut reply = self.route(call, &key_id).await;
        if session.req_header().method == http::Method::HEAD {
            // The GET answer's headers (Content-Length included), without its body.
            reply.body_mut().clear();
        }
        reply
    }
}

impl Admin {
    async fn route(&self, call: Call, key_id: &str) -> Reply {
        use http::Method;
        let segments: Vec<String> = call
            .path
            .trim_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let m = match &call.method {
            &Method::HEAD => Method::GET,
            other => other.clone(),
        };
        let is_write = m != Method::GET;
        let reply = match (m, segs.as_slice()) {
            (Method::GET, ["health"]) => json_reply(200, status::health(&self.state)),
            (Method::GET, ["metrics"]) => {
                reply(200, "text/plain; version=0.0.4", crate::metrics::encode())
            }
            (Method::GET, ["status"]) => json_reply(200, status::status(&self.state)),
            (Method::GET, ["config"]) => self.get_config(),
            (Method::GET, ["config", "history"]) => self.history(),
            (Method::POST, ["config", "validate"]) => edit::validate(&self.state, &call.body),
            (Method::POST, ["config", "reload"]) => self.reload().await,
            (Method::POST | Method::PUT, ["config"]) => {
                self.write(&call, |_| edit::whole(&call.body)).await
            }
            (Method::POST, ["config", "rollback"]) => {
                let text = edit::rollback_target(&self.state, &call.body);
                self.write(&call, move |_| text).await
            }
            (Method::POST, ["pools", pool, "backends"]) => {
                let pool = pool.to_string();
                self.write(&call, |raw| edit::add_backend(raw, &pool, &call.body))
                    .await
            }
            (Method::DELETE, ["pools", pool, "backends", addr]) => {
                let (pool, addr) = (pool.to_string(), addr.to_string());
                self.write(&call, |raw| edit::remove_backend(raw, &pool, &addr))
                    .await
            }
            (Method::POST, ["pools", pool, "backends", addr, "drain"]) => {
                let (pool, addr) = (pool.to_string(), addr.to_string());
                self.write(&call, |raw| edit::drain_backend(raw, &pool, &addr))
                    .await
            }
            (_, segs) => match allowed(segs) {
                Some(methods) => {
                    let mut r = error(405, "method not allowed");
                    r.headers_mut()
                        .insert(http::header::ALLOW, http::HeaderValue::from_static(methods));
                    r
                }
                None => error(404, "not found"),
            },
        };
        if is_write {
            audit(&call, key_id, &reply);
        }
        reply
    }

    fn get_config(&self) -> Reply {
        match std::fs::read(&self.state.path) {
            Ok(bytes) => {
                let hash = crate::config::hash_bytes(&bytes);
                with_etag(reply(200, "application/yaml", bytes), &hash)
            }
            Err(e) => error(500, format!("cannot read the config: {e}")),
        }
    }

    async fn write(
        &self,
        call: &Call,
        edit: impl FnOnce(&str) -> Result<String, WriteError>,
    ) -> Reply {
        let if_match = call.if_match();
        let allow_close = match call.allow_admin_close() {
            Ok(a) => a,
            Err(e) => return bad_request(e),
        };
        let check = |running: &Loaded, next: &Loaded| match edit::closes_admin(running, next) {
            Some(why) if !allow_close => Err(WriteError::Conflict(format!(
                "{why}; send the request again with ?allow_admin_close=true to do it anyway"
            ))),
            _ => Ok(()),
        };
        match self
            .state
            .replace_file(Source::Admin, if_match.as_ref(), edit, check)
            .await
        {
            Ok(applied) => {
                let hash = applied.hash.clone();
                with_etag(json_reply(200, json!(applied)), &hash)
            }
            Err(e) => write_error(&e),
        }
    }

    async fn reload(&self) -> Reply {
        match self.state.reload(Source::Admin, false).await {
            Ok(_) => {
                let hash = self.state.snapshot().loaded.hash.clone();
                with_etag(
                    json_reply(200, json!({"result": "ok", "hash": hash})),
                    &hash,
                )
            }
            Err(e) => write_error(&WriteError::Invalid(e)),
        }
    }

    fn history(&self) -> Reply {
        match self.state.history().list() {
            Ok(versions) => json_reply(200, json!({ "versions": versions })),
            Err(e) => error(500, format!("cannot read the history: {e}")),
        }
    }
}

/// One JSON line per admin change on stdout, beside the access log.
fn audit(call: &Call, key_id: &str, reply: &Reply) {
    let body: Value = serde_json::from_slice(reply.body()).unwrap_or(Value::Null);
    let line = json!({
        "kind": "audit",
        "time": crate::logsink::now_rfc3339(),
        "client": call.client,
        "key": key_id,
        "method": call.method.as_str(),
        "endpoint": call.path,
        "status": reply.status().as_u16(),
        "old_hash": body.get("old_hash"),
        "new_hash": body.get("hash"),
        "error": body.get("error"),
    });
    if let Ok(mut text) = serde_json::to_vec(&line) {
        text.push(b'\n');
        crate::logsink::write(crate::logsink::Output::Stdout, text);
    }
}
