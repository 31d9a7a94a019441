//! A small real HTTP server (hyper, HTTP/1.1 and h2c) that tells what it received.
//!
//! Paths: `/health` → 200; `/status/N` → N; `/delay?ms=M` → echo after M ms; `/stream?n=K&ms=M` → K chunks M ms apart;
//! anything else → 200 with a JSON echo of the request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body_len: usize,
}

#[derive(Default)]
struct Shared {
    hits: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on a given address (to bring a stopped backend back on its port).
    pub async fn start_on(name: &str, at: SocketAddr) -> Upstream {
        Self::launch(name, at, None).await
    }

    /// An HTTPS upstream with the given PEM certificate and key.
    pub async fn start_tls(name: &str, cert_pem: &str, key_pem: &str) -> Upstream {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .expect("key pem")
            .expect("a key");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::launch(name, "127.0.0.1:0".parse().expect("addr"), Some(acceptor)).await
    }

    async fn launch(
        name: &str,
        at: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let listener = TcpListener::bind(at).await.expect("bind upstream");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(serve(listener, name.to_string(), shared.clone(), tls));
        Upstream {
            name: name.to_string(),
            addr,
            shared,
            task: Some(task),
        }
    }

    /// Stops listening and closes every open connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen").clone()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen().last().cloned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // Connections live in this set, so aborting the task closes them too.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        let shared = shared.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            let svc =
                hyper::service::service_fn(move |req| handle(req, name.clone(), shared.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(s) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("response")
}

fn query_num(query: Option<&str>, key: &str, default: u64) -> u64 {
    query
        .and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(default)
}

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/ws" {
        shared.hits.fetch_add(1, Ordering::SeqCst);
        return Ok(websocket_echo(&mut req, name));
    }
    let query = req.uri().query().map(str::to_string);
    if path == "/health" {
        return Ok(full(200, "text/plain", "ok"));
    }
    let method = req.method().to_string();
    let headers = req.headers().clone();
    // A body cut short never counts as a request the backend saw.
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return Ok(full(400, "text/plain", "incomplete body"));
    };
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.seen.lock().expect("seen").push(Seen {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body_len: body.len(),
    });
    if path == "/delay" {
        tokio::time::sleep(Duration::from_millis(query_num(
            query.as_deref(),
            "ms",
            1000,
        )))
        .await;
    }
    if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        return Ok(full(code, "text/plain", format!("{code} from {name}")));
    }
    if path.starts_with("/stream") {
        let n = query_num(query.as_deref(), "n", 5);
        let ms = query_num(query.as_deref(), "ms", 100);
        let stream = futures::stream::unfold(0u64, move |i| async move {
            if i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let chunk = Bytes::from(format!("data: {i}\n\n"));
            Some((Ok::<_, Infallible>(Frame::data(chunk)), i + 1))
        });
        let resp = Response::builder()
            .header("content-type", "text/event-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .expect("response");
        return Ok(resp);
    }
    let header_map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let echo = json!({
        "server": name,
        "method": method,
        "path": path,
        "query": query,
        "headers": header_map,
        "body_len": body.len(),
    });
    let mut resp = full(200, "application/json", echo.to_string());
    resp.headers_mut()
        .insert("x-upstream", name.parse().expect("name header"));
    resp.headers_mut()
        .insert("x-remove-me", "1".parse().expect("header"));
    // A backend's own `Vary`, on request (CORS must add to it, not replace it).
    if let Some(v) = headers.get("x-want-vary") {
        resp.headers_mut().insert("vary", v.clone());
    }
    Ok(resp)
}

/// Accepts a WebSocket upgrade and echoes every message, prefixed with the server's name.
fn websocket_echo(req: &mut Request<Incoming>, name: String) -> Response<Body> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return full(400, "text/plain", "not a websocket request");
    };
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(io),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            let reply = match msg {
                Message::Text(t) => Message::text(format!("{name}: {t}")),
                Message::Close(_) => break,
                other => other,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(Full::new(Bytes::new()).boxed())
        .expect("101 response")
}

/// A TCP echo server that prefixes nothing: bytes in, same bytes out.
pub struct TcpEcho {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpEcho {
    pub async fn start() -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        TcpEcho {
            addr,
            accepted,
            task: Some(task),
        }
    }

    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop();
    }
}
