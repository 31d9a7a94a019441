//! `store:`: where limits that several nodes share are counted (Redis).

use super::units::Dur;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A Redis server that counts `shared: true` limits for every node that names it.
    #[serde(default)]
    pub redis: Option<RedisStoreConfig>,
}

/// One Redis server that every node of a fleet names the same way.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://[user:pass@]host:port[/db]`, or `rediss://` for TLS (the server's certificate
    /// is checked against the system's roots; `SSL_CERT_FILE` names another bundle).
    pub url: String,
    /// The longest a request waits for a shared decision; then `on_error` decides.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Put in front of every key, so that several fleets can share one server.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// What a shared limit decides when Redis does not answer within `timeout`.
    #[serde(default)]
    pub on_error: OnStoreError,
    /// How many nodes share the limits: the `local` fallback admits `limit / nodes`.
    #[serde(default)]
    pub nodes: Option<u64>,
}

/// What a shared limit decides when Redis does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Admit the request.
    Allow,
    /// Refuse it with 503 (the limit is unknown, not reached).
    Deny,
    /// Count it on this node alone, with the limit divided by `nodes`.
    #[default]
    Local,
}

fn default_timeout() -> Dur {
    Dur::millis(50)
}

fn default_prefix() -> String {
    "switchyard:".to_string()
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const ROUTE: &str = "respond: {status: 200}, rate_limit: {requests: 5, per: 1m, shared: true}";

    fn problems(store: &str) -> Vec<String> {
        let text = format!("version: 1\n{store}routes:\n  - {{name: r, {ROUTE}}}\n");
        crate::config::problems_in(&text)
    }

    #[test]
    fn shared_needs_a_redis_store() {
        let p = problems("");
        assert!(
            p.iter()
                .any(|p| p.contains("routes[0].rate_limit.shared") && p.contains("store.redis")),
            "{p:?}"
        );
        assert!(problems("store: {redis: {url: \"redis://127.0.0.1:6379/0\"}}\n").is_empty());
    }

    #[test]
    fn shared_token_budgets_need_a_redis_store_too() {
        let text = |store: &str| {
            format!(
                "version: 1\n{store}pools: {{llm: {{backends: [{{address: \"127.0.0.1:9\"}}]}}}}\n\
                 routes:\n  - {{name: t, pool: llm, openai: true,\n\
                 token_limit: {{tokens: 100, per: 1m, shared: true}},\n\
                 auth: {{api_keys: [{{key: \"team-a-key-0123456789\", tokens_per_minute: 9, shared: true}}]}}}}\n"
            )
        };
        let problems = crate::config::problems_in(&text(""));
        for at in [
            "routes[0].token_limit.shared",
            "routes[0].auth.api_keys[0].shared",
        ] {
            let found = problems
                .iter()
                .any(|p| p.contains(at) && p.contains("store.redis"));
            assert!(found, "{at}: {problems:?}");
        }
        let with_store = text("store: {redis: {url: \"rediss://127.0.0.1:6379/0\"}}\n");
        assert!(parse(&with_store, &|_| None, None).is_ok());
    }

    #[test]
    fn the_url_and_settings_are_checked() {
        for (store, says) in [
            (
                "store: {redis: {url: \"http://x:1\"}}\n",
                "must start with redis:// or rediss://",
            ),
            (
                "store: {redis: {url: \"redis://x:1\", timeout: 0s}}\n",
                "between 1ms and 10s",
            ),
            (
                "store: {redis: {url: \"redis://x:1\", nodes: 0}}\n",
                "at least 1",
            ),
            (
                "store: {redis: {url: \"redis://x:1\", on_error: maybe}}\n",
                "unknown variant",
            ),
        ] {
            let p = problems(store);
            assert!(p.iter().any(|p| p.contains(says)), "{store}: {p:?}");
        }
    }

    #[test]
    fn defaults_are_the_contract_s() {
        let text = "version: 1\nstore: {redis: {url: \"redis://h:1\"}}\n";
        let c = parse(text, &|_| None, None).expect("valid").config;
        let r = c.store.redis.expect("redis");
        assert_eq!(r.timeout.get(), std::time::Duration::from_millis(50));
        assert_eq!(r.prefix, "switchyard:");
        assert_eq!(r.on_error, super::OnStoreError::Local);
        assert_eq!(r.nodes, None);
    }
}
