//! Hostile or careless admin input: the key is checked before any body byte is read, a
//! document that is not a mapping with `version: 1` changes nothing (in the admin API and in
//! the file), a write that would shut the admin API's callers out is refused unless asked for,
//! and the answers have the shape the contract (docs/admin-openapi.yaml) gives them.

mod common;

use common::{client, free_port, run_cli, wait_until, Proxy, Upstream, ADMIN_KEY};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pool_config(port: u16, up: &Upstream) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  app: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}]}}
routes:
  - {{name: app, match: {{path_prefix: /}}, pool: app}}
"#,
        up.addr
    )
}

fn file(p: &Proxy) -> String {
    std::fs::read_to_string(p.config_path()).expect("the config file")
}

async fn served_by(port: u16) -> String {
    let v: Value = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .expect("proxied request")
        .json()
        .await
        .expect("echo body");
    v["server"].as_str().unwrap_or_default().to_string()
}

/// Sends `head` on a new connection and returns everything the server sent until it closed
/// the connection, or `None` if it neither answered and closed within `limit`.
async fn exchange(admin: u16, head: &str, limit: Duration) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin))
        .await
        .expect("connect to the admin port");
    s.write_all(head.as_bytes()).await.expect("send the head");
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|_| String::from_utf8_lossy(&got).into_owned())
}

/// Runs `switchyard run -c path`, which must give up at once: its exit code (`None` if it was
/// still running after 10 s and had to be killed) and its stderr.
fn run_briefly(path: &std::path::Path) -> (Option<i32>, String) {
    let err_path = path.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = std::process::Command::new(common::bin())
        .args(["run", "-c"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("start switchyard");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&err_path).unwrap_or_default())
}

/// A 400 as the contract gives it: `error`, and every problem in a non-empty `problems`.
fn assert_invalid_shape(v: &Value, what: &str) {
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {v}"
    );
    let problems = v["problems"].as_array();
    assert!(
        problems.is_some_and(|p| !p.is_empty() && p.iter().all(|p| p["message"].is_string())),
        "{what}: no problems list: {v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_the_key_is_refused_before_its_body() {
    let up = Upstream::start("a").await;
    let p = Proxy::start(&pool_config(free_port(), &up)).await;
    let before = file(&p);
    let heads = [
        // Under the 4 MiB body limit: a server that read the body first would wait for it.
        "PUT /config HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".to_string(),
        // Far over it: no 413 (which takes reading), no drain, just 401.
        "POST /config HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000\r\n\r\n".into(),
        "POST /pools/app/backends HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
        format!(
            "POST /config/rollback HTTP/1.1\r\nHost: a\r\nX-API-Key: not-{ADMIN_KEY}\r\nContent-Length: 65536\r\n\r\n"
        ),
        "GET /status HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".into(),
    ];
    for head in &heads {
        let what = head.lines().next().unwrap_or_default();
        let answer = exchange(p.admin, head, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| {
                panic!("{what}: no 401 and close within 3 s (the body was awaited)")
            });
        assert!(answer.starts_with("HTTP/1.1 401"), "{what}: {answer:?}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{what}: {answer:?}"
        );
        assert!(
            answer.contains("www-authenticate: Bearer"),
            "{what}: {answer:?}"
        );
    }
    // The open endpoints take no body: one announced is not read either.
    let head = "GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n";
    let answer = exchange(p.admin, head, Duration::from_secs(3))
        .await
        .expect("/health with a body announced: answered and closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert_eq!(file(&p), before);
    // With the key, the same request is read and judged (here: a bad body, 400).
    let r = p
        .admin_req(Method::PUT, "/config")
        .body("- not a config\n")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_that_is_not_a_versioned_mapping_changes_nothing() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let p = Proxy::start(&pool_config(port, &up)).await;
    let before = file(&p);
    let hash = p.config_hash().await;
    let key_only = format!("admin: {{api_key: \"{ADMIN_KEY}\"}}\n");
    let unversioned = before.replace("version: 1\n", "");
    let bodies = [
        "null\n",
        "~\n",
        "# nothing but a comment\n",
        "{}\n",
        "[]\n",
        "- version: 1\n",
        "42\n",
        "\"version: 1\"\n",
        "version: 2\n",
        key_only.as_str(),
        unversioned.as_str(),
    ];
    for body in bodies {
        for (method, path) in [
            (Method::PUT, "/config"),
            (Method::POST, "/config"),
            (Method::POST, "/config/validate"),
        ] {
            let what = format!("{method} {path} {body:?}");
            let r = p
                .admin_req(method.clone(), path)
                .body(body.to_string())
                .send()
                .await
                .expect("admin call");
            assert_eq!(r.status(), 400, "{what}");
            let v: Value = r.json().await.expect("json");
            assert_invalid_shape(&v, &what);
            assert!(
                v["problems"].to_string().contains("version"),
                "{what}: the problem names the version rule: {v}"
            );
        }
        assert_eq!(file(&p), before, "{body:?}: the file changed");
        assert_eq!(
            p.config_hash().await,
            hash,
            "{body:?}: the running config changed"
        );
        assert_eq!(served_by(port).await, "a", "{body:?}: traffic affected");
    }
    // The admin API is still open to its key.
    let r = p
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200);

    // The file follows the same rule: a reload of `null` is refused, the running config stays.
    p.write_raw("null\n");
    let refused = wait_until(Duration::from_secs(5), || async {
        p.metric("switchyard_config_reloads_total{result=\"error\",source=\"file\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(refused, "the null file was not refused:\n{}", p.stderr());
    assert_eq!(p.config_hash().await, hash);
    assert_eq!(served_by(port).await, "a");
    let r = p
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200, "the admin API closed itself");

    // `switchyard check` and startup refuse such a file with a message that says what is needed.
    for text in ["", "null\n", "{}\n", "[1]\n", "true\n"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.yaml");
        std::fs::write(&path, text).expect("write");
        let (code, _, err) = run_cli(&["check", "-c", path.to_str().expect("utf-8 path")], None);
        assert_ne!(code, 0, "{text:?} passed check");
        assert!(err.contains("version: 1"), "{text:?}: {err}");
        let (code, err) = run_briefly(&path);
        assert_ne!(code, Some(0), "{text:?} started");
        assert!(err.contains("version: 1"), "{text:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_would_shut_the_admin_api_out_is_409_unless_asked_for() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let body = pool_config(port, &up);
    let p = Proxy::start(&body).await;
    let before = file(&p);
    let prelude = Proxy::prelude(p.dir.path(), p.admin);
    let (server, admin) = prelude
        .split_once("admin:\n")
        .expect("the prelude has an admin section");
    let no_admin = format!("{server}{body}");
    let no_key = format!("{server}admin:\n  listen: 127.0.0.1:{}\n{body}", p.admin);
    let no_listen = format!("{server}admin:\n  api_key: \"{ADMIN_KEY}\"\n{body}");
    assert!(admin.contains("listen:") && admin.contains("api_key:"));
    for (what, text, says) in [
        ("no admin section", &no_admin, "admin.api_key"),
        ("no admin key", &no_key, "admin.api_key"),
        ("no admin listen", &no_listen, "admin.listen"),
    ] {
        for path in ["/config", "/config?allow_admin_close=false"] {
            let r = p
                .admin_req(Method::PUT, path)
                .body(text.clone())
                .send()
                .await
                .expect("put");
            assert_eq!(r.status(), 409, "{what} {path}");
            let v: Value = r.json().await.expect("json");
            let e = v["error"].as_str().unwrap_or_default();
            assert!(e.contains(says), "{what}: {v}");
            assert!(
                e.contains("?allow_admin_close=true"),
                "{what}: says how: {v}"
            );
        }
        // Valid all the same: validate says so, and writes nothing.
        let r = p
            .admin_req(Method::POST, "/config/validate")
            .body(text.clone())
            .send()
            .await
            .expect("validate");
        assert_eq!(r.status(), 200, "{what}");
        assert_eq!(file(&p), before, "{what}: the file changed");
    }
    let r = p
        .admin_req(Method::PUT, "/config?allow_admin_close=maybe")
        .body(no_key.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 400);
    assert_invalid_shape(&r.json().await.expect("json"), "allow_admin_close=maybe");

    // A rollback is held to the same rule. Keep a version without admin.listen (asked for),
    // go back to the full file, then try to roll back to the version without it.
    let r = p
        .admin_req(Method::PUT, "/config?allow_admin_close=true")
        .body(no_listen.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let r = p
        .admin_req(Method::PUT, "/config")
        .body(before.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let history: Value = p
        .admin_req(Method::GET, "/config/history")
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let wanted = common::sha256_hex(no_listen.as_bytes());
    let id = history["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["hash"] == wanted.as_str()))
        .and_then(|v| v["version"].as_str())
        .expect("the version without admin.listen is kept")
        .to_string();
    let rollback = serde_json::json!({ "version": id });
    let r = p
        .admin_req(Method::POST, "/config/rollback")
        .json(&rollback)
        .send()
        .await
        .expect("rollback");
    assert_eq!(r.status(), 409);
    assert_eq!(file(&p), before);
    let r = p
        .admin_req(Method::POST, "/config/rollback?allow_admin_close=true")
        .json(&rollback)
        .send()
        .await
        .expect("rollback");
    assert_eq!(r.status(), 200);
    assert_eq!(file(&p), no_listen);

    // Asked for explicitly, a config without a key is applied, and the API is then closed.
    let r = p
        .admin_req(Method::PUT, "/config?allow_admin_close=true")
        .body(no_key.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    assert_eq!(file(&p), no_key);
    let r = p
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 401);
    assert_eq!(served_by(port).await, "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_have_the_shape_the_contract_gives() {
    let up = Upstream::start("a").await;
    let p = Proxy::start(&pool_config(free_port(), &up)).await;
    // 405 says what the resource allows; HEAD is answered wherever GET is.
    for (method, path, allow) in [
        ("TRACE", "/health", "GET, HEAD"),
        ("DELETE", "/config", "GET, HEAD, POST, PUT"),
        ("GET", "/config/rollback", "POST"),
        ("PUT", "/pools/app/backends", "POST"),
        ("POST", "/pools/app/backends/127.0.0.1:1", "DELETE"),
    ] {
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let r = p.admin_req(m, path).send().await.expect("call");
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
    }
    let r = p
        .admin_req(Method::GET, "/pools/app/backends/127.0.0.1:1/drain/more")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 404);
    let get = p
        .admin_req(Method::GET, "/config")
        .send()
        .await
        .expect("get");
    let etag = get.headers()["etag"].clone();
    let length = get.headers()["content-length"].clone();
    let head = p
        .admin_req(Method::HEAD, "/config")
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], etag);
    assert_eq!(head.headers()["content-length"], length);
    assert!(head.bytes().await.expect("head body").is_empty());

    // Every 400 carries `problems`, whatever was wrong.
    for (method, path, body) in [
        (Method::POST, "/config/rollback", "not json"),
        (
            Method::POST,
            "/pools/app/backends",
            "{\"address\": \"nope\"}",
        ),
        (
            Method::POST,
            "/pools/app/backends",
            "{\"address\": \"10.0.0.9:8000\", \"weight\": 100000000000}",
        ),
        (Method::PUT, "/config", ""),
        (Method::PUT, "/config", "version: 1\nroutes: [\n"),
    ] {
        let what = format!("{method} {path} {body:?}");
        let r = p
            .admin_req(method, path)
            .body(body)
            .send()
            .await
            .expect("call");
        assert_eq!(r.status(), 400, "{what}");
        assert_invalid_shape(&r.json().await.expect("json"), &what);
    }

    // A body is judged before the precondition: a stale If-Match on a bad body is a 400, and
    // on a good one a 412 with the current ETag.
    let r = p
        .admin_req(Method::POST, "/pools/app/backends")
        .header("if-match", "\"0000\"")
        .body("{}")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 400);
    let r = p
        .admin_req(Method::POST, "/pools/app/backends")
        .header("if-match", "\"0000\"")
        .body("{\"address\": \"10.0.0.9:8000\"}")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 412);
    assert_eq!(r.headers()["etag"], etag);
    let r = p
        .admin_req(Method::POST, "/pools/app/backends")
        .header(
            "if-match",
            format!("\"0000\", {}", etag.to_str().unwrap_or_default()),
        )
        .body("{\"address\": \"10.0.0.9:8000\"}")
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200, "one of the listed ETags matches");
}
