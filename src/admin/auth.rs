//! Admin key checks. Both sides are hashed first and the digests compared in constant time
//! (`subtle`), so neither a key's length nor its first wrong byte shows in the timing.

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Who made an admin call: a short hash prefix of the key presented, never the key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
}

/// The key presented by `Authorization: Bearer KEY` or `X-API-Key: KEY`.
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

/// The sha256 the configured key stands for: given as `sha256:<hex>`, or of the plain key.
fn expected_digest(configured: &str) -> Option<[u8; 32]> {
    match configured.strip_prefix("sha256:") {
        Some(hex) => hex::decode(hex).ok()?.try_into().ok(),
        None => Some(Sha256::digest(configured.as_bytes()).into()),
    }
}

/// Checks the request's key against `configured`; `None` when it is missing or wrong.
pub fn check(headers: &HeaderMap, configured: Option<&str>) -> Option<Caller> {
    let given = presented(headers)?;
    let expected = expected_digest(configured?)?;
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if bool::from(digest.ct_eq(&expected)) {
        Some(Caller {
            key_id: format!("sha256:{}", &hex::encode(digest)[..8]),
        })
    } else {
        None
    }
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
            assert!(check(
                &with("authorization", &format!("Bearer {key}")),
                Some(configured)
            )
            .is_some());
            assert!(check(&with("x-api-key", &key), Some(configured)).is_some());
            assert!(check(&with("x-api-key", "wrong"), Some(configured)).is_none());
        }
        assert!(check(&HeaderMap::new(), Some(&key)).is_none());
        assert!(check(&with("x-api-key", &key), None).is_none());
    }
}
