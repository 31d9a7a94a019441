//! The admin listener: its own Pingora service, apart from the public listeners.
//!
//! This first version answers `/health` and `/metrics`; the config-editing API of SPEC §5
//! is not built yet, and its paths answer 501 rather than pretending.

use crate::runtime::State;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct Admin {
    pub state: Arc<State>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len().to_string())
        .body(body)
        .unwrap_or_default()
}

fn json_reply(status: u16, value: serde_json::Value) -> http::Response<Vec<u8>> {
    reply(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let req = session.req_header();
        let path = req.uri.path().to_string();
        let get = req.method == http::Method::GET;
        match path.as_str() {
            "/health" if get => {
                let snap = self.state.snapshot();
                json_reply(
                    200,
                    json!({
                        "status": "ok",
                        "config_hash": snap.loaded.hash,
                        "pid": std::process::id(),
                    }),
                )
            }
            "/metrics" if get => reply(200, "text/plain; version=0.0.4", crate::metrics::encode()),
            "/health" | "/metrics" => json_reply(405, json!({"error": "method not allowed"})),
            p if p.starts_with("/config") || p.starts_with("/pools") || p == "/status" => {
                json_reply(
                    501,
                    json!({"error": "this admin endpoint is not built yet; edit the file instead"}),
                )
            }
            _ => json_reply(404, json!({"error": "not found"})),
        }
    }
}
