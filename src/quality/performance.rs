//! Performance degradation from label feedback: rows scored against true labels, per variant
//! over a sliding window (the same slots as drift windows), judged against a floor with a
//! one-sided Wilson score bound. Degraded means *evidence* of harm: even the upper confidence
//! bound of the accuracy is below the floor. Too few rows is no verdict.

use crate::config::PerformanceSpec;
use statrs::distribution::{ContinuousCDF, Normal};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Slots of a window.
const SLOTS: usize = super::drift::SLOTS;

/// A variant's scored rows over the last `window`, kept across routing tables.
#[derive(Debug)]
pub struct LabelWindow {
    /// (rows, right) per slot.
    slots: [(AtomicU64, AtomicU64); SLOTS],
    current: AtomicUsize,
    started: Mutex<Option<u64>>,
    slot_ms: u64,
    /// Whether the last verdict was degraded (events fire on a change).
    pub(crate) reported: Mutex<bool>,
    /// The spec it was made for; a new spec makes a new window.
    pub(crate) spec: PerformanceSpec,
}

/// A window judged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PerformanceReport {
    /// Rows scored in the window.
    pub rows: u64,
    /// Rows predicted right.
    pub right: u64,
    /// right / rows.
    pub accuracy: f64,
    /// One-sided Wilson score upper bound at the spec's confidence.
    pub upper_bound: f64,
    /// The floor it is compared with.
    pub floor: f64,
    /// `None`: too few rows for a verdict.
    pub degraded: Option<bool>,
}

impl LabelWindow {
    /// An empty window judged as `spec` says.
    pub fn new(spec: PerformanceSpec) -> LabelWindow {
        LabelWindow {
            slots: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
            current: AtomicUsize::new(0),
            started: Mutex::new(None),
            slot_ms: (spec.window.as_millis() as u64 / SLOTS as u64).max(1),
            reported: Mutex::new(false),
            spec,
        }
    }

    /// `rows` rows scored, `right` of them predicted right.
    pub fn add(&self, rows: u64, right: u64) {
        let slot = &self.slots[self.current.load(Ordering::Relaxed) % SLOTS];
        slot.0.fetch_add(rows, Ordering::Relaxed);
        slot.1.fetch_add(right.min(rows), Ordering::Relaxed);
    }

    /// Slides the window to `now_ms`.
    pub fn rotate(&self, now_ms: u64) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = *started else {
            *started = Some(now_ms);
            return;
        };
        let steps = now_ms.saturating_sub(since) / self.slot_ms;
        for _ in 0..steps.min(SLOTS as u64) {
            let next = (self.current.load(Ordering::Relaxed) + 1) % SLOTS;
            self.slots[next].0.store(0, Ordering::Relaxed);
            self.slots[next].1.store(0, Ordering::Relaxed);
            self.current.store(next, Ordering::Relaxed);
        }
        if steps > 0 {
            *started = Some(since + steps * self.slot_ms);
        }
    }

    /// Judges the window against the floor.
    pub fn judge(&self) -> PerformanceReport {
        let rows: u64 = self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        let right: u64 = self.slots.iter().map(|s| s.1.load(Ordering::Relaxed)).sum::<u64>().min(rows);
        let accuracy = if rows == 0 { 0.0 } else { right as f64 / rows as f64 };
        let upper_bound = wilson_upper(right, rows, self.spec.confidence);
        let degraded = (rows >= self.spec.min_samples).then_some(upper_bound < self.spec.floor);
        PerformanceReport { rows, right, accuracy, upper_bound, floor: self.spec.floor, degraded }
    }
}

/// The one-sided Wilson score upper bound of a proportion `right / rows` at `confidence`.
pub fn wilson_upper(right: u64, rows: u64, confidence: f64) -> f64 {
    if rows == 0 {
        return 1.0;
    }
    let z = Normal::standard().inverse_cdf(confidence);
    let (n, p) = (rows as f64, right as f64 / rows as f64);
    let centre = p + z * z / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z * z / n)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> PerformanceSpec {
        PerformanceSpec {
            window: Duration::from_secs(10),
            min_samples: 100,
            floor: 0.9,
            max_drop: None,
            confidence: 0.95,
        }
    }

    #[test]
    fn the_wilson_bound_matches_a_value_worked_by_hand() {
        // 80 of 100 at 95% one-sided (z = 1.6448536): (0.8 + z²/200 + z·sqrt(0.0016 + z²/40000))
        // / (1 + z²/100) = 0.8575 (the upper end of the two-sided 90% Wilson interval).
        let z: f64 = 1.6448536269514722;
        let want = (0.8 + z * z / 200.0 + z * (0.0016 + z * z / 40000.0).sqrt()) / (1.0 + z * z / 100.0);
        assert!((wilson_upper(80, 100, 0.95) - want).abs() < 1e-9);
        assert!((want - 0.8575).abs() < 1e-4);
    }

    #[test]
    fn degraded_needs_rows_and_evidence() {
        let w = LabelWindow::new(spec());
        w.add(50, 30);
        assert_eq!(w.judge().degraded, None, "too few rows");
        w.add(50, 30);
        assert_eq!(w.judge().degraded, Some(true), "60% of 100 is surely under 90%");
        let ok = LabelWindow::new(spec());
        ok.add(100, 88);
        assert_eq!(ok.judge().degraded, Some(false), "88% of 100 could be 90%: no evidence of harm");
    }

    #[test]
    fn old_rows_leave_the_window() {
        let w = LabelWindow::new(spec());
        w.rotate(0);
        w.add(100, 10);
        w.rotate(10_000);
        assert_eq!(w.judge().rows, 0);
    }
}
