//! TLS listeners: ALPN h2 with HTTP/1.1 fallback, SNI picks the certificate, TLS 1.1 is
//! refused, certificates are re-read on reload, self-signed trials, redirects, and TLS to
//! the backends.

mod common;

use common::certs::TestCa;
use common::{addr, free_port, wait_until, Proxy, Upstream};
use std::time::Duration;

fn tls_client(ca: &TestCa, names: &[&str], port: u16) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca.reqwest_root())
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, addr(port));
    }
    b
}

fn listener_with_certs(port: u16, up: &Upstream, certs: &str) -> String {
    format!(
        r#"
listeners:
  - name: https
    listen: "127.0.0.1:{port}"
    tls:
      certificates: [{certs}]
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: up}}
"#,
        up = up.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_sni_and_versions() {
    let up = Upstream::start("up").await;
    let ca = TestCa::new("edge");
    let mut p = Proxy::new();
    ca.write(p.dir.path(), "a", &["a.test"]);
    ca.write(p.dir.path(), "b", &["b.test"]);
    let port = free_port();
    p.write_config(&listener_with_certs(
        port,
        &up,
        "{cert: a.crt, key: a.key}, {cert: b.crt, key: b.key}",
    ));
    p.spawn().await;

    let h2 = tls_client(&ca, &["a.test", "b.test"], port)
        .build()
        .unwrap();
    for host in ["a.test", "b.test"] {
        let r = h2
            .get(format!("https://{host}:{port}/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{host}: the certificate for its name was served"
        );
        assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
        assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    }
    let h1 = tls_client(&ca, &["a.test"], port)
        .http1_only()
        .build()
        .unwrap();
    let r = h1
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11, "http/1.1 fallback");

    let handshake = |flag: &'static str| {
        std::process::Command::new("openssl")
            .args([
                "s_client",
                flag,
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "a.test",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client (install openssl)")
    };
    let old = handshake("-tls1_1");
    assert!(!old.status.success(), "TLS 1.1 must be refused");
    let ok = handshake("-tls1_2");
    assert!(
        ok.status.success(),
        "TLS 1.2 works: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// One HTTP/1.1 answer read off a raw stream: its status line and body length.
async fn read_answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.expect("read the answer");
        assert!(
            n > 0,
            "the connection was closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().expect("length"))
            })
            .expect("content-length");
        if got.len() >= end + 4 + length {
            return text[..text.find("\r\n").unwrap_or(0)].to_string();
        }
    }
}

/// HTTP/1.1 keep-alive over TLS: several requests on one connection (the keep-alive loop
/// waits for the next request differently on streams that cannot peek).
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_reuses_a_tls_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let ca = TestCa::new("edge");
    let mut p = Proxy::new();
    ca.write(p.dir.path(), "a", &["a.test"]);
    let port = free_port();
    let config = listener_with_certs(port, &up, "{cert: a.crt, key: a.key}");
    p.write_config(&format!("{config}edge: {{keepalive_timeout: 1s}}\n"));
    p.spawn().await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let mut tls = ca.connector().connect(name, tcp).await.expect("handshake");
    for i in 0..3 {
        tls.write_all(b"GET /ka HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .expect("write");
        let status = read_answer(&mut tls).await;
        assert_eq!(
            status, "HTTP/1.1 200 OK",
            "request {i} on the same connection"
        );
    }
    // Between requests the proxy waits for the next one without a session (it reads one byte
    // ahead); a connection that stays silent is still closed after edge.keepalive_timeout.
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle TLS keep-alive connection stayed open: {closed:?}"
    );
}

/// On TLS the byte that ends the wait for the next keep-alive request is read ahead by the
/// head-deadline guard; it must still start that request's `edge.header_timeout`.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_keep_alive_head_over_tls_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let ca = TestCa::new("edge");
    let mut p = Proxy::new();
    ca.write(p.dir.path(), "a", &["a.test"]);
    let port = free_port();
    let config = listener_with_certs(port, &up, "{cert: a.crt, key: a.key}");
    p.write_config(&format!("{config}edge: {{header_timeout: 1s}}\n"));
    p.spawn().await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let mut tls = ca.connector().connect(name, tcp).await.expect("handshake");
    tls.write_all(b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_answer(&mut tls).await, "HTTP/1.1 200 OK");
    tls.write_all(b"GET /second HT").await.expect("write");
    let mut rest = [0u8; 64];
    let cut = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut rest)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "a stalled second head stayed open: {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replaced_certificates_are_served_after_reload_without_restart() {
    let up = Upstream::start("up").await;
    let old_ca = TestCa::new("old");
    let new_ca = TestCa::new("new");
    let mut p = Proxy::new();
    old_ca.write(p.dir.path(), "edge", &["a.test"]);
    let port = free_port();
    p.write_config(&listener_with_certs(
        port,
        &up,
        "{cert: edge.crt, key: edge.key}",
    ));
    p.spawn().await;
    let pid = p.pid();
    let trusts_new = tls_client(&new_ca, &["a.test"], port).build().unwrap();
    let url = format!("https://a.test:{port}/");
    assert!(
        trusts_new.get(&url).send().await.is_err(),
        "the old certificate is served first"
    );

    // Replace both files (by rename, as certbot does), then ask for a reload.
    let (cert, key) = new_ca.issue(&["a.test"]);
    let dir = p.dir.path();
    std::fs::write(dir.join("edge.crt.new"), cert).unwrap();
    std::fs::write(dir.join("edge.key.new"), key).unwrap();
    std::fs::rename(dir.join("edge.key.new"), dir.join("edge.key")).unwrap();
    std::fs::rename(dir.join("edge.crt.new"), dir.join("edge.crt")).unwrap();
    p.signal("HUP");
    let served = wait_until(Duration::from_secs(5), || async {
        let c = tls_client(&new_ca, &["a.test"], port).build().unwrap();
        c.get(&url).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(served, "new certificate not served:\n{}", p.stderr());
    assert_eq!(p.pid(), pid);
    let expiry = p.metrics().await;
    assert!(expiry.contains(
        "switchyard_tls_certificate_expiry_timestamp_seconds{listener=\"https\",name=\"a.test\"}"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn self_signed_trial_listener_and_https_redirect() {
    let (tls_port, http_port) = (free_port(), free_port());
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - name: https
    listen: "127.0.0.1:{tls_port}"
    tls: {{self_signed: [localhost, 127.0.0.1]}}
  - {{name: http, listen: "127.0.0.1:{http_port}", redirect_to_https: {tls_port}}}
routes:
  - {{name: hello, match: {{path_prefix: /}}, respond: {{status: 200, body: "hi\n"}}}}
"#
    ))
    .await;
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = c
        .get(format!("https://127.0.0.1:{tls_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hi\n");
    let r = c
        .get(format!("http://127.0.0.1:{http_port}/some/path?q=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://127.0.0.1:{tls_port}/some/path?q=1").as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_to_backends_verifies_unless_told_not_to() {
    let ca = TestCa::new("backend");
    let (cert, key) = ca.issue(&["backend.test"]);
    let up = Upstream::start_tls("secure", &cert, &key).await;
    let port = free_port();
    let _p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  insecure:
    tls: {{sni: backend.test, verify: false}}
    health_check: {{kind: none}}
    backends: [{{address: "{up}"}}]
  verified:
    tls: {{sni: backend.test}}
    health_check: {{kind: none}}
    backends: [{{address: "{up}"}}]
routes:
  - {{name: v, match: {{path_prefix: /verified}}, pool: verified, retries: 0}}
  - {{name: i, match: {{path_prefix: /}}, pool: insecure}}
"#,
        up = up.addr
    ))
    .await;
    let r = reqwest::get(format!("http://127.0.0.1:{port}/x"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["server"], "secure");
    // The test CA is not among the system's roots, so verification refuses the backend.
    let r = reqwest::get(format!("http://127.0.0.1:{port}/verified"))
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}
