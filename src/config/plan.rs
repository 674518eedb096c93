//! Rollout plans and analysis criteria: what `routes.yaml` asks the rollout room to do. Domain
//! types the config produces (validated, cannot be invalid); the rollout room only reads them.

use serde::Serialize;
use std::time::Duration;

/// A business metric to guard or to pick an A/B winner on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Conversion rate (proportion).
    Conversion,
    /// Accuracy against true labels (proportion).
    Accuracy,
    /// Mean reward.
    Reward,
}

/// Thresholds of a canary analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryCriteria {
    /// Requests the canary must have answered in the step before anything is judged.
    pub min_samples: u64,
    /// Highest error rate allowed for the canary (0..1).
    pub max_error_rate: Option<f64>,
    /// Largest increase of the error rate over stable's (0..1).
    pub max_error_rate_increase: Option<f64>,
    /// Largest ratio of canary p99 to stable p99.
    pub max_p99_ratio: Option<f64>,
    /// Business guard: the canary must not be worse than stable by more than `margin`.
    pub business: Option<BusinessGuard>,
    /// Significance level of the latency and business tests.
    pub alpha: f64,
}

/// A non-inferiority guard on a business metric.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessGuard {
    /// The metric.
    pub metric: Metric,
    /// Allowed shortfall (absolute: 0.02 = two points of conversion, or reward units).
    pub margin: f64,
    /// Samples each side needs before the guard judges.
    pub min_samples: u64,
}

/// One step of a canary: a weight, held for a pause.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Percent of traffic to the canary.
    pub weight: f64,
    /// How long to hold before the step can pass; `None` waits for an admin promote.
    pub pause: Option<Duration>,
}

/// What to do when the analysis stays inconclusive past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInconclusive {
    /// Keep holding the step.
    Hold,
    /// Roll back.
    Rollback,
}

/// A Prometheus check of a canary or A/B analysis (what Argo Rollouts' AnalysisTemplate and
/// Flagger's MetricTemplate do): a PromQL query whose value must stay within bounds.
/// `{{route}}`, `{{variant}}` (the canary, or each A/B arm but control) and `{{window}}` (the
/// step so far, like `90s`) are substituted. No data is inconclusive, never a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricCheck {
    /// Its name in verdicts and events.
    pub name: String,
    /// The Prometheus server's base URL (http).
    pub prometheus: http::Uri,
    /// The PromQL query; its first sample is the value.
    pub query: String,
    /// Lowest value that passes.
    pub min: Option<f64>,
    /// Highest value that passes.
    pub max: Option<f64>,
}

/// A canary rollout plan from routes.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryPlan {
    /// At least one.
    pub steps: Vec<Step>,
    /// What each analysis checks.
    pub criteria: CanaryCriteria,
    /// Time between analyses.
    pub interval: Duration,
    /// Consecutive failed analyses that roll back.
    pub failure_limit: u32,
    /// How long past its pause a step may stay inconclusive.
    pub inconclusive_deadline: Duration,
    /// What happens after that.
    pub on_inconclusive: OnInconclusive,
    /// Prometheus checks, judged with the windows at each analysis.
    pub checks: Vec<MetricCheck>,
}

/// An A/B test's automatic analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AbPlan {
    /// Goal metric, significance, guardrails.
    pub criteria: AbCriteria,
    /// Time between analyses.
    pub interval: Duration,
    /// Promote a winner on its own; otherwise record it and wait for an admin promote.
    pub auto_promote: bool,
    /// Prometheus checks of each arm but control: a failure stops the arm, no data holds a winner.
    pub checks: Vec<MetricCheck>,
}

/// A blue-green rollout's automatic analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct BlueGreenPlan {
    /// Checks of the preview (before a switch) and of the new colour (after it).
    pub criteria: CanaryCriteria,
    /// Time between analyses.
    pub interval: Duration,
    /// Switch on its own once the preview has passed and been up this long.
    pub auto_promote_after: Option<Duration>,
    /// After a switch, how long the new colour is watched; a failure switches back.
    pub post_switch_window: Duration,
}

impl CanaryPlan {
    /// The weight of `step` (the last step's beyond the end).
    pub fn weight(&self, step: usize) -> f64 {
        self.steps.get(step).or(self.steps.last()).map_or(0.0, |s| s.weight)
    }
}

/// Settings of an A/B analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct AbCriteria {
    /// The goal metric.
    pub metric: Metric,
    /// Significance level (overall).
    pub alpha: f64,
    /// Squared effect size worth finding (mSPRT mixture variance).
    pub tau2: f64,
    /// Goal samples each arm needs before any winner is declared.
    pub min_samples: u64,
    /// Guardrails each arm must pass against control.
    pub guardrails: Option<CanaryCriteria>,
}
