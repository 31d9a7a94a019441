//! Client API keys of a route: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared as
//! sha256 digests in constant time. A key may be limited to some models.

use crate::config::{ApiKey, Priority, Secret};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct ClientKey {
    digest: [u8; 32],
    pub name: Option<String>,
    /// Empty = every model.
    pub models: Vec<String>,
    pub priority: Option<Priority>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    /// The budgets are counted in `store.redis`.
    pub shared: bool,
}

impl ClientKey {
    pub fn compile(k: &ApiKey) -> ClientKey {
        let scoped = match k {
            ApiKey::Plain(_) => None,
            ApiKey::Scoped(s) => Some(s),
        };
        ClientKey {
            digest: *k.secret().digest(),
            name: scoped.and_then(|s| s.name.clone()),
            models: scoped.map(|s| s.models.clone()).unwrap_or_default(),
            priority: scoped.and_then(|s| s.priority),
            tokens_per_minute: scoped.and_then(|s| s.tokens_per_minute),
            tokens_per_day: scoped.and_then(|s| s.tokens_per_day),
            shared: scoped.is_some_and(|s| s.shared),
        }
    }

    /// A key without a name, model limit or budget (the admin API's).
    pub fn of(secret: &Secret) -> ClientKey {
        ClientKey {
            digest: *secret.digest(),
            name: None,
            models: Vec::new(),
            priority: None,
            tokens_per_minute: None,
            tokens_per_day: None,
            shared: false,
        }
    }

    /// What identifies the key in counters: its SHA-256, never the secret.
    pub fn id(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Who this key is when requests take turns: its name, else the start of its digest.
    pub fn tenant(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => hex::encode(&self.digest[..8]),
        }
    }

    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// The key a request presents, from `Authorization: Bearer` or `X-API-Key`.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The configured key matching the request's, if any. Every key is compared, so the time
/// taken does not tell which one (or how much of one) matched.
pub fn check<'a>(headers: &HeaderMap, keys: &'a [ClientKey]) -> Option<&'a ClientKey> {
    let given = presented(headers)?;
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let mut found = None;
    for k in keys {
        if bool::from(k.digest.ct_eq(&digest)) {
            found = Some(k);
        }
    }
    found
}
