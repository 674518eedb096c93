//! When a model run may stay on the caller's thread.
//!
//! A run handed to a session's worker thread and back costs two thread wake-ups (a context
//! switch each way, about 10 µs on this kind of machine) — more than a small model's whole run
//! (breast-cancer-v2: ~4 µs a row). So a run expected to take less than [`BUDGET`] runs on the
//! calling thread when no request of the model is queued and a session is free; anything
//! bigger, or any run while others wait, goes through the workers as before, so the async
//! threads keep to reading, admitting and shedding. The expectation is the
//! model's recent time per row, kept as a moving average of its runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest run expected to stay on the calling (async) thread: no longer than the hand-off
/// it saves, so that a run made inline never adds to the async thread's work. (At 50 µs,
/// 32-row runs of breast-cancer-v2 went inline, and under twice the capacity the one async
/// thread of `make overload` fell behind its sockets: accepted p99 400 ms instead of 5 ms.)
pub const BUDGET: Duration = Duration::from_micros(10);

/// A model's recent run time per row.
#[derive(Debug)]
pub struct RunCost {
    /// Nanoseconds per row, an exponentially weighted moving average (weight 1/8).
    per_row_ns: AtomicU64,
}

impl RunCost {
    /// Starts from one measured run of `rows` rows.
    pub fn new(rows: usize, took: Duration) -> RunCost {
        RunCost { per_row_ns: AtomicU64::new(per_row(rows, took)) }
    }

    /// Whether a run of `rows` rows is expected to stay within [`BUDGET`].
    pub fn cheap(&self, rows: usize) -> bool {
        let expected = self.per_row_ns.load(Ordering::Relaxed).saturating_mul(rows.max(1) as u64);
        expected <= BUDGET.as_nanos() as u64
    }

    /// Sets the estimate (tests: a run's time on a busy test machine is no fixed number).
    #[cfg(test)]
    pub fn assume(&self, per_row: Duration) {
        self.per_row_ns.store(per_row.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Adds a run of `rows` rows that took `took`. A sample counts for at most twice the
    /// estimate: a run the scheduler preempted (100 µs for a 4 µs run on a busy machine) would
    /// otherwise lift the estimate over the budget for the next dozen runs, and send them through
    /// the workers for nothing; a real slowdown still lifts it, by up to 1/8 a run.
    pub fn observe(&self, rows: usize, took: Duration) {
        // Racing updates may lose a sample: an estimate, not an account.
        let old = self.per_row_ns.load(Ordering::Relaxed);
        let sample = per_row(rows, took).min(old.saturating_mul(2).max(1));
        let new = old - old / 8 + sample / 8;
        self.per_row_ns.store(new, Ordering::Relaxed);
    }
}

fn per_row(rows: usize, took: Duration) -> u64 {
    (took.as_nanos() / rows.max(1) as u128).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::onnx::OnnxBackend;
    use crate::backend::runtime;
    use crate::config::OnnxSpec;
    use crate::protocol::{Tensor, TensorData};
    use std::path::PathBuf;

    #[test]
    fn runs_expected_within_the_budget_are_cheap_and_the_estimate_follows_the_runs() {
        let cost = RunCost::new(1, Duration::from_micros(4));
        assert!(cost.cheap(1) && cost.cheap(2));
        assert!(!cost.cheap(3), "3 rows at 4 µs each exceed 10 µs");
        // The model slows down (a bigger replacement, a busy machine): fewer rows stay inline.
        for _ in 0..64 {
            cost.observe(2, Duration::from_micros(200));
        }
        assert!(!cost.cheap(1));
        for _ in 0..64 {
            cost.observe(1, Duration::from_micros(2));
        }
        assert!(cost.cheap(4));
        // One preempted run does not move small runs off the calling thread.
        let cost = RunCost::new(1, Duration::from_micros(4));
        cost.observe(1, Duration::from_micros(100));
        assert!(cost.cheap(2), "one outlier lifts the estimate by at most 1/8");
    }

    fn rows_of_zeros(model: &OnnxBackend, rows: usize) -> Vec<Tensor> {
        model
            .signature()
            .inputs
            .iter()
            .map(|s| {
                let mut shape: Vec<usize> = s.shape.iter().map(|&d| d.max(1) as usize).collect();
                shape[0] = rows;
                Tensor { name: s.name.clone(), data: TensorData::zeros(s.datatype, shape.iter().product()), shape }
            })
            .collect()
    }

    // Real ONNX Runtime, the shipped model.
    #[tokio::test]
    async fn a_small_run_stays_on_the_callers_thread_and_a_big_one_goes_to_a_worker() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let env = runtime::environment(&runtime::locate(None, None)).expect("make ort");
        let spec = OnnxSpec {
            path: root.join("models/breast-cancer-v2.onnx"),
            sha256: String::new(),
            sessions: 2,
            intra_op_threads: 1,
            queue: 8,
            queue_timeout: Duration::from_secs(5),
            batching: None,
            profile: None,
            registry: None,
        };
        let model = tokio::task::spawn_blocking(move || OnnxBackend::load("bc", &spec, &env)).await.unwrap().unwrap();
        // A small model (~4 µs a row on an idle machine; a busy test machine measures more).
        model.assume_run_cost(Duration::from_micros(1));
        let (one, _) = model.infer(rows_of_zeros(&model, 1), None).await.unwrap();
        assert_eq!(model.inline_runs(), 1, "one row of a small model runs inline");
        // 20,000 rows take milliseconds: a worker runs them, and the rows agree with the inline run.
        let (many, shared) = model.infer(rows_of_zeros(&model, 20_000), None).await.unwrap();
        assert_eq!((model.inline_runs(), shared), (1, 1), "a big run is not made on the async thread");
        for (small, big) in one.iter().zip(&many) {
            assert_eq!(small.name, big.name);
            assert_eq!(big.shape[0], 20_000);
            let width: usize = small.shape.iter().product();
            match (&small.data, &big.data) {
                (TensorData::Fp32(a), TensorData::Fp32(b)) => assert_eq!(a[..], b[..width]),
                (TensorData::Int64(a), TensorData::Int64(b)) => assert_eq!(a[..], b[..width]),
                other => panic!("unexpected output types {other:?}"),
            }
        }
        // While a big run holds one session, a small one takes the other session inline: nothing
        // is queued for it to overtake.
        let model = std::sync::Arc::new(model);
        let big = |model: &std::sync::Arc<OnnxBackend>| {
            let model = model.clone();
            tokio::spawn(async move { model.infer(rows_of_zeros(&model, 300_000), None).await })
        };
        let busy = big(&model);
        while model.sessions_busy() < 1 {
            tokio::task::yield_now().await;
        }
        let (beside, _) = model.infer(rows_of_zeros(&model, 1), None).await.unwrap();
        assert_eq!(model.inline_runs(), 2, "a small run beside a busy session, with none queued, runs inline");
        assert_eq!(format!("{beside:?}"), format!("{one:?}"));
        // With every session held, a small run queues for a worker.
        let busy2 = big(&model);
        while model.sessions_busy() < 2 {
            tokio::task::yield_now().await;
        }
        let (during, _) = model.infer(rows_of_zeros(&model, 1), None).await.unwrap();
        assert_eq!(model.inline_runs(), 2, "a run while every session is held goes to a worker");
        assert_eq!(format!("{during:?}"), format!("{one:?}"));
        for b in [busy, busy2] {
            assert_eq!(b.await.unwrap().unwrap().0[0].shape[0], 300_000);
        }
        // Errors stay the caller's: a wrong shape is refused inline as it is by a worker.
        let mut bad = rows_of_zeros(&model, 1);
        bad[0].shape = vec![1, 3];
        bad[0].data = TensorData::zeros(crate::protocol::DataType::Fp32, 3);
        let e = model.infer(bad, None).await.unwrap_err();
        assert!(e.to_string().contains("refused the inputs"), "{e}");
    }
}
