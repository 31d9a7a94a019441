//! Process lifecycle: SIGTERM lets requests in flight finish within the grace period; a
//! graceful upgrade (`-u` + SIGQUIT) hands the sockets over with no failed request.

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

#[tokio::test(flavor = "multi_thread")]
async fn graceful_upgrade_hands_sockets_over_without_failures() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let mut p = Proxy::start(&config(port, &up)).await;
    let old_pid = p.health().await["pid"].as_u64().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
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
        }));
    }

    // A stream that started on the old process must finish there.
    let stream = tokio::spawn(async move {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/stream?n=30&ms=100"))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap_or_default()
    });
    let mut new = p.spawn_process("new.", &["-u"]);
    let sock = p.dir.path().join("upgrade.sock");
    assert!(
        wait_until(Duration::from_secs(10), || async { sock.exists() }).await,
        "the new process did not open the upgrade socket"
    );
    p.signal("QUIT");
    let mut old = p.take_child().expect("old");
    let handed = wait_until(Duration::from_secs(15), || async {
        p.try_health()
            .await
            .and_then(|h| h["pid"].as_u64())
            .is_some_and(|pid| pid != old_pid)
    })
    .await;
    assert!(handed, "the new process never served the admin port");
    assert!(
        wait_exit(&mut old, Duration::from_secs(15)),
        "old process did not exit"
    );
    // Traffic keeps flowing on the new process.
    let before = ok.load(Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            ok.load(Ordering::SeqCst) > before + 20
        })
        .await
    );
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the upgrade"
    );
    let events = stream.await.unwrap();
    assert!(
        events.contains("data: 29\n"),
        "the stream on the old process was cut: {events}"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    let _ = new.kill();
    let _ = new.wait();
}
