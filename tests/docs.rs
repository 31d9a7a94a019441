//! docs/configuration.md names every key the config types accept, so the reference cannot
//! silently fall behind the code: a fixture that sets every optional section is parsed,
//! serialized back (which writes every field, set or not), and each key is looked up.

use serde_yaml::Value;

const FIXTURE: &str = r#"
version: 1
admin: {listen: "127.0.0.1:9901", api_key: "0123456789abcdef0123456789abcdef"}
listeners:
  - {name: https, listen: "127.0.0.1:8443", tls: {self_signed: [localhost]}}
  - {name: tcp, listen: "127.0.0.1:8081", protocol: tcp, pool: p, idle: 1h, retries: 2,
     proxy_protocol: {trusted: [10.0.0.0/8]}, send_proxy_protocol: v2}
pools:
  p:
    passive_health: {consecutive_failures: 5, eject_for: 30s}
    tls: {sni: example.com, verify: true}
    queue: {max: 10, timeout: 5s}
    balance: least_load
    load: {engine: vllm, interval: 1s, metrics_path: /metrics, queue: q, running: r, cache: c}
    affinity: {key: prompt_prefix, prefix_bytes: 100, max_load_factor: 1.5}
    backends: [{address: "127.0.0.1:1", models: [m], api_key: k, max_inflight: 2}]
store:
  redis: {url: "redis://127.0.0.1:1/0", timeout: 50ms, prefix: "s:", on_error: deny, nodes: 2}
routes:
  - name: r
    match: {path_prefix: /}
    pool: p
    openai: {aliases: {a: m}, fallbacks: {m: [n]}}
    auth: {api_keys: [{key: "0123456789abcdef", name: n, models: [m], priority: high, tokens_per_minute: 10, tokens_per_day: 100}]}
    rate_limit: {requests: 1, per: 1m, shared: true}
    priority: low
    token_limit: {tokens: 100, per: 1m, key: client_ip}
    cors: {allow_origins: ["https://a.example"]}
  - {name: s, match: {path_prefix: /s}, respond: {status: 200}}
"#;

fn keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                if let Value::String(k) = k {
                    out.push(k.clone());
                    // Their keys are model names, not config keys.
                    if k == "aliases" || k == "fallbacks" {
                        continue;
                    }
                }
                keys(v, out);
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| keys(i, out)),
        _ => {}
    }
}

#[test]
fn every_config_key_is_documented() {
    let loaded = switchyard::config::parse(FIXTURE, &|_| None, None).expect("the fixture is valid");
    let tree = serde_yaml::to_value(&loaded.config).unwrap();
    let mut all = Vec::new();
    keys(&tree, &mut all);
    // Pool and route names are data, not keys.
    all.retain(|k| k != "p");
    all.sort();
    all.dedup();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| {
            !doc.contains(&format!("`{k}`"))
                && !doc.contains(&format!(".{k}`"))
                && !doc.contains(&format!("`{k}."))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
    assert!(all.len() > 60, "the walk found only {} keys", all.len());
}
