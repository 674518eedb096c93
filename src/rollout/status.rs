//! Where each rollout stands: the gateway's side of a route, next to the operator's spec.

use super::engine::Progress;
use crate::config::{RouteSpec, Strategy};
use crate::routing::assign::{canary_counts, Layout, Share};
use crate::routing::Role;
use serde::{Deserialize, Serialize};

/// Where a rollout has got to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// As the spec says, or moving.
    #[default]
    Progressing,
    /// The candidate took all the traffic.
    Promoted,
    /// The candidate was taken out.
    RolledBack,
}

/// The gateway's state of one route's rollout. A new revision of the spec starts from the default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteStatus {
    /// Phase of the rollout.
    pub phase: Phase,
    /// Canary weight set through the admin API (overrides the spec's).
    pub canary_weight: Option<f64>,
    /// Blue-green: the colour serving now, when switched away from the spec's `active`.
    pub active: Option<String>,
    /// Blue-green: the colour that served before the last switch.
    pub previous: Option<String>,
    /// Blue-green: a colour unloaded after `scale_down_delay`.
    pub scaled_down: Option<String>,
    /// Blue-green: switches so far (a scale-down timer only acts on its own switch).
    pub switches: u64,
    /// A/B: the arm promoted to all traffic.
    pub winner: Option<String>,
    /// Recreate: how long the last replacement left the route unavailable, in ms.
    pub last_gap: Option<f64>,
    /// Automatic analysis: where the rollout stands (canary steps; A/B and blue-green timing).
    pub progress: Option<Progress>,
    /// Blue-green: when the last switch was published (ms since the epoch).
    pub switched_at_ms: Option<u64>,
    /// A/B: the arm the analysis found best, waiting for an admin promote.
    pub suggested_winner: Option<String>,
    /// A/B: arms taken out of traffic by a guardrail.
    pub stopped_arms: Vec<String>,
    /// A/B: why the analysis stopped (sample-ratio mismatch), if it did.
    pub halted: Option<String>,
    /// The last analysis' outcome, in words.
    pub last_analysis: Option<String>,
}

impl RouteStatus {
    /// The blue-green colour serving now.
    pub fn active_colour<'a>(&'a self, spec_active: &'a str) -> &'a str {
        self.active.as_deref().unwrap_or(spec_active)
    }
}

/// How `spec`'s buckets are divided among its variants, given `status`.
pub fn layout(spec: &RouteSpec, status: &RouteStatus) -> Layout {
    let share = |name: &str, role, weight, buckets| Share { name: name.to_string(), role, weight, buckets };
    match &spec.strategy {
        Strategy::Single { backend } | Strategy::Recreate { backend } => {
            Layout::contiguous(vec![share(backend, Role::Primary, 100.0, 10_000)])
        }
        Strategy::BlueGreen { active, preview, .. } => {
            let now = status.active_colour(active);
            let other = if now == active { preview } else { active };
            let mut v = vec![share(now, Role::Active, 100.0, 10_000)];
            if status.scaled_down.as_deref() != Some(other.as_str()) {
                v.push(share(other, Role::Preview, 0.0, 0));
            }
            Layout::contiguous(v)
        }
        Strategy::Canary { stable, canary, weight, plan, .. } => {
            let planned = plan.as_ref().map(|p| p.weight(status.progress.as_ref().map_or(0, |p| p.step)));
            let w = match status.phase {
                Phase::Promoted => 100.0,
                Phase::RolledBack => 0.0,
                Phase::Progressing => status.canary_weight.or(planned).unwrap_or(*weight),
            };
            let [s, c] = canary_counts(w);
            Layout::contiguous(vec![share(stable, Role::Stable, 100.0 - w, s), share(canary, Role::Canary, w, c)])
        }
        Strategy::AbTest { arms, .. } => layout_of_arms(arms, status),
    }
}

/// An A/B test's layout: the winner takes every bucket; otherwise each arm keeps its range and
/// a stopped arm's range is divided among the live arms.
pub fn layout_of_arms(arms: &[(String, f64)], status: &RouteStatus) -> Layout {
    match &status.winner {
        Some(winner) => Layout::contiguous(
            arms.iter()
                .map(|(a, _)| {
                    let all = a == winner;
                    let (weight, buckets) = if all { (100.0, 10_000) } else { (0.0, 0) };
                    Share { name: a.clone(), role: Role::Arm, weight, buckets }
                })
                .collect(),
        ),
        None => {
            let live: Vec<bool> = arms.iter().map(|(a, _)| !status.stopped_arms.contains(a)).collect();
            Layout::ab(arms, &live)
        }
    }
}
