//! Routing end to end: every matcher, first match wins, strip_prefix, header edits,
//! `respond`, 404, forwarded headers, request ids, host-name backends, balancing.

mod common;

use common::{client, free_port, Proxy, Upstream};
use serde_json::Value;
use std::collections::HashMap;

async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn matchers_pick_the_first_matching_route() {
    let fast = Upstream::start("fast").await;
    let heavy = Upstream::start("heavy").await;
    let other = Upstream::start("other").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  fast: {{health_check: {{kind: none}}, backends: [{{address: "{fast}"}}]}}
  heavy: {{health_check: {{kind: none}}, backends: [{{address: "{heavy}"}}]}}
  other: {{health_check: {{kind: none}}, backends: [{{address: "{other}"}}]}}
routes:
  - name: by-header
    match: {{path_prefix: /api/, headers: {{x-historical-enabled: "true"}}}}
    pool: heavy
  - name: by-query
    match: {{path_prefix: /api/, query: {{kernel: de441}}}}
    pool: heavy
  - name: by-host
    match: {{host: ["*.other.test", exact.test]}}
    pool: other
  - name: post-only
    match: {{path_prefix: /write, methods: [POST]}}
    pool: other
  - name: api
    match: {{path_prefix: /api/}}
    pool: fast
"#,
        fast = fast.addr,
        heavy = heavy.addr,
        other = other.addr
    ))
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let server = |v: &Value| v["server"].as_str().unwrap_or("").to_string();

    let (s, _, v) = get_json(&format!("{base}/api/x"), &[]).await;
    assert_eq!((s, server(&v)), (200, "fast".into()));
    let (_, _, v) = get_json(
        &format!("{base}/api/x"),
        &[("x-historical-enabled", "true")],
    )
    .await;
    assert_eq!(server(&v), "heavy");
    let (_, _, v) = get_json(&format!("{base}/api/x?a=1&kernel=de441"), &[]).await;
    assert_eq!(server(&v), "heavy");
    let (_, _, v) = get_json(&format!("{base}/api/x?kernel=de440"), &[]).await;
    assert_eq!(server(&v), "fast");
    let (_, _, v) = get_json(&format!("{base}/api/x"), &[("host", "a.other.test")]).await;
    assert_eq!(server(&v), "other");
    let (_, _, v) = get_json(&format!("{base}/anything"), &[("host", "exact.test:8080")]).await;
    assert_eq!(server(&v), "other");
    let (s, _, _) = get_json(&format!("{base}/anything"), &[("host", "b.a.other.test")]).await;
    assert_eq!(s, 404, "a wildcard covers one label only");

    let resp = client()
        .post(format!("{base}/write"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, _, _) = get_json(&format!("{base}/write"), &[]).await;
    assert_eq!(s, 404, "GET does not match a POST-only route");

    let (s, h, v) = get_json(&format!("{base}/nothing-here"), &[]).await;
    assert_eq!(s, 404);
    assert!(h.contains_key("x-request-id"));
    assert!(v.as_str().unwrap_or("").contains("no route"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rewrites_headers_and_forwards_client_facts() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - name: local
    match: {{path_prefix: /ping}}
    respond: {{status: 202, body: "pong\n", headers: {{x-local: yes}}}}
  - name: api
    match: {{path_prefix: /v1/}}
    pool: up
    strip_prefix: /v1
    request_headers: {{set: {{x-added: "1"}}, remove: [x-secret]}}
    response_headers: {{set: {{x-edge: switchyard}}, remove: [x-remove-me]}}
"#,
        up = up.addr
    ))
    .await;
    let base = format!("http://127.0.0.1:{port}");

    let resp = client().get(format!("{base}/ping")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-local"], "yes");
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert!(
        !resp.headers().contains_key("strict-transport-security"),
        "no HSTS on plain HTTP"
    );
    assert_eq!(resp.text().await.unwrap(), "pong\n");

    let (s, h, v) = get_json(
        &format!("{base}/v1/models?x=1"),
        &[
            ("x-secret", "hush"),
            ("x-request-id", "client-id-1"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["path"], "/models");
    assert_eq!(v["query"], "x=1");
    let hdr = |k: &str| v["headers"][k].as_str().unwrap_or("").to_string();
    assert_eq!(hdr("x-added"), "1");
    assert_eq!(hdr("x-secret"), "");
    assert_eq!(hdr("x-request-id"), "client-id-1");
    assert_eq!(
        hdr("x-forwarded-for"),
        "127.0.0.1",
        "an untrusted peer cannot forge the chain"
    );
    assert_eq!(hdr("x-real-ip"), "127.0.0.1");
    assert_eq!(hdr("x-forwarded-proto"), "http");
    assert_eq!(hdr("x-forwarded-host"), "127.0.0.1");
    assert_eq!(h["x-request-id"], "client-id-1");
    assert_eq!(h["x-edge"], "switchyard");
    assert!(!h.contains_key("x-remove-me"));

    let (_, h, v) = get_json(
        &format!("{base}/v1/a"),
        &[("x-request-id", "bad id with spaces")],
    )
    .await;
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(v["headers"]["x-request-id"], id.as_str());
    assert!(
        p.stdout_shows(&format!("\"request_id\":\"{id}\"")).await,
        "access log names the id"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn balances_round_robin_with_weights_and_hashes_consistently() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  rr:
    health_check: {{kind: none}}
    backends: [{{address: "{a}", weight: 3}}, {{address: "{b}"}}]
  sticky:
    balance: consistent_hash
    hash_on: header:x-user
    health_check: {{kind: none}}
    backends: [{{address: "{a}"}}, {{address: "{b}"}}]
routes:
  - {{name: sticky, match: {{path_prefix: /sticky}}, pool: sticky}}
  - {{name: rr, match: {{path_prefix: /}}, pool: rr}}
"#,
        a = a.addr,
        b = b.addr
    ))
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let (_, _, v) = get_json(&format!("{base}/x"), &[]).await;
        *count
            .entry(v["server"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(count.get("a"), Some(&30), "weight 3:1 → {count:?}");
    assert_eq!(count.get("b"), Some(&10), "weight 3:1 → {count:?}");

    for user in ["alice", "bob", "carol", "dave"] {
        let (_, _, first) = get_json(&format!("{base}/sticky"), &[("x-user", user)]).await;
        for _ in 0..5 {
            let (_, _, again) = get_json(&format!("{base}/sticky"), &[("x-user", user)]).await;
            assert_eq!(
                again["server"], first["server"],
                "{user} stays on one backend"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_name_backends_are_resolved() {
    let up = Upstream::start("named").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  named:
    dns_refresh: 1s
    health_check: {{kind: none}}
    backends: [{{address: "localhost:{up_port}"}}]
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: named}}
"#,
        up_port = up.addr.port()
    ))
    .await;
    for _ in 0..5 {
        let (s, _, v) = get_json(&format!("http://127.0.0.1:{port}/"), &[]).await;
        assert_eq!((s, v["server"].as_str()), (200, Some("named")));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_h2c_with_prior_knowledge() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&common::one_pool(port, up.addr, "")).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = c
        .get(format!("http://127.0.0.1:{port}/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["x-forwarded-host"], "127.0.0.1");
}
