//! Process lifecycle: SIGTERM lets requests in flight finish within the grace period; a
//! graceful upgrade (`-u` + SIGQUIT) hands the sockets over with no failed request, and so
//! does `systemctl reload` (SIGHUP) after a new binary or a listener change.

mod common;

use common::{client, free_port, wait_until, Proxy, Upstream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(port: u16, up: &Upstream) -> String {
    common::one_pool(port, up.addr, "")
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let mut p = Proxy::start(&config(port, &up)).await;
    let inflight = tokio::spawn(async move {
        client()
            .get(format!("http://127.0.0.1:{port}/delay?ms=500"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(wait_until(Duration::from_secs(3), || async { up.hits() == 1 }).await);
    p.signal("TERM");
    assert_eq!(inflight.await.unwrap().expect("in-flight request"), 200);
    let mut child = p.take_child().expect("child");
    // grace_period_seconds: 1 + graceful_shutdown_timeout_seconds: 1 in the test prelude.
    assert!(
        wait_exit(&mut child, Duration::from_secs(6)),
        "did not exit after SIGTERM"
    );
}

/// A bounded client loop (4 connections, at most 2,000 requests each) counting answers.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let loops = (0..4)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let c = client();
                    for _ in 0..2000 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match c.get(format!("http://127.0.0.1:{port}/u")).send().await {
                            Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                            _ => failed.fetch_add(1, Ordering::SeqCst),
                        };
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            loops,
        }
    }

    /// Waits until 20 more requests succeeded, then stops: (succeeded, failed).
    async fn finish(self) -> (usize, usize) {
        let before = self.ok.load(Ordering::SeqCst);
        let flowing = wait_until(Duration::from_secs(5), || async {
            self.ok.load(Ordering::SeqCst) > before + 20
        })
        .await;
        assert!(flowing, "traffic stopped flowing");
        self.stop.store(true, Ordering::SeqCst);
        for l in self.loops {
            l.await.expect("client loop");
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

/// A stream of 30 events over 3 s, started now: it must end complete wherever it started.
fn long_stream(port: u16) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/stream?n=30&ms=100"))
            .send()
            .await
            .expect("stream request");
        r.text().await.unwrap_or_default()
    })
}

async fn admin_pid(p: &Proxy) -> Option<u64> {
    p.try_health().await.and_then(|h| h["pid"].as_u64())
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_upgrade_hands_sockets_over_without_failures() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let mut p = Proxy::start(&config(port, &up)).await;
    let old_pid = p.health().await["pid"].as_u64().unwrap();
    let traffic = Traffic::start(port);
    let stream = long_stream(port);
    let mut new = p.spawn_process("new.", &["-u"]);
    let sock = p.dir.path().join("upgrade.sock");
    assert!(
        wait_until(Duration::from_secs(10), || async { sock.exists() }).await,
        "the new process did not open the upgrade socket"
    );
    p.signal("QUIT");
    let mut old = p.take_child().expect("old");
    let handed = wait_until(Duration::from_secs(15), || async {
        admin_pid(&p).await.is_some_and(|pid| pid != old_pid)
    })
    .await;
    assert!(handed, "the new process never served the admin port");
    assert!(
        wait_exit(&mut old, Duration::from_secs(15)),
        "old process did not exit"
    );
    let (ok, failed) = traffic.finish().await;
    assert_eq!(failed, 0, "requests failed during the upgrade");
    assert!(ok > 0);
    let events = stream.await.unwrap();
    assert!(
        events.contains("data: 29\n"),
        "the stream on the old process was cut: {events}"
    );
    let _ = new.kill();
    let _ = new.wait();
}

/// Stands in for systemd's end of `NOTIFY_SOCKET`: collects what the processes announce.
struct FakeSystemd {
    socket: tokio::net::UnixDatagram,
}

impl FakeSystemd {
    /// Binds the socket in the proxy's folder and gives its path to the proxy as systemd does.
    fn attach(p: &mut Proxy) -> FakeSystemd {
        let path = p.dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        p.env
            .push(("NOTIFY_SOCKET".into(), path.display().to_string()));
        FakeSystemd { socket }
    }

    /// The next announcement that names a main pid other than `not`: (pid, whole message).
    async fn main_pid_other_than(&self, not: u32) -> (u32, String) {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), self.socket.recv(&mut buf))
                .await
                .expect("no MAINPID announcement within 30 s")
                .expect("recv");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let pid = msg
                .lines()
                .find_map(|l| l.strip_prefix("MAINPID="))
                .and_then(|p| p.parse().ok());
            if let Some(pid) = pid.filter(|p| *p != not) {
                return (pid, msg);
            }
        }
    }
}

fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Replaces `exe` the way `install` does: a new file renamed over the old name.
fn install_binary(from: &str, exe: &std::path::Path) {
    let tmp = exe.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy the binary");
    std::fs::rename(&tmp, exe).expect("rename the binary");
}

/// A proxy (not started) that runs its own copy of the binary, which a test may replace.
fn with_own_binary() -> Proxy {
    let mut p = Proxy::new();
    p.exe = p.dir.path().join("switchyard");
    install_binary(common::bin(), &p.exe);
    p
}

/// The unit's "one command" upgrade: install a new binary, `systemctl reload` (SIGHUP). The
/// process validates the file with the new binary, starts it with `-u`, hands the sockets
/// over, and the new process tells systemd `MAINPID=` so that systemd follows it.
#[tokio::test(flavor = "multi_thread")]
async fn reload_after_a_new_binary_hands_over_and_systemd_follows() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let mut p = with_own_binary();
    let systemd = FakeSystemd::attach(&mut p);
    p.write_config(&config(port, &up));
    p.spawn().await;
    let old_pid = p.pid();
    let (pid, ready) = systemd.main_pid_other_than(0).await;
    assert_eq!(pid, old_pid);
    assert!(ready.contains("READY=1"), "{ready}");

    let traffic = Traffic::start(port);
    let stream = long_stream(port);
    install_binary(common::bin(), &p.exe);
    p.signal("HUP");
    let (new_pid, ready) = systemd.main_pid_other_than(old_pid).await;
    assert!(ready.contains("READY=1"), "{ready}");
    let handed = wait_until(Duration::from_secs(15), || async {
        admin_pid(&p).await == Some(u64::from(new_pid))
    })
    .await;
    assert!(handed, "pid {new_pid} never served:\n{}", p.stderr());
    let mut old = p.take_child().expect("old");
    assert!(
        wait_exit(&mut old, Duration::from_secs(15)),
        "old process did not exit"
    );
    let (ok, failed) = traffic.finish().await;
    kill_pid(new_pid);
    assert_eq!(failed, 0, "requests failed during the upgrade ({ok} ok)");
    let events = stream.await.unwrap();
    assert!(events.contains("data: 29\n"), "stream cut: {events}");
}

/// A listener moved in the file: SIGHUP starts a process on the new address and the old
/// address is closed (the inherited socket is not kept open unserved).
#[tokio::test(flavor = "multi_thread")]
async fn reload_with_a_moved_listener_hands_over_to_the_new_address() {
    let up = Upstream::start("up").await;
    let (port, moved) = (free_port(), free_port());
    let mut p = Proxy::start(&config(port, &up)).await;
    let old_pid = p.pid();
    p.write_config(&config(moved, &up));
    p.signal("HUP");
    let served = wait_until(Duration::from_secs(20), || async {
        let r = client()
            .get(format!("http://127.0.0.1:{moved}/u"))
            .send()
            .await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served, "the moved listener never served:\n{}", p.stderr());
    // Both processes accept on the admin socket for Pingora's 5 s close timeout.
    let seen = std::sync::atomic::AtomicU64::new(0);
    let handed = wait_until(Duration::from_secs(15), || async {
        let pid = admin_pid(&p).await.unwrap_or_default();
        seen.store(pid, Ordering::SeqCst);
        pid != 0 && pid != u64::from(old_pid)
    })
    .await;
    assert!(handed, "the admin port never moved to the new process");
    let new_pid = seen.load(Ordering::SeqCst);
    let mut old = p.take_child().expect("old");
    let exited = wait_exit(&mut old, Duration::from_secs(15));
    let old_port_closed = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err();
    kill_pid(new_pid as u32);
    assert!(exited, "old process did not exit");
    assert!(old_port_closed, "the old address still accepts connections");
}

/// A new binary that refuses the file: nothing is handed over, the old process serves on.
#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_serving_when_the_new_binary_refuses_the_config() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let mut p = with_own_binary();
    p.write_config(&config(port, &up));
    p.spawn().await;
    let broken = p.dir.path().join("broken.sh");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'line 1: not a config I know' >&2\nexit 1\n",
    )
    .expect("write script");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    install_binary(broken.to_str().expect("utf-8 path"), &p.exe);
    p.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.stderr().contains("not done, this process keeps serving")
        })
        .await,
        "no refusal logged:\n{}",
        p.stderr()
    );
    assert!(p.stderr().contains("not a config I know"));
    assert!(p.alive());
    let r = client()
        .get(format!("http://127.0.0.1:{port}/u"))
        .send()
        .await
        .expect("still serving");
    assert_eq!(r.status(), 200);
    assert_eq!(admin_pid(&p).await, Some(u64::from(p.pid())));
}

/// A listen port held by another process: Pingora keeps retrying the bind, and systemd is not
/// told READY until the port is free and bound.
#[tokio::test(flavor = "multi_thread")]
async fn ready_waits_until_every_listener_is_bound() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let mut p = Proxy::new();
    let systemd = FakeSystemd::attach(&mut p);
    p.write_config(&config(port, &up));
    p.spawn().await;
    let early = tokio::time::timeout(Duration::from_secs(2), systemd.main_pid_other_than(0)).await;
    assert!(
        early.is_err(),
        "READY while port {port} is not bound: {early:?}"
    );
    drop(squatter);
    let (pid, ready) = systemd.main_pid_other_than(0).await;
    assert_eq!(pid, p.pid());
    assert!(ready.contains("READY=1"), "{ready}");
    let r = client()
        .get(format!("http://127.0.0.1:{port}/u"))
        .send()
        .await
        .expect("served once bound");
    assert_eq!(r.status(), 200);
}
