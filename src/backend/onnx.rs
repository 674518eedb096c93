//! In-process ONNX models: a pool of ORT sessions, each owned by one dedicated worker thread.
//!
//! ORT's `Session::run` takes `&mut self` and blocks, so async callers queue a [`Job`] and await
//! a oneshot reply from a session's worker. The one exception is a run cheaper than the hand-off
//! itself (see [`super::inline`]): with a session free and nothing queued, the caller runs it.
//! Dropping the backend closes the queue; workers finish what is queued, then exit.

use super::batch::{self, Batchable, Load};
use super::inline::RunCost;
use super::ort_io::{run, signature};
use crate::config::Batching;
use crate::config::OnnxSpec;
use crate::protocol::{Signature, Tensor, TensorData};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ort::environment::Environment;
use ort::session::Session;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why an inference did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// Every session is busy and the queue is full.
    #[error("model {model:?} is overloaded: {queued} requests are already waiting")]
    Overloaded {
        /// Backend name.
        model: String,
        /// Queue capacity.
        queued: usize,
    },
    /// The request waited for a session longer than `queue_timeout`.
    #[error("model {model:?} is overloaded: the request waited more than {waited:?} for a session")]
    QueueTimeout {
        /// Backend name.
        model: String,
        /// The queue timeout.
        waited: std::time::Duration,
    },
    /// ONNX Runtime refused the inputs.
    #[error("model {model:?} refused the inputs: {message}")]
    Invalid {
        /// Backend name.
        model: String,
        /// ORT's message.
        message: String,
    },
    /// ONNX Runtime failed while running.
    #[error("model {model:?} failed: {message}")]
    Failed {
        /// Backend name.
        model: String,
        /// ORT's message.
        message: String,
    },
}

/// What a model run gives a request: its outputs, and how many requests shared the run.
pub type Ran = (Vec<Tensor>, usize);

struct Job {
    inputs: Vec<Tensor>,
    outputs: Option<Vec<String>>,
    reply: oneshot::Sender<Result<Ran, InferError>>,
    queued: Instant,
    /// Past `queued + waited`, the job is answered `QueueTimeout` instead of run.
    waited: Duration,
    model: Arc<str>,
}

impl Batchable for Job {
    fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }

    fn outputs(&self) -> Option<&[String]> {
        self.outputs.as_deref()
    }

    fn queued(&self) -> Instant {
        self.queued
    }

    fn usable(&mut self) -> bool {
        if self.reply.is_closed() {
            return false; // the caller gave up (timeout, disconnect): don't spend a session on it
        }
        if self.queued.elapsed() > self.waited {
            // Shed: late answers help no one, and running them makes everyone later.
            let (model, waited) = (self.model.to_string(), self.waited);
            let (dead, _) = oneshot::channel();
            let _ = std::mem::replace(&mut self.reply, dead).send(Err(InferError::QueueTimeout { model, waited }));
            return false;
        }
        true
    }
}

/// A loaded, warmed-up ONNX model with its worker pool.
pub struct OnnxBackend {
    name: Arc<str>,
    signature: Signature,
    jobs: Sender<Job>,
    queue: usize,
    queue_timeout: std::time::Duration,
    workers: Workers,
    released: tokio::sync::watch::Receiver<bool>,
    load: Arc<Load>,
    /// Every session, each locked by whoever runs it: its worker, or a caller running inline.
    sessions: Vec<Arc<Mutex<Session>>>,
    /// The recent run time per row; `None` with batching (whose runs must be queued to meet).
    cost: Option<Arc<RunCost>>,
    /// Runs made on the caller's thread.
    inline_runs: std::sync::atomic::AtomicU64,
}

/// The worker threads' handles, shared with whoever waits for the model to unload.
type Workers = std::sync::Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>;

/// Waits for a dropped model's sessions to be released and its worker threads to end.
#[derive(Debug)]
pub struct Unloading {
    released: tokio::sync::watch::Receiver<bool>,
    workers: Workers,
}

impl Unloading {
    /// Returns `true` once every worker has finished and exited, `false` if that took longer
    /// than `limit` (the model then unloads when its last request ends). Call it after the last
    /// holder of the backend let go of it.
    pub async fn wait(mut self, limit: std::time::Duration) -> bool {
        if tokio::time::timeout(limit, self.released.wait_for(|done| *done)).await.is_err() {
            return false;
        }
        // Released: the threads are past their last job; joining them takes no time.
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        tokio::task::spawn_blocking(move || {
            for h in handles {
                let _ = h.join();
            }
        })
        .await
        .is_ok()
    }
}

/// Held by every worker thread; when the last one exits (its session dropped), it says so.
struct Released(tokio::sync::watch::Sender<bool>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

impl std::fmt::Debug for OnnxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxBackend").field("name", &self.name).finish_non_exhaustive()
    }
}

impl OnnxBackend {
    /// Loads `spec.sessions` sessions, reads the signature, runs one warm-up inference on each
    /// session and starts the workers. Blocking: call it off the async threads.
    pub fn load(name: &str, spec: &OnnxSpec, env: &Environment) -> Result<OnnxBackend, String> {
        let mut sessions = Vec::with_capacity(spec.sessions);
        for _ in 0..spec.sessions {
            sessions.push(build_session(spec, env)?);
        }
        let signature = signature(&sessions[0])?;
        if spec.batching.is_some() {
            batchable(&signature)?;
        }
        let warmup = warmup_inputs(&signature);
        let mut fastest = Duration::MAX;
        for session in &mut sessions {
            let started = Instant::now();
            run(session, name, warmup.clone(), None).map_err(|e| format!("warm-up inference failed: {e}"))?;
            fastest = fastest.min(started.elapsed());
        }
        // The fastest warm-up run is the first estimate of what a run costs (a cold first run
        // overestimates it; the runs that follow correct it).
        let cost = match spec.batching {
            Some(_) => None,
            None => Some(Arc::new(RunCost::new(batch::rows(&warmup), fastest))),
        };
        let sessions: Vec<_> = sessions.into_iter().map(|s| Arc::new(Mutex::new(s))).collect();
        let (jobs, rx) = crossbeam_channel::bounded::<Job>(spec.queue);
        let batching = spec.batching;
        let load = Arc::new(Load::new(spec.sessions));
        let mut workers = Vec::with_capacity(sessions.len());
        let (tx, released) = tokio::sync::watch::channel(false);
        let signal = std::sync::Arc::new(Released(tx));
        for (i, session) in sessions.iter().enumerate() {
            let rx = rx.clone();
            let model = name.to_string();
            let signal = signal.clone();
            let load = load.clone();
            let (session, cost) = (session.clone(), cost.clone());
            let handle = std::thread::Builder::new()
                .name(format!("onnx-{name}-{i}"))
                .spawn(move || {
                    worker(&session, &model, rx, batching, &load, cost.as_deref());
                    // The session is released before the signal says so.
                    drop(session);
                    drop(signal);
                })
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            workers.push(handle);
        }
        Ok(OnnxBackend {
            name: name.into(),
            signature,
            jobs,
            queue: spec.queue,
            queue_timeout: spec.queue_timeout,
            workers: std::sync::Arc::new(std::sync::Mutex::new(workers)),
            released,
            load,
            sessions,
            cost,
            inline_runs: Default::default(),
        })
    }

    /// What to await, after dropping the backend, until its sessions are released and its
    /// worker threads have ended (its queue closes when the last holder drops it). Awaited by
    /// notification, not polling.
    pub fn unloading(&self) -> Unloading {
        Unloading { released: self.released.clone(), workers: self.workers.clone() }
    }

    /// Closes the queue, lets the workers finish what is queued, and waits until every session
    /// is released. Blocking: call it off the async threads. (Dropping the backend does the
    /// same without waiting.)
    pub fn shutdown(self) {
        let OnnxBackend { jobs, workers, .. } = self;
        drop(jobs);
        let handles = std::mem::take(&mut *workers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for w in handles {
            let _ = w.join();
        }
    }

    /// Sessions now held by a run (tests).
    #[cfg(test)]
    pub(crate) fn sessions_busy(&self) -> usize {
        self.sessions.iter().filter(|s| s.try_lock().is_err()).count()
    }

    /// Sets the run cost estimate per row (tests).
    #[cfg(test)]
    pub(crate) fn assume_run_cost(&self, per_row: Duration) {
        if let Some(cost) = &self.cost {
            cost.assume(per_row);
        }
    }

    /// How many runs were made on the caller's thread (cheap, a session free, nothing queued).
    pub fn inline_runs(&self) -> u64 {
        self.inline_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the model takes and gives.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs the model on a worker thread. `inputs` must already fit the signature, in its order;
    /// `outputs` selects outputs by name (all when `None`). With batching, the run may be shared
    /// with other requests: the answer says with how many.
    pub async fn infer(&self, inputs: Vec<Tensor>, outputs: Option<Vec<String>>) -> Result<Ran, InferError> {
        let _counted = Outstanding::new(&self.load);
        let rows = batch::rows(&inputs);
        // Only with nothing queued: a run taken inline would overtake a queued request.
        if let Some(cost) = self.cost.as_deref().filter(|c| self.jobs.is_empty() && c.cheap(rows)) {
            if let Some(mut session) = self.sessions.iter().find_map(|s| s.try_lock().ok()) {
                let result = run_timed(&mut session, &self.name, inputs, outputs.as_deref(), Some(cost));
                drop(session);
                self.inline_runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return result;
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            inputs,
            outputs,
            reply,
            queued: Instant::now(),
            waited: self.queue_timeout,
            model: self.name.clone(),
        };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) | TrySendError::Disconnected(_) => {
                InferError::Overloaded { model: self.name.to_string(), queued: self.queue }
            }
        })?;
        answer.await.unwrap_or_else(|_| {
            Err(InferError::Failed { model: self.name.to_string(), message: "worker thread stopped".into() })
        })
    }
}

/// The spec of one plain session of the model in `path` (one thread, no queue to speak of).
fn single_session(path: &std::path::Path) -> OnnxSpec {
    OnnxSpec {
        path: path.to_path_buf(),
        sha256: String::new(),
        sessions: 1,
        intra_op_threads: 1,
        queue: 1,
        queue_timeout: std::time::Duration::from_secs(1),
        batching: None,
        profile: None,
        registry: None,
    }
}

/// What the model in `path` takes and gives, read from one session (no warm-up, no workers).
/// Blocking: call it off the async threads.
pub fn read_signature(path: &std::path::Path, env: &Environment) -> Result<Signature, String> {
    signature(&build_session(&single_session(path), env)?)
}

fn build_session(spec: &OnnxSpec, env: &Environment) -> Result<Session, String> {
    let err = |e: ort::Error<_>| format!("cannot configure ONNX Runtime session: {e}");
    Session::builder(env)
        .map_err(|e| format!("cannot create ONNX Runtime session: {e}"))?
        .with_intra_threads(spec.intra_op_threads)
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)?
        .with_intra_op_spinning(false)
        .map_err(err)?
        .with_inter_op_spinning(false)
        .map_err(err)?
        .commit_from_file(&spec.path)
        .map_err(|e| format!("cannot load model {}: {e}", spec.path.display()))
}

/// Zeros for every input, dynamic dimensions set to 1.
pub(crate) fn warmup_inputs(sig: &Signature) -> Vec<Tensor> {
    sig.inputs
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s.shape.iter().map(|&d| if d < 0 { 1 } else { d as usize }).collect();
            Tensor { name: s.name.clone(), data: TensorData::zeros(s.datatype, shape.iter().product()), shape }
        })
        .collect()
}

/// Counts a request as outstanding on its model for as long as its caller waits.
struct Outstanding<'a> {
    load: &'a Load,
}

impl<'a> Outstanding<'a> {
    fn new(load: &'a Load) -> Self {
        load.outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Outstanding { load }
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.load.outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Batching needs every input and output to have a free first (batch) dimension.
fn batchable(sig: &Signature) -> Result<(), String> {
    let fixed = sig.inputs.iter().chain(&sig.outputs).find(|t| t.shape.first() != Some(&-1));
    match fixed {
        None => Ok(()),
        Some(t) => Err(format!(
            "batching needs every input and output to have a free first (batch) dimension, and {:?} has shape \
             {:?}: remove `batching:` from this backend, or export the model with a dynamic batch axis",
            t.name, t.shape
        )),
    }
}

fn worker(
    session: &Mutex<Session>,
    model: &str,
    jobs: Receiver<Job>,
    batching: Option<Batching>,
    load: &Load,
    cost: Option<&RunCost>,
) {
    debug_assert!(tokio::runtime::Handle::try_current().is_err(), "ONNX workers must not run inside a tokio runtime");
    let mut next: Option<Job> = None;
    loop {
        let mut job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        if !job.usable() {
            continue;
        }
        let Some(limit) = batching else {
            let result = run_timed(
                &mut session.lock().unwrap_or_else(PoisonError::into_inner),
                model,
                job.inputs,
                job.outputs.as_deref(),
                cost,
            );
            let _ = job.reply.send(result);
            continue;
        };
        let (batch, rest) = batch::gather(job, &jobs, limit, load);
        next = rest;
        run_batch(&mut session.lock().unwrap_or_else(PoisonError::into_inner), model, batch);
    }
    tracing::debug!(model, "onnx worker stopped");
}

/// One unbatched run; its time per row goes into the model's estimate.
fn run_timed(
    session: &mut Session,
    model: &str,
    inputs: Vec<Tensor>,
    outputs: Option<&[String]>,
    cost: Option<&RunCost>,
) -> Result<Ran, InferError> {
    let rows = batch::rows(&inputs);
    let started = Instant::now();
    let result = run(session, model, inputs, outputs);
    if let Some(cost) = cost {
        cost.observe(rows, started.elapsed());
    }
    result.map(|outputs| (outputs, 1))
}

/// Runs a gathered batch as one run and answers each request with its rows; when the run fails
/// or its outputs cannot be split, runs each request on its own.
fn run_batch(session: &mut Session, model: &str, batch: Vec<Job>) {
    let n = batch.len();
    if n > 1 {
        let rows: Vec<usize> = batch.iter().map(|job| batch::rows(&job.inputs)).collect();
        let inputs = batch::concat(&batch);
        if let Ok(outputs) = run(session, model, inputs, batch[0].outputs.as_deref()) {
            if let Some(answers) = batch::split(outputs, &rows) {
                for (job, outputs) in batch.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok((outputs, n)));
                }
                return;
            }
        }
    }
    for job in batch {
        let result = run(session, model, job.inputs, job.outputs.as_deref());
        let _ = job.reply.send(result.map(|outputs| (outputs, 1)));
    }
}

/// Runs `model` on zero inputs (dynamic dimensions 1) in a tight loop on `threads` threads for
/// `seconds`, one session each; returns the runs made. No HTTP, no JSON, no queue: what
/// in-process inference costs at the least.
pub fn bench(model: &std::path::Path, library: &std::path::Path, threads: usize, seconds: u64) -> Result<u64, String> {
    let env = super::runtime::environment(library).map_err(|e| e.to_string())?;
    let spec = single_session(model);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (spec, env) = (spec.clone(), env.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut session = build_session(&spec, &env)?;
                let inputs = warmup_inputs(&signature(&session)?);
                let mut runs = 0u64;
                while std::time::Instant::now() < deadline {
                    run(&mut session, "bench", inputs.clone(), None).map_err(|e| e.to_string())?;
                    runs += 1;
                }
                Ok(runs)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().map_err(|_| "bench thread panicked".to_string())??;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataType, TensorSpec};

    #[test]
    fn batching_needs_a_free_first_dimension_everywhere() {
        let spec = |name: &str, shape: Vec<i64>| TensorSpec { name: name.into(), datatype: DataType::Fp32, shape };
        let free = Signature { inputs: vec![spec("x", vec![-1, 4])], outputs: vec![spec("y", vec![-1])] };
        assert!(batchable(&free).is_ok());
        let fixed = Signature { inputs: vec![spec("x", vec![-1, 4])], outputs: vec![spec("y", vec![1, 3])] };
        let e = batchable(&fixed).unwrap_err();
        assert!(e.contains("\"y\" has shape [1, 3]") && e.contains("remove `batching:`"), "{e}");
    }
}
