//! The admission benchmark (docs/benchmarks.md, "Admission").
//!
//!   cargo build --release && cargo run --release --example admission_load -- \
//!     target/release/switchyard [SECONDS]
//!
//! Four mock inference backends with 4 slots each (a fifth request at once is an error the
//! mock counts) answer in 200–800 ms. Three tenants send open-loop load: two quiet ones and
//! one bursting 10× as much, together 2× what the fleet can serve, for SECONDS (30). The
//! run is made with `queue` off and on, after a baseline of the quiet tenants alone. Then
//! the cost of the admission path when nothing waits: CPU of the switchyard process per
//! request, against instant backends, with and without `queue` (ABAB, one run).

#[allow(unreachable_pub)]
#[path = "../tests/common/mock_openai.rs"]
mod mock_openai;

use mock_openai::MockOpenAi;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const SLOTS: usize = 4;
const BACKENDS: usize = 4;
const KEYS: [(&str, &str); 3] = [
    ("quiet-a", "quiet-a-key-0123456789"),
    ("quiet-b", "quiet-b-key-0123456789"),
    ("burst", "burst-key-0123456789ab"),
];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Proxy {
    child: Child,
    http: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(bin: &str, backends: &[&MockOpenAi], queue: bool, max_inflight: usize) -> Proxy {
    let dir = tempfile::tempdir().expect("temp dir");
    let (http, admin) = (free_port(), free_port());
    let d = dir.path().display();
    let mut pool = String::from("    health_check: {kind: none}\n");
    if queue {
        pool.push_str("    queue: {max: 5000, timeout: 120s}\n");
    }
    pool.push_str("    backends:\n");
    for b in backends {
        pool.push_str(&format!(
            "      - {{address: \"{}\", max_inflight: {max_inflight}}}\n",
            b.addr
        ));
    }
    let keys: Vec<String> = KEYS
        .iter()
        .map(|(n, k)| format!("{{key: \"{k}\", name: {n}}}"))
        .collect();
    let text = format!(
        "version: 1\nserver: {{threads: 2, pid_file: {d}/pid, upgrade_sock: {d}/sock}}\nadmin: {{listen: \"127.0.0.1:{admin}\"}}\nedge: {{access_log: {{enabled: false}}}}\nlisteners:\n  - {{name: http, listen: \"127.0.0.1:{http}\"}}\npools:\n  llm:\n{pool}routes:\n  - {{name: openai, match: {{path_prefix: /v1/}}, pool: llm, openai: true, auth: {{api_keys: [{}]}}}}\n",
        keys.join(", ")
    );
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, text).expect("config");
    let child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("start switchyard");
    let health = format!("http://127.0.0.1:{admin}/health");
    for _ in 0..200 {
        if reqwest::get(&health).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Proxy {
        child,
        http,
        _dir: dir,
    }
}

#[derive(Default)]
struct TenantStats {
    ok: Vec<f64>,
    failed: usize,
}

type Results = Arc<Mutex<BTreeMap<&'static str, TenantStats>>>;

/// Open-loop load: each tenant starts requests at its own rate for `secs`; waits for all.
async fn load(proxy: &Proxy, rates: &[(&'static str, &'static str, f64)], secs: u64) -> Results {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .timeout(Duration::from_secs(180))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", proxy.http);
    let results: Results = Arc::default();
    let mut tenants = Vec::new();
    for &(name, key, rate) in rates {
        let (client, url, results) = (client.clone(), url.clone(), results.clone());
        tenants.push(tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / rate);
            let end = Instant::now() + Duration::from_secs(secs);
            let mut tick = tokio::time::interval(every);
            let mut requests = Vec::new();
            while Instant::now() < end {
                tick.tick().await;
                let req = client
                    .post(&url)
                    .bearer_auth(key)
                    .body(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
                let results = results.clone();
                requests.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = matches!(req.send().await, Ok(r) if r.status() == 200);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let mut all = results.lock().await;
                    let s = all.entry(name).or_default();
                    if ok {
                        s.ok.push(ms);
                    } else {
                        s.failed += 1;
                    }
                }));
            }
            for r in requests {
                let _ = r.await;
            }
        }));
    }
    for t in tenants {
        let _ = t.await;
    }
    results
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn report(title: &str, results: &Results) {
    let mut all = results.lock().await;
    let served: usize = all.values().map(|s| s.ok.len()).sum();
    let failed: usize = all.values().map(|s| s.failed).sum();
    let total = (served + failed).max(1);
    println!(
        "\n## {title}: {total} requests, {failed} failed ({:.1} %)",
        failed as f64 * 100.0 / total as f64
    );
    println!("| tenant | sent | failed | p50 ms | p99 ms | share of slots |");
    println!("|---|---|---|---|---|---|");
    for (name, s) in all.iter_mut() {
        s.ok.sort_by(f64::total_cmp);
        println!(
            "| {name} | {} | {} | {:.0} | {:.0} | {:.1} % |",
            s.ok.len() + s.failed,
            s.failed,
            pct(&s.ok, 0.5),
            pct(&s.ok, 0.99),
            s.ok.len() as f64 * 100.0 / served.max(1) as f64
        );
    }
}

/// User plus system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of the proxy per 10k requests, closed loop, 32 at a time.
async fn cost(proxy: &Proxy, requests: usize) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/chat/completions", proxy.http);
    let before = cpu_seconds(proxy.child.id());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let r = client
                        .post(&url)
                        .bearer_auth(KEYS[0].1)
                        .body(r#"{"model":"m","messages":[]}"#)
                        .send()
                        .await;
                    if let Ok(r) = r {
                        let _ = r.bytes().await;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    (cpu_seconds(proxy.child.id()) - before) * 10_000.0 / requests as f64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/switchyard".into());
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut engines = Vec::new();
    for i in 0..BACKENDS {
        let m = MockOpenAi::start(&format!("gpu-{i}"), &[]).await;
        m.knobs.limit.store(SLOTS, Ordering::SeqCst);
        m.knobs.delay_ms.store(200, Ordering::SeqCst);
        m.knobs.delay_max_ms.store(800, Ordering::SeqCst);
        engines.push(m);
    }
    let refs: Vec<&MockOpenAi> = engines.iter().collect();
    // 16 slots, 0.5 s a request on average: 32 requests/s. Twice that, 1:1:10.
    let capacity = (SLOTS * BACKENDS) as f64 / 0.5;
    let quiet = 2.0 * capacity / 12.0;
    let quiet_only = [(KEYS[0].0, KEYS[0].1, quiet), (KEYS[1].0, KEYS[1].1, quiet)];
    let overload = [
        quiet_only[0],
        quiet_only[1],
        (KEYS[2].0, KEYS[2].1, quiet * 10.0),
    ];
    println!("# admission: {BACKENDS} backends × {SLOTS} slots, 200–800 ms, capacity {capacity:.0}/s, {secs} s at 2×");

    let p = start(&bin, &refs, true, SLOTS).await;
    report(
        "quiet tenants alone (queue on)",
        &load(&p, &quiet_only, secs / 2).await,
    )
    .await;
    drop(p);
    for queue in [false, true] {
        let p = start(&bin, &refs, queue, SLOTS).await;
        let title = format!("2× capacity, queue {}", if queue { "on" } else { "off" });
        report(&title, &load(&p, &overload, secs).await).await;
    }
    let over: usize = engines
        .iter()
        .map(|m| m.knobs.over_limit.load(Ordering::SeqCst))
        .sum();
    println!("\nrequests over a backend's own limit: {over}");

    for m in &engines {
        m.knobs.limit.store(0, Ordering::SeqCst);
        m.knobs.delay_ms.store(0, Ordering::SeqCst);
        m.knobs.delay_max_ms.store(0, Ordering::SeqCst);
    }
    let mut per = BTreeMap::<bool, Vec<f64>>::new();
    for queue in [false, true, false, true] {
        let p = start(&bin, &refs, queue, 100_000).await;
        cost(&p, 2_000).await;
        per.entry(queue).or_default().push(cost(&p, 20_000).await);
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    let (off, on) = (mean(&per[&false]), mean(&per[&true]));
    println!(
        "\n## cost when nothing waits: CPU s/10k requests, queue off {off:.3}, on {on:.3}, ratio {:.3} (runs: {:?})",
        on / off,
        per
    );
}
