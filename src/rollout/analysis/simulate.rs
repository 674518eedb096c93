//! Decision-quality simulator: thousands of rollouts in simulated time through the real
//! analysis ([`engine::tick`], [`judge_ab`]) fed by real [`VariantStats`] windows, to measure
//! false decisions and power. Traffic is realistic where it matters to the statistics: sticky
//! users with heavy-tailed (Pareto) request counts and their own conversion propensities,
//! requests without a key, pinned smoke traffic that must change nothing, feedback arriving
//! late, and steps that reset the windows as the controller does (`control::step_canary` and
//! `step_ab` are mirrored here).

use super::{judge_ab, AbOutcome};
use crate::config::plan::{AbPlan, CanaryPlan};
use crate::rollout::engine::{self, Decision, Progress};
use crate::telemetry::window::{Unit, Window};
use crate::telemetry::{Feedback, Telemetry, VariantStats};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

/// Who sends traffic and how it behaves, shared by every arm.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    /// Assigned (not pinned) requests per second.
    pub rps: f64,
    /// Sticky users in the population.
    pub users: usize,
    /// Pareto shape of a user's request rate (smaller: heavier tail).
    pub pareto_shape: f64,
    /// Share of requests with no sticky key (each randomized on its own).
    pub unkeyed_share: f64,
    /// Pinned smoke requests per second to the candidate: all 500s, 5 s slow, never converting.
    pub pinned_rps: f64,
    /// Share of answers that get conversion feedback.
    pub feedback_share: f64,
    /// Mean feedback delay (exponential), seconds.
    pub feedback_delay_s: f64,
    /// Median of the successful latency (lognormal), ms.
    pub latency_median_ms: f64,
    /// Log-space standard deviation of the latency.
    pub latency_sigma: f64,
    /// Share of users who are buyers.
    pub buyers: f64,
    /// A buyer's conversion probability per answer.
    pub buyer_p: f64,
    /// Anyone else's.
    pub other_p: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            rps: 100.0,
            users: 20_000,
            pareto_shape: 1.2,
            unkeyed_share: 0.1,
            pinned_rps: 1.0,
            feedback_share: 0.5,
            feedback_delay_s: 30.0,
            latency_median_ms: 20.0,
            latency_sigma: 0.5,
            buyers: 0.2,
            buyer_p: 0.4,
            other_p: 0.025,
        }
    }
}

/// How one arm (variant) behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// Share of answers that are 500s.
    pub error_rate: f64,
    /// Share of successful answers slowed by `tail_extra_ms`.
    pub tail_share: f64,
    /// Added latency of the slowed share, ms.
    pub tail_extra_ms: f64,
    /// Conversion probability = user propensity × this.
    pub conversion_factor: f64,
}

impl Default for Arm {
    fn default() -> Self {
        Arm { error_rate: 0.01, tail_share: 0.0, tail_extra_ms: 0.0, conversion_factor: 1.0 }
    }
}

/// What is rolled out.
#[derive(Debug, Clone, PartialEq)]
pub enum Experiment {
    /// A stepped canary; arms are [stable, canary]. Runs until a decision or `horizon`.
    Canary {
        /// The plan.
        plan: CanaryPlan,
        /// When an undecided rollout is given up on.
        horizon: Duration,
    },
    /// An A/B test; arms in order, the first is control. Runs for `horizon` unless decided.
    Ab {
        /// The plan.
        plan: AbPlan,
        /// Traffic weights of the arms.
        weights: Vec<f64>,
        /// How long the test runs.
        horizon: Duration,
    },
}

/// One simulated situation: traffic, experiment and the arms' true behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Shown in the table.
    pub name: String,
    /// The traffic.
    pub traffic: Traffic,
    /// The rollout.
    pub experiment: Experiment,
    /// The arms, in the experiment's order.
    pub arms: Vec<Arm>,
}

/// How one simulated rollout ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The canary took all traffic.
    Promoted,
    /// The canary was rolled back, for this reason.
    RolledBack(String),
    /// An A/B arm was declared the winner.
    Winner(usize),
    /// The A/B test halted on a sample-ratio mismatch.
    SampleRatioMismatch,
    /// An A/B arm was stopped by a guardrail.
    Guardrail(usize),
    /// Nothing decided by the horizon.
    Undecided,
}

/// One simulated rollout's result.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The decision.
    pub outcome: Outcome,
    /// Assigned (not pinned) requests the candidate arms answered until the decision.
    pub candidate_requests: u64,
    /// Simulated time of the decision, ms.
    pub at_ms: u64,
}

/// One feedback report due at a time.
type Due = Reverse<(u64, usize, u64, bool, bool)>;

fn std_normal(rng: &mut StdRng) -> f64 {
    // Box-Muller by hand: statrs is built without its `rand` feature, and this is one line.
    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// A run's population: cumulative request weights, unit ids, buckets and propensities.
struct Population {
    cumulative: Vec<f64>,
    ids: Vec<u64>,
    buckets: Vec<u32>,
    propensity: Vec<f64>,
}

impl Population {
    fn new(t: &Traffic, rng: &mut StdRng) -> Population {
        let mut total = 0.0;
        let mut p = Population { cumulative: vec![], ids: vec![], buckets: vec![], propensity: vec![] };
        for _ in 0..t.users.max(1) {
            total += (1.0 - rng.random::<f64>()).powf(-1.0 / t.pareto_shape);
            p.cumulative.push(total);
            let id: u64 = rng.random();
            p.ids.push(id);
            p.buckets.push((xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) % 10_000) as u32);
            p.propensity.push(if rng.random_bool(t.buyers) { t.buyer_p } else { t.other_p });
        }
        p
    }

    fn pick(&self, rng: &mut StdRng) -> usize {
        let x = rng.random::<f64>() * self.cumulative.last().copied().unwrap_or(0.0);
        self.cumulative.partition_point(|c| *c < x).min(self.ids.len() - 1)
    }
}

/// The arm owning `bucket` (0..10 000) when arms own consecutive ranges by weight, in order.
fn arm_of(bucket: f64, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut edge = 0.0;
    for (i, w) in weights.iter().enumerate() {
        edge += w / total * 10_000.0;
        if bucket < edge {
            return i;
        }
    }
    weights.len() - 1
}

/// Runs one simulated rollout with its own random stream.
pub fn run_once(s: &Scenario, seed: u64) -> RunResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let t = &s.traffic;
    let pop = Population::new(t, &mut rng);
    let telemetry = Telemetry::new();
    let stats: Vec<Arc<VariantStats>> =
        (0..s.arms.len()).map(|i| telemetry.variant("sim", &format!("arm{i}"))).collect();
    let (horizon, interval_ms) = match &s.experiment {
        Experiment::Canary { horizon, plan } => (*horizon, plan.interval.as_millis() as u64),
        Experiment::Ab { horizon, plan, .. } => (*horizon, plan.interval.as_millis() as u64),
    };
    let mut progress = Progress::default(); // fresh_progress(0)
    let mut feedback: BinaryHeap<Due> = BinaryHeap::new();
    let (mut candidate_requests, mut next_arrival, mut next_pinned) = (0u64, 0.0f64, 0.0f64);
    let end_ms = horizon.as_millis() as u64;
    let mut now = 0u64;
    while now < end_ms {
        now += 1000;
        let weights: Vec<f64> = match &s.experiment {
            Experiment::Canary { plan, .. } => {
                let w = plan.weight(progress.step);
                vec![100.0 - w, w]
            }
            Experiment::Ab { weights, .. } => weights.clone(),
        };
        while next_arrival < now as f64 {
            let at = next_arrival as u64;
            next_arrival += exponential(&mut rng, 1000.0 / t.rps);
            let (unit, arm, propensity) = if rng.random_bool(t.unkeyed_share) {
                let arm = arm_of(rng.random_range(0.0..10_000.0), &weights);
                let propensity = if rng.random_bool(t.buyers) { t.buyer_p } else { t.other_p };
                (Unit::Request(rng.random()), arm, propensity)
            } else {
                let u = pop.pick(&mut rng);
                (Unit::Key(pop.ids[u]), arm_of(f64::from(pop.buckets[u]), &weights), pop.propensity[u])
            };
            let a = &s.arms[arm];
            candidate_requests += u64::from(arm != 0);
            let error = rng.random_bool(a.error_rate);
            let mut ms = t.latency_median_ms * (t.latency_sigma * std_normal(&mut rng)).exp();
            if !error && a.tail_share > 0.0 && rng.random_bool(a.tail_share) {
                ms += a.tail_extra_ms;
            }
            stats[arm].record(if error { 500 } else { 200 }, Duration::from_secs_f64(ms / 1000.0), unit);
            if !error && rng.random_bool(t.feedback_share) {
                let converted = rng.random_bool((propensity * a.conversion_factor).clamp(0.0, 1.0));
                let due = at + exponential(&mut rng, t.feedback_delay_s * 1000.0) as u64;
                let id = unit.id().unwrap_or(0);
                feedback.push(Reverse((due, arm, id, matches!(unit, Unit::Key(_)), converted)));
            }
        }
        while t.pinned_rps > 0.0 && next_pinned < now as f64 {
            next_pinned += 1000.0 / t.pinned_rps;
            let last = s.arms.len() - 1;
            stats[last].record(500, Duration::from_secs(5), Unit::Pinned);
            stats[last].feedback(&Feedback { conversion: Some(false), ..Feedback::default() }, Unit::Pinned);
        }
        while let Some(Reverse((due, arm, id, keyed, converted))) = feedback.peek().copied() {
            if due > now {
                break;
            }
            feedback.pop();
            let unit = if keyed { Unit::Key(id) } else { Unit::Request(id) };
            stats[arm].feedback(&Feedback { conversion: Some(converted), ..Feedback::default() }, unit);
        }
        let decided = |outcome| RunResult { outcome, candidate_requests, at_ms: now };
        match &s.experiment {
            Experiment::Canary { plan, .. } => {
                if now.saturating_sub(progress.last_analysis_ms) < interval_ms {
                    continue; // `tick` would do nothing: spare the copies of the windows
                }
                let (stable, canary) = (stats[0].step_window(), stats[1].step_window());
                match engine::tick(plan, &mut progress, now, &stable, &canary) {
                    Decision::Nothing => {}
                    Decision::Advance(_) => {
                        stats.iter().for_each(|s| s.reset_step());
                    }
                    Decision::Promote => return decided(Outcome::Promoted),
                    Decision::Rollback(why) => return decided(Outcome::RolledBack(why)),
                }
            }
            Experiment::Ab { plan, weights, .. } => {
                if now.saturating_sub(progress.last_analysis_ms) < interval_ms {
                    continue;
                }
                progress.last_analysis_ms = now;
                let windows: Vec<Window> = stats.iter().map(|s| s.step_window()).collect();
                let refs: Vec<&Window> = windows.iter().collect();
                // Every outcome but Continue ends the run: the first decision is what is measured
                // (the controller would go on without a stopped arm).
                match judge_ab(&refs, weights, &plan.criteria) {
                    AbOutcome::Continue { .. } => {}
                    AbOutcome::Winner { arm, .. } => return decided(Outcome::Winner(arm)),
                    AbOutcome::SampleRatioMismatch { .. } => return decided(Outcome::SampleRatioMismatch),
                    AbOutcome::Guardrail { arm, .. } => return decided(Outcome::Guardrail(arm)),
                }
            }
        }
    }
    RunResult { outcome: Outcome::Undecided, candidate_requests, at_ms: now }
}

/// Runs `runs` rollouts of `s` on `threads` threads; run `i` uses seed `seed + i`, so the
/// results do not depend on the number of threads.
pub fn run_many(s: &Scenario, runs: usize, seed: u64, threads: usize) -> Vec<RunResult> {
    let threads = threads.clamp(1, runs.max(1));
    let mut out: Vec<Option<RunResult>> = vec![None; runs];
    std::thread::scope(|scope| {
        let chunks: Vec<_> = out.chunks_mut(runs.div_ceil(threads).max(1)).enumerate().collect();
        let size = runs.div_ceil(threads).max(1);
        for (c, chunk) in chunks {
            scope.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    *slot = Some(run_once(s, seed.wrapping_add((c * size + j) as u64)));
                }
            });
        }
    });
    out.into_iter().flatten().collect()
}

pub mod table;
#[cfg(test)]
mod tests;
