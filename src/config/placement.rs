//! The inference placement keys: a pool's `load` (engine metrics for `least_load`), its
//! `affinity`, and a route's model `aliases` and `fallbacks`.

use super::types::d;
use super::units::Dur;
use http::HeaderName;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The inference servers whose Prometheus metric names switchyard knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Vllm,
    Sglang,
    Tgi,
    Llamacpp,
}

/// The metric names of one engine: requests waiting, requests running, KV cache in use
/// (0–1). Where an engine renamed a metric, every name it has had, newest first.
pub struct EngineMetrics {
    pub queue: &'static [&'static str],
    pub running: &'static [&'static str],
    pub cache: &'static [&'static str],
}

impl Engine {
    pub fn metrics(self) -> EngineMetrics {
        match self {
            Engine::Vllm => EngineMetrics {
                queue: &["vllm:num_requests_waiting"],
                running: &["vllm:num_requests_running"],
                cache: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
            },
            Engine::Sglang => EngineMetrics {
                queue: &["sglang:num_queue_reqs"],
                running: &["sglang:num_running_reqs"],
                cache: &["sglang:token_usage"],
            },
            Engine::Tgi => EngineMetrics {
                queue: &["tgi_queue_size"],
                running: &["tgi_batch_current_size"],
                cache: &[],
            },
            Engine::Llamacpp => EngineMetrics {
                queue: &["llamacpp:requests_deferred"],
                running: &["llamacpp:requests_processing"],
                cache: &["llamacpp:kv_cache_usage_ratio"],
            },
        }
    }
}

/// `pools.NAME.load`: where `balance: least_load` reads each backend's own load.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadConfig {
    /// A preset of metric names; `queue`, `running` and `cache` override it.
    #[serde(default)]
    pub engine: Option<Engine>,
    /// How often each backend's metrics are read.
    #[serde(default = "d::load_interval")]
    pub interval: Dur,
    /// The path of the engines' Prometheus metrics.
    #[serde(default = "d::metrics_path")]
    pub metrics_path: String,
    /// Requests waiting in the engine.
    #[serde(default)]
    pub queue: Option<String>,
    /// Requests the engine is running.
    #[serde(default)]
    pub running: Option<String>,
    /// KV cache in use, 0–1.
    #[serde(default)]
    pub cache: Option<String>,
}

/// The metric names a `load` section reads, presets and overrides resolved.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadNames {
    pub queue: Vec<String>,
    pub running: Vec<String>,
    pub cache: Vec<String>,
}

impl LoadConfig {
    pub fn names(&self) -> LoadNames {
        let preset = self.engine.map(Engine::metrics);
        let pick =
            |own: &Option<String>, from: fn(&EngineMetrics) -> &'static [&'static str]| match (
                own, &preset,
            ) {
                (Some(name), _) => vec![name.clone()],
                (None, Some(p)) => from(p).iter().map(|s| s.to_string()).collect(),
                (None, None) => Vec::new(),
            };
        LoadNames {
            queue: pick(&self.queue, |p| p.queue),
            running: pick(&self.running, |p| p.running),
            cache: pick(&self.cache, |p| p.cache),
        }
    }
}

/// What `affinity` keeps together: the prompt's beginning, or a header's value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum AffinityKey {
    PromptPrefix,
    Header(HeaderName),
}

impl AffinityKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "prompt_prefix" {
            return Ok(AffinityKey::PromptPrefix);
        }
        match text.strip_prefix("header:") {
            Some(h) => HeaderName::from_bytes(h.as_bytes())
                .map(AffinityKey::Header)
                .map_err(|_| format!("invalid header name {h:?}")),
            None => Err(format!(
                "unknown affinity key {text:?}; use prompt_prefix or header:NAME"
            )),
        }
    }
}

impl fmt::Display for AffinityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AffinityKey::PromptPrefix => f.write_str("prompt_prefix"),
            AffinityKey::Header(h) => write!(f, "header:{h}"),
        }
    }
}

impl TryFrom<String> for AffinityKey {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        AffinityKey::parse(&text)
    }
}

impl From<AffinityKey> for String {
    fn from(k: AffinityKey) -> String {
        k.to_string()
    }
}

/// `pools.NAME.affinity`: consistent hashing with bounded loads.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AffinityConfig {
    /// `prompt_prefix` or `header:NAME`.
    pub key: AffinityKey,
    /// How much of the prompt is hashed, in bytes.
    #[serde(default = "d::prefix_bytes")]
    pub prefix_bytes: usize,
    /// The preferred backend is passed over while its load is above this × the average.
    #[serde(default = "d::max_load_factor")]
    pub max_load_factor: f64,
}

/// A route's `openai:` — `true`, or the model names it rewrites.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OpenAiSetting {
    Enabled(bool),
    Models(OpenAiModels),
}

impl Default for OpenAiSetting {
    fn default() -> Self {
        OpenAiSetting::Enabled(false)
    }
}

/// A bool, or a mapping with its own errors (an untagged enum would only say that nothing
/// matched).
impl<'de> Deserialize<'de> for OpenAiSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OpenAiSetting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a mapping with aliases and fallbacks")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<OpenAiSetting, E> {
                Ok(OpenAiSetting::Enabled(v))
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                m: M,
            ) -> Result<OpenAiSetting, M::Error> {
                let de = serde::de::value::MapAccessDeserializer::new(m);
                OpenAiModels::deserialize(de).map(OpenAiSetting::Models)
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Model names a route rewrites.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAiModels {
    /// A requested name → the model served under it.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// A model → the models tried, in order, when none of its backends can take a request.
    #[serde(default)]
    pub fallbacks: BTreeMap<String, Vec<String>>,
}

static NO_MODELS: std::sync::LazyLock<OpenAiModels> = std::sync::LazyLock::new(Default::default);

impl OpenAiSetting {
    pub fn is_on(&self) -> bool {
        !matches!(self, OpenAiSetting::Enabled(false))
    }

    pub fn models(&self) -> &OpenAiModels {
        match self {
            OpenAiSetting::Models(m) => m,
            OpenAiSetting::Enabled(_) => &NO_MODELS,
        }
    }
}

impl OpenAiModels {
    /// The model a requested name means.
    pub fn resolve<'a>(&'a self, requested: &'a str) -> &'a str {
        self.aliases
            .get(requested)
            .map(String::as_str)
            .unwrap_or(requested)
    }

    /// The model to try after `model` in the chain that started at `first`.
    pub fn next_after(&self, first: &str, model: &str) -> Option<&str> {
        let chain = self.fallbacks.get(first)?;
        match chain.iter().position(|m| m == model) {
            Some(i) => chain.get(i + 1).map(String::as_str),
            None if model == first => chain.first().map(String::as_str),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_chain_is_walked_in_order() {
        let mut m = OpenAiModels::default();
        m.fallbacks
            .insert("big".into(), vec!["mid".into(), "small".into()]);
        assert_eq!(m.next_after("big", "big"), Some("mid"));
        assert_eq!(m.next_after("big", "mid"), Some("small"));
        assert_eq!(m.next_after("big", "small"), None);
        assert_eq!(m.next_after("other", "other"), None);
    }

    #[test]
    fn presets_are_overridden_by_explicit_names() {
        let c = LoadConfig {
            engine: Some(Engine::Vllm),
            interval: Dur::secs(1),
            metrics_path: "/metrics".into(),
            queue: Some("my_queue".into()),
            running: None,
            cache: None,
        };
        let n = c.names();
        assert_eq!(n.queue, ["my_queue"]);
        assert_eq!(n.running, ["vllm:num_requests_running"]);
        assert_eq!(n.cache.len(), 2);
    }
}
