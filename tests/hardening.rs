//! The edge tried as an attacker or a careless operator would: path tricks past auth,
//! policies that must not fail open, and HTTP/1 clients that must all be served.

mod common;

use common::{addr, client, free_port, one_pool, run_cli, Proxy, Upstream};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "client-key-0123456789abcdef";

/// Sends raw bytes and reads until the proxy closes the connection (at most 15 s).
async fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open; got so far: {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n").into_bytes()
}

fn private_and_public(port: u16, up: &Upstream, edge: &str) -> String {
    format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - {{name: private, match: {{path_prefix: /private/}}, pool: up, auth: {{api_keys: ["{KEY}"]}}}}
  - {{name: api, match: {{path_prefix: /api}}, pool: up, strip_prefix: /api}}
  - {{name: public, match: {{path_prefix: /}}, pool: up}}
edge:
  header_timeout: 30s
{edge}
"#,
        up = up.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_do_not_get_past_auth() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let p = Proxy::start(&private_and_public(port, &up, "")).await;

    for trick in [
        "/public/../private/x",
        "/public/%2e%2e/private/x",
        "/public/.%2E/private/x",
        "//private/x",
        "/public/./../private/x",
        "/%70rivate/x",
    ] {
        let r = raw(port, &get(trick)).await;
        assert_eq!(
            status(&r),
            401,
            "{trick} must meet the private route's auth: {r}"
        );
    }
    for refused in [
        "/public/..%2fprivate/x",
        "/public/..%5Cprivate/x",
        "/public/..\\private/x",
        "/../private/x",
        "/a/%2e%2e/%2e%2e/private/x",
        "/bad%zzescape",
        "/bad%4",
        "/public/..;/private/x",
        "/public/%2e%2e;jsessionid=1/private/x",
        "/file.txt%00.php",
        "/a%0d%0aSet-Cookie:x",
    ] {
        let r = raw(port, &get(refused)).await;
        assert_eq!(status(&r), 400, "{refused}: {r}");
    }
    assert_eq!(up.hits(), 0, "nothing above reached the backend");

    // With the key, the backend gets the normalised path; the query is untouched.
    let r = raw(
        port,
        format!(
            "GET /public/../private/./x//y?q=%2e%2e/a HTTP/1.1\r\nHost: edge.test\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    let seen = up.last().expect("the backend saw the request");
    assert_eq!(seen.path, "/private/x/y");
    assert!(r.contains(r#""query":"q=%2e%2e/a""#), "{r}");
    // The access log shows the path that was routed.
    assert!(
        p.stdout_shows(r#""path":"/private/x/y""#).await,
        "{}",
        p.stdout()
    );

    // Absolute-form targets are normalised too, and forwarded in origin form.
    let r = raw(
        port,
        b"GET http://edge.test/public/%2e%2e/private/x HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&r), 401, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn escaped_slashes_can_be_kept_and_slashes_left_unmerged() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let edge = "  escaped_slashes: keep\n  merge_slashes: false";
    let _p = Proxy::start(&private_and_public(port, &up, edge)).await;
    let r = raw(port, &get("/files/a%2fb")).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(up.last().map(|s| s.path), Some("/files/a%2Fb".into()));
    let r = raw(port, &get("/files//b")).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(up.last().map(|s| s.path), Some("/files//b".into()));
    // Dot segments are resolved whatever the slash settings.
    let r = raw(port, &get("/public/../private/x")).await;
    assert_eq!(status(&r), 401, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prefixes_match_and_strip_whole_segments() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&private_and_public(port, &up, "")).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    for (path, backend_path) in [("/api", "/"), ("/api/", "/"), ("/api/x", "/x")] {
        let r = client().get(url(path)).send().await.expect("request");
        assert_eq!(r.status(), 200);
        assert_eq!(
            up.last().map(|s| s.path),
            Some(backend_path.to_string()),
            "{path}"
        );
    }
    // `/apiv2` is not under `/api`: the public route takes it, unstripped.
    let r = client().get(url("/apiv2/x")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().map(|s| s.path), Some("/apiv2/x".to_string()));
    // `/private` is not under `/private/`.
    let r = client().get(url("/private")).send().await.expect("request");
    assert_eq!(r.status(), 200, "the public route serves /private");
}

#[tokio::test(flavor = "multi_thread")]
async fn respond_routes_apply_every_policy() {
    let port = free_port();
    let body = format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
routes:
  - name: keyed
    match: {{path_prefix: /keyed}}
    respond: {{status: 200, body: "secret\n"}}
    auth: {{api_keys: ["{KEY}"]}}
    rate_limit: {{requests: 2, per: 1m, key: api_key}}
    max_body: 16
    response_headers: {{set: {{x-from: edge}}}}
  - name: denied
    match: {{path_prefix: /denied}}
    respond: {{status: 200, body: "no\n"}}
    deny: [127.0.0.0/8]
"#
    );
    let _p = Proxy::start(&body).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let r = client().get(url("/keyed")).send().await.expect("request");
    assert_eq!(r.status(), 401, "auth on a respond route is enforced");
    let wrong = client()
        .get(url("/keyed"))
        .bearer_auth("invented-key-0123456789")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), 401);

    let keyed = || client().get(url("/keyed")).bearer_auth(KEY);
    let big = client()
        .post(url("/keyed"))
        .bearer_auth(KEY)
        .body(vec![b'x'; 64])
        .send()
        .await
        .expect("request");
    assert_eq!(big.status(), 413, "max_body on a respond route");
    let ok = keyed().send().await.expect("request");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-from"], "edge", "response_headers apply");
    assert_eq!(ok.text().await.expect("body"), "secret\n");
    // The 413 above counted too: the third keyed request is over the limit of 2.
    let limited = keyed().send().await.expect("request");
    assert_eq!(limited.status(), 429, "rate_limit on a respond route");
    assert!(limited.headers().contains_key("retry-after"));

    let r = client().get(url("/denied")).send().await.expect("request");
    assert_eq!(r.status(), 403, "deny on a respond route");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_key_limits_count_the_authenticated_key() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let other = "other-key-0123456789abcdef";
    let extra = format!(
        r#", auth: {{api_keys: ["{KEY}", "{other}"]}}, rate_limit: {{requests: 2, per: 1m, key: api_key}}"#
    );
    let _p = Proxy::start(&one_pool(port, up.addr, &extra)).await;
    let url = format!("http://127.0.0.1:{port}/");
    let with = |k: &str| client().get(&url).bearer_auth(k).send();
    assert_eq!(with(KEY).await.expect("request").status(), 200);
    // The same key presented another way is the same counter.
    let r = client()
        .get(&url)
        .header("x-api-key", KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    assert_eq!(with(KEY).await.expect("request").status(), 429);
    for i in 0..5 {
        let invented = format!("invented-key-{i:020}");
        assert_eq!(with(&invented).await.expect("request").status(), 401);
    }
    assert_eq!(with(other).await.expect("request").status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_adds_origin_to_the_backends_vary() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let cors = r#", cors: {allow_origins: ["https://app.example.com"]}"#;
    let _p = Proxy::start(&one_pool(port, up.addr, cors)).await;
    let url = format!("http://127.0.0.1:{port}/");
    let r = client()
        .get(&url)
        .header("origin", "https://app.example.com")
        .header("x-want-vary", "Accept-Encoding")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["vary"], "Accept-Encoding, Origin");
    let r = client()
        .get(&url)
        .header("origin", "https://app.example.com")
        .header("x-want-vary", "origin")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["vary"], "origin", "listed once");
    let r = client()
        .get(&url)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["vary"], "Origin");
}

fn check(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("s.yaml");
    std::fs::write(
        &path,
        format!("{}{body}", Proxy::prelude(dir.path(), free_port())),
    )
    .expect("write");
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().expect("path")], None);
    (code, format!("{out}{err}"))
}

#[test]
fn check_refuses_what_could_not_take_effect() {
    let pool = "pools:\n  up: {backends: [{address: \"127.0.0.1:1\"}]}\n";
    let cases = [
        (
            "routes:\n  - {name: r, match: {host: [\"*foo.com\"]}, respond: {status: 200}}\n",
            "routes[0].match.host[0]",
        ),
        (
            "routes:\n  - {name: r, match: {host: [\"*.\"]}, respond: {status: 200}}\n",
            "routes[0].match.host[0]",
        ),
        (
            "routes:\n  - {name: r, match: {host: [\"a.*.com\"]}, respond: {status: 200}}\n",
            "routes[0].match.host[0]",
        ),
        (
            "routes:\n  - {name: r, respond: {status: 200}, rate_limit: {requests: 1, per: 1m, key: api_key}}\n",
            "routes[0].rate_limit.key",
        ),
        (
            "routes:\n  - {name: r, respond: {status: 200}, strip_prefix: /x}\n",
            "routes[0].strip_prefix",
        ),
        (
            "routes:\n  - {name: r, respond: {status: 200}, openai: true}\n",
            "routes[0].openai",
        ),
        (
            "routes:\n  - {name: r, respond: {status: 200}, retry_on: [502]}\n",
            "routes[0].retry_on",
        ),
        (
            "routes:\n  - {name: r, respond: {status: 200}, edge_typo: 1}\n",
            "edge_typo",
        ),
    ];
    for (body, path) in cases {
        let (code, out) = check(body);
        assert_eq!(code, 1, "{body}: {out}");
        assert!(out.contains(path), "{body}: expected {path} in {out}");
    }
    let tcp = format!(
        "listeners:\n  - {{name: t, listen: \"127.0.0.1:{}\", protocol: tcp, pool: up}}\n{}",
        free_port(),
        "pools:\n  up: {balance: consistent_hash, hash_on: \"header:x-user\", backends: [{address: \"127.0.0.1:1\"}]}\n"
    );
    let (code, out) = check(&tcp);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("listeners[0].pool"), "{out}");
    let good = format!(
        "{pool}routes:\n  - {{name: r, match: {{host: [\"*.example.com\", api.example.com, 127.0.0.1]}}, pool: up}}\n"
    );
    let (code, out) = check(&good);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn http_1_0_closes_unless_asked_to_keep_alive() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&private_and_public(port, &up, "")).await;

    // 18 bytes, shorter than the h2c preface, and no Host: answered at once, then closed.
    let started = Instant::now();
    let r = raw(port, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the request waited for more bytes (header_timeout is 30 s)"
    );
    let lower = r.to_ascii_lowercase();
    assert!(!lower.contains("connection: keep-alive"), "{r}");
    // HAProxy's default health check.
    let r = raw(port, b"OPTIONS / HTTP/1.0\r\n\r\n").await;
    assert!(status(&r) > 0, "{r}");

    // An HTTP/1.0 client that asks for keep-alive gets two answers on one connection.
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    let mut buf = vec![0u8; 8192];
    for i in 0..2 {
        s.write_all(b"GET /one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "request {i}: {text}");
        assert!(
            text.contains("connection: keep-alive"),
            "request {i}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&private_and_public(port, &up, "")).await;
    let r = raw(
        port,
        b"GET /first HTTP/1.1\r\nHost: edge.test\r\n\r\nGET /second HTTP/1.1\r\nHost: edge.test\r\n\r\nGET /third HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let at = |p: &str| r.find(&format!(r#""path":"{p}""#));
    let (a, b, c) = (at("/first"), at("/second"), at("/third"));
    assert!(a.is_some() && b.is_some() && c.is_some(), "{r}");
    assert!(a < b && b < c, "in order: {r}");
    assert_eq!(r.matches("HTTP/1.1 200").count(), 3, "{r}");
}

/// Sends a body of `total` bytes in `chunk`-byte pieces `every` apart; the answer's status.
async fn upload(port: u16, total: usize, chunk: usize, every: Duration) -> String {
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let mut sent = 0;
    while sent < total {
        let n = chunk.min(total - sent);
        if s.write_all(&vec![b'x'; n]).await.is_err() {
            break;
        }
        sent += n;
        tokio::time::sleep(every).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_body_is_cut_and_a_slow_upload_survives() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let p = Proxy::start(&private_and_public(port, &up, "")).await;
    let started = Instant::now();
    let (trickle, slow) = tokio::join!(
        // 1 byte a second: far under 240 B/s once the 5 s grace is over.
        upload(port, 100, 1, Duration::from_secs(1)),
        // 300 bytes every half second (600 B/s) for about 5 s: slow, but a real upload.
        upload(port, 3000, 300, Duration::from_millis(500)),
    );
    assert_eq!(status(&trickle), 408, "{trickle}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(status(&slow), 200, "{slow}");
    let cut = p
        .metric(r#"switchyard_request_body_too_slow_total{route="public"}"#)
        .await;
    assert_eq!(cut, Some(1.0));
}

/// Whether a client tool is installed; outside CI a missing one is skipped with a note.
fn have(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{name} is needed (.ci/run installs it)"
    );
    eprintln!("skipped: {name} is not installed");
    false
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("run the tool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn ab_h2load_and_curl_http_1_0_are_all_served() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let _p = Proxy::start(&private_and_public(port, &up, "")).await;
    let url = format!("http://127.0.0.1:{port}/public/x");
    let blocking = |f: fn(&str) -> ()| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || f(&url))
    };
    if have("ab") {
        blocking(|url| {
            for args in [
                vec!["-n", "2000", "-c", "20", "-s", "10", url],
                vec!["-k", "-n", "1000", "-c", "10", "-s", "10", url],
            ] {
                let out = run("ab", &args);
                let n = if args[0] == "-k" { "1000" } else { "2000" };
                assert!(
                    out.contains(&format!("Complete requests:      {n}")),
                    "{out}"
                );
                assert!(out.contains("Failed requests:        0"), "{out}");
                assert!(!out.contains("Non-2xx responses"), "{out}");
            }
        })
        .await
        .expect("ab");
    }
    if have("h2load") {
        blocking(|url| {
            for proto in [None, Some("--h1")] {
                let mut args = vec!["-n", "2000", "-c", "10", "-T", "10"];
                args.extend(proto);
                args.push(url);
                let out = run("h2load", &args);
                assert!(
                    out.contains("2000 succeeded, 0 failed, 0 errored"),
                    "{proto:?}: {out}"
                );
                assert!(out.contains("status codes: 2000 2xx"), "{proto:?}: {out}");
            }
        })
        .await
        .expect("h2load");
    }
    if have("curl") {
        blocking(|url| {
            let out = run(
                "curl",
                &[
                    "--http1.0",
                    "-sS",
                    "-m",
                    "10",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    url,
                ],
            );
            assert_eq!(out.trim(), "200");
        })
        .await
        .expect("curl");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_dot_in_the_host_meets_the_same_routes() {
    let port = free_port();
    let body = format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
routes:
  - {{name: keyed, match: {{host: [api.example.com]}}, respond: {{status: 200, body: "keyed\n"}}, auth: {{api_keys: ["{KEY}"]}}}}
  - {{name: open, respond: {{status: 200, body: "open\n"}}}}
"#
    );
    let _p = Proxy::start(&body).await;
    for host in ["api.example.com", "API.example.com.", "api.example.com.:80"] {
        let r = raw(
            port,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status(&r), 401, "{host}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_like_the_http2_preface_inside_a_head_do_not_stop_its_deadline() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let config = one_pool(port, up.addr, "") + "edge:\n  header_timeout: 2s\n";
    let _p = Proxy::start(&config).await;
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
        .await
        .expect("head");
    // Two writes, so that the preface-like bytes arrive in a read of their own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"PRI * HTTP/2.0").await.expect("more");
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the unfinished head outlived header_timeout"
    );
}
