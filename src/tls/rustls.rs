//! The rustls side of listener certificates: rustls asks a [`ResolvesServerCert`] for a key on
//! every handshake, so the store keeps its certificates behind an `ArcSwap` and a reload is
//! one pointer store.

use super::{describe, pick_index, TlsError};
use crate::config::ListenerTls;
use arc_swap::ArcSwap;
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

pub fn provider() -> Arc<CryptoProvider> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Loads a PEM certificate chain and its private key, and checks that they match.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Entry, TlsError> {
    let cert_name = cert.display().to_string();
    let key_name = key.display().to_string();
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
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
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
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
pub fn self_signed(names: &[String]) -> Result<Entry, TlsError> {
    let (cert, key) = super::self_signed_der(names)?;
    let key = PrivateKeyDer::try_from(key).map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    entry(vec![CertificateDer::from(cert)], key).map_err(TlsError::SelfSigned)
}

/// The certificates of one TLS listener.
pub struct CertStore {
    listener: String,
    entries: ArcSwap<Vec<Entry>>,
    /// Self-signed certificates are made once at start and survive reloads.
    generated: Vec<Entry>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("listener", &self.listener)
            .finish()
    }
}

impl CertStore {
    pub fn new(listener: &str, tls: &ListenerTls, base: Option<&Path>) -> Result<Self, TlsError> {
        let generated = if tls.self_signed.is_empty() {
            Vec::new()
        } else {
            vec![self_signed(&tls.self_signed)?]
        };
        let store = CertStore {
            listener: listener.to_string(),
            entries: ArcSwap::from_pointee(Vec::new()),
            generated,
        };
        store.reload(tls, base)?;
        Ok(store)
    }

    /// Re-reads every certificate file; on any error the current certificates stay.
    pub fn reload(&self, tls: &ListenerTls, base: Option<&Path>) -> Result<(), TlsError> {
        let mut entries = Vec::with_capacity(tls.certificates.len() + self.generated.len());
        for pair in &tls.certificates {
            let (cert, key) = match base {
                Some(b) => (b.join(&pair.cert), b.join(&pair.key)),
                None => (pair.cert.clone().into(), pair.key.clone().into()),
            };
            entries.push(load_pair(&cert, &key)?);
        }
        entries.extend(self.generated.iter().cloned());
        for e in &entries {
            crate::metrics::observe_certificate(&self.listener, &e.names, e.not_after);
        }
        self.entries.store(Arc::new(entries));
        Ok(())
    }

    pub fn entries(&self) -> Arc<Vec<Entry>> {
        self.entries.load_full()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let entries = self.entries.load();
        let at = pick_index(entries.iter().map(|e| e.names.as_slice()), sni)?;
        entries.get(at).map(|e| e.key.clone())
    }
}

/// The rustls hook: asks the store on every handshake.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.pick(hello.server_name())
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
