//! Saving rollout status off the async threads: one writer task takes snapshots in order,
//! writes the newest (temp file, fsync, rename) on the blocking pool, appends replaced
//! revisions to the history, and tells waiters which snapshot is on disk.

use super::store::{Saved, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// One save: every route's status, and statuses of revisions replaced since the last save.
#[derive(Debug)]
struct Job {
    ticket: u64,
    all: BTreeMap<String, Saved>,
    archive: Vec<(String, Saved)>,
}

/// The status writer of a state folder.
#[derive(Debug)]
pub struct Persister {
    jobs: mpsc::UnboundedSender<Job>,
    next: Mutex<u64>,
    saved: watch::Receiver<u64>,
    error: Arc<Mutex<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Persister {
    /// Starts the writer task for `store` (needs a tokio runtime).
    pub fn start(store: Store) -> Persister {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (done, saved) = watch::channel(0u64);
        let error = Arc::new(Mutex::new(None));
        let (writer, shown) = (store.clone(), error.clone());
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Everything queued by now: archive it all, write only the newest snapshot.
                let mut job = first;
                let mut archive = std::mem::take(&mut job.archive);
                while let Ok(mut next) = rx.try_recv() {
                    archive.append(&mut next.archive);
                    job = next;
                }
                let (store, ticket, all) = (writer.clone(), job.ticket, job.all);
                let result = tokio::task::spawn_blocking(move || {
                    for (route, old) in &archive {
                        store.archive(route, old)?;
                    }
                    store.save(&all)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                let mut err = lock(&shown);
                match result {
                    Ok(()) => *err = None,
                    Err(e) => {
                        let message = format!("cannot save rollout status in {}: {e}", writer.dir().display());
                        if err.as_deref() != Some(message.as_str()) {
                            tracing::error!("{message}; serving goes on, status changes are kept in memory");
                        }
                        *err = Some(message);
                    }
                }
                drop(err);
                done.send_replace(ticket);
            }
        });
        Persister { jobs, next: Mutex::new(0), saved, error }
    }

    /// Queues a save; returns its ticket for [`Persister::saved`]. Never blocks.
    pub fn save(&self, all: BTreeMap<String, Saved>, archive: Vec<(String, Saved)>) -> u64 {
        let mut next = lock(&self.next);
        *next += 1;
        let ticket = *next;
        // Sent under the counter's lock, so tickets reach the writer in order.
        let _ = self.jobs.send(Job { ticket, all, archive });
        ticket
    }

    /// Returns once the save with `ticket` (or a later one) was attempted.
    pub async fn saved(&self, ticket: u64) {
        let mut rx = self.saved.clone();
        let _ = rx.wait_for(|done| *done >= ticket).await;
    }

    /// The last save's error, if it failed.
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }
}
