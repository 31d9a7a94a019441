//! Logging never stalls traffic: with stdout or stderr a pipe that nobody reads, the proxy
//! keeps answering, and the lines it could not write are counted in
//! `switchyard_log_lines_dropped_total`. Lines that are written stay whole.

mod common;

use common::{free_port, one_pool, wait_until, Proxy, Upstream};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A switchyard whose stdout and/or stderr is a pipe held open and never read.
struct Stalled {
    proxy: Proxy,
    child: Child,
    _stdout: Option<ChildStdout>,
    _stderr: Option<ChildStderr>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_stalled(body: &str, stall_stdout: bool, stall_stderr: bool) -> Stalled {
    let proxy = Proxy::new();
    proxy.write_config(body);
    let file = |name: &str| {
        Stdio::from(std::fs::File::create(proxy.dir.path().join(name)).expect("log file"))
    };
    let mut child = Command::new(&proxy.exe)
        .args(["run", "-c"])
        .arg(proxy.config_path())
        // With stderr stalled, debug lines make sure every request writes some (an answered
        // 502 is in the access log only).
        .env("RUST_LOG", if stall_stderr { "debug" } else { "info" })
        .stdout(if stall_stdout {
            Stdio::piped()
        } else {
            file("stdout.log")
        })
        .stderr(if stall_stderr {
            Stdio::piped()
        } else {
            file("stderr.log")
        })
        .spawn()
        .expect("start switchyard");
    let stalled = Stalled {
        _stdout: child.stdout.take(),
        _stderr: child.stderr.take(),
        child,
        proxy,
    };
    let url = format!("http://127.0.0.1:{}/health", stalled.proxy.admin);
    let ready = wait_until(Duration::from_secs(20), || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "switchyard did not become ready");
    stalled
}

/// Sends `total` requests to `url`, `lanes` at a time, each lane one after the other, and
/// returns how many got an answer with `status`. Bounded: a lane stops at its first request
/// without an answer, and all of it at `limit`.
async fn hammer(url: &str, total: usize, lanes: usize, status: u16, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    let mut tasks = Vec::new();
    for _ in 0..lanes {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut ok = 0;
            for _ in 0..total / lanes {
                if Instant::now() > end {
                    break;
                }
                match c.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == status => ok += 1,
                    _ => break,
                }
            }
            ok
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.expect("lane");
    }
    answered
}

const DROPPED: &str = "switchyard_log_lines_dropped_total";

#[tokio::test(flavor = "multi_thread")]
async fn a_stdout_nobody_reads_does_not_stop_the_proxy() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let s = start_stalled(&one_pool(port, up.addr, ""), true, false).await;
    assert_eq!(
        s.proxy.metric(DROPPED).await,
        Some(0.0),
        "the counter exists from the start"
    );

    // Before the fix, a worker blocked in its write once the pipe's ~64 KiB were full and
    // stopped serving. Long paths make long lines, so the pipe and the queue (4 MiB at most)
    // fill within these requests.
    const TOTAL: usize = 3000;
    let url = format!("http://127.0.0.1:{port}/{}", "x".repeat(2048));
    let answered = hammer(&url, TOTAL, 4, 200, Duration::from_secs(90)).await;
    assert_eq!(
        answered, TOTAL,
        "only {answered} of {TOTAL} requests answered"
    );

    let dropped = s.proxy.metric(DROPPED).await.unwrap_or(0.0);
    assert!(dropped > 0.0, "no access line counted as dropped");
    // Still serving, and the admin API too.
    assert_eq!(hammer(&url, 1, 1, 200, Duration::from_secs(10)).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_does_not_stop_the_proxy() {
    // Every request fails to connect to this backend; at debug level Pingora logs each
    // request and each failure on stderr.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let port = free_port();
    let s = start_stalled(&one_pool(port, dead, ", retries: 0"), false, true).await;

    const TOTAL: usize = 3000;
    let url = format!("http://127.0.0.1:{port}/{}", "x".repeat(2048));
    let answered = hammer(&url, TOTAL, 4, 502, Duration::from_secs(90)).await;
    assert_eq!(
        answered, TOTAL,
        "only {answered} of {TOTAL} requests answered"
    );
    let dropped = s.proxy.metric(DROPPED).await.unwrap_or(0.0);
    assert!(dropped > 0.0, "no diagnostic line counted as dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_lines_stay_whole_when_many_requests_log_at_once() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let p = Proxy::start(&one_pool(port, up.addr, "")).await;
    const TOTAL: usize = 1000;
    let url = format!("http://127.0.0.1:{port}/whole");
    assert_eq!(
        hammer(&url, TOTAL, 8, 200, Duration::from_secs(60)).await,
        TOTAL
    );
    let all_there = wait_until(Duration::from_secs(5), || async {
        p.stdout().matches("\"path\":\"/whole\"").count() == TOTAL
    })
    .await;
    assert!(all_there, "not every access line was written");
    for line in p.stdout().lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON line ({e}): {line:?}"));
        assert!(v.is_object());
    }
    assert_eq!(p.metric(DROPPED).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_lines_are_written_before_a_graceful_exit() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let mut s = start_stalled(&one_pool(port, up.addr, ""), true, false).await;
    // ~1.4 KB lines: the pipe holds a few dozen, the rest waits in the queue.
    const TOTAL: usize = 200;
    let url = format!("http://127.0.0.1:{port}/{}", "q".repeat(1024));
    assert_eq!(
        hammer(&url, TOTAL, 4, 200, Duration::from_secs(60)).await,
        TOTAL
    );
    assert_eq!(s.proxy.metric(DROPPED).await, Some(0.0));

    // Nobody reads stdout until the server has stopped: what was still queued then must
    // come out before the process ends.
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let stopped = wait_until(Duration::from_secs(15), || async {
        s.proxy.stderr().contains("All runtimes exited")
    })
    .await;
    assert!(stopped, "no shutdown:\n{}", s.proxy.stderr());
    let mut pipe = s._stdout.take().expect("the stdout pipe");
    let reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut text).map(|_| text)
    });
    let text = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .expect("stdout closes when the process exits")
        .expect("reader")
        .expect("read stdout");
    let written = text.lines().filter(|l| l.contains("qqqq")).count();
    assert_eq!(written, TOTAL, "access lines lost at exit");
    let exited = wait_until(Duration::from_secs(5), || {
        let done = matches!(s.child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "still running");
}
