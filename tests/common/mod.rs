//! The one end-to-end harness: a temp dir with a YAML file, the real switchyard binary,
//! real upstream servers on 127.0.0.1, and readiness probes instead of sleeps.
#![allow(dead_code)]
// Test helpers are not an API: `pub` is how the test files reach them.
#![allow(unreachable_pub)]

pub mod certs;
pub mod mock_openai;
pub mod pebble;
pub mod redis_server;
pub mod upstream;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use upstream::{TcpEcho, Upstream};

/// The admin key of every test config (unless `ADMIN_KEY` is set for the process).
pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef0123";

/// A free loopback port for a process the test starts (switchyard's listeners and admin,
/// HAProxy, Pebble): checked free by binding it, then closed for that process to bind.
///
/// Taken outside the kernel's ephemeral range, not from `bind(0)`: a port the kernel handed
/// out and got back may be the next it hands to any `bind(0)` or outgoing connection, and
/// tests run in parallel, so another test's upstream could take it in the ~100 ms before the
/// proxy binds it (the likely cause of a connection reset seen once in CI). Outside the range
/// the kernel gives it to no test server or client, and within the test process each port is
/// handed out once, from a start that depends on the process id.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, span) = reserved_ports();
    if span == 0 {
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
    }
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = first + (start + n) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {first}..{}", first + span);
}

/// The ports outside the kernel's ephemeral range (`ip_local_port_range`) that `free_port`
/// hands out: the first and how many. Below the range when there is room above the
/// privileged ports (the usual `32768 60999`), else above it, else none (0, 0).
fn reserved_ports() -> (u32, u32) {
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    let (low, high) = match range[..] {
        [low, high] => (low, high),
        _ => (32768, 60999),
    };
    const ENOUGH: u32 = 1024;
    let below = low.saturating_sub(16384).max(1024);
    if low >= below + ENOUGH {
        return (below, low - below);
    }
    let above = high + 1;
    if above + ENOUGH <= 65536 {
        return (above, 65536 - above);
    }
    // The whole range is ephemeral: only the kernel's choice is left.
    (0, 0)
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// Polls `probe` every 20 ms until it is true or `limit` passes.
pub async fn wait_until<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running switchyard with its own folder, ports and log files.
pub struct Proxy {
    pub dir: tempfile::TempDir,
    pub admin: u16,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    /// The binary to run (a test may run a copy it later replaces).
    pub exe: PathBuf,
    child: Option<Child>,
}

impl Proxy {
    /// The `server:` and `admin:` sections every test config starts with.
    pub fn prelude(dir: &Path, admin: u16) -> String {
        format!(
            "version: 1\nserver:\n  threads: 2\n  pid_file: {d}/switchyard.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\nadmin:\n  listen: 127.0.0.1:{admin}\n  api_key: \"${{ADMIN_KEY:-{key}}}\"\n",
            key = ADMIN_KEY,
            d = dir.display()
        )
    }

    /// A new folder and admin port; the config is written by `start`.
    pub fn new() -> Proxy {
        Proxy {
            dir: tempfile::tempdir().expect("a temp dir"),
            admin: free_port(),
            env: Vec::new(),
            exe: PathBuf::from(bin()),
            child: None,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.yaml")
    }

    /// Writes `body` (everything after the prelude) as the config, replacing the file by
    /// rename as editors do.
    pub fn write_config(&self, body: &str) {
        let text = format!("{}{}", Self::prelude(self.dir.path(), self.admin), body);
        self.write_raw(&text);
    }

    pub fn write_raw(&self, text: &str) {
        let tmp = self.dir.path().join(".switchyard.yaml.tmp");
        let mut f = std::fs::File::create(&tmp).expect("create temp config");
        f.write_all(text.as_bytes()).expect("write temp config");
        f.sync_all().expect("sync temp config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// Starts the binary on `body` and waits until the admin `/health` answers.
    pub async fn start(body: &str) -> Proxy {
        let mut p = Proxy::new();
        p.write_config(body);
        p.spawn().await;
        p
    }

    /// Starts another process on the same config, logging to `<tag>.stdout.log` etc.
    pub fn spawn_process(&self, tag: &str, extra: &[&str]) -> Child {
        let log = |kind: &str| {
            std::fs::File::create(self.dir.path().join(format!("{tag}{kind}.log")))
                .expect("log file")
        };
        Command::new(&self.exe)
            .args(["run", "-c"])
            .arg(self.config_path())
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log("stdout")))
            .stderr(Stdio::from(log("stderr")))
            .spawn()
            .expect("start switchyard")
    }

    /// Starts `conf/examples/NAME` with its admin port and the given text replacements
    /// (listen ports, backend addresses), so the shipped file itself is what runs.
    pub async fn start_example(name: &str, replace: &[(&str, String)]) -> Proxy {
        let path = format!("{}/conf/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(&path).expect("example config");
        let mut p = Proxy::new();
        text = text.replace("127.0.0.1:9901", &format!("127.0.0.1:{}", p.admin));
        for (from, to) in replace {
            assert!(text.contains(from), "{name} has no {from:?}");
            text = text.replace(from, to);
        }
        p.write_raw(&text);
        p.spawn().await;
        p
    }

    pub async fn spawn(&mut self) {
        self.child = Some(self.spawn_process("", &[]));
        let url = format!("http://127.0.0.1:{}/health", self.admin);
        let ready = wait_until(Duration::from_secs(20), || async {
            reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "switchyard did not become ready:\n{}", self.stderr());
        // Pingora binds each service's sockets as that service starts: wait for every
        // listener of the config, not only the admin one.
        for addr in self.listen_addresses() {
            let bound = wait_until(Duration::from_secs(10), || async {
                tokio::net::TcpStream::connect(addr).await.is_ok()
            })
            .await;
            assert!(bound, "listener {addr} never accepted:\n{}", self.stderr());
        }
    }

    /// Every `listen:` address of the current config file.
    fn listen_addresses(&self) -> Vec<SocketAddr> {
        let text = std::fs::read_to_string(self.config_path()).unwrap_or_default();
        text.split("listen:")
            .skip(1)
            .filter_map(|rest| {
                let value = rest.trim_start().trim_start_matches('"');
                let end =
                    value.find(|c: char| c == '"' || c == '}' || c == ',' || c.is_whitespace())?;
                value[..end].parse().ok()
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// Waits (bounded) until the access log on stdout contains `needle`: it is written after
    /// the answer went out, so a client can see the answer first.
    pub async fn stdout_shows(&self, needle: &str) -> bool {
        wait_until(Duration::from_secs(3), || async {
            self.stdout().contains(needle)
        })
        .await
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// A request to the admin API with the test key.
    pub fn admin_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        client()
            .request(method, format!("http://127.0.0.1:{}{path}", self.admin))
            .bearer_auth(ADMIN_KEY)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// The value of one metric series, e.g. `switchyard_config_reloads_total{result="ok",source="file"}`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    /// The admin `/health` answer of whichever process serves the admin port now.
    pub async fn health(&self) -> serde_json::Value {
        self.try_health().await.expect("admin /health answers")
    }

    pub async fn try_health(&self) -> Option<serde_json::Value> {
        let r = reqwest::get(format!("http://127.0.0.1:{}/health", self.admin))
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The config hash the running process reports.
    pub async fn config_hash(&self) -> String {
        self.health().await["config_hash"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Takes the process handle (to wait for its exit).
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Writes a new config and waits until the process runs it.
    pub async fn reload_to(&self, body: &str) {
        let text = format!("{}{}", Self::prelude(self.dir.path(), self.admin), body);
        let want = sha256_hex(text.as_bytes());
        self.write_raw(&text);
        let ok = wait_until(Duration::from_secs(5), || async {
            self.config_hash().await == want
        })
        .await;
        assert!(ok, "config was not applied:\n{}", self.stderr());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    switchyard::config::hash_bytes(bytes)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Runs the binary with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run switchyard");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The usual test config: one plain listener, pool `up` with one backend and no health
/// check, and one route `all` for every path (`route_extra` is added to the route's map).
pub fn one_pool(port: u16, up: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: up{route_extra}}}
"#
    )
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
