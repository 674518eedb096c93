//! Watching routes.yaml: the parent folder is watched (editors replace files rather than write
//! them in place), events for the file are debounced, and each settled change is signalled once.

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
    let name = file.file_name().map(|n| n.to_os_string());
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name) {
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
