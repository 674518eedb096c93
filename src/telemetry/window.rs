//! Analysis windows: per route and variant, what the rollout engine judges on — request and
//! error counts, an HDR latency histogram, and business outcomes. Fixed size whatever the traffic.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::Duration;

/// Latencies are kept in microseconds, 1 µs to 10 min, at 3 significant digits.
const MAX_MICROS: u64 = 600_000_000;

/// Counts and sums of one window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Answered requests.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
    /// Request latency, µs.
    pub latency: Histogram<u64>,
    /// Conversion feedback: samples and conversions.
    pub conversions: (u64, u64),
    /// Reward feedback (and upstream business values): samples, sum, and sum of squares.
    pub reward: (u64, f64, f64),
    /// Label feedback: rows scored and rows predicted correctly.
    pub accuracy: (u64, u64),
}

impl Default for Window {
    fn default() -> Self {
        Window {
            requests: 0,
            errors: 0,
            // Constant bounds within what hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
            latency: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("constant histogram bounds are valid"),
            conversions: (0, 0),
            reward: (0, 0.0, 0.0),
            accuracy: (0, 0),
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
    /// Latency quantiles in milliseconds (HDR precision: 3 significant digits).
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
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

fn ratio(num: f64, den: u64) -> Option<f64> {
    (den > 0).then(|| num / den as f64)
}

impl Window {
    /// One answered request.
    pub fn record(&mut self, latency: Duration, error: bool) {
        self.requests += 1;
        self.errors += u64::from(error);
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        let _ = self.latency.record(micros);
    }

    /// The window's numbers.
    pub fn snapshot(&self) -> WindowSnapshot {
        let q = |p: f64| (!self.latency.is_empty()).then(|| self.latency.value_at_quantile(p) as f64 / 1000.0);
        WindowSnapshot {
            requests: self.requests,
            errors: self.errors,
            error_rate: ratio(self.errors as f64, self.requests),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            conversion_samples: self.conversions.0,
            conversion_rate: ratio(self.conversions.1 as f64, self.conversions.0),
            reward_samples: self.reward.0,
            reward_mean: ratio(self.reward.1, self.reward.0),
            accuracy_samples: self.accuracy.0,
            accuracy: ratio(self.accuracy.1 as f64, self.accuracy.0),
        }
    }

    /// Empties the window (a new analysis step).
    pub fn reset(&mut self) {
        self.requests = 0;
        self.errors = 0;
        self.latency.reset();
        self.conversions = (0, 0);
        self.reward = (0, 0.0, 0.0);
        self.accuracy = (0, 0);
    }

    /// Bytes the window holds: constant, whatever it has recorded.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.latency.distinct_values() * std::mem::size_of::<u64>()
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
            w.record(Duration::from_micros(us), us % 100 == 0);
        }
        recorded.sort_unstable();
        let s = w.snapshot();
        for (q, got) in [(0.5, s.p50_ms), (0.95, s.p95_ms), (0.99, s.p99_ms)] {
            let exact = recorded[((q * recorded.len() as f64).ceil() as usize).saturating_sub(1)] as f64 / 1000.0;
            let got = got.unwrap();
            assert!((got - exact).abs() <= exact * 0.001 + 0.001, "q{q}: {got} ms vs exact {exact} ms");
        }
        assert_eq!(s.requests, 10_000);
        assert_eq!(s.errors, recorded.iter().filter(|u| *u % 100 == 0).count() as u64);
    }

    #[test]
    fn a_million_recordings_do_not_grow_the_window() {
        let mut w = Window::default();
        w.record(Duration::from_micros(1), false);
        let empty = w.footprint();
        for i in 0..1_000_000u64 {
            w.record(Duration::from_micros(1 + (i * 104_729) % MAX_MICROS), i % 10 == 0);
        }
        assert_eq!(w.requests, 1_000_001);
        assert_eq!(w.footprint(), empty, "the window's size does not depend on what it recorded");
        w.reset();
        assert_eq!(w.snapshot().requests, 0);
        assert_eq!(w.footprint(), empty);
    }
}
