//! Listener certificates: loaded from files or made in memory, chosen by SNI, and swapped on
//! reload without touching open connections. The TLS library behind it is a cargo feature:
//! `rustls` (default) or `openssl`; both offer the same `CertStore`, `load_pair` and
//! `listener_settings`.

#[cfg(feature = "rustls")]
#[path = "rustls.rs"]
mod backend;

#[cfg(all(feature = "openssl", not(feature = "rustls")))]
#[path = "openssl.rs"]
mod backend;

pub use backend::{listener_settings, load_pair, CertStore, Entry};

#[cfg(feature = "rustls")]
pub mod acme;

use crate::config::{Config, ListenerTls, Problem, Stage};
use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use std::path::Path;
use std::sync::Arc;

/// A file the config names: a relative name is taken from `base`, the config file's folder.
pub fn from_config_folder(base: Option<&Path>, file: &str) -> std::path::PathBuf {
    base.map_or_else(|| Path::new(file).to_path_buf(), |b| b.join(file))
}

/// Every listener certificate of `config` that cannot be loaded (unreadable, not PEM, key not
/// matching), and an unreadable ACME `directory_ca`, as a config problem with its place;
/// relative file names are taken from `base`, the config file's folder. Part of checking a
/// config, since the store is built from them.
pub fn check_files<S: Stage>(config: &Config<S>, base: Option<&Path>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let at = |f: &str| from_config_folder(base, f);
        #[cfg(feature = "rustls")]
        if let Some(ca) = tls.acme.as_ref().and_then(|a| a.directory_ca.as_deref()) {
            if let Err(e) = acme::check_directory_ca(&at(ca)) {
                let path = format!("listeners[{i}].tls.acme.directory_ca");
                problems.push(Problem::new(path, e));
            }
        }
        for (j, pair) in tls.certificates.iter().enumerate() {
            if let Err(e) = load_pair(&at(&pair.cert), &at(&pair.key)) {
                let path = format!("listeners[{i}].tls.certificates[{j}]");
                problems.push(Problem::new(path, e.to_string()));
            }
        }
    }
    problems
}

/// What a TLS backend's certificate type offers the store.
pub trait Certificate: Clone + Send + Sync + 'static {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError>;
    fn self_signed(names: &[String]) -> Result<Self, TlsError>;
    fn names(&self) -> &[String];
    fn not_after(&self) -> i64;
}

/// The certificates of one TLS listener, swapped whole on reload.
pub struct Store<E> {
    listener: String,
    entries: ArcSwap<Vec<E>>,
    /// Self-signed certificates are made once at start and survive reloads.
    generated: Vec<E>,
    /// The last certificate an ACME CA issued; it survives reloads and comes first, so that
    /// it answers for its names before any file certificate.
    acquired: ArcSwapOption<E>,
    /// The file certificates of the last good reload.
    files: Mutex<Vec<E>>,
    /// `generated` is only a stand-in until an ACME CA issues (no other certificate): its
    /// expiry is reported as 0, so that an expiry alert fires while nothing valid serves.
    placeholder: bool,
}

impl<E> std::fmt::Debug for Store<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("listener", &self.listener)
            .finish()
    }
}

impl<E: Certificate> Store<E> {
    pub fn new(listener: &str, tls: &ListenerTls, base: Option<&Path>) -> Result<Self, TlsError> {
        let acme_only = tls.certificates.is_empty() && tls.self_signed.is_empty();
        let generated = match &tls.acme {
            _ if !tls.self_signed.is_empty() => vec![E::self_signed(&tls.self_signed)?],
            // Something to answer with until the CA has issued.
            Some(acme) if acme_only => vec![E::self_signed(&acme.domains)?],
            _ => Vec::new(),
        };
        let store = Store {
            listener: listener.to_string(),
            entries: ArcSwap::from_pointee(Vec::new()),
            generated,
            acquired: ArcSwapOption::empty(),
            files: Mutex::new(Vec::new()),
            placeholder: tls.acme.is_some() && acme_only,
        };
        store.reload(tls, base)?;
        Ok(store)
    }

    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// Re-reads every certificate file; on any error the current certificates stay.
    pub fn reload(&self, tls: &ListenerTls, base: Option<&Path>) -> Result<(), TlsError> {
        let mut files = Vec::with_capacity(tls.certificates.len());
        for pair in &tls.certificates {
            let (cert, key) = (
                from_config_folder(base, &pair.cert),
                from_config_folder(base, &pair.key),
            );
            files.push(E::load(&cert, &key)?);
        }
        let mut kept = self.files.lock();
        *kept = files;
        self.publish(&kept);
        Ok(())
    }

    /// Serves `issued` from the next handshake on; open connections keep theirs.
    pub fn install(&self, issued: E) {
        let files = self.files.lock();
        self.acquired.store(Some(Arc::new(issued)));
        self.publish(&files);
    }

    /// The ACME certificate, then the files', then the generated ones; `files` is held
    /// locked by the caller so that a reload and an installation never interleave.
    fn publish(&self, files: &[E]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // An expired ACME certificate does not shadow a file certificate for its names.
        let acquired = self.acquired.load_full().filter(|a| a.not_after() > now);
        let entries: Vec<E> = acquired
            .iter()
            .map(|a| E::clone(a))
            .chain(files.iter().cloned())
            .chain(self.generated.iter().cloned())
            .collect();
        // Reversed: where two answer for a name, the one served (first) sets its expiry.
        for (i, e) in entries.iter().enumerate().rev() {
            let stand_in = self.placeholder && i + self.generated.len() >= entries.len();
            let not_after = if stand_in { 0 } else { e.not_after() };
            crate::metrics::observe_certificate(&self.listener, e.names(), not_after);
        }
        self.entries.store(Arc::new(entries));
    }

    pub fn entries(&self) -> Arc<Vec<E>> {
        self.entries.load_full()
    }

    /// The certificate for `sni` (see [`pick_index`]).
    pub fn pick(&self, sni: Option<&str>) -> Option<E> {
        let entries = self.entries.load();
        let at = pick_index(entries.iter().map(|e| e.names()), sni)?;
        entries.get(at).cloned()
    }
}

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

/// The DNS and IP names of a certificate (SANs, else the CN) and its expiry as a Unix time.
pub(crate) fn describe(der: &[u8]) -> (Vec<String>, i64) {
    use x509_parser::prelude::*;
    let Ok((_, x509)) = X509Certificate::from_der(der) else {
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

/// A self-signed certificate for `names`: (certificate DER, PKCS#8 key DER).
pub(crate) fn self_signed_der(names: &[String]) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    Ok((ck.cert.der().to_vec(), ck.signing_key.serialize_der()))
}

fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(head, rest)| !head.is_empty() && rest == suffix),
        None => false,
    }
}

/// Which certificate (by index) answers `sni`: an exact name, then a wildcard; a client that
/// sends no SNI, or an unknown one, gets the first.
pub(crate) fn pick_index<'a>(
    names: impl Iterator<Item = &'a [String]> + Clone,
    sni: Option<&str>,
) -> Option<usize> {
    let first = names.clone().next().map(|_| 0);
    let Some(sni) = sni else { return first };
    let sni = sni.to_ascii_lowercase();
    names
        .clone()
        .position(|n| n.contains(&sni))
        .or_else(|| {
            names
                .clone()
                .position(|n| n.iter().any(|p| wildcard(p, &sni)))
        })
        .or(first)
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
    fn picks_exact_then_wildcard_then_first() {
        let certs = [
            vec!["a.test".to_string()],
            vec!["*.b.test".to_string()],
            vec!["c.test".to_string()],
        ];
        let names = || certs.iter().map(|v| v.as_slice());
        assert_eq!(pick_index(names(), Some("c.test")), Some(2));
        assert_eq!(pick_index(names(), Some("x.b.test")), Some(1));
        assert_eq!(pick_index(names(), Some("other")), Some(0));
        assert_eq!(pick_index(names(), None), Some(0));
    }
}
