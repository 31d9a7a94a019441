//! Edge policies end to end: client IP through trusted proxies, allow/deny (HTTP and TCP),
//! rate limits (surviving reloads), CORS, and raw TCP listeners.

mod common;

use common::{client, free_port, Proxy, TcpEcho, Upstream};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn echo(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let (status, h) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    (
        status,
        h,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn policies(port: u16, up: &Upstream, edge: &str, route_extra: &str) -> String {
    format!(
        "{}edge:
{edge}
",
        common::one_pool(port, up.addr, route_extra)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ip_comes_from_trusted_proxies_only() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&policies(
        port,
        &up,
        "  trusted_proxies: [127.0.0.1/32, 10.0.0.0/8]",
        "",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/");
    let real_ip = |v: &Value| v["headers"]["x-real-ip"].as_str().unwrap_or("").to_string();

    // Spoofed left-most entries are ignored; two trusted hops are skipped.
    let (_, _, v) = echo(
        &client(),
        &url,
        &[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.7")],
    )
    .await;
    assert_eq!(real_ip(&v), "5.5.5.5");
    assert_eq!(
        v["headers"]["x-forwarded-for"],
        "6.6.6.6, 5.5.5.5, 10.0.0.7, 127.0.0.1"
    );
    // A peer that is not trusted: its X-Forwarded-For means nothing.
    let (_, _, v) = echo(&from("127.0.0.2"), &url, &[("x-forwarded-for", "5.5.5.5")]).await;
    assert_eq!(real_ip(&v), "127.0.0.2");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_beats_allow_for_ipv4_and_ipv6() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&policies(
        port,
        &up,
        "  trusted_proxies: [127.0.0.1/32]\n  allow: [127.0.0.0/8, \"2001:db8::/32\"]\n  deny: [127.0.0.3/32, \"2001:db8:bad::/48\"]",
        ", deny: [127.0.0.4]",
    ))
    .await;
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(echo(&from("127.0.0.2"), &url, &[]).await.0, 200);
    assert_eq!(
        echo(&from("127.0.0.3"), &url, &[]).await.0,
        403,
        "edge deny beats edge allow"
    );
    assert_eq!(
        echo(&from("127.0.0.4"), &url, &[]).await.0,
        403,
        "route deny"
    );
    let v6 = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(echo(&client(), &url, &v6("2001:db8::5")).await.0, 200);
    assert_eq!(echo(&client(), &url, &v6("2001:db8:bad::5")).await.0, 403);
    assert_eq!(
        echo(&client(), &url, &v6("2001:db9::5")).await.0,
        403,
        "not in the allow list"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_per_client_survive_reloads() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let limited = ", rate_limit: {requests: 10, per: 1m, key: client_ip}";
    let p = Proxy::start(&policies(port, &up, "  security_headers: true", limited)).await;
    let url = format!("http://127.0.0.1:{port}/");
    let busy = from("127.0.0.5");
    for i in 0..10 {
        assert_eq!(echo(&busy, &url, &[]).await.0, 200, "request {i}");
    }
    let (status, headers, _) = echo(&busy, &url, &[]).await;
    assert_eq!(status, 429);
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        echo(&from("127.0.0.6"), &url, &[]).await.0,
        200,
        "other clients are unaffected"
    );

    // A reload that keeps the route (and its limit) keeps its counters.
    p.reload_to(&format!(
        "{}# edited\n",
        policies(port, &up, "  security_headers: true", limited)
    ))
    .await;
    assert_eq!(
        echo(&busy, &url, &[]).await.0,
        429,
        "the count survived the reload"
    );
    assert_eq!(
        p.metric("switchyard_rate_limited_total{route=\"all\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflight_and_headers() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let cors = ", cors: {allow_origins: [\"https://app.example.com\"], allow_methods: [GET, POST], max_age: 10m, expose_headers: [x-request-id]}";
    let _p = Proxy::start(&policies(port, &up, "  security_headers: true", cors)).await;
    let url = format!("http://127.0.0.1:{port}/data");
    let preflight = |origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let r = preflight("https://app.example.com").await.unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["vary"], "Origin");
    assert_eq!(up.hits(), 0, "preflights are answered by the proxy");

    let r = preflight("https://evil.example.com").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let (s, h, _) = echo(&client(), &url, &[("origin", "https://app.example.com")]).await;
    assert_eq!(s, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    let (_, h, _) = echo(&client(), &url, &[("origin", "https://evil.example.com")]).await;
    assert!(!h.contains_key("access-control-allow-origin"));
    assert!(
        !h.contains_key("strict-transport-security"),
        "no HSTS on plaintext"
    );
    assert_eq!(h["x-frame-options"], "DENY");
}

fn tcp_config(http: u16, tcp: u16, a: &TcpEcho, b: &TcpEcho, edge: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
  - {{name: mud, listen: "127.0.0.1:{tcp}", protocol: tcp, pool: mud, idle: 2s, retries: 2}}
pools:
  mud:
    health_check: {{kind: tcp, interval: 200ms, timeout: 200ms, unhealthy_after: 1, healthy_after: 1}}
    timeouts: {{connect: 500ms}}
    backends: [{{address: "{a}"}}, {{address: "{b}"}}]
routes:
  - {{name: ok, match: {{path_prefix: /}}, respond: {{status: 200}}}}
edge:
{edge}
"#,
        a = a.addr,
        b = b.addr
    )
}

async fn roundtrip(port: u16, local: &str, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{local}:0").parse().unwrap())?;
    let s = socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await?;
    let (mut r, mut w) = s.into_split();
    let data = payload.to_vec();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    writer.await.map_err(std::io::Error::other)??;
    Ok(got)
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_listeners_tunnel_fail_over_and_filter_at_accept() {
    let a = TcpEcho::start().await;
    let mut b = TcpEcho::start().await;
    let (http, tcp) = (free_port(), free_port());
    let p = Proxy::start(&tcp_config(http, tcp, &a, &b, "  deny: [127.0.0.9/32]")).await;

    assert_eq!(
        roundtrip(tcp, "127.0.0.1", b"hello mud\n").await.unwrap(),
        b"hello mud\n"
    );

    // Many connections at once, 10 MiB in total, byte for byte.
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        tasks.push(tokio::spawn(async move {
            let payload: Vec<u8> = (0..1 << 20)
                .map(|j: u32| (j as u8).wrapping_add(i))
                .collect();
            let got = roundtrip(tcp, "127.0.0.1", &payload).await.unwrap();
            assert!(got == payload, "connection {i}: bytes differ");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(a.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert!(
        b.accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "spread over both"
    );

    // Denied at accept: the connection is closed before any byte is tunnelled.
    let denied = roundtrip(tcp, "127.0.0.9", b"let me in").await;
    assert!(
        denied.map(|b| b.is_empty()).unwrap_or(true),
        "a denied client got data"
    );

    // A dead backend: new connections go to the other one at once.
    b.stop();
    let dead = b.addr;
    let refused = common::wait_until(Duration::from_secs(3), || async {
        tokio::net::TcpStream::connect(dead).await.is_err()
    })
    .await;
    assert!(refused, "the stopped backend still accepts");
    for _ in 0..6 {
        assert_eq!(
            roundtrip(tcp, "127.0.0.1", b"still\n").await.unwrap(),
            b"still\n"
        );
    }
    let m = p.metrics().await;
    assert!(m.contains("switchyard_tcp_connections_total{listener=\"mud\"}"));
    assert!(m.contains("switchyard_tcp_bytes_total{direction=\"upstream\",listener=\"mud\"}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_idle_tunnels_are_closed() {
    let a = TcpEcho::start().await;
    let b = TcpEcho::start().await;
    let (http, tcp) = (free_port(), free_port());
    let _p = Proxy::start(&tcp_config(http, tcp, &a, &b, "  deny: []")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", tcp))
        .await
        .unwrap();
    s.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 1];
    // The echo comes back at once, not when the tunnel ends.
    tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf))
        .await
        .expect("echoed before the idle timeout")
        .unwrap();
    // idle: 2s, then the proxy closes the tunnel.
    let closed = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_are_cut_and_do_not_starve_others() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let p = Proxy::start(&policies(port, &up, "  header_timeout: 1s", "")).await;
    let url = format!("http://127.0.0.1:{port}/");

    // 300 slowloris sockets, each dribbling a request head.
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    let gauge = "switchyard_downstream_connections{listener=\"http\"}";
    let counted = common::wait_until(Duration::from_secs(3), || async {
        p.metric(gauge).await.unwrap_or(0.0) >= 300.0
    })
    .await;
    assert!(counted, "open connections are counted");
    let dribble = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut closed = 0;
        for s in slow.iter_mut() {
            let mut buf = [0u8; 64];
            // Keep writing one header byte every 100 ms until the proxy hangs up.
            loop {
                if s.write_all(b"X").await.is_err() {
                    break;
                }
                match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                if started.elapsed() > Duration::from_secs(10) {
                    return (closed, started.elapsed());
                }
            }
            closed += 1;
        }
        (closed, started.elapsed())
    });
    // Meanwhile, normal requests are served promptly.
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "slow: {:?}",
            started.elapsed()
        );
    }
    let (closed, took) = dribble.await.unwrap();
    assert_eq!(closed, 300, "every slow head was cut (after {took:?})");
    assert!(took < Duration::from_secs(5), "cut after {took:?}");

    // A keep-alive connection: the second request's head gets its own deadline.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await; // idle is not slow
    s.write_all(b"GET / HT").await.unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf)).await;
    assert!(matches!(cut, Ok(Ok(0)) | Ok(Err(_))), "{cut:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&policies(port, &up, "  keepalive_timeout: 1s", "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // the rest of the first answer
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_trickles_past_the_body_timeout_is_cut() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&policies(port, &up, "  body_timeout: 1s", "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if wr.write_all(&[b'z'; 10]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(6), rd.read(&mut buf))
        .await
        .expect("cut in time")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "got {head:?}");
    trickle.abort();
    assert_eq!(up.hits(), 0, "the backend never got the whole body");
}
