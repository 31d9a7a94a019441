//! The process log (stderr) of a run with the usual trouble: a backend that goes down and
//! comes back, 503s and 502s answered meanwhile, a client cut by the head deadline, a TLS
//! handshake that fails, and a rejected reload. Each event is one line at its level; the
//! answered requests are in the access log only; `server.log_format: json` and
//! `--log-format json` write JSON lines.

mod common;

use common::{free_port, wait_until, Proxy, Upstream};
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(http: SocketAddr, https: SocketAddr, up: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "{http}"}}
  - {{name: https, listen: "{https}", tls: {{self_signed: [localhost]}}}}
pools:
  app:
    health_check: {{kind: http, path: /health, interval: 200ms, timeout: 200ms, healthy_after: 1, unhealthy_after: 1}}
    backends: [{{address: "{up}"}}]
  gone:
    health_check: {{kind: none}}
    backends: [{{address: "127.0.0.1:{closed}"}}]
routes:
  - {{name: gone, match: {{path_prefix: /gone}}, pool: gone}}
  - {{name: app, match: {{path_prefix: /}}, pool: app}}
edge:
  header_timeout: 500ms
"#,
        closed = free_port(),
    )
}

/// `server:` goes in the prelude; a log format is added to it by text.
fn with_format(p: &Proxy, body: &str, format: Option<&str>) -> String {
    let mut text = format!("{}{body}", Proxy::prelude(p.dir.path(), p.admin));
    if let Some(f) = format {
        text = text.replace("server:\n", &format!("server:\n  log_format: {f}\n"));
    }
    text
}

struct Run {
    proxy: Proxy,
    child: Child,
    up: Upstream,
    http: SocketAddr,
    https: SocketAddr,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(config_format: Option<&str>, args: &[&str]) -> Run {
    let up = Upstream::start("app").await;
    let [http, https] = [0; 2].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
    let proxy = Proxy::new();
    proxy.write_raw(&with_format(
        &proxy,
        &config(http, https, up.addr),
        config_format,
    ));
    let child = proxy.spawn_process("", args);
    let health = format!("http://127.0.0.1:{}/health", proxy.admin);
    let ready = wait_until(Duration::from_secs(20), || async {
        reqwest::get(&health).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "not ready:\n{}", proxy.stderr());
    for addr in [http, https] {
        let bound = wait_until(Duration::from_secs(10), || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(bound, "{addr} never listened");
    }
    Run {
        proxy,
        child,
        up,
        http,
        https,
    }
}

/// The trouble every run goes through; returns the backend's address.
async fn trouble(r: &mut Run) -> SocketAddr {
    let client = common::client();
    let url = |path: &str| format!("http://{}{path}", r.http);
    assert_eq!(client.get(url("/")).send().await.expect("up").status(), 200);
    // Down: the health check notices, requests get 503.
    let addr = r.up.addr;
    r.up.stop();
    let down = wait_until(Duration::from_secs(10), || async {
        client
            .get(url("/"))
            .send()
            .await
            .is_ok_and(|a| a.status() == 503)
    })
    .await;
    assert!(down, "never 503:\n{}", r.proxy.stderr());
    for _ in 0..3 {
        assert_eq!(
            client.get(url("/")).send().await.expect("503").status(),
            503
        );
    }
    // Every attempt refused: 502.
    for _ in 0..2 {
        assert_eq!(
            client.get(url("/gone")).send().await.expect("502").status(),
            502
        );
    }
    // A head that never ends: cut at edge.header_timeout.
    let mut slow = TcpStream::connect(r.http).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let mut rest = Vec::new();
    let cut = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(cut.is_ok(), "the slow head was not cut");
    // Not TLS on the TLS listener.
    let mut junk = TcpStream::connect(r.https).await.expect("connect");
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut rest)).await;
    // Back up.
    r.up = Upstream::start_on("app", addr).await;
    let back = wait_until(Duration::from_secs(10), || async {
        client
            .get(url("/"))
            .send()
            .await
            .is_ok_and(|a| a.status() == 200)
    })
    .await;
    assert!(back, "never back:\n{}", r.proxy.stderr());
    addr
}

/// Lines that contain `needle`.
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// What every run's log must say, whatever its format: `level` reads a line's level.
fn check_events(log: &str, backend: SocketAddr, level: impl Fn(&str) -> String) {
    let down = lines_with(log, &format!("pool app: backend {backend} is down"));
    assert_eq!(down.len(), 1, "one line for the way down:\n{log}");
    assert_eq!(level(down[0]), "WARN", "{}", down[0]);
    let up = lines_with(log, &format!("pool app: backend {backend} is up again"));
    assert_eq!(up.len(), 1, "one line for the way up:\n{log}");
    assert_eq!(level(up[0]), "WARN", "{}", up[0]);
    assert!(!log.contains("Backend {"), "a Backend dump:\n{log}");
    assert!(
        !log.contains("becomes unhealthy"),
        "Pingora's own line:\n{log}"
    );
    assert!(
        !log.contains("Fail to proxy"),
        "an answered request in the error log:\n{log}"
    );
    let errors: Vec<&str> = log.lines().filter(|l| level(l) == "ERROR").collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in an ordinary run:\n{errors:#?}"
    );
}

async fn access_log_has_the_answers(p: &Proxy) {
    for status in [503, 502] {
        assert!(
            p.stdout_shows(&format!("\"status\":{status}")).await,
            "{status} not in the access log:\n{}",
            p.stdout()
        );
    }
}

/// A rejected reload: one ERROR line, its problems on that line.
async fn rejected_reload(r: &Run, parse: impl Fn(&str) -> Option<(String, String)>) {
    let p = &r.proxy;
    let good = std::fs::read_to_string(p.config_path()).expect("config");
    p.write_raw(&good.replace("healthy_after: 1,", "healthy_after: 0,"));
    let logged = wait_until(Duration::from_secs(5), || async {
        p.stderr().contains("rejected")
    })
    .await;
    assert!(logged, "no rejection logged:\n{}", p.stderr());
    let log = p.stderr();
    let line = lines_with(&log, "rejected");
    assert_eq!(line.len(), 1, "{log}");
    let (level, message) = parse(line[0]).expect("a log line");
    assert_eq!(level, "ERROR");
    assert!(message.contains("healthy_after"), "{message}");
}

fn text_line(l: &str) -> Option<(String, String)> {
    // `TIME LEVEL target: message`
    let mut parts = l.splitn(3, ' ');
    let time = parts.next()?;
    let level = parts.next()?;
    let rest = parts.next()?.trim_start();
    time.parse::<humantime::Timestamp>().ok()?;
    Some((level.to_string(), rest.split_once(": ")?.1.to_string()))
}

fn json_line(l: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(l).ok()?;
    v["time"].as_str()?.parse::<humantime::Timestamp>().ok()?;
    v["target"].as_str()?;
    Some((
        v["level"].as_str()?.to_string(),
        v["message"].as_str()?.to_string(),
    ))
}

#[tokio::test]
async fn text_lines_one_per_event() {
    let mut r = start(None, &[]).await;
    let backend = trouble(&mut r).await;
    let log = r.proxy.stderr();
    for l in log.lines() {
        assert!(text_line(l).is_some(), "not a log line: {l:?}\n{log}");
    }
    check_events(&log, backend, |l| {
        text_line(l).map(|x| x.0).unwrap_or_default()
    });
    access_log_has_the_answers(&r.proxy).await;
    rejected_reload(&r, text_line).await;
}

#[tokio::test]
async fn server_log_format_json_writes_json_lines() {
    let mut r = start(Some("json"), &[]).await;
    let backend = trouble(&mut r).await;
    let log = r.proxy.stderr();
    let lines: Vec<&str> = log.lines().collect();
    // The serving lines are JSON (only what comes before the file is read can be text).
    let first_json = lines
        .iter()
        .position(|l| json_line(l).is_some())
        .expect("JSON lines");
    for l in &lines[first_json..] {
        assert!(json_line(l).is_some(), "not a JSON line: {l:?}");
    }
    assert!(log.contains("serving"), "{log}");
    check_events(&log, backend, |l| {
        json_line(l).map(|x| x.0).unwrap_or_default()
    });
    rejected_reload(&r, json_line).await;
}

#[tokio::test]
async fn the_flag_wins_over_the_file() {
    let r = start(Some("text"), &["--log-format", "json"]).await;
    let log = r.proxy.stderr();
    assert!(!log.is_empty());
    for l in log.lines() {
        assert!(json_line(l).is_some(), "not a JSON line: {l:?}");
    }
}
