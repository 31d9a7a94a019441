//! The config file on disk: atomic replacement and a bounded history of earlier versions.
//!
//! A write goes to a temp file in the same folder, is fsynced, renamed over the file, and the
//! folder is fsynced: after a crash at any moment the file is the old or the new version.
//! History files live in a hidden folder beside the config, so the watcher ignores them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` with `bytes` atomically, keeping the old file's mode and owner.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let old = fs::metadata(path).ok();
    let mode = old
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o640);
    let tmp = dir.join(format!(
        ".{name}.tmp.{}.{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if let Some(m) = &old {
            // Only root may give a file away; a same-owner write needs nothing.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// One kept version.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    /// `<unix-nanos>-<hash prefix>`: sortable by time, unique.
    pub version: String,
    pub hash: String,
    pub saved_at: f64,
    pub bytes: u64,
}

/// Earlier versions of the config, newest last, at most `keep`.
pub struct History {
    dir: PathBuf,
    keep: usize,
}

impl History {
    pub fn beside(config: &Path, keep: usize) -> History {
        let name = config
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "config".into());
        History {
            dir: folder(config).join(format!(".{name}.history")),
            keep,
        }
    }

    /// Keeps `text` (the raw file, placeholders intact) and prunes the oldest beyond `keep`.
    pub fn save(&self, text: &str) -> io::Result<String> {
        fs::create_dir_all(&self.dir)?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let hash = super::hash_bytes(text.as_bytes());
        let mut id = format!("{nanos:020}-{}", &hash[..12]);
        let mut n = 1;
        while self.dir.join(format!("{id}.yaml")).exists() {
            id = format!("{:020}-{}", nanos + n, &hash[..12]);
            n += 1;
        }
        write_atomic(&self.dir.join(format!("{id}.yaml")), text.as_bytes())?;
        self.prune()?;
        Ok(id)
    }

    fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = match fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".yaml")
                        .map(str::to_string)
                })
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        ids.sort();
        Ok(ids)
    }

    fn prune(&self) -> io::Result<()> {
        let ids = self.ids()?;
        let extra = ids.len().saturating_sub(self.keep);
        for id in &ids[..extra] {
            fs::remove_file(self.dir.join(format!("{id}.yaml")))?;
        }
        Ok(())
    }

    pub fn list(&self) -> io::Result<Vec<Version>> {
        let mut out = Vec::new();
        for id in self.ids()? {
            let path = self.dir.join(format!("{id}.yaml"));
            let Ok(bytes) = fs::read(&path) else { continue };
            let saved_at = id
                .split('-')
                .next()
                .and_then(|m| m.parse::<f64>().ok())
                .map(|n| n / 1e9)
                .unwrap_or_default();
            out.push(Version {
                hash: super::hash_bytes(&bytes),
                bytes: bytes.len() as u64,
                version: id,
                saved_at,
            });
        }
        Ok(out)
    }

    /// The text of a kept version; `None` for an unknown (or malformed) id.
    pub fn get(&self, id: &str) -> Option<String> {
        let safe = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !safe {
            return None;
        }
        fs::read_to_string(self.dir.join(format!("{id}.yaml"))).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.yaml");
        fs::write(&p, "a").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"b").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "b");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn history_is_bounded_and_ordered() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::beside(&dir.path().join("c.yaml"), 3);
        for i in 0..5 {
            h.save(&format!("v{i}")).unwrap();
        }
        let list = h.list().unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(h.get(&list[2].version).unwrap(), "v4");
        assert_eq!(h.get(&list[0].version).unwrap(), "v2");
        assert!(h.get("../c").is_none());
    }
}
