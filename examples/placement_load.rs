//! The placement benchmark (docs/benchmarks.md, "Placement").
//!
//!   cargo build --release && cargo run --release --example placement_load -- \
//!     target/release/switchyard [TURNS]
//!
//! Four mock engines that behave like vLLM where placement matters: 4 requests run at once
//! and the rest wait inside the engine (past 24 waiting it answers 503, as an overloaded
//! server does); a prefix cache of bounded size (12 conversations, 4 system prompts) makes the
//! first token come after 40 ms for a cached conversation, 120 ms for a cached system prompt
//! and 400 ms otherwise; `/metrics` in vLLM's names. The workload: 32 conversations over 4
//! shared system prompts (1,500 bytes each; `prefix_bytes: 1600` takes in the start of a
//! conversation's first message), TURNS turns each (default 6), all conversations at once. Each
//! policy runs on the same workload: round_robin, least_requests, least_load, affinity,
//! affinity + least_load. A second workload puts every conversation on one system prompt and
//! keys on it (`prefix_bytes: 1000`): affinity without a load bound, with it, and with
//! least_load. `... placement_load -- BIN TURNS skewed` runs only that one.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

const SLOTS: usize = 4;
const MAX_WAITING: usize = 24;
const CONVERSATIONS_CACHED: usize = 12;
const SYSTEMS_CACHED: usize = 4;

#[derive(Default)]
struct Engine {
    running: AtomicUsize,
    waiting: AtomicUsize,
    served: AtomicUsize,
    conversation_hits: AtomicUsize,
    system_hits: AtomicUsize,
    refused: AtomicUsize,
    conversations: Mutex<VecDeque<u64>>,
    systems: Mutex<VecDeque<u64>>,
    /// Every conversation this engine saw, to tell how often conversations moved.
    seen: Mutex<std::collections::HashSet<u64>>,
}

fn hash(text: &str) -> u64 {
    let d = Sha256::digest(text.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Looks `key` up in an LRU list of `cap` entries and puts it at the front.
fn touch(list: &Mutex<VecDeque<u64>>, key: u64, cap: usize) -> bool {
    let Ok(mut l) = list.lock() else { return false };
    let hit = match l.iter().position(|k| *k == key) {
        Some(i) => {
            l.remove(i);
            true
        }
        None => false,
    };
    l.push_front(key);
    l.truncate(cap);
    hit
}

async fn handle(req: Request<Incoming>, e: Arc<Engine>, slots: Arc<Semaphore>) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        let cache = e.conversations.lock().map(|l| l.len()).unwrap_or(0) as f64
            / CONVERSATIONS_CACHED as f64;
        let text = format!(
            "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"m\"}} {}\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"m\"}} {}\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{model_name=\"m\"}} {cache}\n",
            e.waiting.load(Ordering::SeqCst),
            e.running.load(Ordering::SeqCst)
        );
        return Response::new(Full::new(Bytes::from(text)).boxed());
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |i: usize| {
        v["messages"][i]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (system, opening) = (text(0), text(1));
    if e.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
        e.waiting.fetch_sub(1, Ordering::SeqCst);
        e.refused.fetch_add(1, Ordering::SeqCst);
        return Response::builder()
            .status(503)
            .body(Full::new(Bytes::from("overloaded")).boxed())
            .unwrap_or_default();
    }
    let permit = slots.acquire_owned().await;
    e.waiting.fetch_sub(1, Ordering::SeqCst);
    e.running.fetch_add(1, Ordering::SeqCst);
    let conversation = hash(&(system.clone() + &opening));
    if let Ok(mut seen) = e.seen.lock() {
        seen.insert(conversation);
    }
    let conversation_hit = touch(&e.conversations, conversation, CONVERSATIONS_CACHED);
    let system_hit = touch(&e.systems, hash(&system), SYSTEMS_CACHED);
    let ttft = if conversation_hit {
        e.conversation_hits.fetch_add(1, Ordering::SeqCst);
        40
    } else if system_hit {
        e.system_hits.fetch_add(1, Ordering::SeqCst);
        120
    } else {
        400
    };
    e.served.fetch_add(1, Ordering::SeqCst);
    let engine = e.clone();
    let events = futures::stream::unfold(0u8, move |step| {
        let engine = engine.clone();
        async move {
            let chunk = match step {
                0 => {
                    tokio::time::sleep(Duration::from_millis(ttft)).await;
                    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n"
                }
                1 => {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    engine.running.fetch_sub(1, Ordering::SeqCst);
                    "data: [DONE]\n\n"
                }
                _ => return None,
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))),
                step + 1,
            ))
        }
    });
    let _keep = permit;
    let events = futures::StreamExt::map(events, move |f| {
        let _ = &_keep;
        f
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(events)))
        .unwrap_or_default()
}

async fn start_engine() -> (SocketAddr, Arc<Engine>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let engine = Arc::new(Engine::default());
    let slots = Arc::new(Semaphore::new(SLOTS));
    let e = engine.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (e, slots) = (e.clone(), slots.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (e, slots) = (e.clone(), slots.clone());
                    async move { Ok::<_, Infallible>(handle(req, e, slots).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, engine)
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(bin: &str, engines: &[SocketAddr], placement: &str, http: u16) -> Proxy {
    let dir = tempfile::tempdir().expect("dir");
    let admin = free_port();
    let d = dir.path().display();
    let backends: Vec<String> = engines
        .iter()
        .map(|a| format!("{{address: \"{a}\"}}"))
        .collect();
    let text = format!(
        "version: 1\nserver: {{threads: 2, pid_file: {d}/pid, upgrade_sock: {d}/sock}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\nedge: {{access_log: {{enabled: false}}}}\nlisteners:\n  - {{name: http, listen: \"127.0.0.1:{http}\"}}\npools:\n  llm: {{health_check: {{kind: none}}, timeouts: {{read: 120s}}, {placement}backends: [{}]}}\nroutes:\n  - {{name: openai, match: {{path_prefix: /v1/}}, pool: llm, openai: true}}\n",
        backends.join(", ")
    );
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, text).expect("config");
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("switchyard");
    let health = format!("http://127.0.0.1:{admin}/health");
    for _ in 0..200 {
        if reqwest::get(&health).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Let least_load read the engines once.
    tokio::time::sleep(Duration::from_millis(600)).await;
    Proxy { child, _dir: dir }
}

/// One conversation: `turns` requests one after another, each with the history so far.
async fn conversation(
    url: String,
    system: String,
    id: usize,
    turns: usize,
    ttfts: Arc<Mutex<Vec<(usize, f64)>>>,
    failed: Arc<AtomicUsize>,
) {
    let client = reqwest::Client::new();
    let mut messages = vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": format!("conversation {id}: {}", "tell me more. ".repeat(12))}),
    ];
    for turn in 0..turns {
        let body = json!({"model": "m", "stream": true, "messages": messages});
        let t = Instant::now();
        let ok = match client.post(&url).json(&body).send().await {
            Ok(r) if r.status() == 200 => {
                let mut stream = r.bytes_stream();
                let first = futures::StreamExt::next(&mut stream).await;
                let ttft = t.elapsed().as_secs_f64() * 1000.0;
                while futures::StreamExt::next(&mut stream).await.is_some() {}
                if first.is_some() {
                    if let Ok(mut all) = ttfts.lock() {
                        all.push((turn, ttft));
                    }
                }
                first.is_some()
            }
            _ => false,
        };
        if !ok {
            failed.fetch_add(1, Ordering::SeqCst);
        }
        messages.push(json!({"role": "assistant", "content": "hi"}));
        messages.push(json!({"role": "user", "content": format!("turn {turn} follow-up")}));
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..100))).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/switchyard".into());
    let turns: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(6);
    let only_skewed = args.get(2).is_some_and(|a| a == "skewed");
    let system =
        |i: usize| format!("System prompt {i}: you are an assistant for team {i}. ").repeat(30);
    let load = "balance: least_load, load: {engine: vllm, interval: 200ms}, ";
    println!("| policy | requests | failed | cache hits (conversation / system) | engines per conversation | TTFT p50 ms | TTFT p99 ms | TTFT p99 ms, turns 2+ | completed/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    if !only_skewed {
        println!("| **4 system prompts, 32 conversations × {turns} turns; 4 engines × {SLOTS} slots, 503 past {MAX_WAITING} waiting** ||||||||");
        let systems: Vec<String> = (0..4).map(system).collect();
        let affinity = "affinity: {key: prompt_prefix, prefix_bytes: 1600}, ";
        let policies = [
            ("round_robin", "balance: round_robin, ".to_string()),
            ("least_requests", "balance: least_requests, ".to_string()),
            ("least_load", load.to_string()),
            ("affinity", affinity.to_string()),
            ("affinity + least_load", format!("{load}{affinity}")),
        ];
        for (name, placement) in policies {
            run(&bin, name, &placement, &systems, turns).await;
        }
    }
    // One system prompt for every conversation and a key inside it: affinity on the prompt
    // alone sends everything to one replica unless its load is bounded.
    println!("| **1 system prompt, key = its first 1,000 bytes, same engines and conversations** ||||||||");
    let systems = vec![system(0)];
    let key = "affinity: {key: prompt_prefix, prefix_bytes: 1000";
    let policies = [
        (
            "affinity, unbounded (max_load_factor: 1000)",
            format!("{key}, max_load_factor: 1000}}, "),
        ),
        ("affinity (bounded, 1.25)", format!("{key}}}, ")),
        (
            "affinity + least_load (bounded, 1.25)",
            format!("{load}{key}}}, "),
        ),
    ];
    for (name, placement) in policies {
        run(&bin, name, &placement, &systems, turns).await;
    }
}

/// One policy on fresh engines: 32 conversations at once, conversation `i` on system prompt
/// `i % systems.len()`; prints its row.
async fn run(bin: &str, name: &str, placement: &str, systems: &[String], turns: usize) {
    let mut engines = Vec::new();
    for _ in 0..4 {
        engines.push(start_engine().await);
    }
    let addrs: Vec<SocketAddr> = engines.iter().map(|(a, _)| *a).collect();
    let http = free_port();
    let proxy = start_proxy(bin, &addrs, placement, http).await;
    let url = format!("http://127.0.0.1:{http}/v1/chat/completions");
    let ttfts = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let all: Vec<_> = (0..32)
        .map(|id| {
            tokio::spawn(conversation(
                url.clone(),
                systems[id % systems.len()].clone(),
                id,
                turns,
                ttfts.clone(),
                failed.clone(),
            ))
        })
        .collect();
    for c in all {
        let _ = c.await;
    }
    let wall = started.elapsed().as_secs_f64();
    drop(proxy);
    let sum = |f: &dyn Fn(&Engine) -> usize| engines.iter().map(|(_, e)| f(e)).sum::<usize>();
    let served = sum(&|e| e.served.load(Ordering::SeqCst));
    let conv = sum(&|e| e.conversation_hits.load(Ordering::SeqCst));
    let sys = sum(&|e| e.system_hits.load(Ordering::SeqCst));
    let pairs = sum(&|e| e.seen.lock().map(|s| s.len()).unwrap_or(0));
    let timed = ttfts.lock().map(|t| t.clone()).unwrap_or_default();
    let sorted = |later_only: bool| {
        let mut t: Vec<f64> = timed
            .iter()
            .filter(|(turn, _)| !later_only || *turn > 0)
            .map(|(_, ms)| *ms)
            .collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let (t, later) = (sorted(false), sorted(true));
    let failed = failed.load(Ordering::SeqCst);
    println!(
        "| {name} | {} | {failed} | {:.0} % / {:.0} % | {:.2} | {:.0} | {:.0} | {:.0} | {:.1} |",
        32 * turns,
        conv as f64 * 100.0 / served.max(1) as f64,
        sys as f64 * 100.0 / served.max(1) as f64,
        pairs as f64 / 32.0,
        pct(&t, 0.5),
        pct(&t, 0.99),
        pct(&later, 0.99),
        t.len() as f64 / wall
    );
}
