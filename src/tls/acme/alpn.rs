//! tls-alpn-01 (RFC 8737): the CA's validator opens a TLS connection offering only the
//! `acme-tls/1` protocol and expects a self-signed certificate for the domain that carries
//! the key authorization's digest. Pingora's TLS settings cannot add that protocol to a
//! listener's ALPN list, so while a challenge is pending each connection's ClientHello is
//! read before Pingora's handshake: a validator's is answered here (and the connection
//! closed), any other is put back and goes on to Pingora untouched.

use super::challenges::{Challenges, ACME_TLS_ALPN};
use super::order::OrderError;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::tls::TlsAcceptor;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ClientHello larger than this is not a validator's: it is handed on unread.
const MAX_HELLO: usize = 16 * 1024;

/// The self-signed certificate that proves `domain` with `digest` (the SHA-256 of the key
/// authorization) in its critical acmeIdentifier extension.
pub(super) fn challenge_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, OrderError> {
    let bad = |e: rcgen::Error| OrderError::ChallengeCertificate(e.to_string());
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()]).map_err(bad)?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension.
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let signer = crate::tls::backend::provider()
        .key_provider
        .load_private_key(der.into())
        .map_err(|e| OrderError::ChallengeCertificate(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Reads the ClientHello of a connection to a listener with a pending tls-alpn-01
/// challenge. `Ok(true)`: a validator's, answered, to be closed. `Ok(false)`: anything else,
/// every byte put back for Pingora's handshake (which also reports what was not TLS).
pub async fn answer(
    stream: &mut L4Stream,
    challenges: &Challenges,
    wait: Duration,
) -> std::io::Result<bool> {
    let mut acceptor = Acceptor::default();
    let mut seen = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let accepted = loop {
        let read = tokio::time::timeout(wait, stream.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            Ok(Err(e)) => return Err(e),
            _ => break None,
        };
        seen.extend_from_slice(&buf[..n]);
        if !feed(&mut acceptor, &buf[..n]) || seen.len() > MAX_HELLO {
            break None;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => break Some(accepted),
            Err(_) => break None,
        }
    };
    stream.rewind(&seen);
    let key = accepted.and_then(|a| validator_key(&a.client_hello(), challenges));
    let Some(key) = key else { return Ok(false) };
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::backend::provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Single(key)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    let mut tls = TlsAcceptor::from(Arc::new(config)).accept(stream).await?;
    let _ = tls.shutdown().await;
    Ok(true)
}

/// Gives `bytes` to the acceptor; false once it takes no more.
fn feed(acceptor: &mut Acceptor, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match acceptor.read_tls(&mut bytes) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
    }
    true
}

/// The challenge certificate, if this hello is a validator's for a pending domain.
fn validator_key(hello: &ClientHello<'_>, challenges: &Challenges) -> Option<Arc<CertifiedKey>> {
    let acme = hello.alpn()?.any(|p| p == ACME_TLS_ALPN);
    if !acme {
        return None;
    }
    challenges.tls_alpn01(hello.server_name()?)
}

#[derive(Debug)]
struct Single(Arc<CertifiedKey>);

impl ResolvesServerCert for Single {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
