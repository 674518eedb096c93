//! Admin actions on a route's rollout: what each one does to the status (pure), and how the
//! controller applies one (audit, events, the blue-green scale-down timer).

use super::control::Controller;
use super::drivers::fresh_progress;
use super::status::{Phase, RouteStatus};
use crate::config::{RouteSpec, Strategy};
use crate::protocol::ApiError;
use http::StatusCode;

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

impl Controller {
    /// Applies an admin action to a route's rollout; see [`Action`]. Idempotent where it can be:
    /// an action that changes nothing answers the current generation. `who` names the caller in
    /// the audit trail (a token id, never the token).
    pub async fn act(&self, route: &str, action: Action, if_match: Option<u64>, who: &str) -> Result<u64, ApiError> {
        let now = self.clock.now_ms();
        let mut delay = None;
        let mut attempt = 0;
        let (generation, before, after) = loop {
            let result = self
                .mutate(route, if_match, |spec, st| {
                    if let Strategy::BlueGreen { scale_down_delay, .. } = &spec.strategy {
                        delay = Some(*scale_down_delay);
                    }
                    apply_action(route, spec, st, &action, now)
                })
                .await;
            // In a fleet, a change that lost a compare-and-swap race (with the leader's
            // bookkeeping, say) is made again on the status the watch has applied meanwhile;
            // an If-Match that is stale for that status is then refused for good.
            match result {
                Err(e) if e.status == StatusCode::PRECONDITION_FAILED && self.in_fleet() && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                other => break other?,
            }
        };
        tracing::info!(target: "modelgate::audit", who, route, action = action.name(), generation, changed = before != after, "admin change");
        if before != after {
            let details = serde_json::json!({ "action": action.name(), "who": who, "status": after });
            self.emit(now, route, "admin", format!("{} by {who} through the admin API", action.name()), details);
        }
        // A blue-green switch keeps the old colour warm for scale_down_delay, then unloads it;
        // the new colour's analysis window starts afresh for the post-switch watch.
        if after.switches > before.switches {
            if let Some(new) = &after.active {
                self.telemetry.variant(route, new).reset_step();
            }
            if let (Some(delay), Some(me), Some(old)) = (delay, self.me.upgrade(), before_colour(&before, &after)) {
                let (route, ticket) = (route.to_string(), after.switches);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    me.scale_down(&route, &old, ticket).await;
                });
            }
        }
        Ok(generation)
    }

    async fn scale_down(&self, route: &str, colour: &str, ticket: u64) {
        let result = self
            .mutate(route, None, |spec, st| {
                if let Strategy::BlueGreen { active, .. } = &spec.strategy {
                    if st.switches == ticket && st.active_colour(active) != colour {
                        st.scaled_down = Some(colour.to_string());
                    }
                }
                Ok(())
            })
            .await;
        match result {
            Ok(_) => tracing::info!(route, colour, "blue-green: old colour scaled down"),
            Err(e) => tracing::warn!(route, colour, error = %e.message, "blue-green: scale-down failed"),
        }
    }
}

/// What an admin can do to a route's rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Canary: set the weight by hand (automatic steps then wait; `resume` hands back).
    Weight(f64),
    /// Blue-green: switch colours.
    Switch,
    /// Canary with steps: one step on (`full`: straight to 100%); blue-green: switch to the
    /// preview; A/B: the named arm takes all traffic.
    Promote {
        /// A/B: the winning arm.
        variant: Option<String>,
        /// Canary: skip the remaining steps.
        full: bool,
    },
    /// Candidate out: canary to 0%, blue-green back, A/B back to the file's weights.
    Rollback,
    /// Stop automatic analysis where it stands.
    Pause,
    /// Start automatic analysis again (and hand a hand-set weight back to the steps).
    Resume,
    /// Start a finished or rolled-back canary again from its first step.
    Retry,
}

impl Action {
    /// The action's name in the API.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Weight(_) => "weight",
            Action::Switch => "switch",
            Action::Promote { .. } => "promote",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Retry => "retry",
        }
    }
}

fn before_colour(before: &RouteStatus, after: &RouteStatus) -> Option<String> {
    after.previous.clone().or_else(|| before.active.clone())
}

pub(super) fn bg_switch(active: &str, preview: &str, st: &mut RouteStatus, now: u64) {
    st.switched_at_ms = Some(now);
    let now = st.active_colour(active).to_string();
    let other = if now == active { preview.to_string() } else { active.to_string() };
    if st.scaled_down.as_deref() == Some(other.as_str()) {
        st.scaled_down = None; // loaded again before the switch is published
    }
    st.active = Some(other);
    st.previous = Some(now);
    st.switches += 1;
}

fn apply_action(
    route: &str,
    spec: &RouteSpec,
    st: &mut RouteStatus,
    action: &Action,
    now: u64,
) -> Result<(), ApiError> {
    let refuse = |what: &str| Err(conflict(format!("route {route:?} uses {}; {what}", spec.strategy.name())));
    match (&spec.strategy, action) {
        (Strategy::Canary { .. }, Action::Weight(w)) => {
            if !(w.is_finite() && (0.0..=100.0).contains(w)) {
                return Err(ApiError::bad_request(format!("weight must be between 0 and 100, got {w}")));
            }
            st.canary_weight = Some(*w);
            st.phase = Phase::Progressing;
        }
        (_, Action::Weight(_)) => return refuse("only canary routes take a weight"),
        (Strategy::BlueGreen { active, preview, .. }, Action::Switch) => bg_switch(active, preview, st, now),
        (_, Action::Switch) => return refuse("only blue_green routes switch"),
        (Strategy::BlueGreen { active, preview, .. }, Action::Promote { .. }) => {
            if st.active_colour(active) == active.as_str() || st.phase != Phase::Promoted {
                if st.active_colour(active) == active.as_str() {
                    bg_switch(active, preview, st, now);
                }
                st.phase = Phase::Promoted;
            }
        }
        (Strategy::BlueGreen { active, preview, .. }, Action::Rollback) => {
            if st.previous.is_none() {
                return Err(conflict(format!("route {route:?} has not been switched; nothing to roll back")));
            }
            bg_switch(active, preview, st, now);
            st.phase = Phase::RolledBack;
        }
        (Strategy::Canary { plan, .. }, Action::Promote { full, .. }) => match (plan, full) {
            (Some(plan), false) if st.phase == Phase::Progressing => {
                let p = st.progress.get_or_insert_with(Default::default);
                if p.step + 1 < plan.steps.len() {
                    p.step += 1;
                    p.step_started_ms = now;
                    p.failures = 0;
                    st.canary_weight = None;
                } else {
                    st.phase = Phase::Promoted;
                }
            }
            _ => {
                st.canary_weight = Some(100.0);
                st.phase = Phase::Promoted;
            }
        },
        (Strategy::Canary { .. }, Action::Rollback) => {
            st.canary_weight = Some(0.0);
            st.phase = Phase::RolledBack;
        }
        (Strategy::Canary { plan: Some(_), .. }, Action::Retry) => {
            *st = RouteStatus { progress: Some(fresh_progress(now)), ..RouteStatus::default() };
        }
        (Strategy::Canary { plan: Some(_), .. }, Action::Pause) => {
            st.progress.get_or_insert_with(|| fresh_progress(now)).paused = true;
        }
        (Strategy::Canary { plan: Some(_), .. }, Action::Resume) => {
            st.progress.get_or_insert_with(|| fresh_progress(now)).paused = false;
            st.canary_weight = None;
        }
        (_, Action::Retry | Action::Pause | Action::Resume) => {
            return refuse("only canary routes with steps run automatically")
        }
        (Strategy::AbTest { arms, .. }, Action::Promote { variant, .. }) => {
            let Some(v) = variant else {
                let names: Vec<&str> = arms.iter().map(|(a, _)| a.as_str()).collect();
                return Err(ApiError::bad_request(format!(
                    "name the winning arm: {{\"variant\": \"...\"}} (arms: {})",
                    names.join(", ")
                )));
            };
            if !arms.iter().any(|(a, _)| a == v) {
                return Err(ApiError::bad_request(format!("route {route:?} has no arm {v:?}")));
            }
            st.winner = Some(v.clone());
            st.phase = Phase::Promoted;
        }
        (Strategy::AbTest { .. }, Action::Rollback) => {
            st.winner = None;
            st.phase = Phase::RolledBack;
        }
        (_, Action::Promote { .. } | Action::Rollback) => return refuse("edit routes.yaml to change its backend"),
    }
    Ok(())
}
