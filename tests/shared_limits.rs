//! `rate_limit.shared: true` with a real redis-server: three switchyard processes on one
//! config file's text share one Redis; Redis paused, stopped and restarted under traffic;
//! `switchyard fleet` across the nodes.

mod common;

use common::mock_openai::MockOpenAi;
use common::redis_server::Redis;
use common::{client, free_port, run_cli, wait_until, Proxy, Upstream};
use std::time::{Duration, Instant};

/// `store.redis.timeout` in the config, plus what a loopback answer may take on a busy CI
/// machine: the bound on every answer while Redis is paused or gone. The client library's
/// own response timeout (1 s) is over it, so only the per-decision timeout keeps answers
/// inside.
const DECISION_BOUND: Duration = Duration::from_millis(50 + 350);

/// One node: its own folder, admin and HTTP ports, all given through the environment, so
/// that every node runs the same bytes (and so reports the same config hash).
struct Node {
    proxy: Proxy,
    http: u16,
}

/// What every node's config starts with: its own files and ports from the environment, and
/// the Redis store.
fn node_head(redis: &Redis, on_error: &str) -> String {
    format!(
        r#"version: 1
server:
  threads: 2
  pid_file: ${{NODE_DIR}}/switchyard.pid
  upgrade_sock: ${{NODE_DIR}}/upgrade.sock
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
admin:
  listen: "127.0.0.1:${{ADMIN_PORT}}"
  api_key: "{key}"
store:
  redis: {{url: "{url}", timeout: 50ms, on_error: {on_error}, nodes: 3}}
listeners:
  - {{name: http, listen: "127.0.0.1:${{HTTP_PORT}}"}}
"#,
        key = common::ADMIN_KEY,
        url = redis.url(),
    )
}

/// The config every node of a test runs, byte for byte: 30 requests a minute per client.
fn fleet_config(redis: &Redis, up: std::net::SocketAddr, on_error: &str) -> String {
    format!(
        r#"{head}pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - name: all
    match: {{path_prefix: /}}
    pool: up
    rate_limit: {{requests: 30, per: 1m, key: "header:x-client", shared: true}}
"#,
        head = node_head(redis, on_error),
    )
}

const TEAM_A: &str = "team-a-key-0123456789abcdef";
const TEAM_B: &str = "team-b-key-0123456789abcdef";

/// An OpenAI route whose keys have 30 tokens a minute each, counted in Redis.
fn budget_config(redis: &Redis, engine: std::net::SocketAddr) -> String {
    format!(
        r#"{head}pools:
  llm: {{health_check: {{kind: none}}, backends: [{{address: "{engine}"}}]}}
routes:
  - name: openai
    match: {{path_prefix: /v1/}}
    pool: llm
    openai: true
    auth:
      api_keys:
        - {{key: "{TEAM_A}", name: team-a, tokens_per_minute: 30, shared: true}}
        - {{key: "{TEAM_B}", name: team-b, tokens_per_minute: 30, shared: true}}
"#,
        head = node_head(redis, "local"),
    )
}

async fn start_node(text: &str) -> Node {
    start_node_with(text, &[]).await
}

/// [`start_node`] with more environment for the process.
async fn start_node_with(text: &str, env: &[(&str, String)]) -> Node {
    let mut proxy = Proxy::new();
    let http = free_port();
    let dir = proxy.dir.path().display().to_string();
    proxy.env = vec![
        ("NODE_DIR".into(), dir),
        ("ADMIN_PORT".into(), proxy.admin.to_string()),
        ("HTTP_PORT".into(), http.to_string()),
    ];
    proxy
        .env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    proxy.write_raw(text);
    proxy.spawn().await;
    let bound = wait_until(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", http))
            .await
            .is_ok()
    })
    .await;
    assert!(bound, "node never listened:\n{}", proxy.stderr());
    Node { proxy, http }
}

async fn start_fleet(text: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(text).await);
    }
    nodes
}

/// One request as client `who` to `node`: its status, `Retry-After` and how long it took.
async fn ask(node: &Node, who: &str) -> (u16, Option<String>, Duration) {
    let started = Instant::now();
    let r = client()
        .get(format!("http://127.0.0.1:{}/", node.http))
        .header("x-client", who)
        .send()
        .await
        .expect("an answer");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (r.status().as_u16(), retry, started.elapsed())
}

/// `n` concurrent requests as `who`, spread over `nodes` in turn.
async fn burst(nodes: &[&Node], who: &str, n: usize) -> Vec<(u16, Option<String>, Duration)> {
    let asks = (0..n).map(|i| ask(nodes[i % nodes.len()], who));
    futures::future::join_all(asks).await
}

fn count(answers: &[(u16, Option<String>, Duration)], status: u16) -> usize {
    answers.iter().filter(|a| a.0 == status).count()
}

/// Waits until `node` counts in Redis again: requests as fresh clients until the
/// `switchyard_store_up` gauge is 1.
async fn wait_store_up(node: &Node) -> bool {
    let mut probe = 0;
    wait_until(Duration::from_secs(15), || {
        probe += 1;
        let who = format!("probe-{probe}");
        async move {
            ask(node, &who).await;
            node.proxy.metric("switchyard_store_up").await == Some(1.0)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_one_limit_and_survive_redis_going_away() {
    let redis_server = Redis::start().await;
    let mut redis = redis_server;
    let up = Upstream::start("up").await;
    let text = fleet_config(&redis, up.addr, "local");
    let nodes = start_fleet(&text).await;
    let all: Vec<&Node> = nodes.iter().collect();
    for n in &nodes {
        assert!(wait_store_up(n).await, "{}", n.proxy.stderr());
    }

    // 90 concurrent requests of one client over three nodes: exactly the limit passes.
    let answers = burst(&all, "alice", 90).await;
    assert_eq!(count(&answers, 200), 30, "{answers:?}");
    assert_eq!(count(&answers, 429), 60, "{answers:?}");
    let refused = answers.iter().find(|a| a.0 == 429).expect("a 429");
    let retry: u64 = refused
        .1
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let r = client()
        .get(format!("http://127.0.0.1:{}/", nodes[0].http))
        .header("x-client", "alice")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "30");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");

    // Redis paused (slow, connections open): every answer within timeout plus normal
    // latency, by the node's own share of the limit (30 / nodes 3 = 10).
    redis.pause(true);
    let answers = burst(&all[..1], "bob", 15).await;
    redis.pause(false);
    let slowest = answers.iter().map(|a| a.2).max().expect("answers");
    assert!(slowest < DECISION_BOUND, "slowest {slowest:?}");
    eprintln!("slowest answer {slowest:?}");
    assert_eq!(count(&answers, 200), 10, "{answers:?}");
    assert_eq!(count(&answers, 429), 5, "{answers:?}");
    let node = &nodes[0].proxy;
    assert!(node.metric("switchyard_store_errors_total").await >= Some(15.0));
    assert_eq!(node.metric("switchyard_store_up").await, Some(0.0));
    assert_eq!(node.health().await["redis"], "down");
    assert!(node.stderr().contains("shared limits follow on_error"));

    // Redis gone (killed): the same, answered at once.
    redis.stop();
    let answers = burst(&all[1..2], "carol", 12).await;
    let slowest = answers.iter().map(|a| a.2).max().expect("answers");
    assert!(slowest < DECISION_BOUND, "slowest {slowest:?}");
    eprintln!("slowest answer {slowest:?}");
    assert_eq!(count(&answers, 200), 10, "{answers:?}");

    // Redis back on the same port, empty: shared counting resumes without a reload. Node
    // by node (the local share would admit 10 on each): 20 on one, then 20 on another.
    redis.restart().await;
    for n in &nodes {
        assert!(wait_store_up(n).await, "{}", n.proxy.stderr());
    }
    let first = burst(&all[..1], "dave", 20).await;
    let second = burst(&all[1..2], "dave", 20).await;
    assert_eq!(count(&first, 200), 20, "{first:?}");
    assert_eq!(count(&second, 200), 10, "{second:?}");
    assert_eq!(nodes[0].proxy.health().await["redis"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_error_deny_answers_503_at_once() {
    let mut redis = Redis::start().await;
    let up = Upstream::start("up").await;
    let node = start_node(&fleet_config(&redis, up.addr, "deny")).await;
    assert!(wait_store_up(&node).await, "{}", node.proxy.stderr());
    let (status, _, _) = ask(&node, "erin").await;
    assert_eq!(status, 200);
    let before = up.hits();

    redis.pause(true);
    let answers = burst(&[&node], "erin", 5).await;
    redis.pause(false);
    redis.stop();
    let gone = burst(&[&node], "erin", 5).await;
    for (status, retry, took) in answers.iter().chain(&gone) {
        assert_eq!(*status, 503);
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(*took < DECISION_BOUND, "took {took:?}");
    }
    assert_eq!(up.hits(), before, "a denied request reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_compares_the_nodes_hashes() {
    let redis = Redis::start().await;
    let up = Upstream::start("up").await;
    let text = fleet_config(&redis, up.addr, "local");
    let nodes = start_fleet(&text).await;
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.proxy.admin))
        .collect();
    for n in &nodes {
        assert!(wait_store_up(n).await, "{}", n.proxy.stderr());
    }
    let mut args = vec!["fleet"];
    args.extend(urls.iter().map(String::as_str));

    let (code, out, err) = run_cli(&args, None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("in sync: 3 node(s)"), "{out}");
    assert_eq!(out.matches("redis up").count(), 3, "{out}");
    assert_eq!(out.matches("(startup, ok)").count(), 3, "{out}");

    // One node's file changes (and it reloads): the difference is shown, exit non-zero.
    let changed = format!("{text}# changed on one node\n");
    let odd = &nodes[2].proxy;
    odd.write_raw(&changed);
    let want = common::sha256_hex(changed.as_bytes());
    let applied = wait_until(Duration::from_secs(10), || async {
        odd.config_hash().await == want
    })
    .await;
    assert!(applied, "{}", odd.stderr());
    let (code, out, _) = run_cli(&args, None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("config hashes differ"), "{out}");
    assert!(out.contains(&want[..12]), "{out}");
    assert!(
        out.contains(&format!("{} on {}", &want[..12], urls[2])),
        "{out}"
    );

    // A node that does not answer fails the check too.
    let gone = format!("http://127.0.0.1:{}", free_port());
    let (code, out, _) = run_cli(&["fleet", &urls[0], &gone], None);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unreachable"), "{out}");
}

/// One chat completion with `key` to `node`: status, `x-ratelimit-remaining-tokens`,
/// `Retry-After` and how long it took. The mock engine reports 18 tokens per answer.
async fn chat(node: &Node, key: &str) -> (u16, Option<String>, Option<String>, Duration) {
    let started = Instant::now();
    let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let r = client()
        .post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            node.http
        ))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .expect("an answer");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (remaining, retry) = (
        header("x-ratelimit-remaining-tokens"),
        header("retry-after"),
    );
    let status = r.status().as_u16();
    let _ = r.bytes().await;
    (status, remaining, retry, started.elapsed())
}

/// Waits until `node` has charged the key `name` in Redis (charges are sent after the
/// answer): its `switchyard_tokens_budget_remaining` reads `left`.
async fn charged(node: &Node, name: &str, left: f64) -> bool {
    let metric = format!("switchyard_tokens_budget_remaining{{key=\"{name}\"}}");
    wait_until(Duration::from_secs(10), || async {
        node.proxy.metric(&metric).await == Some(left)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_token_budget_is_spent_across_the_nodes() {
    let redis = Redis::start().await;
    let engine = MockOpenAi::start("m", &[]).await;
    let nodes = start_fleet(&budget_config(&redis, engine.addr)).await;
    for n in &nodes {
        assert!(wait_store_up(n).await, "{}", n.proxy.stderr());
    }

    // 30 tokens a minute for team-a, 18 per answer: one answer on node 0, one on node 1
    // (which sees what node 0 used), and node 2 refuses: the key has spent 36 of 30.
    let (status, left, _, _) = chat(&nodes[0], TEAM_A).await;
    assert_eq!((status, left.as_deref()), (200, Some("30")));
    assert!(charged(&nodes[0], "team-a", 12.0).await);
    let (status, left, _, _) = chat(&nodes[1], TEAM_A).await;
    assert_eq!((status, left.as_deref()), (200, Some("12")));
    assert!(charged(&nodes[1], "team-a", -6.0).await);
    let (status, left, retry, _) = chat(&nodes[2], TEAM_A).await;
    assert_eq!(status, 429, "node 2 counted on its own");
    assert_eq!(left.as_deref(), Some("0"));
    let wait: u64 = retry.and_then(|r| r.parse().ok()).expect("Retry-After");
    assert!((13..=15).contains(&wait), "retry-after {wait}");
    assert_eq!(engine.calls().len(), 2);

    // Redis slow: the answer does not wait for it; the node's own share (30 / 3 nodes)
    // decides, and says so in the headers.
    redis.pause(true);
    let (status, left, _, took) = chat(&nodes[0], TEAM_B).await;
    let up_while_paused = nodes[0].proxy.metric("switchyard_store_up").await;
    redis.pause(false);
    assert_eq!((status, left.as_deref()), (200, Some("10")));
    assert!(took < DECISION_BOUND, "took {took:?}");
    assert_eq!(up_while_paused, Some(0.0));

    // Redis back: the shared level is read again (team-a is still spent on every node).
    let back = wait_until(Duration::from_secs(15), || async {
        chat(&nodes[1], TEAM_B).await;
        nodes[1].proxy.metric("switchyard_store_up").await == Some(1.0)
    })
    .await;
    assert!(back, "{}", nodes[1].proxy.stderr());
    assert_eq!(chat(&nodes[1], TEAM_A).await.0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_counts_over_tls() {
    let redis = Redis::start_tls().await;
    assert!(redis.url().starts_with("rediss://"));
    let up = Upstream::start("up").await;
    // The redis client trusts the system roots; SSL_CERT_FILE names another bundle.
    let ca = ("SSL_CERT_FILE", redis.ca_file().display().to_string());
    // What is tested here is the counting over TLS, not the deadline: a generous timeout, so
    // that a loaded CI machine does not turn slow answers into on_error decisions.
    let config = fleet_config(&redis, up.addr, "deny").replace("timeout: 50ms", "timeout: 2s");
    assert!(config.contains("timeout: 2s"));
    let node = start_node_with(&config, &[ca]).await;
    assert!(wait_store_up(&node).await, "{}", node.proxy.stderr());
    // Probes sent before the first connection may have counted errors; none after.
    let errors = || async {
        let e = node.proxy.metric("switchyard_store_errors_total").await;
        e.unwrap_or(0.0)
    };
    let before = errors().await;
    // on_error: deny, so every 200 was counted in Redis, over TLS.
    let answers = burst(&[&node], "frank", 35).await;
    assert_eq!(count(&answers, 200), 30, "{answers:?}");
    assert_eq!(count(&answers, 429), 5, "{answers:?}");
    assert_eq!(errors().await, before);
}
