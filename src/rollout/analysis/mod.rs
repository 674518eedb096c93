//! Analysis judges: pure functions from windows to a [`Verdict`] (canary) or an [`AbOutcome`].
//!
//! Too few samples is always *Inconclusive* (hold), never Fail. Rollback needs evidence of harm,
//! promotion needs evidence of non-inferiority. One call of [`judge_canary`] at level `alpha`
//! fails a harmless canary with probability at most `alpha`: the level is split evenly
//! (Bonferroni) over the checks configured. Repeated looks are the engine's business: it spends
//! the plan's α over the rollout's looks (see `engine`). The statistics ([`stats`]):
//! - **error ceiling**: exact binomial tail, P(X ≥ errors | n, max_error_rate) < α to Fail;
//! - **error increase**: one-sided two-proportion z against a shift of
//!   `max_error_rate_increase` (variance at the null boundary); a point estimate over either
//!   limit without significance is Inconclusive;
//! - **p99 gate**: canary p99 over `max_p99_ratio` × stable's, confirmed by a tail test — the
//!   pooled p99 of both sides' successful answers is the threshold, and the canary's share of the
//!   answers above it is tested with a one-sided hypergeometric (Fisher exact) test. The
//!   threshold depends only on the pooled multiset, so under "same latency distribution" the
//!   test is exact; unlike Mann-Whitney it looks at the tail, where a slow 2% hides from ranks.
//!   Ratio over without a significant tail is Inconclusive;
//! - **business guard**: non-inferiority z on the goal metric, means with cluster-robust
//!   (delta-method over unit cells) variances. Pass when (diff + margin)/se > z₁₋α, Fail when it
//!   is below −z₁₋α (shown worse than the margin), otherwise Inconclusive. z₁₋α is Student's t
//!   quantile on the effective number of cells, min over the arms, minus one: a few heavy users
//!   carrying most outcomes leave the mean far from normal at the small α of a spent look;
//! - **A/B winner**: mixture sequential probability ratio test (mSPRT, normal mixture; Johari,
//!   Pekelis & Walsh 2017) on the cluster-robust variance of the difference. Its always-valid
//!   p-value stays valid however often it is looked at; winners are declared against the first
//!   arm (control), Bonferroni-corrected over the other arms;
//! - **sample-ratio mismatch**: on assignment *units* (distinct users at one common sampling
//!   level, plus unkeyed requests), never requests — a heavy user's requests are not independent
//!   draws. The halt uses the sequential Dirichlet-multinomial test of Lindon & Malek (2022),
//!   prior concentration [`SRM_CONCENTRATION`], at [`SRM_ALPHA`]: its Bayes factor is a test
//!   martingale under correct assignment, so the chance of a false halt over the whole test is
//!   at most 0.1% whatever the number of looks (a fixed chi-square threshold peeked every
//!   interval would be crossed eventually). When the distinct-unit sample rises a level the
//!   test continues on the hash-defined sub-sample; each of those few levels keeps the bound.

pub mod simulate;
pub mod stats;

pub use crate::config::plan::{AbCriteria, BusinessGuard, CanaryCriteria, Metric};
use crate::telemetry::window::{comparable_units, Window};
use hdrhistogram::Histogram;
use serde::Serialize;
use stats::{binomial_sf_at_least, goal_estimate, normal_cdf, normal_sf, student_t_upper_quantile, tail_counts};
pub use stats::{msprt_lr, sample_ratio_p, MeanEstimate};

/// Overall level of the sequential sample-ratio test: false halts over a whole A/B test.
pub const SRM_ALPHA: f64 = 0.001;

/// Dirichlet prior concentration of the sample-ratio test (α_i = concentration × share):
/// tuned to find mismatches of a few percent of the traffic within thousands of units.
pub const SRM_CONCENTRATION: f64 = 100.0;

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

fn latency_ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// How many checks of `c` can fail; the analysis level is split over them.
fn checks(c: &CanaryCriteria) -> usize {
    [c.max_error_rate.is_some(), c.max_error_rate_increase.is_some(), c.max_p99_ratio.is_some(), c.business.is_some()]
        .iter()
        .filter(|x| **x)
        .count()
        .max(1)
}

/// Judges a canary's window against stable's. Under a harmless canary the chance of `Fail`
/// is at most `c.alpha` (for one call).
pub fn judge_canary(stable: &Window, canary: &Window, c: &CanaryCriteria) -> Verdict {
    if canary.requests < c.min_samples {
        return Verdict::Inconclusive(format!("canary has {} of {} samples", canary.requests, c.min_samples));
    }
    let alpha = c.alpha / checks(c) as f64;
    let rate = |w: &Window| w.errors as f64 / w.requests.max(1) as f64;
    let (err_c, err_s) = (rate(canary), rate(stable));
    let mut pending = Vec::new();
    if let Some(max) = c.max_error_rate {
        if err_c > max {
            let p = binomial_sf_at_least(canary.errors, canary.requests, max);
            let what = format!(
                "canary error rate {:.2}% over the {:.2}% limit ({} of {} requests; binomial p={p:.2e})",
                err_c * 100.0,
                max * 100.0,
                canary.errors,
                canary.requests
            );
            if p < alpha {
                return Verdict::Fail(what);
            }
            pending.push(format!("{what}, not yet significant at {alpha:.1e}"));
        }
    }
    let stable_enough = stable.requests >= c.min_samples;
    if let Some(max) = c.max_error_rate_increase {
        if !stable_enough {
            pending.push(format!("stable has {} of {} samples for the comparison", stable.requests, c.min_samples));
        } else if err_c - err_s > max {
            let z = stats::two_proportion_z(canary.errors, canary.requests, stable.errors, stable.requests, max);
            let p = z.map_or(1.0, normal_sf);
            let what = format!(
                "canary error rate {:.2}% is {:.2} points over stable's {:.2}% (limit {:.2}; z-test p={p:.2e})",
                err_c * 100.0,
                (err_c - err_s) * 100.0,
                err_s * 100.0,
                max * 100.0
            );
            if p < alpha {
                return Verdict::Fail(what);
            }
            pending.push(format!("{what}, not yet significant at {alpha:.1e}"));
        }
    }
    if let Some(ratio) = c.max_p99_ratio {
        if !stable_enough {
            pending.push(format!(
                "stable has {} of {} samples for the latency comparison",
                stable.requests, c.min_samples
            ));
        } else if let Some(tail) = tail_counts(&stable.latency, &canary.latency, 0.99) {
            let (p99_c, p99_s) = (latency_ms(&canary.latency, 0.99), latency_ms(&stable.latency, 0.99));
            if p99_c > ratio * p99_s {
                let p = tail.p_value();
                let what = format!(
                    "canary p99 {p99_c:.2} ms is {:.2}x stable's {p99_s:.2} ms (limit {ratio}x); {} of the {} answers over the pooled p99 {:.2} ms are the canary's, {:.1} expected (tail test p={p:.2e})",
                    p99_c / p99_s.max(f64::MIN_POSITIVE),
                    tail.candidate_above,
                    tail.above,
                    tail.threshold_us as f64 / 1000.0,
                    tail.above as f64 * tail.candidate as f64 / tail.total.max(1) as f64,
                );
                if p < alpha {
                    return Verdict::Fail(what);
                }
                pending.push(format!("{what}, not yet significant at {alpha:.1e}"));
            }
        }
    }
    if let Some(g) = &c.business {
        match business(stable, canary, g, alpha) {
            Guard::Worse(why) => return Verdict::Fail(why),
            Guard::Unproven(why) => pending.push(why),
            Guard::NonInferior => {}
        }
    }
    if pending.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Inconclusive(pending.join("; "))
    }
}

/// What the business guard found.
enum Guard {
    NonInferior,
    Worse(String),
    Unproven(String),
}

fn business(stable: &Window, canary: &Window, g: &BusinessGuard, alpha: f64) -> Guard {
    let (gs, gc) = (stable.goal(g.metric), canary.goal(g.metric));
    if gs.n < g.min_samples || gc.n < g.min_samples {
        return Guard::Unproven(format!(
            "{:?} has {}/{} samples (stable/canary) of {} needed",
            g.metric, gs.n, gc.n, g.min_samples
        ));
    }
    let (Some(s), Some(k)) = (goal_estimate(gs), goal_estimate(gc)) else {
        return Guard::Unproven(format!("{:?} outcomes come from too few units to estimate a variance", g.metric));
    };
    let se = (s.var + k.var).sqrt();
    let diff = k.mean - s.mean;
    let z = if se > 0.0 {
        (diff + g.margin) / se
    } else {
        match (diff + g.margin).partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => f64::INFINITY,
            Some(std::cmp::Ordering::Less) => f64::NEG_INFINITY,
            _ => 0.0,
        }
    };
    // Heavy units make the clustered mean far from normal in the tails the test uses: the
    // critical value is Student's t on the effective number of cells (a Satterthwaite-style
    // small-cluster correction; the normal's when there are many).
    let df = (s.effective_cells.min(k.effective_cells) - 1.0).max(1.0);
    let crit = student_t_upper_quantile(alpha, df);
    let numbers = format!(
        "canary {:?} {:.4} vs stable's {:.4} (margin {}, z={z:.2}, needed ±{crit:.2})",
        g.metric, k.mean, s.mean, g.margin
    );
    if z > crit {
        Guard::NonInferior
    } else if z < -crit {
        Guard::Worse(format!("{numbers}: worse by more than the margin (p={:.2e})", normal_cdf(z)))
    } else {
        Guard::Unproven(format!("{numbers}: not yet shown within the margin"))
    }
}

/// The mSPRT likelihood ratio for "arm b differs from arm a" on `metric`, with mixture variance
/// `tau2` (the squared size of effects worth finding), on the cluster-robust variance of the
/// difference of means. Reject "no difference" when it reaches 1/α.
pub fn msprt_ratio(a: &Window, b: &Window, metric: Metric, tau2: f64) -> Option<f64> {
    let (ea, eb) = (goal_estimate(a.goal(metric))?, goal_estimate(b.goal(metric))?);
    msprt_lr(eb.mean - ea.mean, ea.var + eb.var, tau2)
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
    /// The arms' units do not match their weights: the experiment is broken.
    SampleRatioMismatch {
        /// The always-valid p-value of the sequential sample-ratio test (1 / Bayes factor).
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

/// The always-valid sample-ratio p-value of the arms' units against `weights` (1 / Bayes factor
/// of the sequential Dirichlet-multinomial test, at most 1).
pub fn sample_ratio_mismatch_p(windows: &[&Window], weights: &[f64]) -> Option<f64> {
    let units: Vec<_> = windows.iter().map(|w| &w.units).collect();
    let counts = comparable_units(&units);
    stats::srm_log_bayes_factor(&counts, weights, SRM_CONCENTRATION).map(|l| (-l).exp().min(1.0))
}

/// Judges an A/B test; `windows[0]` is control. `weights` are the arms' traffic shares.
pub fn judge_ab(windows: &[&Window], weights: &[f64], c: &AbCriteria) -> AbOutcome {
    if let Some(p) = sample_ratio_mismatch_p(windows, weights) {
        if p <= SRM_ALPHA {
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
        let (g0, gi) = (windows[0].goal(c.metric), w.goal(c.metric));
        if g0.n < c.min_samples || gi.n < c.min_samples {
            continue;
        }
        let Some(ratio) = msprt_ratio(windows[0], w, c.metric, c.tau2) else { continue };
        if ratio >= threshold {
            let winner = if gi.mean > g0.mean { i } else { 0 };
            let lift = (gi.mean - g0.mean).abs();
            if best.is_none_or(|(_, _, l)| lift > l) {
                best = Some((winner, ratio, lift));
            }
        }
    }
    match best {
        Some((arm, ratio, lift)) => AbOutcome::Winner {
            arm,
            why: format!(
                "{:?} differs by {lift:.4}; mSPRT ratio {ratio:.1} over {threshold:.1} (always-valid p={:.2e}, unit-clustered variance)",
                c.metric,
                1.0 / ratio
            ),
        },
        None => AbOutcome::Continue { why: format!("no arm differs from control at alpha={} yet", c.alpha) },
    }
}

#[cfg(test)]
mod reference;
#[cfg(test)]
pub(crate) mod tests;
