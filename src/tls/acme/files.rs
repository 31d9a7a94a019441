//! What ACME keeps under `server.state_dir`: one account per directory URL and one
//! certificate per listener's set of domains, each file 0600 in folders 0700, written
//! whole (a temporary file renamed over the old one) so that a crash never leaves half a key.
//!
//! ```text
//! state_dir/acme/accounts/<sha256(directory)[..16]>.json
//! state_dir/acme/certificates/<first domain>-<sha256(directory, domains)[..16]>/{cert,key}.pem
//! ```

use crate::config::AcmeConfig;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The files of one listener's ACME certificate and of its account.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) account: PathBuf,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

impl Files {
    pub(super) fn new(state_dir: &Path, acme: &AcmeConfig) -> Files {
        let root = state_dir.join("acme");
        let account = root
            .join("accounts")
            .join(format!("{}.json", short_hash([acme.directory.as_str()])));
        let names =
            std::iter::once(acme.directory.as_str()).chain(acme.domains.iter().map(String::as_str));
        let first = acme.domains.first().map_or("none", String::as_str);
        let folder = root
            .join("certificates")
            .join(format!("{first}-{}", short_hash(names)));
        Files {
            account,
            cert: folder.join("cert.pem"),
            key: folder.join("key.pem"),
        }
    }

    /// The stored certificate chain and key, if both are there.
    pub(super) fn read_certificate(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&self.cert).ok()?,
            std::fs::read(&self.key).ok()?,
        ))
    }

    /// Key first; a crash between the two leaves a pair that does not match, which
    /// [`super::Managed`] refuses to serve and orders anew.
    pub(super) fn write_certificate(&self, chain: &[u8], key: &[u8]) -> std::io::Result<()> {
        write_private(&self.key, key)?;
        write_private(&self.cert, chain)
    }
}

fn short_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// Writes `bytes` to `path` readable by the owner only, replacing it whole. The temporary
/// file is made anew (`create_new` neither follows a planted symlink nor keeps an old
/// file's mode), and the folder is synced so that the rename survives a crash.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Whether the state folder can be made and written, checked at start: an account created
/// at the CA but not kept would be created again at every try, and a certificate not kept
/// ordered again at every restart (public CAs limit both).
pub(super) fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".write-probe");
    write_private(&probe, b"")?;
    std::fs::remove_file(probe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn acme(domains: &[&str]) -> AcmeConfig {
        serde_yaml::from_str(&format!("domains: {domains:?}")).unwrap()
    }

    #[test]
    fn files_are_owner_only_and_named_by_their_domains() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files::new(dir.path(), &acme(&["a.test", "b.test"]));
        assert!(files
            .cert
            .to_str()
            .unwrap()
            .contains("/certificates/a.test-"));
        assert_ne!(files.cert, Files::new(dir.path(), &acme(&["a.test"])).cert);
        files.write_certificate(b"chain", b"key").unwrap();
        assert_eq!(
            files.read_certificate().unwrap(),
            (b"chain".to_vec(), b"key".to_vec())
        );
        for f in [&files.cert, &files.key] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        let folder = std::fs::metadata(files.cert.parent().unwrap()).unwrap();
        assert_eq!(folder.permissions().mode() & 0o777, 0o700);
    }
}
