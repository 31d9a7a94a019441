//! Hot reload: the file is the source of truth. Edits are live in under a second, requests
//! never fail because of a swap, invalid files change nothing, SIGHUP reloads.

mod common;

use common::{client, free_port, run_cli, wait_until, Proxy, Upstream};
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn two_pools(port: u16, a: &Upstream, b: &Upstream, target: &str, extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  a: {{health_check: {{kind: tcp, interval: 1s}}, backends: [{{address: "{a}"}}]}}
  b: {{health_check: {{kind: tcp, interval: 1s}}, backends: [{{address: "{b}"}}]}}
routes:
  - {{name: main, match: {{path_prefix: /}}, pool: {target}}}
{extra}"#,
        a = a.addr,
        b = b.addr
    )
}

async fn served_by(url: &str) -> String {
    let v: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["server"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn rewriting_the_file_under_load_fails_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&two_pools(port, &a, &b, "a", "")).await;
    let url = format!("http://127.0.0.1:{port}/load");
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, failures, done) = (url.clone(), failures.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..250 {
                let ok = match c.get(&url).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for i in 0..20 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        p.write_raw(&format!(
            "{}{}",
            Proxy::prelude(p.dir.path(), p.admin),
            two_pools(port, &a, &b, target, &format!("# rewrite {i}\n"))
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last write sent the route to pool a.
    let written = Instant::now();
    let switched = wait_until(Duration::from_secs(1), || async {
        served_by(&url).await == "a"
    })
    .await;
    assert!(switched, "the last version was not live within 1 s");
    assert!(written.elapsed() < Duration::from_secs(1));
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 2000);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both pools served during the run"
    );
    let reloads = p
        .metric("switchyard_config_reloads_total{result=\"ok\",source=\"file\"}")
        .await
        .unwrap_or(0.0);
    assert!(reloads >= 2.0, "reloads counted: {reloads}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_files_keep_the_running_config() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&two_pools(port, &a, &b, "a", "")).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let good_hash = p.config_hash().await;
    let prelude = Proxy::prelude(p.dir.path(), p.admin);
    let good = two_pools(port, &a, &b, "b", "");
    let cases = [
        ("bad yaml", format!("{prelude}{good}  - [unclosed\n"), None),
        (
            "unknown key",
            format!("{prelude}{good}edge: {{alow: []}}\n"),
            Some("edge.alow"),
        ),
        (
            "missing pool",
            format!("{prelude}{}", two_pools(port, &a, &b, "nope", "")),
            Some("routes[0].pool"),
        ),
        (
            "bad address",
            format!(
                "{prelude}{}",
                two_pools(port, &a, &b, "b", "").replace(&b.addr.to_string(), "127.0.0.1:99999")
            ),
            Some("pools.b.backends[0].address"),
        ),
    ];
    for (i, (what, text, path)) in cases.iter().enumerate() {
        p.write_raw(text);
        let counted = wait_until(Duration::from_secs(3), || async {
            p.metric("switchyard_config_reloads_total{result=\"error\",source=\"file\"}")
                .await
                .unwrap_or(0.0)
                >= (i + 1) as f64
        })
        .await;
        assert!(counted, "{what}: the rejection was not counted");
        assert_eq!(p.config_hash().await, good_hash, "{what}: config changed");
        assert_eq!(
            served_by(&url).await,
            "a",
            "{what}: the old config stopped serving"
        );

        let (code, _, err) = run_cli(&["check", "-c", p.config_path().to_str().unwrap()], None);
        assert_eq!(code, 1, "{what}: check must fail");
        let file = p.config_path().display().to_string();
        let line = err.lines().next().unwrap_or_default();
        assert!(line.starts_with(&format!("{file}:")), "{what}: {err}");
        let after_file = &line[file.len() + 1..];
        let mut parts = after_file.splitn(3, ':');
        let (l, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        assert!(
            l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
            "{what}: no LINE:COL in {line}"
        );
        if let Some(path) = path {
            assert!(line.contains(path), "{what}: {line} should name {path}");
        }
    }
    assert!(p.stderr().contains("rejected"), "rejections are logged");
    p.reload_to(&good).await;
    assert_eq!(served_by(&url).await, "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_and_the_process_keeps_running() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let mut p = Proxy::start(&two_pools(port, &a, &b, "a", "")).await;
    p.signal("HUP");
    let counted = wait_until(Duration::from_secs(3), || async {
        p.metric("switchyard_config_reloads_total{result=\"ok\",source=\"signal\"}")
            .await
            == Some(1.0)
    })
    .await;
    assert!(counted, "SIGHUP reload not counted:\n{}", p.stderr());
    assert!(p.alive());
    assert_eq!(served_by(&format!("http://127.0.0.1:{port}/")).await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_started_before_a_swap_finishes_after_it() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&two_pools(port, &a, &b, "a", "")).await;
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/stream?n=10&ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: 0"));
    // Swap to a config where pool a is gone entirely.
    let only_b = format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  b: {{backends: [{{address: "{b}"}}]}}
routes:
  - {{name: main, match: {{path_prefix: /}}, pool: b}}
"#,
        b = b.addr
    );
    p.reload_to(&only_b).await;
    let mut rest = Vec::from(first.as_ref());
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(rest).unwrap();
    for i in 0..10 {
        assert!(
            text.contains(&format!("data: {i}\n")),
            "missing event {i}: {text}"
        );
    }
    assert_eq!(served_by(&format!("http://127.0.0.1:{port}/")).await, "b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_surviving_pool_keeps_its_health_state() {
    let mut a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let port = free_port();
    let pool = |extra: &str| {
        format!(
            r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  ab:
    health_check: {{kind: tcp, interval: 5s, unhealthy_after: 1, healthy_after: 1}}
    backends: [{{address: "{a}"}}, {{address: "{b}"}}]
routes:
  - {{name: main, match: {{path_prefix: /}}, pool: ab}}
{extra}"#,
            a = a_addr,
            b = b_addr
        )
    };
    a.stop();
    // The first check runs at start, so `a` is known down right away.
    let p = Proxy::start(&pool("")).await;
    let gauge = format!("switchyard_backend_healthy{{backend=\"{a_addr}\",pool=\"ab\"}}");
    assert!(
        wait_until(Duration::from_secs(3), || async {
            p.metric(&gauge).await == Some(0.0)
        })
        .await
    );
    p.reload_to(&pool("# unrelated edit\n")).await;
    assert_eq!(
        p.metric(&gauge).await,
        Some(0.0),
        "health state survived the reload"
    );
    // With `a` known down, no request even tries it: no new connect failure is counted.
    let failures =
        format!("switchyard_upstream_connect_failures_total{{backend=\"{a_addr}\",pool=\"ab\"}}");
    let before = p.metric(&failures).await.unwrap_or(0.0);
    for _ in 0..10 {
        assert_eq!(served_by(&format!("http://127.0.0.1:{port}/")).await, "b");
    }
    assert_eq!(p.metric(&failures).await.unwrap_or(0.0), before);
}
