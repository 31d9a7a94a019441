//! The admin listener (SPEC §5): its own Pingora service, apart from the public listeners.
//!
//! Every write goes through [`State::replace_file`]: the current file is read from disk,
//! edited as raw YAML (placeholders stay placeholders), validated, written atomically with
//! the previous version kept in the history, and swapped in before the answer.

mod auth;
mod edit;
mod status;

use crate::runtime::{Source, State, WriteError};
use async_trait::async_trait;
use bytes::Bytes;
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
        WriteError::BadRequest(_) => error(400, e),
        WriteError::Invalid(c) => {
            let problems = c.problems();
            let first = problems.first();
            json_reply(
                400,
                json!({
                    "error": first.map(|p| p.message.clone()).unwrap_or_else(|| c.to_string()),
                    "path": first.map(|p| p.path.clone()),
                    "line": first.and_then(|p| p.line),
                    "column": first.and_then(|p| p.column),
                    "problems": problems,
                }),
            )
        }
        WriteError::Io(_) => error(500, e),
    }
}

/// The request parts a handler needs, read once.
pub struct Call {
    pub method: http::Method,
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub client: String,
}

impl Call {
    /// The ETag from `If-Match`, without quotes; `*` means any.
    fn if_match(&self) -> Option<String> {
        let v = self
            .headers
            .get(http::header::IF_MATCH)?
            .to_str()
            .ok()?
            .trim();
        let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
        (v != "*").then(|| v.to_string())
    }
}

async fn read_call(session: &mut ServerSession) -> Result<Call, Reply> {
    let req = session.req_header();
    let (method, path, headers) = (
        req.method.clone(),
        req.uri.path().to_string(),
        req.headers.clone(),
    );
    let client = session
        .client_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let too_large = || error(413, format!("body over {MAX_BODY} bytes"));
    if declared.is_some_and(|n| n > MAX_BODY) {
        drain(session).await;
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    drain(session).await;
                    return Err(too_large());
                }
            }
            Ok(None) => break,
            Err(e) => return Err(error(400, format!("cannot read the body: {e}"))),
        }
    }
    Ok(Call {
        method,
        path,
        headers,
        body: body.freeze(),
        client,
    })
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

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Reply {
        let call = match read_call(session).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        self.route(call).await
    }
}

impl Admin {
    async fn route(&self, call: Call) -> Reply {
        use http::Method;
        let snap = self.state.snapshot();
        let admin = &snap.loaded.config.admin;
        let open = match call.path.as_str() {
            "/health" => true,
            "/metrics" => !admin.metrics_require_key,
            _ => false,
        };
        let caller = auth::check(&call.headers, admin.api_key.as_deref());
        if !open && caller.is_none() {
            let why = if admin.api_key.is_none() {
                "the admin API is closed: set admin.api_key"
            } else {
                "missing or wrong admin key"
            };
            let mut r = error(401, why);
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let key_id = caller.map(|c| c.key_id).unwrap_or_default();
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
        let m = &call.method;
        let is_write = *m != Method::GET && *m != Method::HEAD;
        let reply = match (m.clone(), segs.as_slice()) {
            (Method::GET, ["health"]) => json_reply(
                200,
                json!({"status": "ok", "config_hash": snap.loaded.hash, "pid": std::process::id()}),
            ),
            (Method::GET, ["metrics"]) => {
                reply(200, "text/plain; version=0.0.4", crate::metrics::encode())
            }
            (Method::GET, ["status"]) => json_reply(200, status::status(&self.state)),
            (Method::GET, ["config"]) => self.get_config(),
            (Method::POST | Method::PUT, ["config"]) => {
                self.write(&call, |_| edit::whole(&call.body)).await
            }
            (Method::POST, ["config", "validate"]) => edit::validate(&self.state, &call.body),
            (Method::POST, ["config", "reload"]) => self.reload().await,
            (Method::GET, ["config", "history"]) => self.history(),
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
            (_, ["health" | "metrics" | "status" | "config"])
            | (_, ["config", "validate" | "reload" | "history" | "rollback"])
            | (_, ["pools", _, "backends", ..]) => error(405, "method not allowed"),
            _ => error(404, "not found"),
        };
        if is_write {
            audit(&call, &key_id, &reply);
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
        match self
            .state
            .replace_file(Source::Admin, if_match.as_deref(), edit)
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
        "time": crate::proxy::access_log::now_rfc3339(),
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
