//! Listener certificates: loaded from files or made in memory, chosen by SNI, and swapped
//! on reload without touching open connections.
//!
//! rustls asks a [`ResolvesServerCert`] for a key on every handshake, so the store keeps its
//! certificates behind an `ArcSwap` and a reload is one pointer store.

use crate::config::ListenerTls;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: String, what: String },
    #[error("certificate {cert} and key {key} do not belong together: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
}

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
    let (names, not_after) = describe(&chain[0]);
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| e.to_string())?;
    Ok(Entry {
        names,
        not_after,
        key: Arc::new(certified),
    })
}

/// The DNS and IP names of a certificate (SANs, else the CN) and its expiry as a Unix time.
fn describe(cert: &CertificateDer<'_>) -> (Vec<String>, i64) {
    use x509_parser::prelude::*;
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return (Vec::new(), 0);
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Some(ip) = ip_from_bytes(b) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        for cn in x509.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    (names, x509.validity().not_after.timestamp())
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// A certificate for `names`, made now and kept only in memory (for local trials).
pub fn self_signed(names: &[String]) -> Result<Entry, TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let chain = vec![ck.cert.der().clone()];
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    entry(chain, key).map_err(TlsError::SelfSigned)
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
        crate::metrics::observe_certificates(&self.listener, &entries);
        self.entries.store(Arc::new(entries));
        Ok(())
    }

    pub fn entries(&self) -> Arc<Vec<Entry>> {
        self.entries.load_full()
    }

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let entries = self.entries.load();
        let by_name = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            entries
                .iter()
                .find(|e| e.names.contains(&name))
                .or_else(|| {
                    entries
                        .iter()
                        .find(|e| e.names.iter().any(|n| wildcard(n, &name)))
                })
        });
        // A client that sends no SNI (or an unknown one) gets the first certificate.
        by_name.or_else(|| entries.first()).map(|e| e.key.clone())
    }
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(head, rest)| !head.is_empty() && rest == suffix),
        None => false,
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
    fn wildcard_matches_one_label() {
        assert!(wildcard("*.example.com", "api.example.com"));
        assert!(!wildcard("*.example.com", "a.b.example.com"));
        assert!(!wildcard("*.example.com", "example.com"));
    }

    #[test]
    fn self_signed_has_names() {
        let e = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert!(e.names.contains(&"localhost".to_string()));
        assert!(e.names.contains(&"127.0.0.1".to_string()));
    }
}
