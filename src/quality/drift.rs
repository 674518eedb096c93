//! Drift detection: live rows of a route's variant, binned on its profile's edges over a sliding
//! window, compared with the profile's reference bins.
//!
//! Memory is fixed per variant whatever the traffic: [`SLOTS`] slots × (bins of the judged
//! features + 1) counters. The request path adds to the current slot with relaxed atomic adds
//! (no lock, no allocation); a timer rotates the slots, so the window slides in steps of
//! `window / SLOTS`.
//!
//! Statistics per feature: the population stability index (material change), and Pearson's
//! chi-square test of homogeneity on the 2 × bins table of reference and live counts (not
//! chance). Chi-square rather than Kolmogorov–Smirnov because the live sample only exists as
//! bins: KS on binned data has no exact null distribution (ties make it conservative), statrs
//! has no Kolmogorov distribution, while the chi-square homogeneity test is the standard test
//! for two binned samples, treats the reference as the sample it is, and its null distribution
//! is statrs's `ChiSquared`. A feature is drifted when both thresholds are crossed.

use super::profile::{FeatureProfile, Profile};
use crate::config::DriftSpec;
use statrs::distribution::{ChiSquared, ContinuousCDF};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Slots of a window.
pub const SLOTS: usize = 10;

/// A variant's live bins over the last `window`, kept across routing tables.
#[derive(Debug)]
pub struct DriftWindow {
    /// Columns judged, in profile order.
    features: Vec<usize>,
    /// Where each judged feature's bins start in a slot.
    offsets: Vec<usize>,
    /// Bins per slot, plus one row counter at the end.
    width: usize,
    slots: Vec<Box<[AtomicU64]>>,
    current: AtomicUsize,
    /// When the current slot started (clock ms); `None` before the first rotation check.
    started: Mutex<Option<u64>>,
    slot_ms: u64,
    /// The features last reported drifted (events fire when this set changes).
    pub(crate) reported: Mutex<Vec<String>>,
    /// The profile and spec it was made for; a new pair makes a new window.
    pub(crate) made_for: (std::sync::Arc<Profile>, DriftSpec),
}

/// One feature's statistics over a window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeatureDrift {
    /// The feature's name in the profile.
    pub feature: String,
    /// Population stability index of live against reference bins.
    pub psi: f64,
    /// Chi-square homogeneity test statistic.
    pub chi_square: f64,
    /// Its p-value.
    pub p_value: f64,
    /// Live values in the window (NaN excluded).
    pub samples: u64,
    /// Both thresholds crossed.
    pub drifted: bool,
}

/// A window judged.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DriftReport {
    /// Rows in the window.
    pub samples: u64,
    /// Too few rows: no verdict (and no statistics).
    pub verdict: bool,
    /// Per judged feature, when there is a verdict.
    pub features: Vec<FeatureDrift>,
}

impl DriftReport {
    /// The drifted features' names.
    pub fn drifted(&self) -> Vec<String> {
        self.features.iter().filter(|f| f.drifted).map(|f| f.feature.clone()).collect()
    }
}

impl DriftWindow {
    /// An empty window for `profile` judged as `spec` says.
    pub fn new(profile: std::sync::Arc<Profile>, spec: DriftSpec) -> DriftWindow {
        let features: Vec<usize> = if spec.features.is_empty() {
            (0..profile.features.len()).collect()
        } else {
            spec.features.iter().filter_map(|f| profile.feature(f)).collect()
        };
        let mut offsets = Vec::with_capacity(features.len());
        let mut width = 0;
        for &j in &features {
            offsets.push(width);
            width += profile.features[j].counts.len();
        }
        let slots = (0..SLOTS).map(|_| (0..=width).map(|_| AtomicU64::new(0)).collect()).collect();
        let slot_ms = (spec.window.as_millis() as u64 / SLOTS as u64).max(1);
        DriftWindow {
            features,
            offsets,
            width,
            slots,
            current: AtomicUsize::new(0),
            started: Mutex::new(None),
            slot_ms,
            reported: Mutex::new(Vec::new()),
            made_for: (profile, spec),
        }
    }

    /// Adds `rows` rows whose column `j` of row `i` is `get(i * columns + j)`.
    #[inline]
    pub fn observe(&self, rows: usize, columns: usize, get: impl Fn(usize) -> f64) {
        let profile = &self.made_for.0;
        let slot = &self.slots[self.current.load(Ordering::Relaxed) % SLOTS];
        for i in 0..rows {
            for (k, &j) in self.features.iter().enumerate() {
                let x = get(i * columns + j);
                if !x.is_nan() {
                    slot[self.offsets[k] + profile.features[j].bin(x)].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        slot[self.width].fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Slides the window to `now_ms`: every slot older than the window is emptied.
    pub fn rotate(&self, now_ms: u64) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = *started else {
            *started = Some(now_ms);
            return;
        };
        let steps = now_ms.saturating_sub(since) / self.slot_ms;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(SLOTS as u64) {
            let next = (self.current.load(Ordering::Relaxed) + 1) % SLOTS;
            for c in self.slots[next].iter() {
                c.store(0, Ordering::Relaxed);
            }
            self.current.store(next, Ordering::Relaxed);
        }
        *started = Some(since + steps * self.slot_ms);
    }

    /// Judges the window against the profile.
    pub fn judge(&self) -> DriftReport {
        let (profile, spec) = &self.made_for;
        let sum = |i: usize| self.slots.iter().map(|s| s[i].load(Ordering::Relaxed)).sum::<u64>();
        let samples = sum(self.width);
        if samples < spec.min_samples {
            return DriftReport { samples, verdict: false, features: Vec::new() };
        }
        let features = self
            .features
            .iter()
            .enumerate()
            .map(|(k, &j)| {
                let reference = &profile.features[j];
                let live: Vec<u64> = (0..reference.counts.len()).map(|b| sum(self.offsets[k] + b)).collect();
                let psi = psi(&reference.counts, &live);
                let (chi_square, p_value) = chi_square_homogeneity(&reference.counts, &live);
                FeatureDrift {
                    feature: reference.name.clone(),
                    psi,
                    chi_square,
                    p_value,
                    samples: live.iter().sum(),
                    drifted: psi >= spec.psi && p_value < spec.p_value,
                }
            })
            .collect();
        DriftReport { samples, verdict: true, features }
    }

    /// The judged features' profiles (for tests and reports).
    pub fn judged(&self) -> impl Iterator<Item = &FeatureProfile> {
        self.features.iter().map(|&j| &self.made_for.0.features[j])
    }
}

/// Population stability index Σ (a − e) ln(a / e) over bins of proportions, each bin's count
/// smoothed by ½ so that an empty bin does not make it infinite.
pub fn psi(expected: &[u64], actual: &[u64]) -> f64 {
    let k = expected.len() as f64;
    let (ne, na) = (expected.iter().sum::<u64>() as f64, actual.iter().sum::<u64>() as f64);
    if ne == 0.0 || na == 0.0 {
        return 0.0;
    }
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let e = (e as f64 + 0.5) / (ne + 0.5 * k);
            let a = (a as f64 + 0.5) / (na + 0.5 * k);
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Pearson's chi-square test of homogeneity of two binned samples: the statistic and its
/// p-value (bins empty in both are left out; one bin left is no evidence: p = 1).
pub fn chi_square_homogeneity(a: &[u64], b: &[u64]) -> (f64, f64) {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let n = na + nb;
    let mut stat = 0.0;
    let mut bins = 0u32;
    for (&x, &y) in a.iter().zip(b) {
        let col = (x + y) as f64;
        if col == 0.0 {
            continue;
        }
        bins += 1;
        let (ea, eb) = (na * col / n, nb * col / n);
        stat += (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb;
    }
    if bins < 2 || na == 0.0 || nb == 0.0 {
        return (0.0, 1.0);
    }
    let p = ChiSquared::new(f64::from(bins - 1)).map(|d| d.sf(stat)).unwrap_or(1.0);
    (stat, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr_free::normal;
    use std::sync::Arc;
    use std::time::Duration;

    /// Standard normal draws by Box–Muller (the crate graph has no rand_distr).
    mod rand_distr_free {
        use rand::Rng;
        pub fn normal(rng: &mut impl Rng) -> f64 {
            let (u, v): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    fn spec(features: Vec<String>) -> DriftSpec {
        DriftSpec {
            window: Duration::from_secs(10),
            min_samples: 500,
            psi: 0.1,
            p_value: 0.01,
            features,
            outputs: false,
        }
    }

    fn reference(rng: &mut rand::rngs::StdRng, features: usize, rows: usize) -> Arc<Profile> {
        let values: Vec<f64> = (0..rows * features).map(|_| normal(rng)).collect();
        Arc::new(Profile::of(String::new(), "x".into(), features, &values, Vec::new()))
    }

    #[test]
    fn the_statistics_match_values_worked_by_hand() {
        // [[10, 20, 30], [20, 20, 20]]: expected 15, 20, 25 in both rows, so the statistic is
        // 2 × (25/15 + 0 + 25/25) = 16/3; with 2 degrees of freedom the chi-square survival
        // function is exp(−x/2) (what scipy.stats.chi2_contingency(correction=False) reports).
        let (stat, p) = chi_square_homogeneity(&[10, 20, 30], &[20, 20, 20]);
        assert!((stat - 16.0 / 3.0).abs() < 1e-12, "{stat}");
        assert!((p - (-8.0f64 / 3.0).exp()).abs() < 1e-12, "{p}");
        // PSI of [50, 50] against [25, 75] with the ½ smoothing: proportions 50.5/101 and
        // 25.5/101, 75.5/101.
        let (e, a): ([f64; 2], [f64; 2]) = ([50.5 / 101.0, 50.5 / 101.0], [25.5 / 101.0, 75.5 / 101.0]);
        let want: f64 = (0..2).map(|i| (a[i] - e[i]) * (a[i] / e[i]).ln()).sum();
        assert!((psi(&[50, 50], &[25, 75]) - want).abs() < 1e-15);
        assert_eq!(psi(&[10, 10], &[10, 10]), 0.0);
    }

    #[test]
    fn too_few_rows_is_no_verdict() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let w = DriftWindow::new(reference(&mut rng, 2, 2000), spec(vec![]));
        let rows: Vec<f64> = (0..2 * 499).map(|_| normal(&mut rng) + 3.0).collect();
        w.observe(499, 2, |i| rows[i]);
        let r = w.judge();
        assert!(!r.verdict && r.features.is_empty());
        assert_eq!(r.samples, 499);
    }

    /// Half a standard deviation on one feature is found in every window; the undrifted
    /// features are flagged in at most 1% of 1,000 windows.
    #[test]
    fn a_half_sd_shift_is_found_and_undrifted_features_stay_quiet() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (features, windows) = (4, 1000);
        let profile = reference(&mut rng, features, 5000);
        let (mut found, mut false_flags) = (0, 0);
        let mut rows = vec![0.0; features * 1000];
        for _ in 0..windows {
            let w = DriftWindow::new(profile.clone(), spec(vec![]));
            for (i, x) in rows.iter_mut().enumerate() {
                *x = normal(&mut rng) + if i % features == 0 { 0.5 } else { 0.0 };
            }
            w.observe(1000, features, |i| rows[i]);
            let report = w.judge();
            found += usize::from(report.features[0].drifted);
            false_flags += report.features[1..].iter().filter(|f| f.drifted).count();
        }
        assert_eq!(found, windows, "power");
        let rate = false_flags as f64 / (windows * (features - 1)) as f64;
        assert!(rate <= 0.01, "false positive rate {rate}");
    }

    #[test]
    fn old_slots_leave_the_window() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let w = DriftWindow::new(reference(&mut rng, 1, 1000), spec(vec!["f0".into()]));
        w.rotate(0);
        w.observe(600, 1, |_| 5.0);
        assert!(w.judge().features[0].drifted);
        w.rotate(5_000);
        assert_eq!(w.judge().samples, 600, "half the window later the rows are still in it");
        w.rotate(10_000);
        assert_eq!(w.judge().samples, 0, "a whole window later they are gone");
        assert_eq!(w.judged().count(), 1);
    }
}
