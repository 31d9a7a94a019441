//! Client API keys of a route: `Authorization: Bearer KEY` or `X-API-Key: KEY`, compared as
//! sha256 digests in constant time. A key may be limited to some models.

use crate::config::{ApiKey, Secret};
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
    pub fn compile(k: &ApiKey) -> ClientKey {
        let (name, models) = match k {
            ApiKey::Plain(_) => (None, Vec::new()),
            ApiKey::Scoped(s) => (s.name.clone(), s.models.clone()),
        };
        ClientKey {
            digest: *k.secret().digest(),
            name,
            models,
        }
    }

    /// A key without a name or model limit (the admin API's).
    pub fn of(secret: &Secret) -> ClientKey {
        ClientKey {
            digest: *secret.digest(),
            name: None,
            models: Vec::new(),
        }
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
