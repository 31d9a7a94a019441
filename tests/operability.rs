//! Operability: every SPEC §7 metric exists from the start and parses with the Prometheus
//! text parser; access log lines are JSON carrying the id the client saw; the systemd unit
//! passes `systemd-analyze verify` and scores ≤ 2.0 in `systemd-analyze security`; each
//! metric moves when its event happens.

mod common;

use common::mock_openai::MockOpenAi;
use common::{client, free_port, Proxy, Upstream};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Metric families as parsed by Python's `prometheus_client` (names without `_total`).
fn parse_with_prometheus_client(text: &str) -> Vec<String> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    print(f.name)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the exposition does not parse (pip install prometheus-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_exists_from_the_start_and_parses() {
    let up = Upstream::start("up").await;
    let ai = MockOpenAi::start("ai", &["llama"]).await;
    let (http, https) = (free_port(), free_port());
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
  - {{name: https, listen: "127.0.0.1:{https}", tls: {{self_signed: [localhost]}}}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
  ai: {{health_check: {{kind: none}}, backends: [{{address: "{ai}", models: [llama]}}]}}
routes:
  - {{name: ai, match: {{path_prefix: /v1/}}, pool: ai, openai: true}}
  - {{name: all, match: {{path_prefix: /}}, pool: up, rate_limit: {{requests: 100, per: 1m}}}}
"#,
        up = up.addr,
        ai = ai.addr
    ))
    .await;
    let before = p.metrics().await;
    let must_exist = [
        "switchyard_request_duration_seconds_count{route=\"all\"}",
        "switchyard_retries_total{route=\"all\"}",
        "switchyard_rate_limited_total{route=\"all\"}",
        "switchyard_config_reloads_total{result=\"ok\",source=\"startup\"} 1",
        "switchyard_config_reloads_total{result=\"error\",source=\"file\"} 0",
        "switchyard_config_last_reload_success_timestamp_seconds",
        "switchyard_downstream_connections{listener=\"http\"}",
        "switchyard_tls_certificate_expiry_timestamp_seconds{listener=\"https\",name=\"localhost\"}",
    ];
    for series in must_exist {
        assert!(before.contains(series), "missing at start: {series}");
    }
    assert!(before.contains(&format!(
        "switchyard_backend_healthy{{backend=\"{}\",pool=\"up\"}} 1",
        up.addr
    )));

    let r = client()
        .get(format!("http://127.0.0.1:{http}/x"))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(format!("http://127.0.0.1:{http}/v1/chat/completions"))
        .body(r#"{"model":"llama","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = r.bytes().await;
    assert!(p.stdout_shows(&id).await);

    let after = p.metrics().await;
    assert!(after.contains("switchyard_requests_total{code=\"200\",pool=\"up\",route=\"all\"} 1"));
    let families = parse_with_prometheus_client(&after);
    for name in [
        "switchyard_requests",
        "switchyard_request_duration_seconds",
        "switchyard_upstream_connect_failures",
        "switchyard_retries",
        "switchyard_backend_healthy",
        "switchyard_config_reloads",
        "switchyard_config_last_reload_success_timestamp_seconds",
        "switchyard_rate_limited",
        "switchyard_downstream_connections",
        "switchyard_tls_certificate_expiry_timestamp_seconds",
        "switchyard_openai_tokens",
        "switchyard_openai_time_to_first_token_seconds",
    ] {
        assert!(
            families.iter().any(|f| f == name),
            "{name} not in {families:?}"
        );
    }

    // Access log: one JSON object per line, with the id the client saw.
    let line = p
        .stdout()
        .lines()
        .find(|l| l.contains(&id))
        .map(str::to_string)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON access log line");
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["route"], "all");
    assert_eq!(v["status"], 200);
    assert_eq!(v["path"], "/x");
    assert!(v["upstream_ms"].as_f64().is_some(), "{line}");
    let time = v["time"].as_str().expect("a time string");
    assert!(time.parse::<humantime::Timestamp>().is_ok(), "{line}");
    assert!(v["error"].is_null(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_fields_can_be_picked() {
    let up = Upstream::start("up").await;
    let port = free_port();
    let p = Proxy::start(&format!(
        "{}edge:\n  access_log: {{enabled: true, fields: [status, time, request_id]}}\n",
        common::one_pool(port, up.addr, "")
    ))
    .await;
    let r = client()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(p.stdout_shows(&id).await);
    let line = p
        .stdout()
        .lines()
        .find(|l| l.contains(&id))
        .map(str::to_string)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    // In the line's own order, whatever the list's.
    assert_eq!(keys, ["time", "request_id", "status"], "{line}");
    let time = v["time"].as_str().expect("a time string");
    assert!(time.parse::<humantime::Timestamp>().is_ok(), "{line}");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/switchyard.service"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/switchyard", common::bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let score: f64 = text
        .split("Overall exposure level for switchyard.service:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score}");
}

/// SPEC §7, one event each: every metric moves when what it counts happens.
#[tokio::test(flavor = "multi_thread")]
async fn each_metric_moves_when_its_event_happens() {
    let up = Upstream::start("up").await;
    let dead = common::addr(free_port());
    let ca = common::certs::TestCa::new("metrics");
    let mut p = Proxy::new();
    let dir = p.dir.path().to_path_buf();
    let write_cert = |year: i32| {
        let (cert, key) = ca.issue_until(&["localhost"], year);
        std::fs::write(dir.join("edge.crt"), cert).expect("cert");
        std::fs::write(dir.join("edge.key"), key).expect("key");
    };
    write_cert(2031);
    let (http, https) = (free_port(), free_port());
    let body = format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{http}"}}
  - name: https
    listen: "127.0.0.1:{https}"
    tls: {{certificates: [{{cert: edge.crt, key: edge.key}}]}}
pools:
  up: {{health_check: {{kind: none}}, backends: [{{address: "{up}"}}]}}
  flaky: {{health_check: {{kind: none}}, backends: [{{address: "{dead}"}}, {{address: "{up}"}}]}}
  gone:
    health_check: {{kind: tcp, interval: 200ms, timeout: 100ms, unhealthy_after: 1}}
    backends: [{{address: "{dead}"}}]
routes:
  - {{name: flaky, match: {{path_prefix: /flaky}}, pool: flaky}}
  - {{name: limited, match: {{path_prefix: /limited}}, pool: up, rate_limit: {{requests: 1, per: 1m}}}}
  - {{name: all, match: {{path_prefix: /}}, pool: up}}
"#,
        up = up.addr
    );
    p.write_config(&body);
    p.spawn().await;
    let m = |series: String| {
        let p = &p;
        async move { p.metric(&series).await.unwrap_or(-1.0) }
    };
    let get = |path: &str| {
        client()
            .get(format!("http://127.0.0.1:{http}{path}"))
            .send()
    };

    // requests_total and request_duration_seconds
    let requests = "switchyard_requests_total{code=\"200\",pool=\"up\",route=\"all\"}";
    let durations = "switchyard_request_duration_seconds_count{route=\"all\"}";
    let (r0, d0) = (m(requests.into()).await, m(durations.into()).await);
    assert_eq!(get("/x").await.expect("request").status(), 200);
    assert!(
        common::wait_until(Duration::from_secs(3), || async {
            m(requests.into()).await == r0.max(0.0) + 1.0
        })
        .await
    );
    assert_eq!(m(durations.into()).await, d0.max(0.0) + 1.0);

    // upstream_connect_failures_total and retries_total: round robin reaches the dead member.
    for _ in 0..4 {
        assert_eq!(get("/flaky").await.expect("flaky").status(), 200);
    }
    let failures =
        format!("switchyard_upstream_connect_failures_total{{backend=\"{dead}\",pool=\"flaky\"}}");
    assert!(m(failures).await >= 1.0);
    assert!(m("switchyard_retries_total{route=\"flaky\"}".into()).await >= 1.0);

    // rate_limited_total
    let limited = "switchyard_rate_limited_total{route=\"limited\"}";
    assert_eq!(m(limited.into()).await, 0.0);
    let codes = [
        get("/limited").await.expect("1").status(),
        get("/limited").await.expect("2").status(),
    ];
    assert_eq!(codes.map(|c| c.as_u16()), [200, 429]);
    assert_eq!(m(limited.into()).await, 1.0);

    // backend_healthy: set to 1 at build, 0 once the check fails.
    let healthy = format!("switchyard_backend_healthy{{backend=\"{dead}\",pool=\"gone\"}}");
    assert!(
        common::wait_until(Duration::from_secs(5), || async {
            m(healthy.clone()).await == 0.0
        })
        .await
    );

    // downstream_connections: an open client connection counts while it is open.
    let open = "switchyard_downstream_connections{listener=\"http\"}";
    let c0 = m(open.into()).await;
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .expect("connect");
    assert!(
        common::wait_until(Duration::from_secs(3), || async {
            m(open.into()).await == c0 + 1.0
        })
        .await
    );
    drop(conn);
    assert!(
        common::wait_until(Duration::from_secs(3), || async {
            m(open.into()).await == c0
        })
        .await
    );

    // config_reloads_total by source and result, and the last success time.
    let stamp = "switchyard_config_last_reload_success_timestamp_seconds";
    let t0 = m(stamp.into()).await;
    p.reload_to(&format!("{body}\n# edited\n")).await;
    let file_ok = "switchyard_config_reloads_total{result=\"ok\",source=\"file\"}";
    assert!(
        common::wait_until(Duration::from_secs(3), || async {
            m(file_ok.into()).await == 1.0
        })
        .await
    );
    assert!(m(stamp.into()).await > t0);
    p.write_raw("version: 1\npools: [\n");
    let file_error = "switchyard_config_reloads_total{result=\"error\",source=\"file\"}";
    assert!(
        common::wait_until(Duration::from_secs(5), || async {
            m(file_error.into()).await == 1.0
        })
        .await
    );
    p.write_config(&body);

    // tls_certificate_expiry_timestamp_seconds follows a renewed certificate after SIGHUP.
    let expiry = "switchyard_tls_certificate_expiry_timestamp_seconds{listener=\"https\",name=\"localhost\"}";
    assert_eq!(m(expiry.into()).await, 1_924_992_000.0); // 2031-01-01
    write_cert(2032);
    p.signal("HUP");
    let signal_ok = "switchyard_config_reloads_total{result=\"ok\",source=\"signal\"}";
    assert!(
        common::wait_until(Duration::from_secs(5), || async {
            m(signal_ok.into()).await >= 1.0
        })
        .await
    );
    assert_eq!(m(expiry.into()).await, 1_956_528_000.0); // 2032-01-01
}
