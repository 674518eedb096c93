//! The standard rows of `make decisions`: each a scenario with its target, and the markdown
//! table of what was measured.

use super::{run_many, Arm, Experiment, Outcome, RunResult, Scenario, Traffic};
use crate::config::plan::{
    AbCriteria, AbPlan, BusinessGuard, CanaryCriteria, CanaryPlan, Metric, OnInconclusive, Step,
};
use std::fmt::Write as _;
use std::time::Duration;

/// What a row must achieve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// Rolled back in at most this share of runs.
    RolledBackAtMost(f64),
    /// Rolled back in at least this share of runs.
    RolledBackAtLeast(f64),
    /// Rolled back within this many canary requests in at least this share of runs.
    RolledBackWithin(u64, f64),
    /// Promoted in at most this share of runs.
    PromotedAtMost(f64),
    /// A/B: a winner in at most the first share of runs, a sample-ratio halt in at most the second.
    FalseWinnerAndSrmAtMost(f64, f64),
}

/// One row: a scenario and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The scenario.
    pub scenario: Scenario,
    /// Its target.
    pub target: Target,
}

/// Counts over a row's runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Runs.
    pub runs: usize,
    /// Promoted canaries.
    pub promoted: usize,
    /// Rolled-back canaries.
    pub rolled_back: usize,
    /// Of those, within [`WITHIN`] canary requests.
    pub rolled_back_within: usize,
    /// A/B winners (any arm).
    pub winners: usize,
    /// A/B sample-ratio halts.
    pub srm: usize,
    /// A/B guardrail stops.
    pub guardrails: usize,
    /// Nothing decided.
    pub undecided: usize,
    /// Median canary requests to a rollback.
    pub median_to_rollback: Option<u64>,
}

/// The request budget of the tail-regression target.
pub const WITHIN: u64 = 5_000;

impl Summary {
    /// Counts `results`.
    pub fn of(results: &[RunResult]) -> Summary {
        let mut s = Summary { runs: results.len(), ..Summary::default() };
        let mut to_rollback = Vec::new();
        for r in results {
            match r.outcome {
                Outcome::Promoted => s.promoted += 1,
                Outcome::RolledBack(_) => {
                    s.rolled_back += 1;
                    s.rolled_back_within += usize::from(r.candidate_requests <= WITHIN);
                    to_rollback.push(r.candidate_requests);
                }
                Outcome::Winner(_) => s.winners += 1,
                Outcome::SampleRatioMismatch => s.srm += 1,
                Outcome::Guardrail(_) => s.guardrails += 1,
                Outcome::Undecided => s.undecided += 1,
            }
        }
        to_rollback.sort_unstable();
        s.median_to_rollback = to_rollback.get(to_rollback.len() / 2).copied();
        s
    }

    fn share(&self, k: usize) -> f64 {
        k as f64 / self.runs.max(1) as f64
    }

    /// Whether the target is met.
    pub fn meets(&self, t: Target) -> bool {
        match t {
            Target::RolledBackAtMost(x) => self.share(self.rolled_back) <= x,
            Target::RolledBackAtLeast(x) => self.share(self.rolled_back) >= x,
            Target::RolledBackWithin(_, x) => self.share(self.rolled_back_within) >= x,
            Target::PromotedAtMost(x) => self.share(self.promoted) <= x,
            Target::FalseWinnerAndSrmAtMost(w, m) => self.share(self.winners) <= w && self.share(self.srm) <= m,
        }
    }
}

fn criteria(min_samples: u64, business: Option<BusinessGuard>) -> CanaryCriteria {
    CanaryCriteria {
        min_samples,
        max_error_rate: Some(0.02),
        max_error_rate_increase: Some(0.01),
        max_p99_ratio: Some(1.5),
        business,
        alpha: 0.01,
    }
}

/// The canary plan of the canary rows: 10/30/60% for 60 s each, analysis every 10 s.
pub fn canary_plan(business: Option<BusinessGuard>) -> CanaryPlan {
    let step = |weight| Step { weight, pause: Some(Duration::from_secs(60)) };
    CanaryPlan {
        steps: vec![step(10.0), step(30.0), step(60.0)],
        criteria: criteria(200, business),
        interval: Duration::from_secs(10),
        failure_limit: 2,
        inconclusive_deadline: Duration::from_secs(600),
        on_inconclusive: OnInconclusive::Hold,
        checks: Vec::new(),
    }
}

/// The rows `make decisions` runs.
pub fn standard_rows() -> Vec<Row> {
    let canary = |name: &str, business, arm: Arm, target| Row {
        scenario: Scenario {
            name: name.into(),
            traffic: Traffic::default(),
            experiment: Experiment::Canary { plan: canary_plan(business), horizon: Duration::from_secs(900) },
            arms: vec![Arm::default(), arm],
        },
        target,
    };
    let guard = Some(BusinessGuard { metric: Metric::Conversion, margin: 0.01, min_samples: 200 });
    let ab = AbPlan {
        criteria: AbCriteria {
            metric: Metric::Conversion,
            alpha: 0.05,
            tau2: 0.02 * 0.02,
            min_samples: 200,
            guardrails: Some(criteria(200, None)),
        },
        interval: Duration::from_secs(15),
        auto_promote: true,
        checks: Vec::new(),
    };
    vec![
        canary("A/A canary", None, Arm::default(), Target::RolledBackAtMost(0.01)),
        canary("A/A canary + business guard", guard.clone(), Arm::default(), Target::RolledBackAtMost(0.01)),
        canary(
            "error regression 1% -> 5%",
            None,
            Arm { error_rate: 0.05, ..Arm::default() },
            Target::RolledBackAtLeast(0.99),
        ),
        canary(
            "tail regression 2% +100 ms",
            None,
            Arm { tail_share: 0.02, tail_extra_ms: 100.0, ..Arm::default() },
            Target::RolledBackWithin(WITHIN, 0.95),
        ),
        canary(
            "business -5 points (margin 1)",
            guard,
            Arm { conversion_factor: 0.5, ..Arm::default() },
            Target::PromotedAtMost(0.05),
        ),
        Row {
            scenario: Scenario {
                name: "A/A A/B 50/50".into(),
                traffic: Traffic { rps: 20.0, ..Traffic::default() },
                experiment: Experiment::Ab { plan: ab, weights: vec![50.0, 50.0], horizon: Duration::from_secs(3600) },
                arms: vec![Arm::default(), Arm::default()],
            },
            target: Target::FalseWinnerAndSrmAtMost(0.05, 0.005),
        },
    ]
}

fn pct(k: usize, n: usize) -> String {
    format!("{:.2}%", 100.0 * k as f64 / n.max(1) as f64)
}

fn target_text(t: Target) -> String {
    match t {
        Target::RolledBackAtMost(x) => format!("rolled back <= {}%", x * 100.0),
        Target::RolledBackAtLeast(x) => format!("rolled back >= {}%", x * 100.0),
        Target::RolledBackWithin(n, x) => format!("rolled back within {n} canary req >= {}%", x * 100.0),
        Target::PromotedAtMost(x) => format!("promoted <= {}%", x * 100.0),
        Target::FalseWinnerAndSrmAtMost(w, m) => format!("winner <= {}%, SRM <= {}%", w * 100.0, m * 100.0),
    }
}

fn describe(s: &Scenario) -> String {
    let t = &s.traffic;
    let traffic = format!(
        "{} req/s from {} sticky users (Pareto {} request rates) + {:.0}% unkeyed, {} pinned req/s (500s, 5 s) to the candidate; latency lognormal median {} ms sigma {}; {:.0}% of answers get conversion feedback after Exp({} s); conversion {:.0}% of users at {}, others {}",
        t.rps, t.users, t.pareto_shape, t.unkeyed_share * 100.0, t.pinned_rps, t.latency_median_ms, t.latency_sigma,
        t.feedback_share * 100.0, t.feedback_delay_s, t.buyers * 100.0, t.buyer_p, t.other_p
    );
    let plan = match &s.experiment {
        Experiment::Canary { plan, horizon } => {
            let c = &plan.criteria;
            format!(
                "steps {:?} x {:?}, interval {:?}, failure_limit {}, alpha {}, min_samples {}, max_error_rate {:?}, max_error_rate_increase {:?}, max_p99_ratio {:?}, business {:?}, on_inconclusive hold, horizon {:?}",
                plan.steps.iter().map(|s| s.weight).collect::<Vec<_>>(),
                plan.steps.first().and_then(|s| s.pause).unwrap_or_default(),
                plan.interval, plan.failure_limit, c.alpha, c.min_samples, c.max_error_rate,
                c.max_error_rate_increase, c.max_p99_ratio, c.business.as_ref().map(|b| (b.metric, b.margin, b.min_samples)), horizon
            )
        }
        Experiment::Ab { plan, weights, horizon } => format!(
            "weights {weights:?}, interval {:?}, alpha {}, effect {}, min_samples {}, guardrails: alpha {} max_error_rate 0.02, increase 0.01, p99 ratio 1.5; runs {:?}",
            plan.interval, plan.criteria.alpha, plan.criteria.tau2.sqrt(), plan.criteria.min_samples,
            plan.criteria.guardrails.as_ref().map_or(0.0, |g| g.alpha), horizon
        ),
    };
    let arms: Vec<String> = s
        .arms
        .iter()
        .map(|a| {
            format!(
                "errors {}%, {}% +{} ms, conversion x{}",
                a.error_rate * 100.0,
                a.tail_share * 100.0,
                a.tail_extra_ms,
                a.conversion_factor
            )
        })
        .collect();
    format!("- **{}**: {plan}. Arms: [{}]. Traffic: {traffic}.", s.name, arms.join("; "))
}

/// Runs every row and writes the markdown report.
pub fn report(rows: &[Row], runs: usize, seed: u64, threads: usize) -> String {
    let mut out = format!("Seed {seed}, {runs} runs per row (run i of a row uses seed + i).\n\n");
    out.push_str("| scenario | promoted | rolled back | rolled back within 5,000 canary req | median canary req to rollback | A/B winner | SRM halt | guardrail stop | undecided | target | met |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut config = String::new();
    for row in rows {
        let started = std::time::Instant::now();
        let s = Summary::of(&run_many(&row.scenario, runs, seed, threads));
        eprintln!("{}: {runs} runs in {:.1} s", row.scenario.name, started.elapsed().as_secs_f64());
        let n = s.runs;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario.name,
            pct(s.promoted, n),
            pct(s.rolled_back, n),
            pct(s.rolled_back_within, n),
            s.median_to_rollback.map_or("-".into(), |m| m.to_string()),
            pct(s.winners, n),
            pct(s.srm, n),
            pct(s.guardrails, n),
            pct(s.undecided, n),
            target_text(row.target),
            if s.meets(row.target) { "yes" } else { "**NO**" }
        );
        let _ = writeln!(config, "{}", describe(&row.scenario));
    }
    out.push_str("\nConfiguration of each row:\n\n");
    out.push_str(&config);
    out
}
