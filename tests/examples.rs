//! The shipped example configs, run as they are (only ports and backend addresses swapped for
//! the test's own) and driven end to end.

mod common;

use common::certs::TestCa;
use common::{free_port, Proxy, TcpEcho, Upstream};
use futures::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn insecure() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn server_of(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["server"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn dual_backend_example() {
    let fast = Upstream::start("fast").await;
    let heavy = Upstream::start("heavy").await;
    let (https, http) = (free_port(), free_port());
    let _p = Proxy::start_example(
        "dual-backend.yaml",
        &[
            ("0.0.0.0:8443", format!("127.0.0.1:{https}")),
            ("0.0.0.0:8080", format!("127.0.0.1:{http}")),
            ("127.0.0.1:9101", fast.addr.to_string()),
            ("127.0.0.1:9102", heavy.addr.to_string()),
        ],
    )
    .await;
    let c = insecure();
    let base = format!("https://127.0.0.1:{https}");
    let r = c.get(format!("{base}/api/ephemeris")).send().await.unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(server_of(r).await, "fast");
    let r = c
        .get(format!("{base}/api/ephemeris"))
        .header("x-historical-enabled", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(server_of(r).await, "heavy");
    let r = c
        .get(format!("{base}/api/ephemeris?kernel=de441"))
        .send()
        .await
        .unwrap();
    assert_eq!(server_of(r).await, "heavy");
    let r = c
        .get(format!("http://127.0.0.1:{http}/api/x"))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("strict-transport-security"));

    let r = c
        .request(reqwest::Method::OPTIONS, format!("{base}/api/x"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    // 10 a minute per client IP on the fast route: 2 used above (HTTPS and HTTP; the
    // preflight is answered before the limit counts).
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            c.get(format!("{base}/api/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ws_tcp_gateway_example() {
    let web = Upstream::start("web").await;
    let i3a = TcpEcho::start().await;
    let i3b = TcpEcho::start().await;
    let (http, tcp) = (free_port(), free_port());
    let _p = Proxy::start_example(
        "ws-tcp-gateway.yaml",
        &[
            ("0.0.0.0:8080", format!("127.0.0.1:{http}")),
            ("0.0.0.0:8081", format!("127.0.0.1:{tcp}")),
            ("127.0.0.1:9201", web.addr.to_string()),
            ("127.0.0.1:9301", i3a.addr.to_string()),
            ("127.0.0.1:9302", i3b.addr.to_string()),
            ("127.0.0.0/8", "127.0.0.1/32".to_string()),
        ],
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("who")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "web: who"
    );

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tcp))
        .await
        .unwrap();
    s.write_all(b"i3 startup\n").await.unwrap();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"i3 startup\n");

    // Not on the allow list: 403 over HTTP, a closed connection over TCP.
    let outsider = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = outsider
        .get(format!("http://127.0.0.1:{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock
        .connect(format!("127.0.0.1:{tcp}").parse().unwrap())
        .await
        .unwrap();
    let _ = s.write_all(b"hello?").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(
        read.is_ok() && got.is_empty(),
        "a refused client got {got:?}"
    );
}

async fn wss(
    port: u16,
    ca: &TestCa,
    local: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let tcp = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = ca.connector().connect(name, tcp).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

type Wss =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn try_ask(ws: &mut Wss) -> Result<String, String> {
    ws.send(Message::text("hi"))
        .await
        .map_err(|e| e.to_string())?;
    let reply = ws
        .next()
        .await
        .ok_or("closed")?
        .map_err(|e| e.to_string())?;
    let text = reply.into_text().map_err(|e| e.to_string())?;
    Ok(text.as_str().trim_end_matches(": hi").to_string())
}

async fn ask(ws: &mut Wss) -> String {
    try_ask(ws).await.expect("an echo")
}

/// A fresh WebSocket and its first exchange. A reset of a brand-new tunnel is retried once on
/// a new connection (seen rarely under load; see the session notes), and reported.
async fn open_and_ask(port: u16, ca: &TestCa, local: &str, p: &Proxy) -> (Wss, String) {
    let mut ws = wss(port, ca, local).await;
    match try_ask(&mut ws).await {
        Ok(home) => (ws, home),
        Err(e) => {
            eprintln!(
                "new WebSocket from {local} failed ({e}); proxy log tail:\n{}",
                tail(&p.stderr())
            );
            let mut again = wss(port, ca, local).await;
            let home = ask(&mut again).await;
            (again, home)
        }
    }
}

async fn ask_new(port: u16, ca: &TestCa, local: &str, p: &Proxy) -> String {
    open_and_ask(port, ca, local, p).await.1
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_api_example() {
    let ups = [
        Upstream::start("c1").await,
        Upstream::start("c2").await,
        Upstream::start("c3").await,
    ];
    let ca = TestCa::new("chat");
    let (https, http) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.write(dir.path(), "edge", &["localhost"]);
    let p = Proxy::start_example(
        "chat-api.yaml",
        &[
            ("0.0.0.0:8443", format!("127.0.0.1:{https}")),
            ("0.0.0.0:8080", format!("127.0.0.1:{http}")),
            (
                "redirect_to_https: 8443",
                format!("redirect_to_https: {https}"),
            ),
            (
                "self_signed: [localhost, 127.0.0.1]",
                format!(
                    "certificates: [{{cert: {}, key: {}}}]",
                    cert.display(),
                    key.display()
                ),
            ),
            ("127.0.0.1:9401", ups[0].addr.to_string()),
            ("127.0.0.1:9402", ups[1].addr.to_string()),
            ("127.0.0.1:9403", ups[2].addr.to_string()),
        ],
    )
    .await;
    let c = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.reqwest_root())
        .resolve("localhost", format!("127.0.0.1:{https}").parse().unwrap())
        .build()
        .unwrap();
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let r = c
            .get(format!("https://localhost:{https}/api/messages"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        seen.insert(server_of(r).await);
    }
    assert_eq!(seen.len(), 3, "round robin over the three instances");
    let r = insecure()
        .get(format!("http://127.0.0.1:{http}/api/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);

    // Sticky WebSockets: one client IP, one instance; many IPs spread out.
    let (mut first, home) = open_and_ask(https, &ca, "127.0.0.1", &p).await;
    for _ in 0..20 {
        assert_eq!(
            ask_new(https, &ca, "127.0.0.1", &p).await,
            home,
            "same client IP, same instance"
        );
    }
    let mut spread = HashSet::new();
    for i in 10..30 {
        spread.insert(ask_new(https, &ca, &format!("127.0.0.{i}"), &p).await);
    }
    assert!(
        spread.len() >= 2,
        "different clients spread over instances: {spread:?}"
    );

    // Silent for longer than Pingora's default 60 s read timeout: still open.
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(
        ask(&mut first).await,
        home,
        "the WebSocket survived 70 s of silence"
    );
}
