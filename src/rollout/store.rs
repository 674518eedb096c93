//! Persisted rollout status: written atomically (temp file, fsync, rename, fsync of the folder)
//! so a crash at any moment leaves either the old file or the new one, never a torn one.

use super::status::RouteStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file in the state folder.
pub const STATUS_FILE: &str = "status.json";
/// Statuses of revisions that were replaced, one JSON object per line.
pub const HISTORY_FILE: &str = "history.jsonl";

/// A route's status with the spec revision it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// The route's revision (see [`super::revision`]).
    pub revision: String,
    /// The status.
    pub status: RouteStatus,
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store in `dir` (made when missing).
    pub fn new(dir: &Path) -> std::io::Result<Store> {
        fs::create_dir_all(dir)?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Statuses by route, as last saved; empty when there is no file yet.
    pub fn load(&self) -> Result<BTreeMap<String, Saved>, String> {
        let path = self.dir.join(STATUS_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{} is not a status file: {e}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Replaces the status file atomically.
    pub fn save(&self, all: &BTreeMap<String, Saved>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(all).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(format!("{STATUS_FILE}.tmp")), &self.dir.join(STATUS_FILE), &bytes)
    }

    /// Appends a replaced revision's status to the history.
    pub fn archive(&self, route: &str, saved: &Saved) -> std::io::Result<()> {
        let mut f = OpenOptions::new().create(true).append(true).open(self.dir.join(HISTORY_FILE))?;
        let line = serde_json::json!({ "route": route, "revision": saved.revision, "status": saved.status });
        writeln!(f, "{line}")?;
        f.sync_all()
    }
}

/// Writes `bytes` to `path` (created or truncated) and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `target` atomically: `bytes` written and fsynced to `tmp` (in the same folder),
/// renamed over `target`, then the folder fsynced, so a crash leaves the old file or the new one.
pub fn write_atomic(tmp: &Path, target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_synced(tmp, bytes)?;
    fs::rename(tmp, target)?;
    File::open(target.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("state")).unwrap();
        assert!(store.load().unwrap().is_empty());
        let mut all = BTreeMap::new();
        all.insert("r".to_string(), Saved { revision: "abc".into(), status: RouteStatus::default() });
        store.save(&all).unwrap();
        assert_eq!(store.load().unwrap(), all);
        assert!(!store.dir().join("status.json.tmp").exists());
        store.archive("r", &all["r"]).unwrap();
        assert_eq!(fs::read_to_string(store.dir().join(HISTORY_FILE)).unwrap().lines().count(), 1);
        fs::write(store.dir().join(STATUS_FILE), "{torn").unwrap();
        assert!(store.load().unwrap_err().contains("is not a status file"));
    }
}
