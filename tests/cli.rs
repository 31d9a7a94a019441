//! The command line: `check` reports every problem with FILE:LINE:COL, `hash-key` hashes a
//! key from stdin, `--version` and `--help` answer.

mod common;

use common::run_cli;

fn check(text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = std::process::Command::new(common::bin());
    cmd.args(["check", "-c", path.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let file = path.display().to_string();
    let err = String::from_utf8_lossy(&out.stderr).replace(&file, "FILE");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        err,
    )
}

#[test]
fn the_default_config_is_valid() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/switchyard.yaml");
    let (code, out, err) = run_cli(&["check", "-c", conf], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (2 listeners, 1 pools, 3 routes"), "{out}");
}

#[test]
fn every_semantic_problem_is_reported_at_once_with_its_place() {
    let text = r#"version: 1
admin:
  listen: 127.0.0.1:9901
  api_key: short
listeners:
  - {name: web, listen: "127.0.0.1:8080"}
  - {name: web, listen: "127.0.0.1:8080"}
  - name: tcp
    listen: "127.0.0.1:8081"
    protocol: tcp
    tls: {self_signed: [localhost]}
  - name: tls
    listen: "127.0.0.1:8443"
    tls: {certificates: [{cert: missing.crt, key: missing.key}]}
pools:
  empty: {backends: []}
  hashed: {balance: consistent_hash, backends: [{address: "127.0.0.1:1"}]}
  bad:
    backends:
      - {address: "not an address"}
routes:
  - {name: r, match: {path_prefix: /}, pool: nowhere}
  - {name: r, match: {path_prefix: /e}, pool: empty}
  - {name: acl, match: {path_prefix: /a}, pool: bad, allow: [10.0.0.0/33]}
edge:
  trusted_proxies: [not-a-cidr]
"#;
    let (code, _, err) = check(text, &[]);
    assert_eq!(code, 1);
    let expect = [
        ("FILE:4:", "admin.api_key: too short"),
        ("FILE:7:", "listeners[1].name: duplicate listener name"),
        (
            "FILE:7:",
            "listeners[1].listen: 127.0.0.1:8080 is already used by listeners[0]",
        ),
        ("FILE:8:", "listeners[2].pool: a tcp listener needs a pool"),
        (
            "FILE:11:",
            "listeners[2].tls: a tcp listener cannot terminate TLS",
        ),
        ("FILE:14:", "listeners[3].tls.certificates[0]: cannot read"),
        (
            "FILE:17:",
            "pools.hashed.hash_on: consistent_hash needs hash_on",
        ),
        ("FILE:20:", "pools.bad.backends[0].address: invalid address"),
        ("FILE:22:", "routes[0].pool: no pool named \"nowhere\""),
        ("FILE:23:", "routes[1].name: duplicate route name"),
        ("FILE:23:", "routes[1].pool: pool \"empty\" has no backends"),
        ("FILE:24:", "routes[2].allow[0]: invalid CIDR"),
        ("FILE:26:", "edge.trusted_proxies[0]: invalid CIDR"),
    ];
    for (at, what) in expect {
        assert!(
            err.lines().any(|l| l.starts_with(at) && l.contains(what)),
            "missing {at} … {what} in:\n{err}"
        );
    }
}

#[test]
fn syntax_type_and_unknown_key_errors_have_positions() {
    let (code, _, err) = check("version: 1\nroutes:\n  - name: x\n    match: {path_prefix: /}\n    respond: {status: 200}\n    colour: blue\n", &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("FILE:6:5: routes[0].colour: unknown field `colour`"),
        "{err}"
    );

    let (_, _, err) = check(
        "version: 1\npools:\n  a: {backends: [{address: 127.0.0.1:1, weight: heavy}]}\n",
        &[],
    );
    assert!(
        err.contains("pools.a.backends[0].weight: invalid type"),
        "{err}"
    );
    assert!(err.starts_with("FILE:3:"), "{err}");

    let (_, _, err) = check("version: 1\nlisteners: [\n", &[]);
    assert!(err.starts_with("FILE:3:1: YAML syntax"), "{err}");

    let (_, _, err) = check(
        "version: 1\npools:\n  a: {timeouts: {read: soon}, backends: [{address: 127.0.0.1:1}]}\n",
        &[],
    );
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn environment_placeholders() {
    let text = "version: 1\nadmin:\n  api_key: ${ADMIN_KEY}\nlisteners:\n  - {name: h, listen: \"${ADDR:-127.0.0.1:8080}\"}\n";
    let (code, _, err) = check(text, &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:3:") && err.contains("${ADMIN_KEY} has no value"),
        "{err}"
    );
    let (code, out, err) = check(text, &[("ADMIN_KEY", "0123456789abcdef0123456789abcdef")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok (1 listeners"), "{out}");
}

#[test]
fn unbuilt_features_are_refused_not_ignored() {
    let text = "version: 1\nadmin:\n  tls: {certificates: []}\n";
    let (code, _, err) = check(text, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("admin.tls: not supported yet"), "{err}");
}

#[test]
fn hash_key_prints_sha256() {
    let (code, out, _) = run_cli(&["hash-key"], Some("secret\n"));
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
    let (code, _, err) = run_cli(&["hash-key"], Some(""));
    assert_eq!(code, 1);
    assert!(err.contains("no key"));
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_cli(&["--version"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("switchyard "));
    let (code, out, _) = run_cli(&["--help"], None);
    assert_eq!(code, 0);
    assert!(out.contains("check") && out.contains("hash-key"));
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], None);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}
