//! Inference admission through the real binary: the pool queue (late binding, full, timeout,
//! a client that leaves, reloads), strict priority and fair share between tenants, token
//! budgets on plain and streamed answers, and the official Python SDK backing off on 429.
//!
//! The mock backends enforce their own concurrency limit (`Knobs::limit`): a request over it
//! is answered 500 and counted, so any over-admission fails these tests.

mod common;

use common::mock_openai::MockOpenAi;
use common::{client, free_port, wait_until, Proxy};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const TEAM_A: &str = "team-a-key-0123456789";
const TEAM_B: &str = "team-b-key-0123456789";
const TEAM_C: &str = "team-c-key-0123456789";
const BATCH: &str = "batch-key-0123456789ab";
const WAIT: Duration = Duration::from_secs(10);

struct Gateway {
    proxy: Proxy,
    http: u16,
}

impl Gateway {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    async fn depth(&self, priority: &str) -> f64 {
        let series = format!("switchyard_queue_depth{{pool=\"llm\",priority=\"{priority}\"}}");
        self.proxy.metric(&series).await.unwrap_or(-1.0)
    }

    async fn rejected(&self, reason: &str) -> f64 {
        let series = format!("switchyard_queue_rejected_total{{pool=\"llm\",reason=\"{reason}\"}}");
        self.proxy.metric(&series).await.unwrap_or(-1.0)
    }

    async fn wait_depth(&self, priority: &str, n: f64) {
        let ok = wait_until(WAIT, || async { self.depth(priority).await == n }).await;
        assert!(ok, "queue depth {priority} never reached {n}");
    }
}

/// The YAML after the prelude: one OpenAI route over pool `llm`.
fn config(http: u16, pool: &str, route_extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm:
    health_check: {{kind: none}}
{pool}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    auth:
      api_keys:
        - {{key: "{TEAM_A}", name: team-a, priority: high}}
        - {{key: "{TEAM_B}", name: team-b}}
        - {{key: "{TEAM_C}", name: team-c}}
        - {{key: "{BATCH}", name: batch, priority: low}}
{route_extra}
"#
    )
}

fn backends(list: &[&MockOpenAi], queue: &str) -> String {
    let mut s = format!("    queue: {queue}\n    backends:\n");
    for m in list {
        s.push_str(&format!(
            "      - {{address: \"{}\", max_inflight: 1}}\n",
            m.addr
        ));
    }
    s
}

async fn gateway(pool: &str, route_extra: &str) -> Gateway {
    let http = free_port();
    let proxy = Proxy::start(&config(http, pool, route_extra)).await;
    Gateway { proxy, http }
}

/// A mock that allows one request at a time, as a backend with `max_inflight: 1` should.
async fn engine(name: &str) -> MockOpenAi {
    let m = MockOpenAi::start(name, &[]).await;
    m.knobs.limit.store(1, Ordering::SeqCst);
    m
}

fn body(tag: &str) -> Value {
    json!({"model": "m", "user": tag, "messages": [{"role": "user", "content": "hi"}]})
}

/// Sends a chat request tagged `tag` (the mock records it as `user`) in the background.
fn send(g: &Gateway, key: &str, tag: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let req = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body(tag));
    tokio::spawn(async move { req.send().await.expect("an answer") })
}

/// Sends a request that takes the gated backend's one slot, once it has reached the backend.
async fn hold_slot(
    g: &Gateway,
    m: &MockOpenAi,
    key: &str,
    tag: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let held = send(g, key, tag);
    let arrived = wait_until(WAIT, || async { m.calls().len() == 1 }).await;
    assert!(arrived, "{tag} never reached the backend");
    held
}

fn order(m: &MockOpenAi) -> Vec<String> {
    m.calls().into_iter().filter_map(|c| c.user).collect()
}

/// Lets the gated backend answer one request at a time, waiting each time for the next one to
/// arrive, so the order the mock records is the order the queue gave out slots.
async fn release_one_by_one(m: &MockOpenAi, total: usize) {
    for seen in 1..total {
        m.knobs.open_gate(1);
        let ok = wait_until(WAIT, || async { m.calls().len() > seen }).await;
        assert!(ok, "request {} never reached the backend", seen + 1);
    }
    m.knobs.open_gate(1);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_backends_queue_and_a_slot_goes_to_the_next_request_when_it_frees() {
    let slow = engine("slow").await;
    let fast = engine("fast").await;
    slow.knobs.delay_ms.store(700, Ordering::SeqCst);
    fast.knobs.delay_ms.store(50, Ordering::SeqCst);
    let g = gateway(&backends(&[&slow, &fast], "{max: 20, timeout: 20s}"), "").await;
    let all: Vec<_> = (0..8).map(|i| send(&g, TEAM_B, &format!("r{i}"))).collect();
    for h in all {
        let r = h.await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
    }
    for m in [&slow, &fast] {
        assert_eq!(m.knobs.over_limit.load(Ordering::SeqCst), 0, "{}", m.name);
        assert!(m.knobs.max_inflight_seen.load(Ordering::SeqCst) <= 1);
    }
    // Bound when a slot frees, not on arrival: the fast backend frees its slot ~14 times
    // for each of the slow one's, so it serves most of the 8 (early binding splits 4/4).
    let fast_calls = fast.calls().len();
    assert!(fast_calls >= 6, "fast served {fast_calls} of 8");
    assert_eq!(g.depth("normal").await, 0.0);
    let log = g.proxy.stdout();
    assert!(log.contains("\"queued_ms\":"), "{log}");
    assert!(log.contains("\"priority\":\"normal\""), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_and_a_long_wait_are_503_with_retry_after() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 1, timeout: 700ms}"), "").await;
    let first = hold_slot(&g, &m, TEAM_B, "first").await;
    let waiting = send(&g, TEAM_B, "waiting");
    g.wait_depth("normal", 1.0).await;

    let full = send(&g, TEAM_B, "full").await.unwrap();
    assert_eq!(full.status(), 503);
    assert_eq!(full.headers()["retry-after"], "1");
    let v: Value = full.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_overloaded", "{v}");
    assert_eq!(g.rejected("full").await, 1.0);

    let timed_out = waiting.await.unwrap();
    assert_eq!(timed_out.status(), 503);
    assert!(timed_out.headers().contains_key("retry-after"));
    let v: Value = timed_out.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_overloaded", "{v}");
    assert_eq!(g.rejected("timeout").await, 1.0);
    assert_eq!(g.depth("normal").await, 0.0);

    m.knobs.open_gate(1);
    assert_eq!(first.await.unwrap().status(), 200);
    // The two refused requests never reached the backend.
    assert_eq!(m.calls().len(), 1);
    let status = g
        .proxy
        .admin_req(reqwest::Method::GET, "/status")
        .send()
        .await
        .unwrap();
    let status: Value = status.json().await.unwrap();
    assert_eq!(status["pools"]["llm"]["queue"]["max"], 1, "{status}");
    assert_eq!(status["pools"]["llm"]["queue"]["waiting"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_the_queue_holds_no_place_and_no_slot() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 5, timeout: 30s}"), "").await;
    let first = hold_slot(&g, &m, TEAM_B, "first").await;

    // HTTP/1: the client closes its socket while waiting.
    let payload = body("left-h1").to_string();
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", g.http))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEAM_B}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    g.wait_depth("normal", 1.0).await;
    drop(raw);
    let gone = wait_until(WAIT, || async { g.rejected("gone").await == 1.0 }).await;
    assert!(gone, "the closed HTTP/1 client stayed in the queue");
    assert_eq!(g.depth("normal").await, 0.0);

    // HTTP/2: the client resets its stream while waiting.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let req = h2
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(TEAM_B)
        .json(&body("left-h2"));
    let task = tokio::spawn(async move { req.send().await });
    g.wait_depth("normal", 1.0).await;
    task.abort();
    let gone = wait_until(WAIT, || async { g.rejected("gone").await == 2.0 }).await;
    assert!(gone, "the reset HTTP/2 stream stayed in the queue");

    m.knobs.open_gate(2);
    assert_eq!(first.await.unwrap().status(), 200);
    let next = send(&g, TEAM_B, "next").await.unwrap();
    assert_eq!(next.status(), 200);
    assert_eq!(order(&m), ["first", "next"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn waiting_requests_keep_their_place_across_reloads_and_a_removed_pool_answers_them() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let pool = backends(&[&m], "{max: 5, timeout: 30s}");
    let g = gateway(&pool, "").await;
    let first = hold_slot(&g, &m, TEAM_B, "first").await;
    let waiting = send(&g, TEAM_B, "waiting");
    g.wait_depth("normal", 1.0).await;

    // An unrelated change: the waiting request stays in line and is served.
    let extra = "  - {name: other, match: {path_prefix: /other/}, respond: {status: 204}}";
    g.proxy.reload_to(&config(g.http, &pool, extra)).await;
    assert_eq!(g.depth("normal").await, 1.0);
    m.knobs.open_gate(2);
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(waiting.await.unwrap().status(), 200);
    assert_eq!(order(&m), ["first", "waiting"]);

    // The pool's queue goes away: its waiting request is answered at once.
    let holder = send(&g, TEAM_B, "holder");
    assert!(wait_until(WAIT, || async { m.calls().len() == 3 }).await);
    let stranded = send(&g, TEAM_B, "stranded");
    g.wait_depth("normal", 1.0).await;
    let no_queue = format!(
        "    backends:\n      - {{address: \"{}\", max_inflight: 1}}\n",
        m.addr
    );
    g.proxy.reload_to(&config(g.http, &no_queue, "")).await;
    let r = tokio::time::timeout(WAIT, stranded)
        .await
        .expect("answered at the reload")
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(g.rejected("closed").await, 1.0);
    m.knobs.open_gate(1);
    assert_eq!(holder.await.unwrap().status(), 200);
    assert_eq!(m.knobs.over_limit.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_higher_class_always_goes_first() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 50, timeout: 30s}"), "").await;
    let mut all = vec![hold_slot(&g, &m, BATCH, "b0").await];
    for i in 1..=3 {
        all.push(send(&g, BATCH, &format!("b{i}")));
        g.wait_depth("low", i as f64).await;
    }
    all.push(send(&g, TEAM_B, "n1"));
    g.wait_depth("normal", 1.0).await;
    all.push(send(&g, TEAM_A, "h1"));
    g.wait_depth("high", 1.0).await;
    release_one_by_one(&m, 6).await;
    for h in all {
        assert_eq!(h.await.unwrap().status(), 200);
    }
    assert_eq!(order(&m), ["b0", "h1", "n1", "b1", "b2", "b3"]);
    assert_eq!(m.knobs.over_limit.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_of_one_class_take_turns() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 50, timeout: 30s}"), "").await;
    let mut all = vec![hold_slot(&g, &m, TEAM_B, "b0").await];
    for i in 1..=5 {
        all.push(send(&g, TEAM_B, &format!("b{i}")));
        g.wait_depth("normal", i as f64).await;
    }
    all.push(send(&g, TEAM_C, "c1"));
    g.wait_depth("normal", 6.0).await;
    all.push(send(&g, TEAM_C, "c2"));
    g.wait_depth("normal", 7.0).await;
    release_one_by_one(&m, 8).await;
    for h in all {
        assert_eq!(h.await.unwrap().status(), 200);
    }
    // team-c's first request waits one turn behind team-b's five, not all five.
    assert_eq!(order(&m), ["b0", "b1", "c1", "b2", "c2", "b3", "b4", "b5"]);
}

/// 18 tokens per answer (the mock's usage: 11 prompt + 7 completion).
#[tokio::test(flavor = "multi_thread")]
async fn token_budgets_count_plain_and_streamed_answers() {
    let m = MockOpenAi::start("m", &[]).await;
    let http = free_port();
    let text = format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}]}}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    auth:
      api_keys:
        - {{key: "{TEAM_A}", name: team-a, tokens_per_minute: 30}}
        - {{key: "{TEAM_B}", name: team-b, tokens_per_day: 100000}}
"#,
        m.addr
    );
    let p = Proxy::start(&text).await;
    let url = format!("http://127.0.0.1:{http}/v1/chat/completions");
    let chat = |key: &str, stream: Value| {
        let mut b = body("t");
        if !stream.is_null() {
            b["stream"] = json!(true);
            b["stream_options"] = stream;
        }
        client().post(&url).bearer_auth(key).json(&b).send()
    };

    let r = chat(TEAM_A, Value::Null).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "30");
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "30");
    assert!(r.headers().contains_key("x-ratelimit-reset-tokens"));

    // A stream that did not ask for usage: switchyard asks, counts it, and hides it.
    let r = chat(TEAM_A, json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "12");
    let streamed = r.text().await.unwrap();
    assert!(!streamed.contains("usage"), "{streamed}");
    assert!(streamed.contains("data: [DONE]"), "{streamed}");
    assert!(streamed.contains("hello"), "{streamed}");
    assert!(
        m.calls()[1].include_usage,
        "the backend was not asked for usage"
    );

    // 36 of 30 used: the next request waits for the budget to refill.
    let r = chat(TEAM_A, Value::Null).await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((13..=15).contains(&wait), "retry-after {wait}");
    assert_eq!(r.headers()["x-ratelimit-remaining-tokens"], "0");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(m.calls().len(), 2);
    let left = p
        .metric("switchyard_tokens_budget_remaining{key=\"team-a\"}")
        .await;
    assert_eq!(left, Some(-6.0));

    // Budgets survive a reload.
    let extra = "  - {name: other, match: {path_prefix: /other/}, respond: {status: 204}}\n";
    p.reload_to(&format!("{text}{extra}")).await;
    assert_eq!(chat(TEAM_A, Value::Null).await.unwrap().status(), 429);

    // A client that asked for usage gets the usage chunk.
    let r = chat(TEAM_B, json!({"include_usage": true})).await.unwrap();
    let streamed = r.text().await.unwrap();
    assert!(streamed.contains("\"usage\":{"), "{streamed}");
    let log = p.stdout();
    assert!(log.contains("\"tokens\":18"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_token_limit_counts_per_client_and_streams_are_cut_nowhere() {
    let m = MockOpenAi::start("m", &[]).await;
    let http = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}]}}
routes:
  - name: open
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    token_limit: {{tokens: 20, per: 1m, key: client_ip}}
"#,
        m.addr
    ))
    .await;
    let url = format!("http://127.0.0.1:{http}/v1/chat/completions");
    let mut b = body("s");
    b["stream"] = json!(true);
    for want in [200, 200, 429] {
        let r = client().post(&url).json(&b).send().await.unwrap();
        assert_eq!(r.status(), want);
        if want == 200 {
            // Read event by event as a client would: nothing of the usage shows.
            let mut events = r.bytes_stream();
            let mut all = Vec::new();
            while let Some(chunk) = events.next().await {
                all.extend_from_slice(&chunk.unwrap());
            }
            let text = String::from_utf8(all).unwrap();
            assert!(!text.contains("usage"), "{text}");
        }
    }
    let limited = p
        .metric("switchyard_token_limited_total{route=\"open\"}")
        .await;
    assert_eq!(limited, Some(1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_backs_off_on_429_and_then_succeeds() {
    let m = MockOpenAi::start("m", &[]).await;
    let http = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}]}}
routes:
  - name: open
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    token_limit: {{tokens: 20, per: 2s}}
"#,
        m.addr
    ))
    .await;
    let script = r#"
import os, openai
c = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="unused", max_retries=4)
for i in range(3):
    r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    print(r.choices[0].message.content, r.usage.total_tokens)
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .args(["-c", script])
            .env("BASE_URL", format!("http://127.0.0.1:{http}/v1"))
            .output(),
    )
    .await
    .expect("the SDK finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    // The third call was refused first and retried by the SDK after Retry-After.
    let limited = p
        .metric("switchyard_token_limited_total{route=\"open\"}")
        .await
        .unwrap_or(0.0);
    assert!(limited >= 1.0, "the SDK never met a 429");
    assert_eq!(m.calls().len(), 3);
}

#[test]
fn check_refuses_admission_keys_that_could_not_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        r#"
version: 1
listeners: [{name: http, listen: "127.0.0.1:8080"}]
pools:
  nolimit: {queue: {max: 0, timeout: 0s}, backends: [{address: "127.0.0.1:9000"}]}
routes:
  - name: plain
    match: {path_prefix: /a/}
    pool: nolimit
    token_limit: {tokens: 0, per: 1m, key: api_key}
  - name: keyed
    match: {path_prefix: /b/}
    pool: nolimit
    auth: {api_keys: [{key: "team-a-key-0123456789", tokens_per_minute: 10, priority: urgent}]}
"#,
    )
    .unwrap();
    let (code, out, err) = common::run_cli(&["check", "-c", path.to_str().unwrap()], None);
    assert_ne!(code, 0, "{out}{err}");
    // The unknown priority is a parse error of its own; the rest is reported at once.
    assert!(err.contains("urgent"), "{err}");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace(", priority: urgent", ""),
    )
    .unwrap();
    let (code, _, err) = common::run_cli(&["check", "-c", path.to_str().unwrap()], None);
    assert_ne!(code, 0);
    for want in [
        "pools.nolimit.queue.max",
        "pools.nolimit.queue.timeout",
        "set max_inflight on the backends",
        "routes[0].token_limit.tokens",
        "routes[0].token_limit.key",
        "routes[0].token_limit: token budgets count",
        "routes[1].auth.api_keys[0].tokens_per_minute",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_routes_queue_too() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let plain = "  - {name: plain, match: {path_prefix: /plain/}, pool: llm, priority: high}";
    let g = gateway(&backends(&[&m], "{max: 5, timeout: 30s}"), plain).await;
    let get = || {
        let req = client().get(g.url("/plain/x"));
        tokio::spawn(async move { req.send().await.expect("an answer") })
    };
    let first = get();
    assert!(wait_until(WAIT, || async { m.calls().len() == 1 }).await);
    let second = get();
    // The route's own priority applies where no key says otherwise.
    g.wait_depth("high", 1.0).await;
    m.knobs.open_gate(2);
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(second.await.unwrap().status(), 200);
    assert_eq!(m.knobs.over_limit.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_still_takes_a_higher_class_or_a_shorter_tenant_line() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 2, timeout: 30s}"), "").await;
    let holder = hold_slot(&g, &m, TEAM_B, "holder").await;
    let b1 = send(&g, BATCH, "b1");
    g.wait_depth("low", 1.0).await;
    let b2 = send(&g, BATCH, "b2");
    g.wait_depth("low", 2.0).await;
    // Full of low-priority requests: higher ones take the newest ones' places.
    let high = send(&g, TEAM_A, "high");
    assert_eq!(b2.await.unwrap().status(), 503);
    g.wait_depth("high", 1.0).await;
    let c1 = send(&g, TEAM_C, "c1");
    assert_eq!(b1.await.unwrap().status(), 503);
    g.wait_depth("normal", 1.0).await;
    // Same class, and team-c's line is not longer than team-b's by more than one: refused.
    let refused = send(&g, TEAM_B, "b-refused").await.unwrap();
    assert_eq!(refused.status(), 503);
    release_one_by_one(&m, 3).await;
    for h in [holder, high, c1] {
        assert_eq!(h.await.unwrap().status(), 200);
    }
    assert_eq!(order(&m), ["holder", "high", "c1"]);
    assert_eq!(g.rejected("full").await, 3.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_filling_the_queue_gives_way_to_another_tenant() {
    let m = engine("one").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let g = gateway(&backends(&[&m], "{max: 2, timeout: 30s}"), "").await;
    let holder = hold_slot(&g, &m, TEAM_B, "holder").await;
    let b1 = send(&g, TEAM_B, "b1");
    g.wait_depth("normal", 1.0).await;
    let b2 = send(&g, TEAM_B, "b2");
    g.wait_depth("normal", 2.0).await;
    let c1 = send(&g, TEAM_C, "c1");
    assert_eq!(b2.await.unwrap().status(), 503);
    release_one_by_one(&m, 3).await;
    for h in [holder, b1, c1] {
        assert_eq!(h.await.unwrap().status(), 200);
    }
    assert_eq!(order(&m), ["holder", "b1", "c1"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_without_a_usable_backend_gets_no_place_in_the_queue() {
    let m = engine("one").await;
    let other = engine("other").await;
    m.knobs.gated.store(true, Ordering::SeqCst);
    let pool = format!(
        "    queue: {{max: 5, timeout: 30s}}\n    backends:\n      - {{address: \"{}\", max_inflight: 1, models: [m]}}\n      - {{address: \"{}\", max_inflight: 1, models: [x], drain: true}}\n",
        m.addr, other.addr
    );
    let g = gateway(&pool, "").await;
    let holder = hold_slot(&g, &m, TEAM_B, "holder").await;
    let waiting = send(&g, TEAM_B, "waiting");
    g.wait_depth("normal", 1.0).await;
    let mut b = body("x");
    b["model"] = json!("x");
    let started = std::time::Instant::now();
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(TEAM_B)
        .json(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for nothing"
    );
    assert_eq!(g.depth("normal").await, 1.0);
    m.knobs.open_gate(2);
    assert_eq!(holder.await.unwrap().status(), 200);
    assert_eq!(waiting.await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_hold_a_reservation_and_charge_a_client_that_leaves_mid_stream() {
    let m = MockOpenAi::start("m", &[]).await;
    let http = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}]}}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    auth: {{api_keys: [{{key: "{TEAM_A}", name: team-a, tokens_per_minute: 100}}, {{key: "{TEAM_B}", name: team-b, tokens_per_minute: 100}}]}}
"#,
        m.addr
    ))
    .await;
    let url = format!("http://127.0.0.1:{http}/v1/chat/completions");
    let mut asks = body("big");
    asks["max_tokens"] = json!(200);
    // In flight, the request holds what it may use: the key's next request waits.
    m.knobs.gated.store(true, Ordering::SeqCst);
    let first = {
        let req = client().post(&url).bearer_auth(TEAM_A).json(&asks);
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    assert!(wait_until(WAIT, || async { m.calls().len() == 1 }).await);
    let second = client()
        .post(&url)
        .bearer_auth(TEAM_A)
        .json(&body("small"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    m.knobs.open_gate(1);
    assert_eq!(first.await.unwrap().status(), 200);
    // Settled at the real usage (18): the reservation is given back.
    m.knobs.gated.store(false, Ordering::SeqCst);
    let third = client()
        .post(&url)
        .bearer_auth(TEAM_A)
        .json(&body("after"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 200);

    // A stream the client leaves before its end is charged at least what it reserved.
    m.knobs.hold_streams.store(true, Ordering::SeqCst);
    let mut stream = asks.clone();
    stream["stream"] = json!(true);
    let r = client()
        .post(&url)
        .bearer_auth(TEAM_B)
        .json(&stream)
        .send()
        .await
        .unwrap();
    let mut events = r.bytes_stream();
    let first_event = events.next().await.expect("an event").unwrap();
    assert!(!first_event.is_empty());
    drop(events);
    let spent = wait_until(WAIT, || async {
        client()
            .post(&url)
            .bearer_auth(TEAM_B)
            .json(&body("next"))
            .send()
            .await
            .unwrap()
            .status()
            == 429
    })
    .await;
    m.knobs.release.notify_waiters();
    assert!(spent, "leaving mid-stream cost nothing");
}
