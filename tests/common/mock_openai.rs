//! A small OpenAI-compatible server: `/v1/models`, `/v1/chat/completions`, `/v1/completions`
//! and `/v1/embeddings`, JSON or SSE (`"stream": true`), with `usage` (also in a final SSE
//! chunk when `stream_options.include_usage` is set). Used by the tests and by
//! `cargo run --example mock_openai`.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Tokens every answer reports: prompt, completion.
pub const USAGE: (u64, u64) = (11, 7);

/// What the mock saw of one request.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub model: Option<String>,
    pub body_len: usize,
    pub body_sha256: String,
    pub authorization: Option<String>,
    pub chunked: bool,
    /// The body's `stream_options.include_usage`.
    pub include_usage: bool,
    /// The body's `user` field (tests tag requests with it).
    pub user: Option<String>,
}

pub struct Knobs {
    /// Answer every completion with this status instead (0 = normal).
    pub fail_with: AtomicU16,
    /// Delay before answering, in ms.
    pub delay_ms: AtomicUsize,
    /// When above `delay_ms`, the delay is drawn uniformly from `delay_ms..=delay_max_ms`.
    pub delay_max_ms: AtomicUsize,
    /// When set, a stream stops after its first event until `release` is notified.
    pub hold_streams: std::sync::atomic::AtomicBool,
    pub release: Notify,
    pub inflight: AtomicUsize,
    pub max_inflight_seen: AtomicUsize,
    /// Like a GPU server: more than this many requests at once (0 = no limit) is an error,
    /// answered 500 and counted in `over_limit`, so an over-admission fails the test.
    pub limit: AtomicUsize,
    pub over_limit: AtomicUsize,
    /// When set, each completion waits for a permit of `gate` before it answers.
    pub gated: std::sync::atomic::AtomicBool,
    pub gate: tokio::sync::Semaphore,
    /// What `GET /metrics` answers (an engine's Prometheus text); `None`: 404.
    pub metrics: Mutex<Option<String>>,
}

impl Knobs {
    /// Lets `n` gated requests answer.
    pub fn open_gate(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            fail_with: AtomicU16::new(0),
            delay_ms: AtomicUsize::new(0),
            delay_max_ms: AtomicUsize::new(0),
            hold_streams: Default::default(),
            release: Notify::new(),
            inflight: AtomicUsize::new(0),
            max_inflight_seen: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            over_limit: AtomicUsize::new(0),
            gated: Default::default(),
            gate: tokio::sync::Semaphore::new(0),
            metrics: Mutex::new(None),
        }
    }
}

pub struct MockOpenAi {
    pub name: String,
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    calls: Arc<Mutex<Vec<Call>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MockOpenAi {
    pub async fn start(name: &str, models: &[&str]) -> MockOpenAi {
        Self::start_on(name, models, "127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(name: &str, models: &[&str], at: SocketAddr) -> MockOpenAi {
        let listener = TcpListener::bind(at).await.expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        let knobs = Arc::new(Knobs::default());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let models: Arc<Vec<String>> = Arc::new(models.iter().map(|m| m.to_string()).collect());
        let server = Server {
            name: name.to_string(),
            models,
            knobs: knobs.clone(),
            calls: calls.clone(),
        };
        let task = tokio::spawn(serve(listener, Arc::new(server)));
        MockOpenAi {
            name: name.to_string(),
            addr,
            knobs,
            calls,
            task: Some(task),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for MockOpenAi {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Server {
    name: String,
    models: Arc<Vec<String>>,
    knobs: Arc<Knobs>,
    calls: Arc<Mutex<Vec<Call>>>,
}

async fn serve(listener: TcpListener, server: Arc<Server>) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let server = server.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, server.clone()));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn json_response(status: u16, v: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

struct InflightMark(Arc<Knobs>);

impl InflightMark {
    fn new(k: &Arc<Knobs>) -> Self {
        let now = k.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        k.max_inflight_seen.fetch_max(now, Ordering::SeqCst);
        InflightMark(k.clone())
    }
}

impl Drop for InflightMark {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(req: Request<Incoming>, s: Arc<Server>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        return Ok(json_response(200, json!({"status": "ok"})));
    }
    if path == "/metrics" {
        let text = s.knobs.metrics.lock().expect("metrics").clone();
        return Ok(match text {
            Some(t) => Response::builder()
                .header("content-type", "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(t)).boxed())
                .expect("response"),
            None => json_response(404, json!({"error": "no metrics"})),
        });
    }
    if path == "/v1/models" {
        let data: Vec<Value> = s
            .models
            .iter()
            .map(|m| json!({"id": m, "object": "model", "owned_by": s.name}))
            .collect();
        return Ok(json_response(200, json!({"object": "list", "data": data})));
    }
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let chunked = req.headers().get("transfer-encoding").is_some();
    let mark = InflightMark::new(&s.knobs);
    let limit = s.knobs.limit.load(Ordering::SeqCst);
    if limit > 0 && s.knobs.inflight.load(Ordering::SeqCst) > limit {
        s.knobs.over_limit.fetch_add(1, Ordering::SeqCst);
        return Ok(json_response(
            500,
            json!({"error": {"message": format!("{} is over its limit of {limit}", s.name)}}),
        ));
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(json_response(
            400,
            json!({"error": {"message": "incomplete body"}}),
        ));
    };
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = v["model"].as_str().map(str::to_string);
    s.calls.lock().expect("calls").push(Call {
        path: path.clone(),
        model: model.clone(),
        body_len: body.len(),
        body_sha256: hex::encode(Sha256::digest(&body)),
        authorization,
        chunked,
        include_usage: v["stream_options"]["include_usage"] == json!(true),
        user: v["user"].as_str().map(str::to_string),
    });
    if s.knobs.gated.load(Ordering::SeqCst) {
        if let Ok(permit) = s.knobs.gate.acquire().await {
            permit.forget();
        }
    }
    let mut delay = s.knobs.delay_ms.load(Ordering::SeqCst);
    let max = s.knobs.delay_max_ms.load(Ordering::SeqCst);
    if max > delay {
        delay = fastrand::usize(delay..=max);
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let fail = s.knobs.fail_with.load(Ordering::SeqCst);
    if fail != 0 {
        return Ok(json_response(
            fail,
            json!({"error": {"message": format!("{} is failing on purpose", s.name), "type": "server_error"}}),
        ));
    }
    let model = model.unwrap_or_else(|| "unknown".into());
    let usage = json!({"prompt_tokens": USAGE.0, "completion_tokens": USAGE.1, "total_tokens": USAGE.0 + USAGE.1});
    if path.ends_with("/embeddings") {
        return Ok(json_response(
            200,
            json!({"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}], "usage": usage}),
        ));
    }
    if v["stream"] == json!(true) {
        let include_usage = v["stream_options"]["include_usage"] == json!(true);
        return Ok(stream(s.clone(), model, include_usage, usage, mark));
    }
    let text = format!("hello from {}", s.name);
    Ok(json_response(
        200,
        json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }),
    ))
}

fn stream(
    s: Arc<Server>,
    model: String,
    include_usage: bool,
    usage: Value,
    mark: InflightMark,
) -> Response<Body> {
    let words: Vec<String> = ["hello", " from", " ", s.name.as_str()]
        .iter()
        .map(|w| w.to_string())
        .collect();
    let n = words.len();
    let knobs = s.knobs.clone();
    let events = futures::stream::unfold(0usize, move |i| {
        let (words, model, usage, knobs) =
            (words.clone(), model.clone(), usage.clone(), knobs.clone());
        let _keep = &mark;
        async move {
            let chunk = |delta: Value, finish: Value, usage: Value| {
                let mut c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
                if include_usage {
                    c["usage"] = usage;
                }
                format!("data: {c}\n\n")
            };
            let text = if i < n {
                if i == 1 && knobs.hold_streams.load(Ordering::SeqCst) {
                    knobs.release.notified().await;
                }
                chunk(json!({"content": words[i]}), Value::Null, Value::Null)
            } else if i == n {
                chunk(json!({}), json!("stop"), Value::Null)
            } else if i == n + 1 && include_usage {
                let mut c = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                    "model": model, "choices": []});
                c["usage"] = usage;
                format!("data: {c}\n\n")
            } else if i <= n + 2 {
                let done = "data: [DONE]\n\n".to_string();
                return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(done))), n + 3));
            } else {
                return None;
            };
            Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), i + 1))
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .expect("response")
}
