//! The OpenSSL side of listener certificates (cargo feature `openssl`): Pingora calls
//! [`TlsAccept::certificate_callback`] during every handshake, which picks the certificate by
//! SNI from a store behind an `ArcSwap`, so a reload is one pointer store.

use super::{describe, TlsError};

pub type CertStore = super::Store<Entry>;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::x509::X509;
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

struct Callbacks(Arc<CertStore>);

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(e) = self.0.pick(sni.as_deref()) else {
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
