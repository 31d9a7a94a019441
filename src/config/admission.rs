//! The inference admission keys: a pool's `queue`, priorities, and token budgets.

use super::units::Dur;
use super::values::RateLimitKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `pools.NAME.queue`: wait up to `timeout` for a free `max_inflight` slot instead of 503.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests that may wait at once; the next one gets 503 at once.
    pub max: usize,
    /// How long one request may wait; then 503.
    pub timeout: Dur,
}

/// A waiting request of a higher class always gets a free slot before a lower one.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Deserialize,
    Serialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical,
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// 0 for the class served first.
    pub fn rank(self) -> usize {
        self as usize
    }
}

/// A route's token budget: `tokens` per `per`, counted per `key`, from the usage the
/// backends report.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitConfig {
    /// Tokens (prompt and completion) allowed per window.
    pub tokens: u64,
    /// The window.
    pub per: Dur,
    /// `client_ip | api_key | header:NAME`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Counted in `store.redis`, across every node that shares it.
    #[serde(default)]
    pub shared: bool,
}
