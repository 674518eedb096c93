//! Labelled data capture: a sampled log of each captured answer (inputs, outputs, route,
//! variant) and of the feedback that comes back for it, as JSON Lines joined by `key` (the
//! request id's nonce and issue time). One writer thread per route writes rotating files
//! (`<route>-<start ms>.jsonl`, rotated by size or age, fsynced when closed); the request path
//! only offers a line to a bounded queue and never waits — when the writer falls behind, lines
//! are dropped and counted.

use crate::config::CaptureSpec;
use crate::protocol::Tensor;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use metrics::Counter;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A route's capture: the queue to its writer thread. The writer stops (flushing and fsyncing
/// its file) when the last handle is dropped.
#[derive(Debug)]
pub struct Capture {
    tx: Sender<Vec<u8>>,
    dropped: Counter,
    written: Counter,
    /// Acknowledges each sync marker (an empty line) once the file is flushed and fsynced.
    synced: Receiver<()>,
    /// Label rows captured, and the count at the last `labelled_data_ready`.
    pub(crate) labelled: (AtomicU64, AtomicU64),
    /// What it was started with; a new spec starts a new writer.
    pub(crate) spec: CaptureSpec,
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Capture {
    /// Creates the folder and starts the writer of `route`. `dropped` counts lines the queue
    /// had no room for, `written` lines handed to the file.
    /// `outcome(name)` makes the counter of an outcome: `dropped`, `written`, and with `post`,
    /// `posted`, `post_failed` and `post_dropped`.
    pub fn start(route: &str, spec: CaptureSpec, outcome: impl Fn(&'static str) -> Counter) -> Result<Capture, String> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| format!("cannot create {}: {e}", spec.dir.display()))?;
        let (dropped, written) = (outcome("dropped"), outcome("written"));
        let (tx, rx) = crossbeam_channel::bounded(spec.queue);
        let (ack, synced) = crossbeam_channel::bounded(1);
        let prefix = route.replace('/', "_");
        let post = match &spec.post {
            Some(url) => Some(super::capture_post::start(route, url.clone(), spec.queue, &outcome)?),
            None => None,
        };
        let (dir, p, s, w) = (spec.dir.clone(), prefix.clone(), spec.clone(), written.clone());
        std::thread::Builder::new()
            .name(format!("capture-{prefix}"))
            .spawn(move || writer(&dir, &p, &s, &rx, &w, &ack, post.as_ref()))
            .map_err(|e| format!("cannot start the capture writer: {e}"))?;
        Ok(Capture { tx, dropped, written, synced, labelled: Default::default(), spec })
    }

    /// Whether this answer is sampled (drawn once per answer) and the queue has room now. A
    /// sampled answer the queue has no room for is dropped here, and counted.
    pub fn wants(&self) -> bool {
        if rand::random::<f64>() * 100.0 >= self.spec.sample_percent {
            return false;
        }
        if self.tx.is_full() {
            self.dropped.increment(1);
            return false;
        }
        true
    }

    /// Offers a line; never waits. Lines beyond the queue are dropped and counted (`false`).
    pub fn offer(&self, line: &Value) -> bool {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        match self.tx.try_send(bytes) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.increment(1);
                false
            }
        }
    }

    /// Counts `rows` newly labelled rows (for `labelled_data_ready`).
    pub fn labelled(&self, rows: u64) {
        self.labelled.0.fetch_add(rows, Ordering::Relaxed);
    }

    /// Waits (up to `timeout`) until every line offered before the call is written, flushed
    /// and fsynced: what a shutdown calls so that no accepted line is lost. Blocking.
    pub fn sync(&self, timeout: Duration) -> bool {
        while self.synced.try_recv().is_ok() {}
        self.tx.send_timeout(Vec::new(), timeout).is_ok() && self.synced.recv_timeout(timeout).is_ok()
    }

    /// The line of an answer: `key` is the request id's first two fields (nonce~issued).
    pub fn answer_line(request_id: &str, route: &str, variant: &str, inputs: &[Tensor], outputs: &[Tensor]) -> Value {
        json!({
            "type": "answer",
            "key": key_of(request_id),
            "at_ms": now_ms(),
            "route": route,
            "variant": variant,
            "inputs": inputs.iter().map(tensor_json).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(tensor_json).collect::<Vec<_>>(),
        })
    }

    /// The line of feedback on an answer whose request id had `nonce` and `issued`.
    pub fn feedback_line(nonce: u64, issued: u64, feedback: Value) -> Value {
        json!({ "type": "feedback", "key": format!("{nonce:016x}~{issued}"), "at_ms": now_ms(), "feedback": feedback })
    }

    /// Lines written so far (for tests).
    pub fn written(&self) -> &Counter {
        &self.written
    }
}

fn key_of(request_id: &str) -> String {
    request_id.splitn(3, '~').take(2).collect::<Vec<_>>().join("~")
}

fn tensor_json(t: &Tensor) -> Value {
    let data = t.data.numbers().map(|(_, v)| v);
    json!({ "name": t.name, "datatype": t.data.datatype().as_str(), "shape": t.shape, "data": data })
}

struct Open {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    bytes: u64,
    opened: Instant,
}

fn open(dir: &Path, prefix: &str) -> Option<Open> {
    let path = dir.join(format!("{prefix}-{}.jsonl", now_ms()));
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(f) => Some(Open { file: std::io::BufWriter::new(f), path, bytes: 0, opened: Instant::now() }),
        Err(e) => {
            tracing::warn!(path = %path.display(), "capture file cannot be opened: {e}");
            None
        }
    }
}

fn close(open: Open) {
    let path = open.path.clone();
    let done = open.file.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all());
    if let Err(e) = done {
        tracing::warn!(path = %path.display(), "capture file not closed cleanly: {e}");
    }
}

/// The writer: lines to the current file, flushed whenever the queue is empty, rotated (and
/// fsynced) by size and age; ends when every sender is gone.
fn writer(
    dir: &Path,
    prefix: &str,
    spec: &CaptureSpec,
    rx: &Receiver<Vec<u8>>,
    written: &Counter,
    ack: &Sender<()>,
    post: Option<&super::capture_post::Poster>,
) {
    let mut current: Option<Open> = None;
    loop {
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let due =
            current.as_ref().is_some_and(|o| o.bytes >= spec.max_file_bytes || o.opened.elapsed() >= spec.max_file_age);
        if due {
            if let Some(o) = current.take() {
                close(o);
            }
        }
        if line.as_ref().is_some_and(Vec::is_empty) {
            // A sync marker: everything before it reaches the disk, then it is acknowledged.
            if let Some(o) = current.as_mut() {
                let done = o.file.flush().and_then(|()| o.file.get_ref().sync_data());
                if let Err(e) = done {
                    tracing::warn!(path = %o.path.display(), "capture file not synced: {e}");
                }
            }
            let _ = ack.try_send(());
            continue;
        }
        if let Some(line) = line {
            if current.is_none() {
                current = open(dir, prefix);
            }
            if let Some(o) = current.as_mut() {
                match o.file.write_all(&line) {
                    Ok(()) => {
                        o.bytes += line.len() as u64;
                        written.increment(1);
                        if let Some(p) = post {
                            p.offer(line);
                        }
                    }
                    Err(e) => tracing::warn!(path = %o.path.display(), "capture line lost: {e}"),
                }
            }
        }
        if rx.is_empty() {
            if let Some(o) = current.as_mut() {
                let _ = o.file.flush();
            }
        }
    }
    if let Some(o) = current.take() {
        close(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, max_file_bytes: u64) -> CaptureSpec {
        let yaml = format!(
            "backends:\n  - name: up\n    upstream: {{url: \"http://127.0.0.1:9\"}}\nroutes:\n  - model: m\n    \
             backend: up\n    capture: {{dir: {}, max_file_bytes: {max_file_bytes}, queue: 2}}\n",
            dir.display()
        );
        let config = crate::config::Config::parse(&yaml, Path::new("r.yaml")).unwrap();
        config.routes[0].capture.clone().unwrap()
    }

    #[test]
    fn a_writer_that_falls_behind_costs_dropped_lines_not_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // A queue nobody reads: what a stalled disk looks like from the request path.
        let (tx, _rx) = crossbeam_channel::bounded(2);
        let (_ack, synced) = crossbeam_channel::bounded(1);
        let c = Capture {
            tx,
            dropped: Counter::noop(),
            written: Counter::noop(),
            synced,
            labelled: Default::default(),
            spec: spec(dir.path(), 4096),
        };
        let taken: Vec<bool> = (0..5).map(|i| c.offer(&json!({ "i": i }))).collect();
        assert_eq!(taken, [true, true, false, false, false]);
        assert!(!c.wants(), "a full queue is not sampled");
    }

    #[test]
    fn files_rotate_by_size_and_every_line_is_whole_json() {
        let dir = tempfile::tempdir().unwrap();
        let c = Capture::start("m", spec(dir.path(), 1024), |_| Counter::noop()).unwrap();
        let mut sent = 0;
        while sent < 40 {
            if c.offer(&json!({ "i": sent, "pad": "x".repeat(100) })) {
                sent += 1;
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(c); // the writer drains, closes and fsyncs its file
        let started = Instant::now();
        loop {
            let mut lines = 0;
            let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
            for f in &files {
                for line in std::fs::read_to_string(f).unwrap().lines() {
                    serde_json::from_str::<Value>(line).unwrap();
                    lines += 1;
                }
            }
            if lines == 40 {
                assert!(files.len() >= 4, "1 KiB files: {} of them", files.len());
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "{lines} lines of 40 written");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
