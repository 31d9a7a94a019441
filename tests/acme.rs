//! Automatic certificates against Pebble, Let's Encrypt's ACME test server: first issuance
//! by tls-alpn-01 and by http-01 (through a listener that redirects everything else), the
//! served certificate chaining to Pebble's root, the files kept 0600, a restart that serves
//! the stored certificate without a new order, a renewal swapped in under an open
//! connection, and Pebble gone at renewal time (the old certificate keeps serving, the
//! failure is logged and counted).

mod common;

use common::pebble::Pebble;
use common::{free_port, run_cli, wait_until, Proxy, Upstream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DOMAIN: &str = "switchyard.test";
const ISSUED: &str = "switchyard_acme_orders_total{result=\"ok\"}";
const FAILED: &str = "switchyard_acme_orders_total{result=\"error\"}";

/// A config whose `server:` keeps its ACME state in `state`.
fn write_config(p: &Proxy, state: &Path, body: &str) {
    let prelude = Proxy::prelude(p.dir.path(), p.admin).replace(
        "server:\n",
        &format!("server:\n  state_dir: {}\n", state.display()),
    );
    p.write_raw(&format!("{prelude}{body}"));
}

fn https_listener(port: u16, pebble: &Pebble, up: &Upstream, acme_extra: &str) -> String {
    format!(
        r#"
listeners:
  - name: https
    listen: "127.0.0.1:{port}"
    tls:
      acme: {{domains: [{DOMAIN}], email: ops@switchyard.test, directory: "{dir}",
             directory_ca: "{ca}"{acme_extra}}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
routes:
  - {{name: all, match: {{path_prefix: /}}, pool: up}}
"#,
        dir = pebble.directory(),
        ca = pebble.ca_file().display(),
        up = up.addr
    )
}

/// One test's parts: an upstream, Pebble (validating on `http` and `tls`) and its root, a
/// state folder, and a proxy not started yet.
struct Setup {
    up: Upstream,
    http: u16,
    tls: u16,
    pebble: Pebble,
    root: String,
    state: tempfile::TempDir,
    p: Proxy,
}

async fn setup() -> Setup {
    let up = Upstream::start("up").await;
    let (http, tls) = (free_port(), free_port());
    let pebble = Pebble::start(http, tls).await;
    let root = pebble.root().await;
    Setup {
        up,
        http,
        tls,
        pebble,
        root,
        state: tempfile::tempdir().unwrap(),
        p: Proxy::new(),
    }
}

impl Setup {
    /// The TLS listener with `acme_extra` in its `acme:` map.
    fn https(&self, acme_extra: &str) -> String {
        https_listener(self.tls, &self.pebble, &self.up, acme_extra)
    }

    async fn start(&mut self, body: &str) {
        write_config(&self.p, self.state.path(), body);
        self.p.spawn().await;
    }
}

fn connector(root_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.expect("root certificate")).expect("add root");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection for `DOMAIN` that verifies against `root_pem`: `None` while the
/// listener serves anything that does not chain to it.
async fn connect(port: u16, root_pem: &str) -> Option<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).ok()?;
    connector(root_pem).connect(name, tcp).await.ok()
}

/// The leaf certificate (DER) the listener serves now, verified against `root_pem`.
async fn served(port: u16, root_pem: &str) -> Option<Vec<u8>> {
    let tls = connect(port, root_pem).await?;
    let certs = tls.get_ref().1.peer_certificates()?;
    certs.first().map(|c| c.to_vec())
}

/// Waits until the listener serves a certificate from Pebble other than `old`.
async fn wait_for_new(p: &Proxy, port: u16, root_pem: &str, old: Option<&[u8]>) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let seen = served(port, root_pem).await;
        if let Some(new) = seen.filter(|s| Some(s.as_slice()) != old) {
            return new;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new certificate from Pebble was served:\n{}", p.stderr())
}

/// One HTTP/1.1 request on an open connection; the status code.
async fn get(tls: &mut Tls) -> u16 {
    let req = format!("GET /x HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut byte).await.expect("read"), 1, "closed");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await.expect("body");
    head[9..12].parse().expect("status")
}

fn assert_owner_only(dir: &Path) {
    let mut files = 0;
    let mut stack = vec![dir.join("acme")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("state dir").flatten() {
            let mode = e.metadata().expect("metadata").permissions().mode() & 0o777;
            if e.path().is_dir() {
                assert_eq!(mode, 0o700, "{}", e.path().display());
                stack.push(e.path());
            } else {
                assert_eq!(mode, 0o600, "{}", e.path().display());
                files += 1;
            }
        }
    }
    assert_eq!(files, 3, "the account, the certificate and its key");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_issues_and_a_restart_serves_the_stored_certificate() {
    let mut t = setup().await;
    t.start(&t.https("")).await;
    let Setup {
        tls: port,
        root,
        state,
        mut p,
        ..
    } = t;

    let first = wait_for_new(&p, port, &root, None).await;
    assert_eq!(p.metric(ISSUED).await, Some(1.0), "{}", p.stderr());
    let mut tls = connect(port, &root).await.expect("a verified connection");
    assert_eq!(get(&mut tls).await, 200);
    assert_owner_only(state.path());

    drop(p.take_child().map(|mut c| {
        let _ = c.kill();
        c.wait()
    }));
    p.spawn().await;
    assert_eq!(
        served(port, &root).await.as_deref(),
        Some(first.as_slice()),
        "the stored certificate serves from the first handshake"
    );
    assert_eq!(p.metric(ISSUED).await, Some(0.0), "no new order");
    assert!(
        p.stderr().contains("serves the stored certificate"),
        "{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_due_renewal_is_swapped_in_and_a_missing_ca_leaves_the_old_one_serving() {
    let mut t = setup().await;
    // Longer than Pebble's certificates live: every certificate is due at once.
    t.start(&t.https(", renew_before: 100000d")).await;
    let Setup {
        tls: port,
        root,
        mut pebble,
        p,
        ..
    } = t;

    let first = wait_for_new(&p, port, &root, None).await;
    let mut open = connect(port, &root).await.expect("a verified connection");
    assert_eq!(get(&mut open).await, 200);
    let renewed = wait_for_new(&p, port, &root, Some(&first)).await;
    assert_ne!(renewed, first);
    assert_eq!(
        get(&mut open).await,
        200,
        "the open connection survives the swap"
    );
    assert!(p.metric(ISSUED).await >= Some(2.0));

    pebble.stop();
    let failed = wait_until(Duration::from_secs(30), || async {
        p.metric(FAILED).await >= Some(1.0)
    })
    .await;
    assert!(failed, "the failed renewal is counted:\n{}", p.stderr());
    let last = served(port, &root)
        .await
        .expect("still a certificate from Pebble");
    assert_eq!(served(port, &root).await, Some(last), "nothing replaced it");
    assert_eq!(get(&mut open).await, 200);
    assert!(
        p.stderr().contains("the order for switchyard.test failed"),
        "{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_is_answered_by_a_listener_that_redirects_everything_else() {
    let mut t = setup().await;
    let (http, https) = (t.http, t.tls);
    let body = t.https(", challenge: http-01").replace(
        "listeners:\n",
        &format!("listeners:\n  - {{name: http, listen: \"127.0.0.1:{http}\", redirect_to_https: {https}}}\n"),
    );
    t.start(&body).await;
    let Setup { root, p, .. } = t;

    wait_for_new(&p, https, &root, None).await;
    assert_eq!(p.metric(ISSUED).await, Some(1.0));
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(format!(
            "http://127.0.0.1:{http}/.well-known/acme-challenge/unknown"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308, "only pending tokens are answered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_that_cannot_be_written_stops_the_start_with_the_reason() {
    let t = setup().await;
    let p = &t.p;
    let blocker = p.dir.path().join("not-a-folder");
    std::fs::write(&blocker, "").unwrap();
    write_config(p, &blocker.join("state"), &t.https(""));
    let mut child = p.spawn_process("refused", &[]);
    let exited = wait_until(Duration::from_secs(20), || {
        let done = matches!(child.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    assert!(exited, "the process kept running");
    let err = std::fs::read_to_string(p.dir.path().join("refusedstderr.log")).unwrap();
    assert!(
        err.contains("server.state_dir") && err.contains("cannot be written"),
        "{err}"
    );
}

#[test]
fn check_refuses_a_directory_ca_that_cannot_be_read() {
    let p = Proxy::new();
    let body = "listeners:\n  - {name: https, listen: \"127.0.0.1:8443\", tls: {acme: {domains: [a.test], directory_ca: missing-ca.pem}}}\n";
    write_config(&p, &p.dir.path().join("state"), body);
    let config = p.config_path();
    let (code, out, err) = run_cli(&["check", "-c", config.to_str().unwrap()], None);
    assert_ne!(code, 0, "{out}{err}");
    let said = format!("{out}{err}");
    assert!(
        said.contains("listeners[0].tls.acme.directory_ca") && said.contains("missing-ca.pem"),
        "{said}"
    );
}
