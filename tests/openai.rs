//! The OpenAI gateway: model routing with whole bodies, `/v1/models`, client and backend
//! keys, streaming, failover, passive ejection, balancing limits, `retry_on`, token metrics,
//! and the official `openai` Python SDK over TLS.

mod common;

use common::certs::TestCa;
use common::mock_openai::{MockOpenAi, USAGE};
use common::{client, free_port, wait_until, Proxy, Upstream};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::time::Duration;

const KEY: &str = "client-key-0123456789";
const SCOPED: &str = "scoped-key-0123456789";

struct Gateway {
    proxy: Proxy,
    http: u16,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        client().post(self.url(path)).bearer_auth(KEY)
    }
}

/// `pool` is the YAML of the `gpus` pool's extra settings and backends.
async fn gateway(pool: &str, route_extra: &str, tls: Option<(&TestCa, u16)>) -> Gateway {
    let http = free_port();
    let mut p = Proxy::new();
    let tls_listener = match tls {
        Some((ca, port)) => {
            ca.write(p.dir.path(), "edge", &["localhost"]);
            format!("  - {{name: https, listen: \"127.0.0.1:{port}\", tls: {{certificates: [{{cert: edge.crt, key: edge.key}}]}}}}\n")
        }
        None => String::new(),
    };
    p.write_config(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
{tls_listener}pools:
  gpus:
{pool}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: gpus
    openai: true
    auth: {{api_keys: ["{KEY}", {{key: "{SCOPED}", name: team, models: [qwen]}}]}}
{route_extra}
"#
    ));
    p.spawn().await;
    Gateway { proxy: p, http }
}

fn backends(list: &[(&MockOpenAi, &str)]) -> String {
    let mut s = String::from("    health_check: {kind: none}\n    backends:\n");
    for (m, extra) in list {
        s.push_str(&format!("      - {{address: \"{}\"{extra}}}\n", m.addr));
    }
    s
}

fn chat(model: &str, filler: usize) -> Vec<u8> {
    let v = json!({"model": model, "messages": [{"role": "user", "content": "x".repeat(filler)}]});
    serde_json::to_vec(&v).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_sdk_works_over_tls() {
    let status = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .expect("python3");
    assert!(
        status.success(),
        "the openai package is missing: pip install openai"
    );
    let a = MockOpenAi::start("a", &["llama"]).await;
    let ca = TestCa::new("edge");
    let tls = free_port();
    let g = gateway(
        &backends(&[(&a, ", models: [llama]")]),
        "",
        Some((&ca, tls)),
    )
    .await;
    let ca_file = g.proxy.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("BASE_URL", format!("https://localhost:{tls}/v1"))
        .env("API_KEY", KEY)
        .env("CA_FILE", &ca_file)
        .env("MODEL", "llama")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_of_every_size_reach_the_right_backend_intact() {
    let llama = MockOpenAi::start("llama-box", &["llama"]).await;
    let qwen = MockOpenAi::start("qwen-box", &["qwen"]).await;
    let g = gateway(
        &backends(&[(&llama, ", models: [llama]"), (&qwen, ", models: [qwen]")]),
        "",
        None,
    )
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut sent = 0;
    for size in [1 << 10, 60 << 10, 100 << 10, 900 << 10] {
        for model in ["llama", "qwen"] {
            let body = chat(model, size);
            for (proto, c) in [("h1", client()), ("h2", h2.clone())] {
                let r = c
                    .post(g.url("/v1/chat/completions"))
                    .bearer_auth(KEY)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(
                    r.status(),
                    200,
                    "{proto} {model} {size}: {}",
                    r.text().await.unwrap()
                );
                sent += 1;
                let target = if model == "llama" { &llama } else { &qwen };
                let last = target.calls().last().cloned().unwrap();
                assert_eq!(
                    last.body_sha256,
                    sha(&body),
                    "{proto} {model} {size}: body changed"
                );
                assert_eq!(last.model.as_deref(), Some(model));
            }
        }
    }
    assert_eq!(llama.calls().len() + qwen.calls().len(), sent);

    // Without a length (chunked): every size over HTTP/1.1; over HTTP/2 up to 64 KiB.
    let cases = [
        ("h1", client(), 1 << 10, 200),
        ("h1", client(), 100 << 10, 200),
        ("h1", client(), 900 << 10, 200),
        ("h2", h2.clone(), 60 << 10, 200),
        ("h2", h2.clone(), 100 << 10, 411),
    ];
    for (proto, c, size, want) in cases {
        let body = chat("llama", size);
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
            .chunks(8192)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        let r = c
            .post(g.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{proto} chunked {size}");
        if want == 200 {
            assert_eq!(llama.calls().last().unwrap().body_sha256, sha(&body));
        } else {
            let v: Value = r.json().await.unwrap();
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Content-Length"));
        }
    }

    let before = llama.calls().len();
    let too_big = chat("llama", (1 << 20) + 1);
    let r = g
        .post("/v1/chat/completions")
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(llama.calls().len(), before, "the backend saw nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_keys_and_openai_errors() {
    let a = MockOpenAi::start("a", &["llama", "qwen"]).await;
    let g = gateway(
        &backends(&[(&a, ", models: [llama, qwen], api_key: \"upstream-secret\"")]),
        "",
        None,
    )
    .await;
    let list: Value = client()
        .get(g.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(list["object"], "list");
    assert_eq!(ids, ["llama", "qwen"]);
    let scoped: Value = client()
        .get(g.url("/v1/models"))
        .header("x-api-key", SCOPED)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(scoped["data"].as_array().unwrap().len(), 1);
    assert_eq!(scoped["data"][0]["id"], "qwen");

    let r = client()
        .post(g.url("/v1/chat/completions"))
        .body(chat("llama", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");

    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("x-api-key", SCOPED)
        .body(chat("llama", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a scoped key cannot use other models");
    let r = g
        .post("/v1/chat/completions")
        .body(chat("gpt-9", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    for bad in [&b"not json"[..], br#"{"messages": []}"#] {
        let r = g
            .post("/v1/chat/completions")
            .body(bad.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    let r = g
        .post("/v1/chat/completions")
        .body(chat("llama", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let call = a.calls().last().cloned().unwrap();
    assert_eq!(
        call.authorization.as_deref(),
        Some("Bearer upstream-secret"),
        "the backend key replaces the client's"
    );
    let r = g
        .post("/v1/embeddings")
        .body(br#"{"model":"qwen","input":"x"}"#.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_event_by_event_and_counts_tokens() {
    let a = MockOpenAi::start("a", &["llama"]).await;
    let g = gateway(&backends(&[(&a, ", models: [llama]")]), "", None).await;
    let tokens =
        |kind: &str| format!("switchyard_openai_tokens_total{{kind=\"{kind}\",model=\"llama\"}}");

    // JSON answers.
    for _ in 0..2 {
        let r = g
            .post("/v1/chat/completions")
            .body(chat("llama", 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let counted = wait_until(Duration::from_secs(2), || async {
        g.proxy.metric(&tokens("prompt")).await == Some(2.0 * USAGE.0 as f64)
    })
    .await;
    assert!(counted, "JSON usage not counted");
    assert_eq!(
        g.proxy.metric(&tokens("completion")).await,
        Some(2.0 * USAGE.1 as f64)
    );

    // A stream: the first event arrives while the backend still holds the rest.
    a.knobs.hold_streams.store(true, Ordering::SeqCst);
    let body = json!({"model": "llama", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = g
        .post("/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the first event arrived before the backend finished")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("hello"));
    a.knobs.release.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = events.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let counted = wait_until(Duration::from_secs(2), || async {
        g.proxy.metric(&tokens("prompt")).await == Some(3.0 * USAGE.0 as f64)
    })
    .await;
    assert!(counted, "SSE usage not counted");
    let metrics = g.proxy.metrics().await;
    assert!(
        metrics.contains("switchyard_openai_time_to_first_token_seconds_count{model=\"llama\"}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_and_passive_ejection() {
    let mut a = MockOpenAi::start("a", &["llama"]).await;
    let b = MockOpenAi::start("b", &["llama"]).await;
    let g = gateway(
        &format!(
            "    passive_health: {{consecutive_failures: 2, eject_for: 30s}}\n{}",
            backends(&[(&a, ", models: [llama]"), (&b, ", models: [llama]")])
        ),
        "",
        None,
    )
    .await;
    // 5xx answers eject `a` after two in a row.
    a.knobs.fail_with.store(500, Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = g
            .post("/v1/chat/completions")
            .body(chat("llama", 10))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 500).count(),
        2,
        "{statuses:?}"
    );
    let ejected = format!(
        "switchyard_backend_ejected{{backend=\"{}\",pool=\"gpus\"}}",
        a.addr
    );
    assert_eq!(g.proxy.metric(&ejected).await, Some(1.0));
    let status: Value = g
        .proxy
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entry = status["pools"]["gpus"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == a.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(entry["ejected"], true);

    // A dead backend: connect failures go to another backend of the model at once.
    a.stop();
    let c = MockOpenAi::start("c", &["llama"]).await;
    let g2 = gateway(
        &backends(&[(&a, ", models: [llama]"), (&c, ", models: [llama]")]),
        "",
        None,
    )
    .await;
    for i in 0..10 {
        let r = g2
            .post("/v1/chat/completions")
            .body(chat("llama", 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i} with one backend dead");
    }
    assert_eq!(c.calls().len(), 10);
    assert!(b.calls().len() >= 6, "b served while a was ejected");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_requests_max_inflight_and_retry_on() {
    let a = MockOpenAi::start("a", &["llama"]).await;
    let b = MockOpenAi::start("b", &["llama"]).await;
    let g = gateway(
        &format!(
            "    balance: least_requests\n{}",
            backends(&[(&a, ", max_inflight: 2"), (&b, ", max_inflight: 2")])
        ),
        "    retry_on: [connect_error, 503]\n",
        None,
    )
    .await;
    // A slow request holds `a` (or `b`); the next one goes to the idle backend.
    a.knobs.delay_ms.store(800, Ordering::SeqCst);
    b.knobs.delay_ms.store(800, Ordering::SeqCst);
    let slow = tokio::spawn({
        let req = g.post("/v1/chat/completions").body(chat("llama", 10));
        async move { req.send().await.unwrap().status() }
    });
    assert!(
        wait_until(Duration::from_secs(2), || async {
            a.calls().len() + b.calls().len() == 1
        })
        .await
    );
    let busy_is_a = a.calls().len() == 1;
    let r = g
        .post("/v1/chat/completions")
        .body(chat("llama", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(slow.await.unwrap(), 200);
    let (busy, idle) = if busy_is_a { (&a, &b) } else { (&b, &a) };
    assert_eq!(
        (busy.calls().len(), idle.calls().len()),
        (1, 1),
        "the idle backend got the second request"
    );

    // 4 × the total capacity at once: never more than 2 at a backend; the rest get 503.
    a.knobs.delay_ms.store(300, Ordering::SeqCst);
    b.knobs.delay_ms.store(300, Ordering::SeqCst);
    let mut all = Vec::new();
    for _ in 0..16 {
        let req = g.post("/v1/chat/completions").body(chat("llama", 10));
        all.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers().get("retry-after").is_some(),
            )
        }));
    }
    let mut busy_answers = 0;
    for t in all {
        let (status, retry_after) = t.await.unwrap();
        assert!(status == 200 || status == 503, "{status}");
        if status == 503 {
            assert!(retry_after, "503 for full backends carries Retry-After");
            busy_answers += 1;
        }
    }
    assert!(busy_answers > 0);
    assert!(a.knobs.max_inflight_seen.load(Ordering::SeqCst) <= 2);
    assert!(b.knobs.max_inflight_seen.load(Ordering::SeqCst) <= 2);

    // retry_on 503: a buffered request moves to the other backend.
    a.knobs.delay_ms.store(0, Ordering::SeqCst);
    b.knobs.delay_ms.store(0, Ordering::SeqCst);
    a.knobs.fail_with.store(503, Ordering::SeqCst);
    for _ in 0..6 {
        let r = g
            .post("/v1/chat/completions")
            .body(chat("llama", 10))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .ends_with(" b"));
    }
    // Both failing: the client gets the last backend's status.
    b.knobs.fail_with.store(503, Ordering::SeqCst);
    let r = g
        .post("/v1/chat/completions")
        .body(chat("llama", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_on_never_replays_a_body_that_was_not_buffered() {
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{a}"}}, {{address: "{b}"}}]}}
routes:
  - {{name: up, match: {{path_prefix: /}}, pool: up, retry_on: [503]}}
"#,
        a = first.addr,
        b = second.addr
    ))
    .await;
    // A small POST is in Pingora's retry buffer: a 503 moves it to the other backend.
    let r = client()
        .post(format!("http://127.0.0.1:{port}/status/503"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "both answer 503 on this path: the last status is passed on"
    );
    assert_eq!(
        first.hits() + second.hits(),
        2,
        "the buffered request was tried on both"
    );
    // A chunked body is held, not buffered for replay: one backend only.
    let before = first.hits() + second.hits();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![Ok("a".into()), Ok("b".into())];
    let r = client()
        .post(format!("http://127.0.0.1:{port}/status/503"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(first.hits() + second.hits(), before + 1, "not replayed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_generation() {
    let a = MockOpenAi::start("a", &["llama"]).await;
    let g = gateway(&backends(&[(&a, ", models: [llama]")]), "", None).await;
    a.knobs.hold_streams.store(true, Ordering::SeqCst);
    let body = json!({"model": "llama", "stream": true, "messages": []});
    let r = g
        .post("/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream();
    let _first = events.next().await.unwrap().unwrap();
    assert_eq!(a.knobs.inflight.load(Ordering::SeqCst), 1);
    drop(events);
    let cancelled = wait_until(Duration::from_secs(5), || async {
        a.knobs.inflight.load(Ordering::SeqCst) == 0
    })
    .await;
    assert!(
        cancelled,
        "the backend still generates for a client that left"
    );
}
