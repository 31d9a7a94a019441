//! Pools under TCP listeners and passive health: `max_inflight` holds for simultaneous TCP
//! connections, `consistent_hash` on `client_ip` agrees between HTTP routes and TCP listeners,
//! and `backend_ejected` returns to 0 when an ejection ends, with no traffic.

mod common;

use common::{free_port, wait_until, Proxy, TcpEcho, Upstream};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to `port` from the loopback address `local`.
async fn connect_from(local: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

/// The in-flight count of the first backend of `pool`, from the admin `/status`.
async fn inflight(p: &Proxy, pool: &str) -> Option<u64> {
    let status: serde_json::Value = p
        .admin_req(reqwest::Method::GET, "/status")
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["pools"][pool]["backends"][0]["inflight"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_tcp_connections_never_exceed_max_inflight() {
    let echo = TcpEcho::start().await;
    let (http, tcp) = (free_port(), free_port());
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
  - {{name: mud, listen: "127.0.0.1:{tcp}", protocol: tcp, pool: mud, retries: 0}}
pools:
  mud:
    health_check: {{kind: none}}
    backends: [{{address: "{a}", max_inflight: 1}}]
routes:
  - {{name: ok, match: {{path_prefix: /}}, respond: {{status: 200}}}}
"#,
        a = echo.addr
    ))
    .await;

    // The harness's readiness probe opened a tunnel of its own: wait until it reached the
    // backend. Before each round, its slot (then the last round's) must be free again.
    let probed = wait_until(Duration::from_secs(5), || async {
        echo.accepted.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(probed, "the readiness probe never reached the backend");

    // Rounds of twenty connections arriving at once: each either gets a tunnel (its bytes
    // echoed) or is closed by the proxy. All are held open until every one has its answer.
    // Several rounds, because a race between choice and reservation is not lost every time.
    const N: usize = 20;
    for round in 0..8 {
        let idle = wait_until(Duration::from_secs(5), || async {
            inflight(&p, "mud").await == Some(0)
        })
        .await;
        assert!(
            idle,
            "round {round}: the last tunnel's slot was never given back"
        );
        let before = echo.accepted.load(Ordering::SeqCst);
        let streams = futures::future::join_all(
            (0..N).map(|_| connect_from(IpAddr::from([127, 0, 0, 1]), tcp)),
        )
        .await;
        let mut tunnelled = 0;
        let mut held = Vec::new();
        for s in streams {
            let mut s = s.expect("the TCP listener accepts");
            let mut byte = [0u8; 1];
            let echoed = s.write_all(b"x").await.is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte)).await,
                    Ok(Ok(1))
                );
            if echoed {
                tunnelled += 1;
            }
            held.push(s);
        }
        assert_eq!(
            tunnelled, 1,
            "round {round}: max_inflight: 1 let {tunnelled} simultaneous tunnels through"
        );
        assert_eq!(
            echo.accepted.load(Ordering::SeqCst) - before,
            1,
            "round {round}: the backend saw more than one connection"
        );
        assert_eq!(inflight(&p, "mud").await, Some(1));
    }
    let released = wait_until(Duration::from_secs(5), || async {
        inflight(&p, "mud").await == Some(0)
    })
    .await;
    assert!(released, "the slot was not given back:\n{}", p.stderr());
}

/// Which backend answered a raw HTTP/1.1 request sent through the TCP listener.
async fn tcp_backend(local: IpAddr, port: u16) -> String {
    let mut s = connect_from(local, port)
        .await
        .expect("connect to TCP listener");
    s.write_all(b"GET /who HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the tunnel answers in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-upstream")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no x-upstream in the tunnelled answer: {text:?}"))
}

async fn http_backend(local: IpAddr, port: u16) -> String {
    let c = reqwest::Client::builder()
        .local_address(local)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let r = c
        .get(format!("http://127.0.0.1:{port}/who"))
        .send()
        .await
        .expect("HTTP answer");
    assert_eq!(r.status(), 200);
    r.headers()["x-upstream"]
        .to_str()
        .expect("name")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_on_client_ip_picks_the_same_backend_for_http_and_tcp() {
    let mut ups = Vec::new();
    for name in ["b0", "b1", "b2", "b3"] {
        ups.push(Upstream::start(name).await);
    }
    let backends: Vec<String> = ups
        .iter()
        .map(|u| format!("{{address: \"{}\"}}", u.addr))
        .collect();
    let (http, tcp) = (free_port(), free_port());
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
  - {{name: raw, listen: "127.0.0.1:{tcp}", protocol: tcp, pool: gpu}}
pools:
  gpu:
    balance: consistent_hash
    hash_on: client_ip
    health_check: {{kind: none}}
    backends: [{b}]
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: gpu}}
"#,
        b = backends.join(", ")
    ))
    .await;

    // Twelve clients (127.0.0.0/8 is all loopback), each through both doors.
    let mut seen = std::collections::BTreeSet::new();
    for last in 1..=12u8 {
        let ip = IpAddr::from([127, 0, 0, last]);
        let by_http = http_backend(ip, http).await;
        let by_tcp = tcp_backend(ip, tcp).await;
        assert_eq!(
            by_http, by_tcp,
            "client {ip}: HTTP went to {by_http}, TCP to {by_tcp}"
        );
        // Stable, too: the same client again lands where it did.
        assert_eq!(http_backend(ip, http).await, by_http);
        seen.insert(by_http);
    }
    // A key that hashed to nothing would put everyone on one backend and agree trivially.
    assert!(
        seen.len() >= 2,
        "twelve client addresses all landed on {seen:?}:\n{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_ejected_returns_to_zero_when_the_ejection_ends_without_traffic() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  up:
    health_check: {{kind: none}}
    passive_health: {{consecutive_failures: 1, eject_for: 1s}}
    backends: [{{address: "{dead}"}}]
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: up, retries: 0}}
"#
    ))
    .await;
    let series = format!("switchyard_backend_ejected{{backend=\"{dead}\",pool=\"up\"}}");
    assert_eq!(
        p.metric(&series).await,
        Some(0.0),
        "the series exists from the start"
    );

    // One refused connection ejects the only backend.
    let r = common::client()
        .get(format!("http://127.0.0.1:{http}/"))
        .send()
        .await
        .expect("an answer");
    assert!(r.status().is_server_error(), "{}", r.status());
    let ejected_at = Instant::now();
    assert_eq!(p.metric(&series).await, Some(1.0), "{}", p.stderr());

    // No more requests: the gauge must still come back down once eject_for is over.
    let back = wait_until(Duration::from_secs(5), || async {
        p.metric(&series).await == Some(0.0)
    })
    .await;
    assert!(back, "backend_ejected stayed 1 after eject_for");
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(900),
        "the gauge dropped before the ejection was over ({:?})",
        ejected_at.elapsed()
    );
    let logged = wait_until(Duration::from_secs(3), || async {
        p.stderr().contains("is back from its ejection")
    })
    .await;
    assert!(logged, "no log line for the end of the ejection");
}
