//! The canary state machine: steps of weight and pause, judged by the analysis, advanced,
//! promoted or rolled back. Pure: time comes in as `now_ms` (see [`Clock`]), so tests walk a
//! whole rollout in microseconds.

use super::analysis::{judge_canary, Verdict};
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
    if p.paused || now_ms.saturating_sub(p.last_analysis_ms) < plan.interval.as_millis() as u64 {
        return Decision::Nothing;
    }
    p.last_analysis_ms = now_ms;
    let verdict = judge_canary(stable, canary, &plan.criteria);
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
