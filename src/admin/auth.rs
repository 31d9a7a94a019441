//! Admin key checks, with the same constant-time comparison as client keys
//! (`runtime::policy::auth`): both sides are hashed and the digests compared with `subtle`, so
//! neither a key's length nor its first wrong byte shows in the timing.

use crate::config::Secret;
use crate::runtime::policy::auth::{self, ClientKey};
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Who made an admin call: a short hash prefix of the key presented, never the key.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub key_id: String,
}

/// Checks the request's key against `configured` (plain or `sha256:<hex>`).
pub(super) fn check(headers: &HeaderMap, configured: Option<&Secret>) -> Option<Caller> {
    let key = ClientKey::of(configured?);
    auth::check(headers, std::slice::from_ref(&key))?;
    let given = auth::presented(headers)?;
    Some(Caller {
        key_id: format!(
            "sha256:{}",
            &hex::encode(Sha256::digest(given.as_bytes()))[..8]
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn accepts_bearer_and_x_api_key_plain_or_hashed() {
        let key = "k".repeat(32);
        let hashed = format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())));
        for configured in [key.as_str(), hashed.as_str()] {
            let configured = Secret::parse(configured).expect("key");
            let bearer = with("authorization", &format!("Bearer {key}"));
            assert!(check(&bearer, Some(&configured)).is_some());
            assert!(check(&with("x-api-key", &key), Some(&configured)).is_some());
            assert!(check(&with("x-api-key", "wrong"), Some(&configured)).is_none());
        }
        let plain = Secret::parse(&key).expect("key");
        assert!(check(&HeaderMap::new(), Some(&plain)).is_none());
        assert!(check(&with("x-api-key", &key), None).is_none());
    }
}
