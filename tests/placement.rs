//! Inference placement through the real binary: `least_load` on each engine's own metric
//! names (vLLM, SGLang, TGI, llama.cpp), a backend whose metrics cannot be read, the
//! in-flight correction between scrapes, prompt-prefix and header affinity with bounded
//! loads, key movement when a backend is added, and model aliases and fallbacks.

mod common;

use common::mock_openai::MockOpenAi;
use common::{client, free_port, wait_until, Proxy};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn chat(model: &str, tag: &str, system: &str) -> Value {
    json!({"model": model, "user": tag, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": format!("question from {tag}")}]})
}

async fn post(http: u16, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("http://127.0.0.1:{http}{path}"))
        .json(body)
        .send()
        .await
        .expect("an answer")
}

fn tags(m: &MockOpenAi) -> Vec<String> {
    m.calls().into_iter().filter_map(|c| c.user).collect()
}

fn set_metrics(m: &MockOpenAi, text: &str) {
    *m.knobs.metrics.lock().unwrap() = Some(text.to_string());
}

/// What each engine's `/metrics` says for `waiting` queued and `running` requests.
fn exposition(engine: &str, waiting: u32, running: u32) -> String {
    let (q, r, c) = match engine {
        "vllm" => (
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            Some("vllm:gpu_cache_usage_perc"),
        ),
        "sglang" => (
            "sglang:num_queue_reqs",
            "sglang:num_running_reqs",
            Some("sglang:token_usage"),
        ),
        "tgi" => ("tgi_queue_size", "tgi_batch_current_size", None),
        _ => (
            "llamacpp:requests_deferred",
            "llamacpp:requests_processing",
            Some("llamacpp:kv_cache_usage_ratio"),
        ),
    };
    let mut text = format!(
        "# HELP {q} Requests waiting.\n# TYPE {q} gauge\n{q}{{model_name=\"m\"}} {waiting}.0\n# HELP {r} Requests running.\n# TYPE {r} gauge\n{r}{{model_name=\"m\"}} {running}.0\n"
    );
    if let Some(c) = c {
        text.push_str(&format!("# TYPE {c} gauge\n{c}{{model_name=\"m\"}} 0.25\n"));
    }
    text
}

async fn status(p: &Proxy) -> Value {
    p.admin_req(reqwest::Method::GET, "/status")
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// The `load` a pool's backend showed in `/status`.
async fn load_of(p: &Proxy, pool: &str, m: &MockOpenAi) -> Value {
    let s = status(p).await;
    let backends = s["pools"][pool]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    backends
        .into_iter()
        .find(|b| b["resolved"] == m.addr.to_string())
        .map(|b| b["load"].clone())
        .unwrap_or(Value::Null)
}

async fn wait_for_waiting(p: &Proxy, pool: &str, m: &MockOpenAi, waiting: f64) {
    let ok = wait_until(WAIT, || async {
        load_of(p, pool, m).await["waiting"].as_f64() == Some(waiting)
    })
    .await;
    assert!(ok, "{pool}: {} never showed waiting {waiting}", m.name);
}

#[tokio::test(flavor = "multi_thread")]
async fn least_load_follows_each_engines_own_metrics() {
    let engines = ["vllm", "sglang", "tgi", "llamacpp"];
    let mut mocks = HashMap::new();
    let mut pools = String::new();
    let mut routes = String::new();
    for e in engines {
        let a = MockOpenAi::start(&format!("{e}-a"), &[]).await;
        let b = MockOpenAi::start(&format!("{e}-b"), &[]).await;
        set_metrics(&a, &exposition(e, 10, 5));
        set_metrics(&b, &exposition(e, 0, 1));
        pools.push_str(&format!(
            "  {e}: {{balance: least_load, load: {{engine: {e}, interval: 200ms}}, health_check: {{kind: none}}, backends: [{{address: \"{}\"}}, {{address: \"{}\"}}]}}\n",
            a.addr, b.addr
        ));
        routes.push_str(&format!(
            "  - {{name: {e}, match: {{path_prefix: /{e}/}}, pool: {e}, openai: true}}\n"
        ));
        mocks.insert(e, (a, b));
    }
    let http = free_port();
    let p = Proxy::start(&format!(
        "listeners:\n  - {{name: http, listen: \"127.0.0.1:{http}\"}}\npools:\n{pools}routes:\n{routes}"
    ))
    .await;
    for e in engines {
        let (a, b) = &mocks[e];
        wait_for_waiting(&p, e, a, 10.0).await;
        wait_for_waiting(&p, e, b, 0.0).await;
        let readable = format!(
            "switchyard_backend_load_readable{{backend=\"{}\",pool=\"{e}\"}}",
            a.addr
        );
        assert_eq!(p.metric(&readable).await, Some(1.0), "{e}");
        for i in 0..4 {
            let r = post(
                http,
                &format!("/{e}/v1/chat/completions"),
                &chat("m", &format!("{e}{i}"), "s"),
            )
            .await;
            assert_eq!(r.status(), 200);
        }
        assert_eq!(a.calls().len(), 0, "{e}: the loaded engine got requests");
        assert_eq!(b.calls().len(), 4, "{e}");
        // The engines' load turns around: so does the choice.
        set_metrics(a, &exposition(e, 0, 0));
        set_metrics(b, &exposition(e, 20, 8));
        wait_for_waiting(&p, e, b, 20.0).await;
        let r = post(
            http,
            &format!("/{e}/v1/chat/completions"),
            &chat("m", "after", "s"),
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(tags(a), ["after"], "{e}");
    }
    let cache = load_of(&p, "vllm", &mocks["vllm"].0).await;
    assert_eq!(
        cache["cache"], 0.25,
        "the older vLLM cache name is read: {cache}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_metrics_fall_back_to_the_inflight_count_and_are_flagged() {
    let broken = MockOpenAi::start("broken", &[]).await;
    let fine = MockOpenAi::start("fine", &[]).await;
    set_metrics(&fine, &exposition("vllm", 0, 0));
    let (p, http) = least_load_proxy(&broken, &fine, "200ms").await;
    let flagged = format!(
        "switchyard_backend_load_readable{{backend=\"{}\",pool=\"llm\"}}",
        broken.addr
    );
    assert!(wait_until(WAIT, || async { p.metric(&flagged).await == Some(0.0) }).await);
    let load = load_of(&p, "llm", &broken).await;
    assert_eq!(load["readable"], false, "{load}");
    assert!(
        load["error"].as_str().unwrap_or("").contains("404"),
        "{load}"
    );
    // Garbage instead of the text format is unreadable too.
    set_metrics(&broken, "<html>maintenance</html>");
    assert!(
        wait_until(WAIT, || async {
            load_of(&p, "llm", &broken).await["error"]
                .as_str()
                .is_some_and(|e| e.contains("text format"))
        })
        .await
    );
    let s = status(&p).await;
    for b in s["pools"]["llm"]["backends"].as_array().unwrap() {
        assert_eq!(
            b["healthy"], true,
            "unreadable metrics alone do not make it unhealthy"
        );
    }
    // Balanced on its in-flight count: idle, it gets requests like any other.
    for i in 0..6 {
        let r = post(
            http,
            "/v1/chat/completions",
            &chat("m", &i.to_string(), "s"),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    assert!(!broken.calls().is_empty());
    let log = p.stderr();
    assert!(log.contains("cannot read load metrics"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_between_two_scrapes_is_spread_by_what_was_sent_since() {
    let a = MockOpenAi::start("a", &[]).await;
    let b = MockOpenAi::start("b", &[]).await;
    for m in [&a, &b] {
        set_metrics(m, &exposition("vllm", 0, 0));
        m.knobs.gated.store(true, Ordering::SeqCst);
    }
    let (p, http) = least_load_proxy(&a, &b, "1h").await;
    wait_for_waiting(&p, "llm", &a, 0.0).await;
    wait_for_waiting(&p, "llm", &b, 0.0).await;
    // Both looked idle at the one scrape there will be; eight requests arrive at once.
    let all: Vec<_> = (0..8)
        .map(|i| {
            let body = chat("m", &i.to_string(), "s");
            tokio::spawn(async move { post(http, "/v1/chat/completions", &body).await })
        })
        .collect();
    assert!(wait_until(WAIT, || async { a.calls().len() + b.calls().len() == 8 }).await);
    assert_eq!((a.calls().len(), b.calls().len()), (4, 4));
    a.knobs.open_gate(8);
    b.knobs.open_gate(8);
    for h in all {
        assert_eq!(h.await.unwrap().status(), 200);
    }
}

/// One `least_load` pool of two backends with vLLM's metrics read every `interval`.
async fn least_load_proxy(a: &MockOpenAi, b: &MockOpenAi, interval: &str) -> (Proxy, u16) {
    let http = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{balance: least_load, load: {{engine: vllm, interval: {interval}}}, health_check: {{kind: none}}, backends: [{{address: "{}"}}, {{address: "{}"}}]}}
routes:
  - {{name: openai, match: {{path_prefix: /v1/}}, pool: llm, openai: true}}
"#,
        a.addr, b.addr
    ))
    .await;
    (p, http)
}

async fn affinity_proxy(mocks: &[&MockOpenAi], affinity: &str) -> (Proxy, u16) {
    let http = free_port();
    let backends: Vec<String> = mocks
        .iter()
        .map(|m| format!("{{address: \"{}\"}}", m.addr))
        .collect();
    let p = Proxy::start(&affinity_config(http, &backends, affinity)).await;
    (p, http)
}

fn affinity_config(http: u16, backends: &[String], affinity: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm: {{balance: least_requests, affinity: {affinity}, health_check: {{kind: none}}, backends: [{}]}}
routes:
  - {{name: openai, match: {{path_prefix: /v1/}}, pool: llm, openai: true}}
"#,
        backends.join(", ")
    )
}

/// Which mock served each tag.
fn served_by(mocks: &[&MockOpenAi]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for m in mocks {
        for t in tags(m) {
            out.insert(t, m.name.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn prompt_prefix_affinity_keeps_conversations_together() {
    let (a, b, c) = (
        MockOpenAi::start("a", &[]).await,
        MockOpenAi::start("b", &[]).await,
        MockOpenAi::start("c", &[]).await,
    );
    let mocks = [&a, &b, &c];
    let (_p, http) = affinity_proxy(&mocks, "{key: prompt_prefix, prefix_bytes: 256}").await;
    // Each conversation's replica is a hash: with 8 of them all landed on one of the three
    // once in CI (a 1 in 2,187 chance); with 16 it is 1 in 14 million.
    const CONVERSATIONS: usize = 16;
    for turn in 0..3 {
        for conv in 0..CONVERSATIONS {
            let system = format!("conversation {conv}: you are a careful assistant. ").repeat(12);
            let r = post(
                http,
                "/v1/chat/completions",
                &chat("m", &format!("c{conv}-t{turn}"), &system),
            )
            .await;
            assert_eq!(r.status(), 200);
        }
    }
    let by = served_by(&mocks);
    let mut used = HashSet::new();
    for conv in 0..CONVERSATIONS {
        let first = &by[&format!("c{conv}-t0")];
        used.insert(first.clone());
        for turn in 1..3 {
            assert_eq!(
                &by[&format!("c{conv}-t{turn}")],
                first,
                "conversation {conv} moved"
            );
        }
    }
    assert!(
        used.len() >= 2,
        "{CONVERSATIONS} conversations all on one replica: {by:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_bound_moves_a_hot_key_away_and_back() {
    let (a, b, c) = (
        MockOpenAi::start("a", &[]).await,
        MockOpenAi::start("b", &[]).await,
        MockOpenAi::start("c", &[]).await,
    );
    let mocks = [&a, &b, &c];
    let (_p, http) = affinity_proxy(
        &mocks,
        "{key: \"header:x-session-id\", max_load_factor: 1.25}",
    )
    .await;
    let send = |tag: &str| {
        let req = client()
            .post(format!("http://127.0.0.1:{http}/v1/chat/completions"))
            .header("x-session-id", "hot")
            .json(&chat("m", tag, "s"));
        tokio::spawn(async move { req.send().await.expect("an answer") })
    };
    assert_eq!(send("warm").await.unwrap().status(), 200);
    let home = served_by(&mocks)["warm"].clone();
    let home_mock = mocks.iter().find(|m| m.name == home).unwrap();
    for m in mocks {
        m.knobs.gated.store(true, Ordering::SeqCst);
    }
    // The session's home replica holds one request: the next one would pass the bound.
    let held = send("held");
    assert!(wait_until(WAIT, || async { home_mock.calls().len() == 2 }).await);
    let moved = send("moved");
    let total = || mocks.iter().map(|m| m.calls().len()).sum::<usize>();
    assert!(wait_until(WAIT, || async { total() == 3 }).await);
    assert_ne!(
        served_by(&mocks)["moved"],
        home,
        "the hot replica took it anyway"
    );
    for m in mocks {
        m.knobs.open_gate(4);
    }
    assert_eq!(held.await.unwrap().status(), 200);
    assert_eq!(moved.await.unwrap().status(), 200);
    // Load back to normal: the session goes home again.
    assert_eq!(send("back").await.unwrap().status(), 200);
    assert_eq!(served_by(&mocks)["back"], home);
}

#[tokio::test(flavor = "multi_thread")]
async fn adding_a_backend_moves_only_the_keys_that_must_move() {
    let mut list = Vec::new();
    for name in ["a", "b", "c", "d"] {
        list.push(MockOpenAi::start(name, &[]).await);
    }
    let three: Vec<&MockOpenAi> = list[..3].iter().collect();
    let (p, http) = affinity_proxy(&three, "{key: \"header:x-session-id\"}").await;
    let round = |round: &'static str| async move {
        for s in 0..30 {
            let r = client()
                .post(format!("http://127.0.0.1:{http}/v1/chat/completions"))
                .header("x-session-id", format!("session-{s}"))
                .json(&chat("m", &format!("{round}-{s}"), "s"))
                .send()
                .await
                .expect("an answer");
            assert_eq!(r.status(), 200);
        }
    };
    round("before").await;
    let backends: Vec<String> = list
        .iter()
        .map(|m| format!("{{address: \"{}\"}}", m.addr))
        .collect();
    p.reload_to(&affinity_config(
        http,
        &backends,
        "{key: \"header:x-session-id\"}",
    ))
    .await;
    round("after").await;
    let all: Vec<&MockOpenAi> = list.iter().collect();
    let by = served_by(&all);
    let mut moved = 0;
    for s in 0..30 {
        let (before, after) = (&by[&format!("before-{s}")], &by[&format!("after-{s}")]);
        if before != after {
            moved += 1;
            assert_eq!(after, "d", "session {s} moved between old backends");
        }
    }
    assert!((1..=15).contains(&moved), "{moved} of 30 sessions moved");
}

async fn models_proxy(
    big: &MockOpenAi,
    small: &MockOpenAi,
    big_extra: &str,
    pool_extra: &str,
) -> (Proxy, u16) {
    let http = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
pools:
  llm:
    health_check: {{kind: none}}
{pool_extra}
    backends:
      - {{address: "{}", models: [big]{big_extra}}}
      - {{address: "{}", models: [small]}}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: {{aliases: {{default: big}}, fallbacks: {{big: [small]}}}}
"#,
        big.addr, small.addr
    ))
    .await;
    (p, http)
}

fn fallbacks_counted(text: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(
                "switchyard_openai_fallbacks_total{from=\"big\",route=\"openai\",to=\"small\"}",
            )?
            .trim()
            .parse()
            .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_are_served_under_their_model_and_listed() {
    let big = MockOpenAi::start("big-box", &["big"]).await;
    let small = MockOpenAi::start("small-box", &["small"]).await;
    let (_p, http) = models_proxy(&big, &small, "", "").await;
    let r = post(
        http,
        "/v1/chat/completions",
        &chat("default", "aliased", "s"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-model"], "big");
    assert_eq!(
        big.calls()[0].model.as_deref(),
        Some("big"),
        "the body names the served model"
    );
    let list: Value = client()
        .get(format!("http://127.0.0.1:{http}/v1/models"))
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
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["big", "default", "small"], "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_that_no_backend_can_take_falls_back_with_its_model_rewritten() {
    let big = MockOpenAi::start("big-box", &["big"]).await;
    let small = MockOpenAi::start("small-box", &["small"]).await;
    big.knobs.gated.store(true, Ordering::SeqCst);
    let (p, http) = models_proxy(&big, &small, ", max_inflight: 1", "").await;
    let holder = {
        let body = chat("big", "holder", "s");
        tokio::spawn(async move { post(http, "/v1/chat/completions", &body).await })
    };
    assert!(wait_until(WAIT, || async { big.calls().len() == 1 }).await);
    // big is full (no queue): the request goes to small, asking for small.
    let r = post(http, "/v1/chat/completions", &chat("big", "full", "s")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-model"], "small");
    assert_eq!(small.calls()[0].model.as_deref(), Some("small"));
    big.knobs.open_gate(1);
    assert_eq!(holder.await.unwrap().status(), 200);

    // The backend answers 429, then 503: before any byte reached the client, so small serves.
    for status in [429, 503] {
        big.knobs.fail_with.store(status, Ordering::SeqCst);
        big.knobs.gated.store(false, Ordering::SeqCst);
        let r = post(
            http,
            "/v1/chat/completions",
            &chat("big", &format!("s{status}"), "s"),
        )
        .await;
        assert_eq!(r.status(), 200, "after {status}");
        assert_eq!(r.headers()["x-switchyard-model"], "small");
    }
    assert_eq!(fallbacks_counted(&p.metrics().await), 3.0);
    let log = p.stdout();
    assert!(log.contains("\"fallback_from\":\"big\""), "{log}");
    assert!(log.contains("\"model\":\"small\""), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_timeout_falls_back_too() {
    let big = MockOpenAi::start("big-box", &["big"]).await;
    let small = MockOpenAi::start("small-box", &["small"]).await;
    big.knobs.gated.store(true, Ordering::SeqCst);
    let (_p, http) = models_proxy(
        &big,
        &small,
        ", max_inflight: 1",
        "    queue: {max: 10, timeout: 300ms}",
    )
    .await;
    let holder = {
        let body = chat("big", "holder", "s");
        tokio::spawn(async move { post(http, "/v1/chat/completions", &body).await })
    };
    assert!(wait_until(WAIT, || async { big.calls().len() == 1 }).await);
    let r = post(http, "/v1/chat/completions", &chat("big", "waited", "s")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-switchyard-model"], "small");
    big.knobs.open_gate(1);
    assert_eq!(holder.await.unwrap().status(), 200);
}
