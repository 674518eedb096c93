//! Analysis windows: per route and variant, what the rollout engine judges on — request and
//! error counts, HDR latency histograms (successful answers apart from errors), the assignment
//! units seen, and business outcomes by unit. Fixed size whatever the traffic, and every part
//! adds up exactly when windows are merged (replicas of a fleet).
//!
//! - **Units.** What an experiment randomizes is a unit: a sticky key's user, or, for a request
//!   with no key (a random draw per request), the request itself. Distinct keys are counted
//!   exactly by a distinct-sampling set (Gibbons 2001): key ids are kept while the set is under
//!   [`MAX_UNITS`]; past that only ids whose low `level` bits are zero are kept, and the level
//!   rises. Counts of two windows are compared at the higher of their levels, so the sample is
//!   the same hash-defined share of users on every arm and a sample-ratio test stays exact.
//!   (Written here: no well-kept crate offers an exact, mergeable, bounded distinct set.)
//! - **Goal metrics by unit.** Every business outcome is added to its unit's cell (the unit id
//!   modulo [`CELLS`]). Cells are disjoint groups of independent units, so the spread of cell
//!   totals gives a cluster-robust (delta-method) variance in which a user's correlated requests
//!   count once — not a per-request variance that shrinks p-values.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;

mod wire;
pub use wire::WireError;

/// Latencies are kept in microseconds, 1 µs to 10 min, at 3 significant digits.
const MAX_MICROS: u64 = 600_000_000;

/// Cells that business outcomes are grouped into by unit.
pub const CELLS: usize = 1024;

/// Distinct unit ids a window keeps before it samples them.
pub const MAX_UNITS: usize = 65_536;

/// Who a request or an outcome belongs to, as far as an experiment is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Pinned to its variant (version path, override header): never judges an experiment.
    Pinned,
    /// A request with no sticky key, randomized on its own; the id is its request nonce.
    Request(u64),
    /// A sticky key's user; the id is a hash of the key (not the bucket hash).
    Key(u64),
}

impl Unit {
    /// The id that places the unit's outcomes in a cell; `None` when pinned.
    pub fn id(self) -> Option<u64> {
        match self {
            Unit::Pinned => None,
            Unit::Request(id) | Unit::Key(id) => Some(id),
        }
    }
}

/// Distinct sticky units, exactly, by distinct sampling; requests without a key counted apart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitCount {
    /// Key ids kept: those whose low `level` bits are zero.
    keys: HashSet<u64>,
    /// Sampling level: a key is kept when `id & (2^level - 1) == 0`.
    level: u32,
    /// Requests with no sticky key (each its own unit).
    pub unkeyed: u64,
}

fn sampled(id: u64, level: u32) -> bool {
    level == 0 || id.trailing_zeros() >= level
}

impl UnitCount {
    /// Notes a unit.
    pub fn add(&mut self, unit: Unit) {
        match unit {
            Unit::Pinned => {}
            Unit::Request(_) => self.unkeyed += 1,
            Unit::Key(id) => {
                if sampled(id, self.level) && self.keys.insert(id) {
                    self.shrink();
                }
            }
        }
    }

    /// The sampling level of the kept keys.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Distinct keys kept at sampling level `level` (at least [`UnitCount::level`]).
    pub fn keys_at(&self, level: u32) -> u64 {
        if level <= self.level {
            self.keys.len() as u64
        } else {
            self.keys.iter().filter(|k| sampled(**k, level)).count() as u64
        }
    }

    /// Distinct keys, estimated when sampled (exact at level 0).
    pub fn keys_estimate(&self) -> u64 {
        (self.keys.len() as u64) << self.level.min(63)
    }

    /// Adds another window's units (same route: same key ids).
    pub fn merge(&mut self, other: &UnitCount) {
        self.unkeyed += other.unkeyed;
        let level = self.level.max(other.level);
        self.level = level;
        self.keys.retain(|k| sampled(*k, level));
        self.keys.extend(other.keys.iter().filter(|k| sampled(**k, level)));
        self.shrink();
    }

    /// Raises the sampling level until the kept keys fit in [`MAX_UNITS`].
    fn shrink(&mut self) {
        while self.keys.len() > MAX_UNITS && self.level < 64 {
            self.level += 1;
            let level = self.level;
            self.keys.retain(|k| sampled(*k, level));
        }
    }
}

/// The units of several arms, counted comparably: keys at the highest sampling level of any arm,
/// plus each arm's unkeyed requests. What a sample-ratio test is run on.
pub fn comparable_units(arms: &[&UnitCount]) -> Vec<u64> {
    let level = arms.iter().map(|u| u.level).max().unwrap_or(0);
    arms.iter().map(|u| u.keys_at(level) + u.unkeyed).collect()
}

/// One business metric's outcomes: overall moments (Welford / Chan, numerically stable) and
/// per-cell sums by unit for a cluster-robust variance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Goal {
    /// Samples (rows scored, conversions reported, rewards reported).
    pub n: u64,
    /// Their sum (exact for counts; what the mean shown is computed from).
    pub sum: f64,
    /// Their mean (Welford's running mean, for the variance).
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Per cell: samples and sum of values; empty until the first outcome.
    cells: Vec<(u64, f64)>,
}

impl Goal {
    /// Adds `count` samples from `unit` whose values sum to `sum` and whose squared deviations
    /// from their own mean sum to `m2` (0 for a single sample or a batch of equal values).
    pub fn add_batch(&mut self, unit: Unit, count: u64, sum: f64, m2: f64) {
        let Some(id) = unit.id() else { return };
        if count == 0 || !sum.is_finite() {
            return;
        }
        let (na, nb) = (self.n as f64, count as f64);
        let mean_b = sum / nb;
        let delta = mean_b - self.mean;
        let n = na + nb;
        self.mean += delta * nb / n;
        self.m2 += m2 + delta * delta * na * nb / n;
        self.n += count;
        self.sum += sum;
        if self.cells.is_empty() {
            self.cells = vec![(0, 0.0); CELLS];
        }
        let cell = &mut self.cells[(id % CELLS as u64) as usize];
        cell.0 += count;
        cell.1 += sum;
    }

    /// Adds one sample.
    pub fn add(&mut self, unit: Unit, value: f64) {
        self.add_batch(unit, 1, value, 0.0);
    }

    /// Adds `rows` 0/1 samples of which `ones` are 1.
    pub fn add_proportion(&mut self, unit: Unit, rows: u64, ones: u64) {
        if rows == 0 {
            return;
        }
        let p = ones.min(rows) as f64 / rows as f64;
        self.add_batch(unit, rows, ones.min(rows) as f64, rows as f64 * p * (1.0 - p));
    }

    /// Sample variance (n - 1), 0 below two samples.
    pub fn variance(&self) -> f64 {
        if self.n > 1 {
            (self.m2 / (self.n - 1) as f64).max(0.0)
        } else {
            0.0
        }
    }

    /// Per-cell (samples, sum), only cells that have samples.
    pub fn cells(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.cells.iter().copied().filter(|c| c.0 > 0)
    }

    /// Adds another window's outcomes (same cell layout).
    pub fn merge(&mut self, other: &Goal) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let delta = other.mean - self.mean;
        let n = na + nb;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.n += other.n;
        self.sum += other.sum;
        if self.cells.is_empty() {
            self.cells = vec![(0, 0.0); CELLS];
        }
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            a.0 += b.0;
            a.1 += b.1;
        }
    }
}

/// Counts and sums of one window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Answered requests.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
    /// Latency of successful (non-5xx) answers, µs.
    pub latency: Histogram<u64>,
    /// Latency of error (5xx) answers, µs: a canary that fails fast must not look fast.
    pub error_latency: Histogram<u64>,
    /// Assignment units seen.
    pub units: UnitCount,
    /// Conversion feedback (0/1 per report).
    pub conversion: Goal,
    /// Reward feedback (and upstream business values).
    pub reward: Goal,
    /// Label feedback: one 0/1 sample per row scored (1 = predicted right).
    pub accuracy: Goal,
}

fn histogram() -> Histogram<u64> {
    // Constant bounds within what hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid")
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            errors: 0,
            latency: histogram(),
            error_latency: histogram(),
            units: UnitCount::default(),
            conversion: Goal::default(),
            reward: Goal::default(),
            accuracy: Goal::default(),
        }
    }
}

/// A window read out for judging or display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSnapshot {
    /// Answered requests.
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    /// `errors / requests`, when there were requests.
    pub error_rate: Option<f64>,
    /// Latency quantiles of successful answers in milliseconds (HDR precision: 3 significant digits).
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Median latency of error answers, ms.
    pub error_p50_ms: Option<f64>,
    /// Distinct sticky users (estimated past the exact limit) plus requests without a key.
    pub units: u64,
    /// Conversion samples.
    pub conversion_samples: u64,
    /// Conversions / samples.
    pub conversion_rate: Option<f64>,
    /// Reward samples.
    pub reward_samples: u64,
    /// Mean reward.
    pub reward_mean: Option<f64>,
    /// Rows scored against a true label.
    pub accuracy_samples: u64,
    /// Correct rows / scored rows.
    pub accuracy: Option<f64>,
}

fn micros(latency: Duration) -> u64 {
    (latency.as_micros() as u64).clamp(1, MAX_MICROS)
}

impl Window {
    /// One answered request of `unit`.
    pub fn record(&mut self, latency: Duration, error: bool, unit: Unit) {
        self.requests += 1;
        self.errors += u64::from(error);
        let h = if error { &mut self.error_latency } else { &mut self.latency };
        let _ = h.record(micros(latency));
        self.units.add(unit);
    }

    /// The window's numbers.
    pub fn snapshot(&self) -> WindowSnapshot {
        let q = |h: &Histogram<u64>, p: f64| (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1000.0);
        let mean = |g: &Goal| (g.n > 0).then(|| g.sum / g.n as f64);
        WindowSnapshot {
            requests: self.requests,
            errors: self.errors,
            error_rate: (self.requests > 0).then(|| self.errors as f64 / self.requests as f64),
            p50_ms: q(&self.latency, 0.5),
            p95_ms: q(&self.latency, 0.95),
            p99_ms: q(&self.latency, 0.99),
            error_p50_ms: q(&self.error_latency, 0.5),
            units: self.units.keys_estimate() + self.units.unkeyed,
            conversion_samples: self.conversion.n,
            conversion_rate: mean(&self.conversion),
            reward_samples: self.reward.n,
            reward_mean: mean(&self.reward),
            accuracy_samples: self.accuracy.n,
            accuracy: mean(&self.accuracy),
        }
    }

    /// Empties the window (a new analysis step).
    pub fn reset(&mut self) {
        *self = Window::default();
    }

    /// Adds another window (a replica's) to this one; every part adds up exactly.
    pub fn merge(&mut self, other: &Window) {
        self.requests += other.requests;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
        let _ = self.error_latency.add(&other.error_latency);
        self.units.merge(&other.units);
        self.conversion.merge(&other.conversion);
        self.reward.merge(&other.reward);
        self.accuracy.merge(&other.accuracy);
    }

    /// The goal metric's outcomes.
    pub fn goal(&self, metric: crate::config::plan::Metric) -> &Goal {
        use crate::config::plan::Metric;
        match metric {
            Metric::Conversion => &self.conversion,
            Metric::Accuracy => &self.accuracy,
            Metric::Reward => &self.reward,
        }
    }

    /// Bytes the window holds besides its unit set: constant, whatever it has recorded.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + (self.latency.distinct_values() + self.error_latency.distinct_values()) * std::mem::size_of::<u64>()
            + [&self.conversion, &self.reward, &self.accuracy].iter().map(|g| g.cells.capacity() * 16).sum::<usize>()
    }

    /// Unit ids the window keeps (bounded by [`MAX_UNITS`] whatever the traffic).
    pub fn kept_units(&self) -> usize {
        self.units.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_the_recorded_latencies_within_hdr_precision() {
        let mut w = Window::default();
        let mut recorded: Vec<u64> = (0..10_000u64).map(|i| 50 + (i * 7919) % 20_000).collect();
        for &us in &recorded {
            w.record(Duration::from_micros(us), false, Unit::Request(us));
        }
        recorded.sort_unstable();
        let s = w.snapshot();
        for (q, got) in [(0.5, s.p50_ms), (0.95, s.p95_ms), (0.99, s.p99_ms)] {
            let exact = recorded[((q * recorded.len() as f64).ceil() as usize).saturating_sub(1)] as f64 / 1000.0;
            let got = got.unwrap();
            assert!((got - exact).abs() <= exact * 0.001 + 0.001, "q{q}: {got} ms vs exact {exact} ms");
        }
        assert_eq!(s.requests, 10_000);
        assert_eq!(s.units, 10_000);
    }

    #[test]
    fn error_latency_is_kept_apart_from_successful_latency() {
        let mut w = Window::default();
        for i in 0..100 {
            w.record(Duration::from_millis(50), false, Unit::Key(i));
        }
        for i in 0..100 {
            w.record(Duration::from_micros(100), true, Unit::Key(i));
        }
        let s = w.snapshot();
        assert!(s.p50_ms.unwrap() > 49.0, "fast errors do not pull the latency down: {s:?}");
        assert!(s.error_p50_ms.unwrap() < 0.2);
        assert_eq!((s.requests, s.errors, s.units), (200, 100, 100));
    }

    #[test]
    fn a_million_recordings_do_not_grow_the_window() {
        let mut w = Window::default();
        w.record(Duration::from_micros(1), false, Unit::Request(0));
        w.conversion.add(Unit::Key(1), 1.0);
        w.reward.add(Unit::Key(1), 1.0);
        w.accuracy.add_proportion(Unit::Key(1), 2, 1);
        let empty = w.footprint();
        for i in 0..1_000_000u64 {
            let unit = Unit::Key(xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()));
            w.record(Duration::from_micros(1 + (i * 104_729) % MAX_MICROS), i % 10 == 0, unit);
            w.conversion.add(unit, (i % 3 == 0) as u8 as f64);
        }
        assert_eq!(w.requests, 1_000_001);
        assert_eq!(w.footprint(), empty, "the window's size does not depend on what it recorded");
        assert!(w.kept_units() <= MAX_UNITS);
        let est = w.snapshot().units as f64;
        assert!((est - 1_000_001.0).abs() < 0.05 * 1e6, "distinct users estimated: {est}");
        w.reset();
        assert_eq!(w.snapshot().requests, 0);
        assert_eq!(w.kept_units(), 0);
    }

    #[test]
    fn units_are_counted_once_and_compared_at_one_level() {
        let mut a = UnitCount::default();
        let mut b = UnitCount::default();
        for i in 0..200_000u64 {
            let id = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
            for _ in 0..(1 + i % 3) {
                a.add(Unit::Key(id));
            }
            if i < 1000 {
                b.add(Unit::Key(id ^ 0xdead_beef));
            }
        }
        assert!(a.level() > 0 && b.level() == 0);
        let [ua, ub] = comparable_units(&[&a, &b])[..] else { panic!() };
        // Both counted at a's level: b's 1000 users sampled the same way as a's.
        let share = ua as f64 / 200_000.0;
        assert!((share - 0.5f64.powi(a.level() as i32)).abs() < 0.05, "{ua} at level {}", a.level());
        assert!(ub < 1000);
        let mut m = a.clone();
        m.merge(&b);
        assert!(m.keys_at(m.level()) >= ua);
    }

    #[test]
    fn goals_match_two_pass_moments_and_merge_exactly() {
        let values: Vec<f64> = (0..5000).map(|i| 1e9 + ((i * 37) % 101) as f64 / 7.0).collect();
        let (mut one, mut a, mut b) = (Goal::default(), Goal::default(), Goal::default());
        for (i, v) in values.iter().enumerate() {
            let unit = Unit::Key(i as u64 % 300);
            one.add(unit, *v);
            if i % 2 == 0 { &mut a } else { &mut b }.add(unit, *v);
        }
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
        assert!((one.mean - mean).abs() / mean < 1e-12);
        assert!((one.variance() - var).abs() / var < 1e-6, "{} vs {var}", one.variance());
        a.merge(&b);
        assert_eq!(a.n, one.n);
        assert!((a.variance() - var).abs() / var < 1e-6);
        assert_eq!(a.cells().count(), 300);
        let mut p = Goal::default();
        p.add_proportion(Unit::Request(3), 10, 4);
        assert!((p.mean - 0.4).abs() < 1e-12 && (p.variance() - 0.24 * 10.0 / 9.0).abs() < 1e-12);
        p.add(Unit::Pinned, 1.0);
        assert_eq!(p.n, 10, "pinned outcomes never enter a goal");
    }
}
