//! The admin API edits the same YAML file, safely: every endpoint, its errors, auth,
//! concurrent writers, crash safety, invalid bodies, and placeholders that stay placeholders.

mod common;

use common::{client, free_port, sha256_hex, wait_until, Proxy, Upstream, ADMIN_KEY};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

fn pool_config(port: u16, backends: &[&Upstream]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("{{address: \"{}\"}}", b.addr))
        .collect();
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  app:
    health_check: {{kind: tcp, interval: 1s}}
    backends: [{}]
routes:
  - {{name: app, match: {{path_prefix: /}}, pool: app}}
"#,
        list.join(", ")
    )
}

async fn served_by(port: u16, path: &str) -> String {
    let v: Value = client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["server"].as_str().unwrap_or_default().to_string()
}

fn file(p: &Proxy) -> String {
    std::fs::read_to_string(p.config_path()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_protected_endpoint_needs_the_key() {
    let a = Upstream::start("a").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &[&a])).await;
    let base = format!("http://127.0.0.1:{}", p.admin);
    let calls = [
        (Method::GET, "/status"),
        (Method::GET, "/config"),
        (Method::POST, "/config"),
        (Method::PUT, "/config"),
        (Method::POST, "/config/validate"),
        (Method::POST, "/config/reload"),
        (Method::GET, "/config/history"),
        (Method::POST, "/config/rollback"),
        (Method::POST, "/pools/app/backends"),
        (Method::DELETE, "/pools/app/backends/127.0.0.1:1"),
        (Method::POST, "/pools/app/backends/127.0.0.1:1/drain"),
    ];
    for (m, path) in calls {
        let none = client()
            .request(m.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 401, "{m} {path} without a key");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let wrong = client()
            .request(m.clone(), format!("{base}{path}"))
            .header("x-api-key", "not-the-key-not-the-key-not-the-key")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{m} {path} with a wrong key");
    }
    for path in ["/health", "/metrics"] {
        assert_eq!(
            client()
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let ok = client()
        .get(format!("{base}/status"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "X-API-Key works too");
    // metrics_require_key closes /metrics too.
    let closed = format!(
        "{}  metrics_require_key: true\n{}",
        Proxy::prelude(p.dir.path(), p.admin),
        pool_config(port, &[&a])
    );
    let r = p
        .admin_req(Method::PUT, "/config")
        .body(closed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = p.admin_req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = p.admin_req(Method::GET, "/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = p.admin_req(Method::DELETE, "/config").send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn config_get_put_validate_reload_history_rollback() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &[&a])).await;

    let r = p.admin_req(Method::GET, "/config").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let on_disk = file(&p);
    assert_eq!(etag, format!("\"{}\"", sha256_hex(on_disk.as_bytes())));
    assert_eq!(r.text().await.unwrap(), on_disk);

    let new_text = format!(
        "{}{}",
        Proxy::prelude(p.dir.path(), p.admin),
        pool_config(port, &[&b])
    );
    let r = p
        .admin_req(Method::POST, "/config/validate")
        .body(new_text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["changes"]["pools"]["changed"], json!(["app"]));
    assert_eq!(file(&p), on_disk, "validate writes nothing");

    // A stale If-Match is refused; the current one is accepted.
    let r = p
        .admin_req(Method::PUT, "/config")
        .header("if-match", "\"0000\"")
        .body(new_text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    let r = p
        .admin_req(Method::PUT, "/config")
        .header("if-match", etag.clone())
        .body(new_text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let new_etag = r.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(new_etag, format!("\"{}\"", sha256_hex(new_text.as_bytes())));
    assert_eq!(v["old_hash"], etag.trim_matches('"'));
    assert_eq!(v["restart_required"], false);
    assert_eq!(file(&p), new_text);
    assert_eq!(served_by(port, "/").await, "b", "live before the answer");

    let r = p
        .admin_req(Method::GET, "/config/history")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let versions = v["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["hash"], etag.trim_matches('"'));
    let id = versions[0]["version"].as_str().unwrap().to_string();

    let r = p
        .admin_req(Method::POST, "/config/rollback")
        .json(&json!({"version": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = p
        .admin_req(Method::POST, "/config/rollback")
        .json(&json!({"version": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(file(&p), on_disk);
    assert_eq!(served_by(port, "/").await, "a");

    // A hand edit, then /config/reload picks it up at once.
    p.write_raw(&new_text);
    let r = p
        .admin_req(Method::POST, "/config/reload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_by(port, "/").await, "b");
    let listeners_moved = new_text.replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{}", free_port()),
    );
    let r = p
        .admin_req(Method::POST, "/config")
        .body(listeners_moved)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["restart_required"], true);
    assert_eq!(v["changes"]["listeners"]["changed"], json!(["http"]));

    let status: Value = p
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["last_reload"]["source"], "admin");
    assert_eq!(status["last_reload"]["restart_required"], true);
    let backend = &status["pools"]["app"]["backends"][0];
    assert_eq!(backend["address"], b.addr.to_string());
    assert_eq!(backend["healthy"], true);
    assert!(backend.get("inflight").is_some() && backend.get("consecutive_failures").is_some());
    // The audit line is written by the log thread, a moment after the answer.
    assert!(
        p.stdout_shows("\"kind\":\"audit\"").await,
        "admin changes are audited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_bodies_change_nothing() {
    let a = Upstream::start("a").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &[&a])).await;
    let before = file(&p);
    let prelude = Proxy::prelude(p.dir.path(), p.admin);
    let missing_pool = format!(
        "{prelude}{}",
        pool_config(port, &[&a]).replace("pool: app", "pool: nope")
    );
    let bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not yaml", b"routes: [\n  - {".to_vec(), 400),
        (
            "unknown key",
            format!("{before}colour: blue\n").into_bytes(),
            400,
        ),
        ("missing pool", missing_pool.into_bytes(), 400),
        ("10 MiB", vec![b'a'; 10 << 20], 413),
        ("binary junk", vec![0xff, 0x00, 0xfe, 0x01, 0x80], 400),
        ("empty", Vec::new(), 400),
    ];
    for (what, body, want) in bodies {
        let r = p
            .admin_req(Method::POST, "/config")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{what}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(file(&p), before, "{what}: the file changed");
        assert_eq!(served_by(port, "/").await, "a", "{what}: traffic affected");
    }
    let r = p
        .admin_req(Method::POST, "/config")
        .body(format!("{before}colour: blue\n"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "colour");
    assert!(
        v["line"].as_u64().is_some() && v["column"].as_u64().is_some(),
        "{v}"
    );
    for (body, want) in [
        (json!({"address": "not an address"}), 400),
        (json!({"adress": "127.0.0.1:9"}), 400),
        (json!({"address": a.addr.to_string()}), 409),
    ] {
        let r = p
            .admin_req(Method::POST, "/pools/app/backends")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{body}");
    }
    let r = p
        .admin_req(Method::POST, "/pools/nope/backends")
        .json(&json!({"address": "127.0.0.1:9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = p
        .admin_req(Method::DELETE, "/pools/app/backends/127.0.0.1:9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Removing the last backend of a used pool would make the config invalid.
    let r = p
        .admin_req(Method::DELETE, &format!("/pools/app/backends/{}", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(file(&p), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn register_drain_and_remove_backends() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &[&a])).await;

    let r = p
        .admin_req(Method::POST, "/pools/app/backends")
        .json(&json!({"address": b.addr.to_string(), "weight": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["changes"]["pools"]["changed"], json!(["app"]));
    assert!(file(&p).contains(&b.addr.to_string()));
    let got_traffic = wait_until(Duration::from_secs(1), || async {
        served_by(port, "/").await == "b" || b.hits() > 0
    })
    .await;
    assert!(got_traffic, "a registered backend gets traffic within 1 s");

    // A stream in flight through `a` finishes after `a` is drained.
    let stream = loop {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/stream?n=8&ms=100"))
            .send()
            .await
            .unwrap();
        if a.seen().last().is_some_and(|s| s.path == "/stream") {
            break r;
        }
        let _ = r.bytes().await;
    };
    let r = p
        .admin_req(
            Method::POST,
            &format!("/pools/app/backends/{}/drain", a.addr),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(file(&p).contains("drain: true"));
    let hits = a.hits();
    for _ in 0..10 {
        assert_eq!(served_by(port, "/").await, "b");
    }
    assert_eq!(a.hits(), hits, "a drained backend gets no new requests");
    let body = stream.text().await.unwrap();
    assert!(
        body.contains("data: 7"),
        "the in-flight stream completed: {body}"
    );

    let r = p
        .admin_req(Method::DELETE, &format!("/pools/app/backends/{}", a.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!file(&p).contains(&a.addr.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_writers_lose_no_update() {
    let a = Upstream::start("a").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &[&a])).await;
    let admin = p.admin;
    let mut writers = Vec::new();
    for i in 0..50u16 {
        writers.push(tokio::spawn(async move {
            let c = client();
            let base = format!("http://127.0.0.1:{admin}");
            for _ in 0..200 {
                let r = c
                    .get(format!("{base}/config"))
                    .bearer_auth(ADMIN_KEY)
                    .send()
                    .await
                    .unwrap();
                let etag = r.headers()["etag"].to_str().unwrap().to_string();
                let r = c
                    .post(format!("{base}/pools/app/backends"))
                    .bearer_auth(ADMIN_KEY)
                    .header("if-match", etag)
                    .json(&json!({"address": format!("127.0.0.1:{}", 20000 + i)}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => return true,
                    412 => continue,
                    other => panic!("writer {i}: {other} {}", r.text().await.unwrap_or_default()),
                }
            }
            false
        }));
    }
    for w in writers {
        assert!(w.await.unwrap(), "a writer gave up");
    }
    let text = file(&p);
    switchyard::config::parse(
        &text,
        &|k| (k == "ADMIN_KEY").then(|| ADMIN_KEY.to_string()),
        None,
    )
    .expect("the file is valid");
    for i in 0..50 {
        assert!(
            text.contains(&format!("127.0.0.1:{}", 20000 + i)),
            "backend {i} lost"
        );
    }
    assert_eq!(
        p.config_hash().await,
        sha256_hex(text.as_bytes()),
        "the file is what runs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn placeholders_stay_placeholders_through_every_write() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let mut p = Proxy::new();
    let secret = "the-real-admin-secret-0123456789abcdef";
    p.env.push(("ADMIN_KEY".into(), secret.into()));
    p.write_config(&pool_config(port, &[&a]));
    p.spawn().await;
    let call = |m: Method, path: &str| {
        client()
            .request(m, format!("http://127.0.0.1:{}{path}", p.admin))
            .bearer_auth(secret)
    };
    let text = file(&p);
    assert!(text.contains("${ADMIN_KEY:-"));
    let steps: Vec<reqwest::RequestBuilder> = vec![
        call(Method::POST, "/pools/app/backends").json(&json!({"address": b.addr.to_string()})),
        call(
            Method::POST,
            &format!("/pools/app/backends/{}/drain", b.addr),
        ),
        call(Method::DELETE, &format!("/pools/app/backends/{}", b.addr)),
        call(Method::PUT, "/config").body(text.clone()),
    ];
    for step in steps {
        let r = step.send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let now = file(&p);
        assert!(now.contains("${ADMIN_KEY:-"), "placeholder lost:\n{now}");
        assert!(!now.contains(secret), "secret written to the file");
    }
    let history: Value = call(Method::GET, "/config/history")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = history["versions"][0]["version"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(Method::POST, "/config/rollback")
        .json(&json!({"version": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let hist_dir = p.dir.path().join(".switchyard.yaml.history");
    for entry in std::fs::read_dir(hist_dir).unwrap() {
        let kept = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!kept.contains(secret), "secret in the history");
    }
    let served = call(Method::GET, "/config")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!served.contains(secret));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_writes_leaves_the_old_or_the_new_file() {
    let a = Upstream::start("a").await;
    let port = free_port();
    let mut p = Proxy::new();
    p.write_config(&pool_config(port, &[&a]));
    let initial = file(&p);
    let env = |k: &str| (k == "ADMIN_KEY").then(|| ADMIN_KEY.to_string());
    let mut next = 0u16;
    for round in 0..30u64 {
        p.spawn().await;
        let admin = p.admin;
        let first = next;
        let writes = tokio::spawn(async move {
            let c = client();
            for i in first..first + 20 {
                let sent = c
                    .post(format!("http://127.0.0.1:{admin}/pools/app/backends"))
                    .bearer_auth(ADMIN_KEY)
                    .json(&json!({"address": format!("127.0.0.1:{}", 30000 + i)}))
                    .send()
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        });
        // Pseudo-random kill points, spread over the stream of writes.
        tokio::time::sleep(Duration::from_millis((round * 37) % 120 + 5)).await;
        p.signal("KILL");
        let _ = writes.await;
        let mut child = p.take_child().expect("child");
        let _ = child.wait();

        let text = file(&p);
        let loaded = switchyard::config::parse(&text, &env, None)
            .unwrap_or_else(|e| panic!("round {round}: the file does not parse: {e}\n{text}"));
        // Backends were only ever appended in order: the file must hold a prefix of them.
        let added: Vec<String> = loaded.config.pools["app"].backends[1..]
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        let expected: Vec<String> = (0..added.len() as u16)
            .map(|i| format!("127.0.0.1:{}", 30000 + i))
            .collect();
        assert_eq!(
            added, expected,
            "round {round}: not a version that was written"
        );
        next = added.len() as u16;
    }
    assert_ne!(file(&p), initial, "some writes landed");
}
