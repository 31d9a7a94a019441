//! The rustls side of listener certificates: rustls asks a [`ResolvesServerCert`] for a key on
//! every handshake, so the store keeps its certificates behind an `ArcSwap` and a reload is
//! one pointer store.

use super::{describe, TlsError};

pub type CertStore = super::Store<Entry>;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// One certificate with the names it answers for and when it expires.
#[derive(Clone)]
pub struct Entry {
    pub names: Vec<String>,
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("names", &self.names).finish()
    }
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Loads a PEM certificate chain and its private key, and checks that they match.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Entry, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let names = (cert.display().to_string(), key.display().to_string());
    pair_from_pem(&read(cert)?, &read(key)?, names)
}

/// A PEM chain and key that must match; `names` say where they came from, for errors.
pub(crate) fn pair_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    (cert_name, key_name): (String, String),
) -> Result<Entry, TlsError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_name.clone(),
            what: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_name,
            what: "no PEM certificate found".into(),
        });
    }
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| TlsError::Pem {
            path: key_name.clone(),
            what: e.to_string(),
        })?
        .ok_or_else(|| TlsError::Pem {
            path: key_name.clone(),
            what: "no PEM private key found".into(),
        })?;
    entry(chain, private).map_err(|reason| TlsError::Mismatch {
        cert: cert_name,
        key: key_name,
        reason,
    })
}

fn entry(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Entry, String> {
    let (names, not_after) = describe(chain[0].as_ref());
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
    Ok(Entry {
        names,
        not_after,
        key: Arc::new(certified),
    })
}

/// A certificate for `names`, made now and kept only in memory (for local trials).
pub(super) fn self_signed(names: &[String]) -> Result<Entry, TlsError> {
    let (cert, key) = super::self_signed_der(names)?;
    entry_from_der(cert, key).map_err(TlsError::SelfSigned)
}

/// One certificate (DER) and its PKCS#8 key (DER).
pub(super) fn entry_from_der(cert: Vec<u8>, key: Vec<u8>) -> Result<Entry, String> {
    let key = PrivateKeyDer::try_from(key).map_err(|e| e.to_string())?;
    entry(vec![CertificateDer::from(cert)], key)
}

impl super::Certificate for Entry {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        load_pair(cert, key)
    }

    fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        self_signed(names)
    }

    fn names(&self) -> &[String] {
        &self.names
    }

    fn not_after(&self) -> i64 {
        self.not_after
    }
}

/// The rustls hook: asks the store on every handshake.
#[derive(Debug)]
pub(super) struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.pick(hello.server_name()).map(|e| e.key)
    }
}

/// Pingora TLS settings for a listener: TLS 1.2 and 1.3, ALPN h2 then http/1.1.
pub fn listener_settings(store: Arc<CertStore>) -> pingora::listeners::tls::TlsSettings {
    // The paths are never read: a resolver takes their place.
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")
        .expect("intermediate() with a resolver does not touch files");
    settings.set_cert_resolver(Arc::new(Resolver(store)));
    settings.enable_h2();
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_names() {
        let e = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(e.names.contains(&"localhost".to_string()));
        assert!(e.names.contains(&"127.0.0.1".to_string()));
    }
}
