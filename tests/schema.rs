//! `switchyard schema` prints a JSON Schema that a real validator (Python's `jsonschema`)
//! holds the shipped configs to, that refuses unknown keys and wrong types, and that agrees
//! with `switchyard check` on the forms of typed values, `${VAR}` placeholders included.

mod common;

use common::run_cli;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn schema_text() -> String {
    let (code, out, err) = run_cli(&["schema"], None);
    assert_eq!(code, 0, "{err}");
    out
}

fn jsonschema_available() -> bool {
    Command::new("python3")
        .args(["-c", "import jsonschema"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `false` (and a note) when the validator is missing outside CI; in CI that is a failure.
fn validator_ready() -> bool {
    if jsonschema_available() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "python3's jsonschema is not installed, and CI is set: `python3 -m pip install jsonschema`"
    );
    eprintln!("SKIPPED: python3's jsonschema is not installed (python3 -m pip install jsonschema)");
    false
}

/// The binary's schema in a folder, and the documents to check against it.
struct Validator {
    dir: tempfile::TempDir,
    schema: PathBuf,
}

impl Validator {
    fn new() -> Validator {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = dir.path().join("switchyard.schema.json");
        std::fs::write(&schema, schema_text()).expect("write the schema");
        Validator { dir, schema }
    }

    /// Each YAML document's schema errors (empty = valid). YAML is turned into JSON by
    /// serde_yaml, the reader the binary uses, without `${VAR}` interpolation: what an editor
    /// sees is the file as written.
    fn errors(&self, docs: &[(String, String)]) -> Vec<Vec<String>> {
        let mut files = Vec::new();
        for (i, (name, yaml)) in docs.iter().enumerate() {
            let json: Value = serde_yaml::from_str(yaml)
                .unwrap_or_else(|e| panic!("{name} is not YAML this test can convert: {e}"));
            let file = self.dir.path().join(format!("doc-{i}.json"));
            std::fs::write(&file, json.to_string()).expect("write a document");
            files.push(file);
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schema_validate.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(&self.schema)
            .args(&files)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "the validator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), docs.len(), "one answer per document");
        lines
            .iter()
            .map(|l| {
                l["errors"]
                    .as_array()
                    .expect("errors")
                    .iter()
                    .map(|e| e.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .collect()
    }
}

/// Whether `switchyard check` accepts `yaml`, with `env` set for its placeholders.
fn check_accepts(yaml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = Command::new(common::bin())
        .args(["check", "-c"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read conf/")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// The fixture tests/docs.rs checks the reference against: it sets every optional section.
fn docs_fixture() -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/docs.rs"))
        .expect("tests/docs.rs");
    let start = text
        .find("const FIXTURE: &str = r#\"")
        .map(|i| i + "const FIXTURE: &str = r#\"".len())
        .expect("tests/docs.rs has its FIXTURE");
    let len = text[start..].find("\"#;").expect("the FIXTURE ends");
    text[start..start + len].to_string()
}

/// Every object schema in the document, with where it is.
fn objects<'a>(at: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("properties") {
                out.push((at.clone(), v));
            }
            for (k, child) in m {
                if k != "default" {
                    objects(format!("{at}/{k}"), child, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                objects(format!("{at}/{i}"), child, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_schema_describes_every_key_with_its_default_and_refuses_unknown_ones() {
    let schema: Value = serde_json::from_str(&schema_text()).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "draft 2020-12"
    );
    let mut all = Vec::new();
    objects(String::new(), &schema, &mut all);
    assert!(all.len() > 20, "only {} object schemas", all.len());
    for (at, obj) in &all {
        assert_eq!(
            obj["additionalProperties"],
            Value::Bool(false),
            "{at} accepts unknown keys"
        );
        for (key, prop) in obj["properties"].as_object().expect("properties") {
            let text = prop["description"].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{at}.{key} has no description");
        }
    }
    let defs = &schema["$defs"];
    assert_eq!(schema["properties"]["server"]["default"]["threads"], 2);
    assert_eq!(schema["properties"]["version"]["minimum"], 1);
    let route = &defs["RouteConfig"]["properties"];
    assert_eq!(route["max_body"]["default"], 1 << 20);
    assert_eq!(
        route["retry_on"]["default"],
        serde_json::json!(["connect_error"])
    );
    assert_eq!(
        defs["PoolTimeouts"]["properties"]["connect"]["default"],
        "2s"
    );
    assert_eq!(
        defs["EdgeConfig"]["properties"]["merge_slashes"]["default"],
        true
    );
    assert!(
        defs["Duration"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("250ms")),
        "a typed value says its form"
    );
}

#[test]
fn every_shipped_config_and_the_docs_fixture_are_valid() {
    if !validator_ready() {
        return;
    }
    let mut files = Vec::new();
    yaml_files(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")),
        &mut files,
    );
    assert!(files.len() >= 3, "conf/ has {} files", files.len());
    let mut docs: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read");
            (p.display().to_string(), text)
        })
        .collect();
    docs.push(("the tests/docs.rs fixture".into(), docs_fixture()));
    let v = Validator::new();
    for ((name, _), errors) in docs.iter().zip(v.errors(&docs)) {
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_by_both() {
    if !validator_ready() {
        return;
    }
    let pool = "pools:\n  p: {backends: [{address: \"127.0.0.1:1\"}]}\n";
    let bad = [
        "version: 1\ncolour: blue\n".to_string(),
        format!("version: 1\n{pool}routes:\n  - {{name: r, pool: p, colour: blue}}\n"),
        "version: 1\npools:\n  a: {backends: [{address: \"127.0.0.1:1\"}], balanse: random}\n"
            .to_string(),
        "version: 1\nedge: {access_log: {enabled: true, colour: blue}}\n".to_string(),
        "version: 1\nserver: {threads: many}\n".to_string(),
        "version: \"1\"\n".to_string(),
        "version: 2\n".to_string(),
        "version: 1\nedge: {merge_slashes: \"no\"}\n".to_string(),
        format!("version: 1\n{pool}routes:\n  - {{name: r, pool: p, retries: [1]}}\n"),
        "version: 1\nlisteners: {name: web}\n".to_string(),
        // A placeholder leaves a string, and a port is a number.
        "version: 1\nlisteners:\n  - {name: web, listen: \"127.0.0.1:8080\", redirect_to_https: \"${PORT}\"}\n"
            .to_string(),
    ];
    let docs: Vec<(String, String)> = bad.iter().map(|d| (d.clone(), d.clone())).collect();
    let v = Validator::new();
    for ((doc, _), errors) in docs.iter().zip(v.errors(&docs)) {
        assert!(!errors.is_empty(), "the schema accepts:\n{doc}");
        let (ok, _) = check_accepts(doc, &[("PORT", "8443")]);
        assert!(!ok, "check accepts:\n{doc}");
    }
}

/// A document with one pool `p` and one route `r` to it; `pool` and `route` are added to
/// their maps, `edge` is the edge map's content.
fn sample(pool: &str, route: &str, edge: &str) -> String {
    let pool = if pool.contains("backends") {
        pool.to_string()
    } else {
        format!("backends: [{{address: \"127.0.0.1:1\"}}]{pool}")
    };
    format!(
        "version: 1\npools:\n  p: {{health_check: {{kind: none}}, {pool}}}\n\
         routes:\n  - {{name: r, pool: p{route}}}\nedge: {{{edge}}}\n"
    )
}

#[test]
fn the_schema_and_check_agree_on_typed_values_and_placeholders() {
    if !validator_ready() {
        return;
    }
    let digest = "ab".repeat(32);
    let good = [
        sample("", ", max_body: 1MiB", ""),
        sample("", ", max_body: 512", ""),
        sample("", ", max_body: \"2 mb\"", ""),
        sample("", ", timeouts: {read: 250ms, total: \"1h 30m\"}", ""),
        sample(
            "",
            ", match: {methods: [get, POST], host: [\"*.example.com\", api.example.com, \"::1\"], headers: {X-Team: a}}",
            "",
        ),
        sample("", ", retry_on: [connect_error, 502]", ""),
        sample("", ", allow: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"]", ""),
        sample(
            "",
            ", rate_limit: {requests: 5, per: 1m, key: \"header:X-User\"}",
            "",
        ),
        sample(
            "",
            &format!(", auth: {{api_keys: [0123456789abcdef, \"sha256:{digest}\", {{key: \"${{KEY}}\", name: k}}]}}"),
            "",
        ),
        sample("", ", request_headers: {set: {X-A: \"b c\"}, remove: [X-B]}", ""),
        sample(", balance: consistent_hash, hash_on: \"cookie:sid\"", "", ""),
        sample(
            "backends: [{address: \"gpu-7.internal:8000\", api_key: \"${GPU_KEY}\"}, {address: \"[::1]:9\"}]",
            "",
            "",
        ),
        sample("backends: [{address: \"${ADDR}\"}]", "", ""),
        sample(", balance: \"${BALANCE}\"", "", ""),
        sample("", "", "escaped_slashes: \"${ESCAPED}\", trusted_proxies: [\"${PROXY_NET}\"]"),
        sample("", "", "access_log: {fields: [time, status, \"${FIELD}\"]}"),
        sample(", affinity: {key: \"header:X-Session\"}", "", ""),
        sample("", ", openai: {aliases: {gpt-4o: llama}}", ""),
    ];
    let bad = [
        sample("", ", max_body: 1XB", ""),
        sample("", ", timeouts: {read: ten seconds}", ""),
        sample("", ", match: {methods: [FETCH]}", ""),
        sample("", ", match: {host: [\"*foo.com\"]}", ""),
        sample("", ", match: {headers: {\"X A\": b}}", ""),
        sample("", ", retry_on: [404]", ""),
        sample("", ", retry_on: [sometimes]", ""),
        sample("", ", allow: [nope]", ""),
        sample("", ", rate_limit: {requests: 5, per: 1m, key: ip}", ""),
        sample("", ", auth: {api_keys: [\"sha256:abc\"]}", ""),
        sample("", ", request_headers: {set: {X-A: \"b\\nc\"}}", ""),
        sample(", balance: consistent_hash, hash_on: path", "", ""),
        sample(", balance: fastest", "", ""),
        sample("backends: [{address: not an address}]", "", ""),
        sample("backends: [{address: \"gpu:080\"}]", "", ""),
        sample("", "", "escaped_slashes: sometimes"),
        sample("", "", "access_log: {fields: [colour]}"),
        sample(", affinity: {key: session}", "", ""),
        sample("", ", openai: yes", ""),
    ];
    let env = [
        ("KEY", "a-client-key-from-the-environment"),
        ("GPU_KEY", "sk-gpu"),
        ("ADDR", "127.0.0.1:2"),
        ("BALANCE", "random"),
        ("ESCAPED", "keep"),
        ("PROXY_NET", "10.0.0.0/8"),
        ("FIELD", "route"),
    ];
    let docs: Vec<(String, String)> = good
        .iter()
        .chain(bad.iter())
        .map(|d| (d.clone(), d.clone()))
        .collect();
    let v = Validator::new();
    for (i, ((doc, _), errors)) in docs.iter().zip(v.errors(&docs)).enumerate() {
        let valid = i < good.len();
        let (ok, err) = check_accepts(doc, &env);
        assert_eq!(ok, valid, "check: {err}\n{doc}");
        assert_eq!(errors.is_empty(), valid, "schema: {errors:?}\n{doc}");
    }
}
