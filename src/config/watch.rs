//! Watching routes.yaml: the parent folder is watched (editors replace files rather than write
//! them in place), events for the file are debounced, and each settled change is signalled once.
//!
//! A file mounted from a Kubernetes ConfigMap is a symlink `routes.yaml -> ..data/routes.yaml`,
//! and an update swaps the `..data` symlink to a new timestamped folder (no event names
//! `routes.yaml`): events on the first component of the file's symlink target, and on
//! `..data`, count as changes of the file too.

use notify::{RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long events must stop before a change counts as settled.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the file watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Watches `file`; `changed` receives one message per settled change.
pub fn watch(file: &Path, changed: mpsc::Sender<()>) -> Result<FileWatch, notify::Error> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let folder = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let names = watched_names(&file);
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n))) {
            let _ = raw_tx.send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Debounce: wait until the events stop for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if changed.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(FileWatch { _watcher: watcher })
}

/// The names in the file's folder whose changes change the file: its own, the first step of its
/// symlink target when that stays in the folder, and Kubernetes' `..data`.
fn watched_names(file: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<std::ffi::OsString> = file.file_name().map(|n| n.to_os_string()).into_iter().collect();
    if let Ok(target) = std::fs::read_link(file) {
        if let Some(std::path::Component::Normal(first)) = target.components().next() {
            if target.is_relative() {
                names.push(first.to_os_string());
            }
        }
    }
    names.push("..data".into());
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// What the kubelet's atomic writer does: a new timestamped folder, a `..data_tmp` symlink
    /// to it renamed over `..data`, the old folder removed.
    fn configmap_update(dir: &Path, stamp: &str, text: &str, old: Option<&str>) {
        let data = dir.join(stamp);
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("routes.yaml"), text).unwrap();
        symlink(stamp, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }

    #[tokio::test]
    async fn a_configmap_symlink_swap_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        configmap_update(dir.path(), "..2026_11_27_10_00_00.1", "routes: []\n", None);
        symlink("..data/routes.yaml", dir.path().join("routes.yaml")).unwrap();
        let file = dir.path().join("routes.yaml");
        let (tx, mut rx) = mpsc::channel(8);
        let _watch = watch(&file, tx).unwrap();
        configmap_update(dir.path(), "..2026_11_27_10_05_00.2", "routes: [] # v2\n", Some("..2026_11_27_10_00_00.1"));
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert_eq!(got, Ok(Some(())), "the swap was seen as a change");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "routes: [] # v2\n");
        // An unrelated file in the folder is not a change.
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert!(tokio::time::timeout(DEBOUNCE * 4, rx.recv()).await.is_err());
    }
}
