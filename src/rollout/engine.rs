//! The canary state machine: steps of weight and pause, judged by the analysis, advanced,
//! promoted or rolled back. Pure: time comes in as `now_ms` (see [`Clock`]), so tests walk a
//! whole rollout in microseconds.
//!
//! **Repeated looks.** The analysis runs every `interval` on a growing window, and any look may
//! count towards a rollback; a per-look α would be spent again at every look. The plan's α is
//! therefore spent over the rollout's looks ([`look_alpha`]): half of it evenly (Bonferroni)
//! over the planned looks — ⌈pause / interval⌉ per step, [`UNTIL_PROMOTED_LOOKS`] for a step
//! held until promoted — and the other half over any looks past those (a step held
//! inconclusive, or longer than planned) as α·L / (2k(k−1)) at look k > L, which sums to α/2
//! however long it goes on. By the union bound a harmless canary is rolled back with
//! probability at most α over the whole rollout, whatever `failure_limit` is.

use super::analysis::{judge_canary, CanaryCriteria, Verdict};
pub use crate::config::plan::{AbPlan, BlueGreenPlan, CanaryPlan, OnInconclusive, Step};
use crate::telemetry::window::Window;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where time comes from; tests inject their own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}

/// How far a rollout has got; persisted with the route's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Index of the current step.
    pub step: usize,
    /// When it started (ms since the epoch).
    pub step_started_ms: u64,
    /// When the analysis last ran.
    pub last_analysis_ms: u64,
    /// Failed analyses in a row.
    pub failures: u32,
    /// Paused by an admin: no analysis, no advance.
    pub paused: bool,
    /// The last analysis' verdict.
    pub last_verdict: Option<Verdict>,
    /// Analyses run so far in the whole rollout (they share the plan's α).
    #[serde(default)]
    pub looks: u32,
}

/// Looks a step held `until_promoted` is planned for in the α budget (an hour at 10 s).
pub const UNTIL_PROMOTED_LOOKS: u64 = 360;

/// The looks the plan's α is planned to be spent over: ⌈pause / interval⌉ per step (at least
/// one), [`UNTIL_PROMOTED_LOOKS`] for a step without a pause.
pub fn planned_looks(plan: &CanaryPlan) -> u64 {
    let interval = plan.interval.as_millis().max(1);
    plan.steps
        .iter()
        .map(|s| s.pause.map_or(UNTIL_PROMOTED_LOOKS, |d| d.as_millis().div_ceil(interval).max(1) as u64))
        .sum::<u64>()
        .max(1)
}

/// The significance level of the rollout's `look`-th analysis (1-based): α / (2L) for the L
/// planned looks, α·L / (2k(k−1)) for a look k past them. The levels sum to at most α.
pub fn look_alpha(plan: &CanaryPlan, look: u64) -> f64 {
    let alpha = plan.criteria.alpha;
    let l = planned_looks(plan) as f64;
    let k = look.max(1) as f64;
    if k <= l {
        alpha / (2.0 * l)
    } else {
        alpha * l / (2.0 * k * (k - 1.0))
    }
}

/// What the engine decided at one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing changes (not time yet, paused, holding, or a failure below the limit).
    Nothing,
    /// The step passed: go to this step.
    Advance(usize),
    /// The last step passed: the canary takes all traffic.
    Promote,
    /// Take the canary out, for this reason.
    Rollback(String),
}

/// One tick of the state machine at `now_ms`, given the current step's windows.
pub fn tick(plan: &CanaryPlan, p: &mut Progress, now_ms: u64, stable: &Window, canary: &Window) -> Decision {
    tick_with_checks(plan, p, now_ms, stable, canary, &Verdict::Pass)
}

/// The windows' verdict with the plan's Prometheus checks': a failed check fails the analysis;
/// a check without data keeps a passing one inconclusive (never a failure).
pub fn with_checks(windows: Verdict, checks: &Verdict) -> Verdict {
    match (windows, checks) {
        (Verdict::Fail(why), _) => Verdict::Fail(why),
        (_, Verdict::Fail(why)) => Verdict::Fail(why.clone()),
        (Verdict::Pass, Verdict::Inconclusive(why)) => Verdict::Inconclusive(why.clone()),
        (verdict, _) => verdict,
    }
}

/// [`tick`] with the verdict of the plan's Prometheus checks for this step (see [`with_checks`]).
pub fn tick_with_checks(
    plan: &CanaryPlan,
    p: &mut Progress,
    now_ms: u64,
    stable: &Window,
    canary: &Window,
    checks: &Verdict,
) -> Decision {
    if p.paused || now_ms.saturating_sub(p.last_analysis_ms) < plan.interval.as_millis() as u64 {
        return Decision::Nothing;
    }
    p.last_analysis_ms = now_ms;
    p.looks = p.looks.saturating_add(1);
    let criteria = CanaryCriteria { alpha: look_alpha(plan, u64::from(p.looks)), ..plan.criteria.clone() };
    let verdict = with_checks(judge_canary(stable, canary, &criteria), checks);
    p.last_verdict = Some(verdict.clone());
    let elapsed = Duration::from_millis(now_ms.saturating_sub(p.step_started_ms));
    let pause = plan.steps.get(p.step).and_then(|s| s.pause);
    match verdict {
        Verdict::Fail(why) => {
            p.failures += 1;
            if p.failures >= plan.failure_limit {
                Decision::Rollback(format!("{} failed analyses in a row; last: {why}", p.failures))
            } else {
                Decision::Nothing
            }
        }
        Verdict::Pass => {
            p.failures = 0;
            match pause {
                Some(d) if elapsed >= d => {
                    if p.step + 1 < plan.steps.len() {
                        p.step += 1;
                        p.step_started_ms = now_ms;
                        Decision::Advance(p.step)
                    } else {
                        Decision::Promote
                    }
                }
                _ => Decision::Nothing,
            }
        }
        Verdict::Inconclusive(why) => match pause {
            Some(d)
                if elapsed >= d + plan.inconclusive_deadline && plan.on_inconclusive == OnInconclusive::Rollback =>
            {
                Decision::Rollback(format!("still inconclusive {elapsed:?} into the step: {why}"))
            }
            _ => Decision::Nothing,
        },
    }
}

#[cfg(test)]
mod tests;
