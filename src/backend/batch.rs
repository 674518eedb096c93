//! Dynamic batching for in-process models, like Triton's dynamic batcher: a session's worker
//! gathers queued requests of compatible shape (same outputs asked for, same datatypes and
//! same dimensions after the first) into one ONNX Runtime run, concatenated along the first
//! (batch) dimension, and splits the outputs back by rows.
//!
//! A batch takes what is queued, up to `max_batch_size` rows; a request that does not fit
//! starts the next batch. While the model's other sessions run, requests queue up and make the
//! next batch by themselves: that, not waiting, is what fills batches under load. So a batch
//! waits for more only when its session is the model's only one (with more requests in hand
//! than it holds, and at most until its first request has waited `max_queue_delay`). With two
//! or more sessions it never waits: another session is either free — it would take the next
//! request at once, and two batches waiting on each other both sit out the whole delay — or
//! running, and then, on a CPU, the waiting session is a core that does no inference while the
//! queue fills anyway (measured on the batching benchmark: waiting for a running session cost
//! 12–20% of the requests/s at 16 and 64 connections, for batches no larger).
//! A run that fails is retried one request at a time, so that one request's bad input fails
//! only that request.

use crate::config::Batching;
use crate::protocol::{Tensor, TensorData};
use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a model's workers know of its load, for deciding whether a batch should wait.
#[derive(Debug)]
pub(crate) struct Load {
    /// Requests handed to the model and not yet answered (queued or running).
    pub outstanding: AtomicUsize,
    /// Sessions of the model (one worker each).
    sessions: usize,
}

impl Load {
    /// The load of a model with `sessions` workers.
    pub fn new(sessions: usize) -> Load {
        Load { outstanding: AtomicUsize::new(0), sessions }
    }

    /// Whether a batch of `gathered` requests should wait for more: its session is the only
    /// one, and requests are in hand that are not in the batch.
    fn worth_waiting(&self, gathered: usize) -> bool {
        self.sessions == 1 && self.outstanding.load(Ordering::Relaxed) > gathered
    }
}

/// How long a waiting batch sleeps between looks at the load (a request arriving wakes it).
const LOOK: Duration = Duration::from_micros(200);

/// What the worker needs to know of a queued request to batch it.
pub(super) trait Batchable {
    /// The inputs, in the model's order.
    fn inputs(&self) -> &[Tensor];
    /// The outputs asked for (all when `None`).
    fn outputs(&self) -> Option<&[String]>;
    /// When it was queued.
    fn queued(&self) -> Instant;
    /// Whether it is still worth running (its caller waits and its deadline has not passed);
    /// answering the ones that are not is the caller's business.
    fn usable(&mut self) -> bool;
}

/// Rows of a request: the first dimension of its first input.
pub(super) fn rows(inputs: &[Tensor]) -> usize {
    inputs.first().and_then(|t| t.shape.first().copied()).unwrap_or(1)
}

/// Whether `job` can share a run with `first`.
fn fits<J: Batchable>(first: &J, job: &J) -> bool {
    first.outputs() == job.outputs()
        && first.inputs().len() == job.inputs().len()
        && first.inputs().iter().zip(job.inputs()).all(|(a, b)| {
            a.name == b.name
                && a.data.datatype() == b.data.datatype()
                && a.shape.len() == b.shape.len()
                && a.shape.get(1..) == b.shape.get(1..)
        })
}

/// Gathers a batch that starts with `first`: queued requests that fit, up to `limit` rows,
/// waiting for more until `first` has waited `max_queue_delay`. Returns the batch and the
/// request that did not fit (the next batch's first), if any.
pub(super) fn gather<J: Batchable>(first: J, jobs: &Receiver<J>, limit: Batching, load: &Load) -> (Vec<J>, Option<J>) {
    let until = first.queued() + limit.max_queue_delay;
    let mut total = rows(first.inputs());
    let mut batch = vec![first];
    while total < limit.max_batch_size {
        let mut next = jobs.try_recv().ok();
        while next.is_none() && Instant::now() < until && load.worth_waiting(batch.len()) {
            next = jobs.recv_deadline(until.min(Instant::now() + LOOK)).ok();
        }
        let Some(mut job) = next else { break };
        if !job.usable() {
            continue;
        }
        let n = rows(job.inputs());
        if total + n > limit.max_batch_size || !fits(&batch[0], &job) {
            return (batch, Some(job));
        }
        total += n;
        batch.push(job);
    }
    (batch, None)
}

/// The batch's inputs concatenated along the first dimension (a copy: the requests keep theirs,
/// for a retry one by one).
pub(super) fn concat<J: Batchable>(batch: &[J]) -> Vec<Tensor> {
    let first = batch[0].inputs();
    (0..first.len())
        .map(|i| {
            let parts: Vec<&Tensor> = batch.iter().map(|j| &j.inputs()[i]).collect();
            let mut shape = parts[0].shape.clone();
            if let Some(d) = shape.first_mut() {
                *d = parts.iter().map(|t| t.shape.first().copied().unwrap_or(1)).sum();
            }
            Tensor { name: parts[0].name.clone(), shape, data: join(&parts) }
        })
        .collect()
}

macro_rules! each_variant {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => TensorData::Bool($body),
            TensorData::Uint8($v) => TensorData::Uint8($body),
            TensorData::Int8($v) => TensorData::Int8($body),
            TensorData::Int16($v) => TensorData::Int16($body),
            TensorData::Int32($v) => TensorData::Int32($body),
            TensorData::Int64($v) => TensorData::Int64($body),
            TensorData::Fp32($v) => TensorData::Fp32($body),
            TensorData::Fp64($v) => TensorData::Fp64($body),
            TensorData::Fp16($v) => TensorData::Fp16($body),
            TensorData::Bf16($v) => TensorData::Bf16($body),
            TensorData::Bytes($v) => TensorData::Bytes($body),
        }
    };
}

/// The elements of `parts` (all of one datatype, checked by [`fits`]) one after the other.
fn join(parts: &[&Tensor]) -> TensorData {
    let total: usize = parts.iter().map(|t| t.data.len()).sum();
    each_variant!(&parts[0].data, first => {
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(first);
        for t in &parts[1..] {
            if let Some(more) = same_variant(first, &t.data) {
                all.extend_from_slice(more);
            }
        }
        all
    })
}

/// `data`'s elements when it is the same variant as `like`.
fn same_variant<'a, T: 'static>(_like: &[T], data: &'a TensorData) -> Option<&'a [T]> {
    let any: &dyn std::any::Any = match data {
        TensorData::Bool(v) => v,
        TensorData::Uint8(v) => v,
        TensorData::Int8(v) => v,
        TensorData::Int16(v) => v,
        TensorData::Int32(v) => v,
        TensorData::Int64(v) => v,
        TensorData::Fp32(v) => v,
        TensorData::Fp64(v) => v,
        TensorData::Fp16(v) => v,
        TensorData::Bf16(v) => v,
        TensorData::Bytes(v) => v,
    };
    any.downcast_ref::<Vec<T>>().map(Vec::as_slice)
}

/// Splits a batched run's outputs back into one answer per request of `rows` rows each.
/// `None` when an output's first dimension is not the batch's rows (a model whose outputs do
/// not follow the batch dimension cannot be split; its requests then run one by one).
pub(super) fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut answers: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for t in outputs {
        if t.shape.first() != Some(&total) || total == 0 {
            return None;
        }
        let per_row = t.data.len() / total;
        let mut start = 0;
        for (answer, &n) in answers.iter_mut().zip(rows) {
            let range = start * per_row..(start + n) * per_row;
            start += n;
            let mut shape = t.shape.clone();
            shape[0] = n;
            let data = each_variant!(&t.data, v => v[range.clone()].to_vec());
            answer.push(Tensor { name: t.name.clone(), shape, data });
        }
    }
    Some(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct J(Vec<Tensor>, Instant);

    impl Batchable for J {
        fn inputs(&self) -> &[Tensor] {
            &self.0
        }
        fn outputs(&self) -> Option<&[String]> {
            None
        }
        fn queued(&self) -> Instant {
            self.1
        }
        fn usable(&mut self) -> bool {
            true
        }
    }

    fn job(rows: usize, width: usize, start: f32) -> J {
        let data = (0..rows * width).map(|i| start + i as f32).collect();
        J(vec![Tensor { name: "x".into(), shape: vec![rows, width], data: TensorData::Fp32(data) }], Instant::now())
    }

    #[test]
    fn requests_are_concatenated_by_rows_and_split_back() {
        let batch = [job(1, 3, 0.0), job(2, 3, 10.0)];
        let joined = concat(&batch);
        assert_eq!(joined[0].shape, vec![3, 3]);
        assert_eq!(joined[0].data, TensorData::Fp32(vec![0., 1., 2., 10., 11., 12., 13., 14., 15.]));
        let back = split(joined, &[1, 2]).unwrap();
        assert_eq!(back[0][0].shape, vec![1, 3]);
        assert_eq!(back[1][0].data, TensorData::Fp32(vec![10., 11., 12., 13., 14., 15.]));
        let odd = Tensor { name: "y".into(), shape: vec![2], data: TensorData::Int64(vec![1, 2]) };
        assert!(split(vec![odd], &[1, 2]).is_none(), "an output without the batch dimension");
    }

    #[test]
    fn a_batch_takes_what_fits_and_leaves_the_rest_for_the_next() {
        let (tx, rx) = crossbeam_channel::unbounded();
        for j in [job(2, 3, 0.0), job(1, 4, 0.0), job(1, 3, 0.0)] {
            tx.send(j).unwrap();
        }
        let limit = Batching { max_batch_size: 4, max_queue_delay: Duration::ZERO };
        let load = Load::new(1);
        let (batch, next) = gather(job(1, 3, 0.0), &rx, limit, &load);
        assert_eq!(batch.len(), 2, "the second queued request has another width");
        assert_eq!(next.map(|j| j.0[0].shape.clone()), Some(vec![1, 4]));
        let (batch, next) = gather(job(3, 3, 0.0), &rx, limit, &load);
        assert_eq!((batch.len(), next.is_none()), (2, true), "3 + 1 rows reach the limit");
    }

    #[test]
    fn a_lone_session_waits_only_while_more_work_is_in_hand() {
        let (tx, rx) = crossbeam_channel::unbounded::<J>();
        let limit = Batching { max_batch_size: 2, max_queue_delay: Duration::from_secs(30) };
        let load = Load::new(1);
        // Everything the model has is in the batch: no wait, even with a long delay.
        load.outstanding.store(1, Ordering::Relaxed);
        let (batch, _) = gather(job(1, 3, 0.0), &rx, limit, &load);
        assert_eq!(batch.len(), 1);
        // More is in hand: it waits, and takes the request that arrives meanwhile.
        load.outstanding.store(2, Ordering::Relaxed);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(job(1, 3, 0.0)).unwrap();
            tx
        });
        let (batch, _) = gather(job(1, 3, 0.0), &rx, limit, &load);
        assert_eq!(batch.len(), 2);
        drop(late.join());
    }

    #[test]
    fn with_other_sessions_a_batch_takes_what_is_queued_and_goes() {
        let (tx, rx) = crossbeam_channel::unbounded::<J>();
        tx.send(job(1, 3, 0.0)).unwrap();
        let limit = Batching { max_batch_size: 64, max_queue_delay: Duration::from_secs(1) };
        let load = Load::new(2);
        // More requests in hand than queued (in the other session's batch, or its run).
        load.outstanding.store(8, Ordering::Relaxed);
        let (done, gathered) = crossbeam_channel::bounded(1);
        std::thread::scope(|s| {
            s.spawn(|| done.send(gather(job(1, 3, 0.0), &rx, limit, &load).0.len()).unwrap());
            // Waiting, it would leave only at its delay (1 s); the timeout is far below that
            // and far above taking one queued request.
            let got = gathered.recv_timeout(Duration::from_millis(500));
            assert_eq!(got, Ok(2), "the batch took the queued request and left without waiting");
        });
        drop(tx);
    }
}
