//! Health checks and failover: a dead backend costs no failed GET, is marked down within
//! `unhealthy_after × interval` and back within `healthy_after × interval`; all down → 503.

mod common;

use common::{client, free_port, wait_until, Proxy, Upstream};
use std::time::{Duration, Instant};

fn config(port: u16, a: &Upstream, b: &Upstream, kind: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  app:
    health_check: {{kind: {kind}, path: /health, interval: 200ms, timeout: 200ms, healthy_after: 2, unhealthy_after: 2}}
    timeouts: {{connect: 500ms}}
    backends: [{{address: "{a}"}}, {{address: "{b}"}}]
routes:
  - {{name: app, match: {{path_prefix: /}}, pool: app, retries: 2}}
"#,
        a = a.addr,
        b = b.addr
    )
}

async fn healthy_gauge(p: &Proxy, backend: &Upstream) -> Option<f64> {
    p.metric(&format!(
        "switchyard_backend_healthy{{backend=\"{}\",pool=\"app\"}}",
        backend.addr
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_and_restarts_a_backend_without_failed_requests() {
    for kind in ["http", "tcp"] {
        let a = Upstream::start("a").await;
        let mut b = Upstream::start("b").await;
        let port = free_port();
        let p = Proxy::start(&config(port, &a, &b, kind)).await;
        let url = format!("http://127.0.0.1:{port}/work");
        let c = client();
        assert!(
            wait_until(Duration::from_secs(3), || async {
                healthy_gauge(&p, &b).await == Some(1.0)
            })
            .await
        );

        b.stop();
        let killed = Instant::now();
        // Right after the kill, before any check noticed: connect errors fail over.
        for i in 0..20 {
            let r = c.get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200, "{kind}: request {i} after the kill");
        }
        let down = wait_until(Duration::from_secs(3), || async {
            healthy_gauge(&p, &b).await == Some(0.0)
        })
        .await;
        assert!(down, "{kind}: not marked down");
        // 2 failures × 200 ms, plus one interval of slack for where the first check fell.
        assert!(
            killed.elapsed() < Duration::from_millis(2000),
            "{kind}: took {:?}",
            killed.elapsed()
        );

        let b2 = Upstream::start_on("b", b.addr).await;
        let up = wait_until(Duration::from_secs(3), || async {
            healthy_gauge(&p, &b2).await == Some(1.0)
        })
        .await;
        assert!(up, "{kind}: not marked up again");
        let before = b2.hits();
        for _ in 0..10 {
            assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
        }
        assert!(
            b2.hits() > before,
            "{kind}: the restarted backend gets traffic again"
        );
        let failures = p
            .metric(&format!(
                "switchyard_upstream_connect_failures_total{{backend=\"{}\",pool=\"app\"}}",
                b.addr
            ))
            .await;
        assert!(
            failures.unwrap_or(0.0) >= 1.0,
            "connect failures are counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn all_backends_down_answers_503_and_connect_errors_502() {
    let mut a = Upstream::start("a").await;
    let mut b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&config(port, &a, &b, "tcp")).await;
    let url = format!("http://127.0.0.1:{port}/x");
    a.stop();
    b.stop();
    // Before the checks notice, every attempt fails to connect: 502.
    let first = client().get(&url).send().await.unwrap();
    assert!(
        matches!(first.status().as_u16(), 502 | 503),
        "{}",
        first.status()
    );
    let all_down = wait_until(Duration::from_secs(3), || async {
        healthy_gauge(&p, &a).await == Some(0.0) && healthy_gauge(&p, &b).await == Some(0.0)
    })
    .await;
    assert!(all_down);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_timeout_is_504_and_drained_backend_gets_nothing() {
    let slow = Upstream::start("slow").await;
    let other = Upstream::start("other").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  slow:
    health_check: {{kind: none}}
    backends: [{{address: "{slow}"}}]
  pair:
    health_check: {{kind: none}}
    backends: [{{address: "{slow}", drain: true}}, {{address: "{other}"}}]
routes:
  - {{name: slow, match: {{path_prefix: /delay}}, pool: slow, retries: 0, timeouts: {{read: 300ms}}}}
  - {{name: pair, match: {{path_prefix: /}}, pool: pair}}
"#,
        slow = slow.addr,
        other = other.addr
    ))
    .await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/delay?ms=2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let r = client()
        .get(format!("http://127.0.0.1:{port}/delay?ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = slow.hits();
    for _ in 0..10 {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        slow.hits(),
        before,
        "a draining backend gets no new requests"
    );
    assert_eq!(other.hits(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn total_timeout_bounds_the_whole_request() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let route = ", retries: 0, timeouts: {read: 10s, total: 400ms}";
    let _p = Proxy::start(&common::one_pool(port, up.addr, route)).await;
    let started = Instant::now();
    let r = client()
        .get(format!("http://127.0.0.1:{port}/delay?ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // A stream that outlives the deadline is cut: fewer than all of its events arrive.
    let r = client()
        .get(format!("http://127.0.0.1:{port}/stream?n=10&ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap_or_default();
    assert!(
        !body.contains("data: 9"),
        "the deadline did not cut the stream: {body}"
    );
}
