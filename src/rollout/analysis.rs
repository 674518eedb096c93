//! Analysis judges: pure functions from window snapshots to a [`Verdict`].
//!
//! Too few samples is always *Inconclusive* (hold), never Fail. The statistics:
//! - error rate: absolute ceiling, and the increase over stable;
//! - latency: p99 ratio against stable, confirmed by a one-sided Mann-Whitney U test on the two
//!   HDR histograms (ranks with ties, normal approximation) — a p99 over the ratio without a
//!   significant shift is Inconclusive, not Fail;
//! - business guard: one-sided non-inferiority z-test (candidate not worse than stable by more
//!   than `margin`, at significance α), for conversion, accuracy (proportions) or reward (means);
//! - A/B: a mixture sequential probability ratio test (mSPRT, normal mixture; Johari, Pekelis &
//!   Walsh 2017). Its always-valid p-value stays valid however often it is looked at, which a
//!   fixed-horizon test does not, and it needs no prior over the arms as a Bayesian "probability
//!   of being best" would; winners are declared against the first arm (control), Bonferroni-
//!   corrected over the other arms;
//! - sample-ratio mismatch: chi-square goodness of fit of the arms' request counts against
//!   their weights.

pub use crate::config::plan::{AbCriteria, BusinessGuard, CanaryCriteria, Metric};
use crate::telemetry::window::Window;
use hdrhistogram::Histogram;
use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal};

/// The outcome of one analysis.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// The candidate is as good as required.
    Pass,
    /// The candidate is worse; the reason carries the numbers.
    Fail(String),
    /// Not enough evidence either way; the reason says what is missing.
    Inconclusive(String),
}

fn std_normal() -> Normal {
    // Mean 0 and standard deviation 1 are valid parameters.
    Normal::new(0.0, 1.0).expect("standard normal")
}

/// One-sided Mann-Whitney U test that `b`'s values are larger than `a`'s, on two histograms.
/// Returns the p-value (normal approximation with tie correction), `None` without data.
pub fn mann_whitney_greater(a: &Histogram<u64>, b: &Histogram<u64>) -> Option<f64> {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    let counts = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
        h.iter_recorded().map(|v| (h.highest_equivalent(v.value_iterated_to()), v.count_at_value())).collect()
    };
    let (ca, cb) = (counts(a), counts(b));
    let (mut i, mut j) = (0, 0);
    let (mut rank, mut rank_sum_b, mut ties) = (0.0f64, 0.0f64, 0.0f64);
    while i < ca.len() || j < cb.len() {
        let va = ca.get(i).map_or(u64::MAX, |x| x.0);
        let vb = cb.get(j).map_or(u64::MAX, |x| x.0);
        let v = va.min(vb);
        let ka = if va == v {
            i += 1;
            ca[i - 1].1
        } else {
            0
        } as f64;
        let kb = if vb == v {
            j += 1;
            cb[j - 1].1
        } else {
            0
        } as f64;
        let t = ka + kb;
        let mid = rank + (t + 1.0) / 2.0;
        rank_sum_b += kb * mid;
        rank += t;
        ties += t * t * t - t;
    }
    let n = na + nb;
    let u_b = rank_sum_b - nb * (nb + 1.0) / 2.0;
    let mean = na * nb / 2.0;
    let var = na * nb / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return Some(1.0);
    }
    let z = (u_b - mean) / var.sqrt();
    Some(1.0 - std_normal().cdf(z))
}

/// A business metric's samples, mean and variance of one side.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Moments {
    n: f64,
    mean: f64,
    var: f64,
}

fn moments(w: &Window, metric: Metric) -> Moments {
    let g = w.goal(metric);
    Moments { n: g.n as f64, mean: g.mean, var: g.variance() }
}

fn latency_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Judges a canary's window against stable's.
pub fn judge_canary(stable: &Window, canary: &Window, c: &CanaryCriteria) -> Verdict {
    if canary.requests < c.min_samples {
        return Verdict::Inconclusive(format!("canary has {} of {} samples", canary.requests, c.min_samples));
    }
    let rate = |w: &Window| w.errors as f64 / w.requests.max(1) as f64;
    let (err_c, err_s) = (rate(canary), rate(stable));
    if let Some(max) = c.max_error_rate {
        if err_c > max {
            return Verdict::Fail(format!(
                "canary error rate {:.2}% over the {:.2}% limit ({} of {} requests)",
                err_c * 100.0,
                max * 100.0,
                canary.errors,
                canary.requests
            ));
        }
    }
    let stable_enough = stable.requests >= c.min_samples;
    if let Some(max) = c.max_error_rate_increase {
        if stable_enough && err_c - err_s > max {
            return Verdict::Fail(format!(
                "canary error rate {:.2}% is {:.2} points over stable's {:.2}% (limit {:.2})",
                err_c * 100.0,
                (err_c - err_s) * 100.0,
                err_s * 100.0,
                max * 100.0
            ));
        }
    }
    let mut pending = Vec::new();
    if let Some(ratio) = c.max_p99_ratio {
        if !stable_enough {
            pending.push(format!(
                "stable has {} of {} samples for the latency comparison",
                stable.requests, c.min_samples
            ));
        } else {
            let (p99_c, p99_s) = (latency_ms(&canary.latency, 0.99), latency_ms(&stable.latency, 0.99));
            if p99_c > ratio * p99_s {
                let p = mann_whitney_greater(&stable.latency, &canary.latency).unwrap_or(1.0);
                if p < c.alpha {
                    return Verdict::Fail(format!(
                        "canary p99 {p99_c:.2} ms is {:.2}x stable's {p99_s:.2} ms (limit {ratio}x; Mann-Whitney p={p:.2e})",
                        p99_c / p99_s.max(f64::MIN_POSITIVE)
                    ));
                }
                pending.push(format!(
                    "canary p99 {p99_c:.2} ms over {ratio}x stable's {p99_s:.2} ms, not yet significant (p={p:.3})"
                ));
            }
        }
    }
    if let Some(g) = &c.business {
        let (s, k) = (moments(stable, g.metric), moments(canary, g.metric));
        if s.n < g.min_samples as f64 || k.n < g.min_samples as f64 {
            pending.push(format!(
                "{:?} has {}/{} samples (stable/canary) of {} needed",
                g.metric, s.n, k.n, g.min_samples
            ));
        } else {
            let se = (s.var / s.n + k.var / k.n).sqrt();
            let diff = k.mean - s.mean;
            let z = if se > 0.0 {
                (diff + g.margin) / se
            } else if diff + g.margin >= 0.0 {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            let p = std_normal().cdf(z);
            if p < c.alpha {
                return Verdict::Fail(format!(
                    "canary {:?} {:.4} is worse than stable's {:.4} by more than {} (p={p:.2e})",
                    g.metric, k.mean, s.mean, g.margin
                ));
            }
        }
    }
    if pending.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Inconclusive(pending.join("; "))
    }
}

/// Chi-square goodness-of-fit p-value of observed counts against expected shares.
pub fn sample_ratio_p(observed: &[u64], weights: &[f64]) -> Option<f64> {
    let n: f64 = observed.iter().map(|&x| x as f64).sum();
    let total: f64 = weights.iter().sum();
    if observed.len() < 2 || observed.len() != weights.len() || n == 0.0 || total <= 0.0 {
        return None;
    }
    let mut stat = 0.0;
    for (&o, &w) in observed.iter().zip(weights) {
        let e = n * w / total;
        if e > 0.0 {
            stat += (o as f64 - e).powi(2) / e;
        } else if o > 0 {
            return Some(0.0);
        }
    }
    let df = (observed.len() - 1) as f64;
    ChiSquared::new(df).ok().map(|d| d.sf(stat))
}

/// The mSPRT likelihood ratio for "arm b differs from arm a" on `metric`, with mixture variance
/// `tau2` (the squared size of effects worth finding). Reject "no difference" when it reaches 1/α.
pub fn msprt_ratio(a: &Window, b: &Window, metric: Metric, tau2: f64) -> Option<f64> {
    let (ma, mb) = (moments(a, metric), moments(b, metric));
    if ma.n < 2.0 || mb.n < 2.0 {
        return None;
    }
    let v = ma.var / ma.n + mb.var / mb.n;
    if v <= 0.0 {
        return None;
    }
    let theta = mb.mean - ma.mean;
    Some((v / (v + tau2)).sqrt() * (tau2 * theta * theta / (2.0 * v * (v + tau2))).exp())
}

/// What an A/B analysis found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum AbOutcome {
    /// No winner yet.
    Continue {
        /// What is missing.
        why: String,
    },
    /// An arm is better than control, significantly.
    Winner {
        /// Index of the arm.
        arm: usize,
        /// The evidence.
        why: String,
    },
    /// The arms' traffic does not match their weights: the experiment is broken.
    SampleRatioMismatch {
        /// The chi-square p-value.
        p: f64,
    },
    /// An arm harms a guardrail (errors or latency).
    Guardrail {
        /// Index of the arm.
        arm: usize,
        /// The failing check.
        why: String,
    },
}

/// Judges an A/B test; `windows[0]` is control. `weights` are the arms' traffic shares.
pub fn judge_ab(windows: &[&Window], weights: &[f64], c: &AbCriteria) -> AbOutcome {
    let counts: Vec<u64> = windows.iter().map(|w| w.requests).collect(); // TODO units
    if let Some(p) = sample_ratio_p(&counts, weights) {
        if p < 0.001 && counts.iter().sum::<u64>() >= 1000 {
            return AbOutcome::SampleRatioMismatch { p };
        }
    }
    if let Some(g) = &c.guardrails {
        for (i, w) in windows.iter().enumerate().skip(1) {
            if let Verdict::Fail(why) = judge_canary(windows[0], w, g) {
                return AbOutcome::Guardrail { arm: i, why };
            }
        }
    }
    let arms = windows.len().saturating_sub(1).max(1) as f64;
    let threshold = arms / c.alpha;
    let mut best: Option<(usize, f64, f64)> = None;
    for (i, w) in windows.iter().enumerate().skip(1) {
        let (m0, mi) = (moments(windows[0], c.metric), moments(w, c.metric));
        if m0.n < c.min_samples as f64 || mi.n < c.min_samples as f64 {
            continue;
        }
        let Some(ratio) = msprt_ratio(windows[0], w, c.metric, c.tau2) else { continue };
        if ratio >= threshold {
            let winner = if mi.mean > m0.mean { i } else { 0 };
            let lift = (mi.mean - m0.mean).abs();
            if best.is_none_or(|(_, _, l)| lift > l) {
                best = Some((winner, ratio, lift));
            }
        }
    }
    match best {
        Some((arm, ratio, lift)) => AbOutcome::Winner {
            arm,
            why: format!(
                "{:?} differs by {lift:.4}; mSPRT ratio {ratio:.1} over {threshold:.1} (always-valid p={:.2e})",
                c.metric,
                1.0 / ratio
            ),
        },
        None => AbOutcome::Continue { why: format!("no arm differs from control at alpha={} yet", c.alpha) },
    }
}

#[cfg(test)]
pub(crate) mod tests;
