//! `listeners[].proxy_protocol` and `send_proxy_protocol`, end to end: a real HAProxy in front
//! (`send-proxy` and `send-proxy-v2`) of an HTTP, a TLS and a TCP listener, clients on their
//! own loopback addresses (127.0.0.2, 127.0.0.3) so that the address switchyard reports can
//! only have come from the header, and raw sockets for what a balancer must never send.

mod common;

use common::{free_port, wait_until, Proxy, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const CLIENT: [u8; 4] = [127, 0, 0, 2];
const DENIED: [u8; 4] = [127, 0, 0, 3];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// HAProxy in TCP mode, one frontend per (name, backend address, server options).
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
    ports: Vec<(String, u16)>,
}

impl Haproxy {
    async fn start(routes: &[(&str, SocketAddr, &str)]) -> Haproxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = String::from(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
        );
        let mut ports = Vec::new();
        for (name, to, opts) in routes {
            let port = free_port();
            cfg.push_str(&format!(
                "frontend f_{name}\n  bind 127.0.0.1:{port}\n  default_backend b_{name}\nbackend b_{name}\n  server s {to} {opts}\n"
            ));
            ports.push((name.to_string(), port));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/sbin/haproxy");
        let h = Haproxy {
            child,
            _dir: dir,
            ports,
        };
        for (name, port) in &h.ports {
            let up = wait_until(Duration::from_secs(10), || async {
                TcpStream::connect(("127.0.0.1", *port)).await.is_ok()
            })
            .await;
            assert!(up, "haproxy frontend {name} never listened");
        }
        h
    }

    fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .expect("a frontend of that name")
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that connects from `from`.
fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip(from))
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip(from), 0))
        .expect("bind the client address");
    socket.connect(to).await.expect("connect")
}

/// Sends `bytes` and reads until the proxy closes; what came back, and how long it took.
async fn raw(from: [u8; 4], to: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = connect_from(from, to).await;
    let _ = s.write_all(bytes).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was not closed");
    (got, started.elapsed())
}

/// A TCP backend that reads the PROXY header with `ppp` and answers with the source and
/// destination it carries, then echoes.
struct HeaderBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HeaderBackend {
    async fn start() -> HeaderBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 512];
                    let (line, used) = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(done) = describe(&buf) {
                            break done;
                        }
                    };
                    let _ = s.write_all(line.as_bytes()).await;
                    let _ = s.write_all(&buf[used..]).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        HeaderBackend { addr, task }
    }
}

impl Drop for HeaderBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `v1 SRC DST\n` / `v2 SRC DST\n` (or `… local\n`) once a header is whole, with its length.
fn describe(buf: &[u8]) -> Option<(String, usize)> {
    use ppp::{v1, v2, HeaderResult, PartialResult};
    let header = HeaderResult::parse(buf);
    if header.is_incomplete() {
        return None;
    }
    Some(match header {
        HeaderResult::V1(Ok(h)) => {
            let text = match h.addresses {
                v1::Addresses::Tcp4(a) => format!(
                    "v1 {}:{} {}:{}\n",
                    a.source_address, a.source_port, a.destination_address, a.destination_port
                ),
                other => format!("v1 {other:?}\n"),
            };
            (text, h.header.len())
        }
        HeaderResult::V2(Ok(h)) => {
            let text = match (h.command, h.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => format!(
                    "v2 {}:{} {}:{}\n",
                    a.source_address, a.source_port, a.destination_address, a.destination_port
                ),
                (command, other) => format!("v2 {command:?} {other:?}\n"),
            };
            (text, h.len())
        }
        bad => (format!("bad {bad:?}\n"), buf.len()),
    })
}

async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while s.read_exact(&mut byte).await.is_ok() && byte[0] != b'\n' {
            line.push(byte[0]);
        }
    })
    .await;
    assert!(read.is_ok(), "no line from the backend");
    String::from_utf8_lossy(&line).into_owned()
}

struct Rig {
    proxy: Proxy,
    upstream: Upstream,
    haproxy: Haproxy,
    _backend: HeaderBackend,
    http: SocketAddr,
    redirect: SocketAddr,
    https: SocketAddr,
    tcp_send_v2: SocketAddr,
}

async fn rig() -> Rig {
    let upstream = Upstream::start("up").await;
    let backend = HeaderBackend::start().await;
    let [http, https, tcp_in, tcp_send_v2, redirect] =
        [0; 5].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let proxy = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "{http}", proxy_protocol: {{trusted: [127.0.0.1/32]}}}}
  - name: https
    listen: "{https}"
    tls: {{self_signed: [localhost, 127.0.0.1]}}
    proxy_protocol: {{trusted: [127.0.0.1]}}
  - {{name: tcp-in, listen: "{tcp_in}", protocol: tcp, pool: pp,
     proxy_protocol: {{trusted: [127.0.0.1]}}, send_proxy_protocol: v1}}
  - {{name: redir, listen: "{redirect}", redirect_to_https: 8443,
     proxy_protocol: {{trusted: [127.0.0.1]}}}}
  - {{name: tcp-send, listen: "{tcp_send_v2}", protocol: tcp, pool: pp, send_proxy_protocol: v2}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
  pp: {{health_check: {{kind: none}}, backends: [{{address: "{pp}"}}]}}
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: up}}
edge:
  deny: [127.0.0.3/32]
  header_timeout: 1s
"#,
        up = upstream.addr,
        pp = backend.addr,
    ))
    .await;
    let haproxy = Haproxy::start(&[
        ("http_v2", http, "send-proxy-v2"),
        ("http_v1", http, "send-proxy"),
        ("https_v2", https, "send-proxy-v2"),
        ("https_v1", https, "send-proxy"),
        ("tcp_v2", tcp_in, "send-proxy-v2"),
    ])
    .await;
    Rig {
        proxy,
        upstream,
        haproxy,
        _backend: backend,
        http,
        redirect,
        https,
        tcp_send_v2,
    }
}

async fn rejected(p: &Proxy, listener: &str, reason: &str) -> f64 {
    let series = format!(
        "switchyard_proxy_protocol_rejected_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
    );
    p.metric(&series).await.unwrap_or(-1.0)
}

#[tokio::test]
async fn the_client_address_comes_from_haproxys_header_on_http_and_tls() {
    let r = rig().await;
    let client = client_from(CLIENT);
    for (frontend, scheme) in [
        ("http_v2", "http"),
        ("http_v1", "http"),
        ("https_v2", "https"),
        ("https_v1", "https"),
    ] {
        let url = format!(
            "{scheme}://127.0.0.1:{}/who/{frontend}",
            r.haproxy.port(frontend)
        );
        let resp = client.get(&url).send().await.expect(frontend);
        assert_eq!(resp.status(), 200, "{frontend}");
        let seen = r.upstream.last().expect("the backend saw the request");
        assert_eq!(seen.path, format!("/who/{frontend}"));
        // HAProxy connects from 127.0.0.1; only the header says 127.0.0.2.
        assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.2", "{frontend}");
        assert_eq!(seen.headers["x-real-ip"], "127.0.0.2", "{frontend}");
        let logged = wait_until(Duration::from_secs(3), || async {
            r.proxy.stdout().lines().any(|l| {
                l.contains(&format!("\"path\":\"/who/{frontend}\""))
                    && l.contains("\"client_ip\":\"127.0.0.2\"")
            })
        })
        .await;
        assert!(logged, "{frontend}: access log:\n{}", r.proxy.stdout());
    }
    // edge.deny applies to the address in the header.
    let denied = client_from(DENIED);
    for frontend in ["http_v2", "https_v1"] {
        let scheme = if frontend.starts_with("https") {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://127.0.0.1:{}/", r.haproxy.port(frontend));
        let resp = denied.get(&url).send().await.expect(frontend);
        assert_eq!(resp.status(), 403, "{frontend}");
    }
    // HAProxy's own readiness probes and connections were all accepted.
    for l in ["http", "https"] {
        for reason in ["untrusted", "missing", "malformed", "timeout"] {
            assert_eq!(rejected(&r.proxy, l, reason).await, 0.0, "{l} {reason}");
        }
    }
}

#[tokio::test]
async fn tcp_listeners_take_the_header_from_haproxy_and_send_their_own() {
    let r = rig().await;
    // HAProxy (v2) → tcp-in (reads it, sends v1) → the backend.
    let frontend = SocketAddr::from(([127, 0, 0, 1], r.haproxy.port("tcp_v2")));
    let mut s = connect_from(CLIENT, frontend).await;
    let me = s.local_addr().expect("local");
    s.write_all(b"ping\n").await.expect("write");
    assert_eq!(read_line(&mut s).await, format!("v1 {me} {frontend}"));
    assert_eq!(read_line(&mut s).await, "ping");
    // No header in, v2 out: the socket's own addresses.
    let mut s = connect_from(CLIENT, r.tcp_send_v2).await;
    let me = s.local_addr().expect("local");
    s.write_all(b"pong\n").await.expect("write");
    assert_eq!(
        read_line(&mut s).await,
        format!("v2 {me} {}", r.tcp_send_v2)
    );
    assert_eq!(read_line(&mut s).await, "pong");
    // edge.deny on a TCP listener with a header: the client it names, not HAProxy.
    let (got, _) = {
        let mut s = connect_from(DENIED, frontend).await;
        let _ = s.write_all(b"ping\n").await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
        assert!(read.is_ok(), "a denied client's tunnel stayed open");
        (got, ())
    };
    assert!(
        got.is_empty(),
        "a denied client reached the backend: {got:?}"
    );
}

#[tokio::test]
async fn bad_headers_and_untrusted_peers_are_closed_and_counted() {
    let r = rig().await;
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let hits = r.upstream.hits();

    // No header: HTTP straight away, on the plaintext and on the TLS listener.
    let (got, _) = raw([127, 0, 0, 1], r.http, get).await;
    assert!(got.is_empty(), "answered without a header: {got:?}");
    let (got, _) = raw([127, 0, 0, 1], r.https, b"\x16\x03\x01\x00\x05hello").await;
    assert!(got.is_empty());
    assert_eq!(rejected(&r.proxy, "http", "missing").await, 1.0);
    assert_eq!(rejected(&r.proxy, "https", "missing").await, 1.0);

    // A header that is not one.
    let mut bad = b"PROXY TCP4 127.0.0.999 127.0.0.1 5555 80\r\n".to_vec();
    bad.extend_from_slice(get);
    let (got, _) = raw([127, 0, 0, 1], r.http, &bad).await;
    assert!(got.is_empty());
    assert_eq!(rejected(&r.proxy, "http", "malformed").await, 1.0);

    // A good header from a peer outside `trusted`.
    let mut good = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n".to_vec();
    good.extend_from_slice(get);
    let (got, _) = raw(CLIENT, r.http, &good).await;
    assert!(got.is_empty());
    let (got, _) = raw(CLIENT, r.https, &good).await;
    assert!(got.is_empty());
    assert_eq!(rejected(&r.proxy, "http", "untrusted").await, 1.0);
    assert_eq!(rejected(&r.proxy, "https", "untrusted").await, 1.0);

    // Half a header, then silence: closed at edge.header_timeout (1 s).
    let (got, took) = raw([127, 0, 0, 1], r.http, b"PROXY TCP4 192.0").await;
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(rejected(&r.proxy, "http", "timeout").await, 1.0);
    assert_eq!(
        r.upstream.hits(),
        hits,
        "a rejected connection reached the backend"
    );

    // The same good header from the trusted peer is served, as 192.0.2.7.
    let (got, _) = raw([127, 0, 0, 1], r.http, &good).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let seen = r.upstream.last().expect("served");
    assert_eq!(seen.headers["x-forwarded-for"], "192.0.2.7");

    // A redirect listener reads the header too.
    let (got, _) = raw([127, 0, 0, 1], r.redirect, &good).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 308"),
        "{got:?}"
    );
    let (got, _) = raw([127, 0, 0, 1], r.redirect, get).await;
    assert!(got.is_empty());
    assert_eq!(rejected(&r.proxy, "redir", "missing").await, 1.0);

    // v2 LOCAL (a balancer's health check): the socket peer is the client.
    let mut local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .expect("a LOCAL header");
    local.extend_from_slice(get);
    let (got, _) = raw([127, 0, 0, 1], r.http, &local).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let seen = r.upstream.last().expect("served");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    let stderr = r.proxy.stderr();
    assert!(
        stderr.contains("listener http: closed a connection from 127.0.0.2")
            && stderr.contains("not in proxy_protocol.trusted"),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_rejects_an_empty_trusted_list_and_send_on_http() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.yaml");
    std::fs::write(
        &path,
        format!(
            "{}listeners:\n  - {{name: a, listen: 127.0.0.1:1, proxy_protocol: {{trusted: []}}}}\n  - {{name: b, listen: 127.0.0.1:2, send_proxy_protocol: v2, proxy_protocol: {{trusted: [10.0.0.0/8]}}}}\n",
            Proxy::prelude(dir.path(), free_port())
        ),
    )
    .expect("write");
    let (code, out, err) = common::run_cli(&["check", "-c", path.to_str().expect("path")], None);
    let text = format!("{out}{err}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("listeners[0].proxy_protocol.trusted"),
        "{text}"
    );
    assert!(text.contains("listeners[1].send_proxy_protocol"), "{text}");
    // A bad CIDR is refused when the file is read, with its place.
    let bad = std::fs::read_to_string(&path)
        .expect("read")
        .replace("10.0.0.0/8", "10.0.0.0/33");
    std::fs::write(&path, bad).expect("write");
    let (code, out, err) = common::run_cli(&["check", "-c", path.to_str().expect("path")], None);
    let text = format!("{out}{err}");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("listeners[1].proxy_protocol.trusted[0]"),
        "{text}"
    );
}
