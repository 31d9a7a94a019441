//! The admin API answers as docs/admin-openapi.yaml says: schemathesis runs every check it has
//! (`--checks all`), on positive and negative data, in all its phases, with the admin key,
//! against the real binary. tests/schemathesis.toml lists the only relaxations, each with its
//! reason; tests/admin_schema_hooks.py keeps the run's admin key in the configs it writes.

mod common;

use common::{free_port, Proxy, Upstream, ADMIN_KEY};
use reqwest::Method;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole run's budget; it takes well under a minute on two cores.
const BUDGET: Duration = Duration::from_secs(150);

fn schemathesis_available() -> bool {
    Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_answers_as_its_openapi_document_says() {
    if !schemathesis_available() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "schemathesis is not installed, and CI is set: `python3 -m pip install schemathesis`"
        );
        eprintln!("SKIPPED: schemathesis is not installed (python3 -m pip install schemathesis)");
        return;
    }
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let p = Proxy::start(&format!(
        r#"
listeners:
  - {{name: http, listen: "127.0.0.1:{port}"}}
pools:
  app: {{health_check: {{kind: none}}, backends: [{{address: "{}"}}, {{address: "{}"}}]}}
routes:
  - {{name: app, match: {{path_prefix: /}}, pool: app}}
"#,
        a.addr, b.addr
    ))
    .await;

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = p.dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).expect("work dir");
    let log = p.dir.path().join("schemathesis.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut child = Command::new("schemathesis")
        .arg("--config-file")
        .arg(root.join("tests/schemathesis.toml"))
        .arg("run")
        .arg(root.join("docs/admin-openapi.yaml"))
        .args(["--url", &format!("http://127.0.0.1:{}", p.admin)])
        .args(["--checks", "all"])
        .args(["--mode", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_KEY}")])
        .args([
            "--max-examples",
            "25",
            "--request-timeout",
            "5",
            "--workers",
            "1",
        ])
        .arg("--no-color")
        .current_dir(&work)
        .env("SCHEMATHESIS_HOOKS", "admin_schema_hooks")
        .env("PYTHONPATH", root.join("tests"))
        .env("SWITCHYARD_TEST_ADMIN_KEY", ADMIN_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start schemathesis");
    let end = Instant::now() + BUDGET;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("schemathesis ran over {BUDGET:?}:\n{report}"));
    assert!(status.success(), "schemathesis found problems:\n{report}");
    // A run that locked itself out would pass vacuously.
    assert!(
        !report.contains("Authentication failed"),
        "the run lost its access:\n{report}"
    );
    let r = p
        .admin_req(Method::GET, "/status")
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200, "the admin key still opens the API");
    let applied = p
        .stdout()
        .lines()
        .filter(|l| l.contains("\"kind\":\"audit\"") && l.contains("\"status\":200"))
        .count();
    assert!(applied > 0, "no write of the run was applied:\n{report}");
}
