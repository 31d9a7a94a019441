//! The answers a CA is waiting for while an order is open: a key authorization per http-01
//! token, a challenge certificate per domain for tls-alpn-01 (RFC 8737).

use parking_lot::RwLock;
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Where http-01 challenges are fetched from (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The ALPN protocol a tls-alpn-01 validator offers, and the only one it accepts back.
pub(super) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Shared by the order (which adds and removes answers) and the listeners (which give them).
#[derive(Default)]
pub struct Challenges {
    http01: RwLock<HashMap<String, String>>,
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization for a request to `path`, if it asks for a pending token.
    pub fn http01(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http01.read().get(token).cloned()
    }

    /// The challenge certificate for `domain`, if an order is proving it.
    pub fn tls_alpn01(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        self.tls_alpn01
            .read()
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    /// Whether a tls-alpn-01 challenge is pending: only then is a ClientHello looked at.
    pub fn tls_alpn01_pending(&self) -> bool {
        !self.tls_alpn01.read().is_empty()
    }

    pub(super) fn add_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub(super) fn add_tls_alpn01(&self, domain: &str, key: Arc<CertifiedKey>) {
        self.tls_alpn01.write().insert(domain.to_string(), key);
    }

    /// Forgets an order's answers once it is done, whatever the outcome.
    pub(super) fn remove(&self, tokens: &[String], domains: &[String]) {
        let mut http01 = self.http01.write();
        for t in tokens {
            http01.remove(t);
        }
        let mut alpn = self.tls_alpn01.write();
        for d in domains {
            alpn.remove(d);
        }
    }
}
