//! Client API keys of a route: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared as
//! sha256 digests in constant time. A key may be limited to some models.

use crate::config::ApiKey;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone)]
pub struct ClientKey {
    digest: [u8; 32],
    pub name: Option<String>,
    /// Empty = every model.
    pub models: Vec<String>,
}

impl ClientKey {
    pub fn compile(k: &ApiKey) -> Option<ClientKey> {
        let (key, name, models) = match k {
            ApiKey::Plain(k) => (k.as_str(), None, Vec::new()),
            ApiKey::Scoped(s) => (s.key.as_str(), s.name.clone(), s.models.clone()),
        };
        let digest = match key.strip_prefix("sha256:") {
            Some(hex) => hex::decode(hex).ok()?.try_into().ok()?,
            None => Sha256::digest(key.as_bytes()).into(),
        };
        Some(ClientKey {
            digest,
            name,
            models,
        })
    }

    /// What identifies the key in counters: its SHA-256, never the secret.
    pub fn id(&self) -> &[u8; 32] {
        &self.digest
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
