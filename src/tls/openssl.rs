//! The OpenSSL side of listener certificates (cargo feature `openssl`): Pingora calls
//! [`TlsAccept::certificate_callback`] during every handshake, which picks the certificate by
//! SNI from a store behind an `ArcSwap`, so a reload is one pointer store.

use super::{describe, pick_index, TlsError};
use crate::config::ListenerTls;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// One certificate chain and key, with the names it answers for and when it expires.
#[derive(Clone)]
pub struct Entry {
    pub names: Vec<String>,
    pub not_after: i64,
    chain: Vec<X509>,
    key: PKey<Private>,
}

fn entry(chain: Vec<X509>, key: PKey<Private>) -> Result<Entry, String> {
    let leaf = chain.first().ok_or("no certificate")?;
    let matches = leaf
        .public_key()
        .map(|p| p.public_eq(&key))
        .map_err(|e| e.to_string())?;
    if !matches {
        return Err("the key is not the certificate's".into());
    }
    let (names, not_after) = describe(&leaf.to_der().map_err(|e| e.to_string())?);
    Ok(Entry {
        names,
        not_after,
        chain,
        key,
    })
}

/// Loads a PEM certificate chain and its private key, and checks that they match.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Entry, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let pem_error = |p: &Path, e: String| TlsError::Pem {
        path: p.display().to_string(),
        what: e,
    };
    let chain = X509::stack_from_pem(&read(cert)?).map_err(|e| pem_error(cert, e.to_string()))?;
    let private =
        PKey::private_key_from_pem(&read(key)?).map_err(|e| pem_error(key, e.to_string()))?;
    entry(chain, private).map_err(|reason| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    })
}

fn self_signed(names: &[String]) -> Result<Entry, TlsError> {
    let (cert, key) = super::self_signed_der(names)?;
    let bad = |e: pingora::tls::error::ErrorStack| TlsError::SelfSigned(e.to_string());
    let chain = vec![X509::from_der(&cert).map_err(bad)?];
    let key = PKey::private_key_from_der(&key).map_err(bad)?;
    entry(chain, key).map_err(TlsError::SelfSigned)
}

/// The certificates of one TLS listener.
pub struct CertStore {
    listener: String,
    entries: ArcSwap<Vec<Entry>>,
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
}

struct Callbacks(Arc<CertStore>);

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let entries = self.0.entries.load();
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(e) = pick_index(entries.iter().map(|e| e.names.as_slice()), sni.as_deref())
            .and_then(|i| entries.get(i))
        else {
            return;
        };
        let mut ok = ext::ssl_use_certificate(ssl, &e.chain[0]).is_ok()
            && ext::ssl_use_private_key(ssl, &e.key).is_ok();
        for c in &e.chain[1..] {
            ok &= ext::ssl_add_chain_cert(ssl, c).is_ok();
        }
        if !ok {
            log::error!(
                "listener {}: cannot use the certificate for {sni:?}",
                self.0.listener
            );
        }
    }
}

/// Pingora TLS settings for a listener: Mozilla intermediate (TLS 1.2 and 1.3), ALPN h2 then
/// http/1.1, certificates from the store.
pub fn listener_settings(store: Arc<CertStore>) -> pingora::listeners::tls::TlsSettings {
    let mut settings =
        pingora::listeners::tls::TlsSettings::with_callbacks(Box::new(Callbacks(store)))
            .expect("OpenSSL can build a Mozilla intermediate acceptor");
    settings.enable_h2();
    settings
}
