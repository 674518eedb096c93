//! The analysis drivers: every `interval`, each rollout with a plan is judged on its windows
//! (canary steps, A/B arms, blue-green preview and post-switch watch), and its decision is
//! published through the controller's one path.

use super::actions::bg_switch;
use super::analysis::{self, AbOutcome, Verdict};
use super::control::{Controller, RouteState};
use super::engine::{self, Decision};
use super::status::{Phase, RouteStatus};
use crate::config::Strategy;
use crate::telemetry::window::Window;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

impl Controller {
    /// One round of automatic analysis: every rollout with a plan that is due is judged on its
    /// current step's windows; decisions are published at once and bump the route's version.
    pub async fn analyze(&self) {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().await;
        let specs = inner.config.routes.clone();
        let mut changed = false;
        for spec in &specs {
            let name = spec.name();
            let Some(state) = inner.routes.get(name).cloned() else { continue };
            let status = &state.status;
            let step = match &spec.strategy {
                Strategy::Canary { stable, canary, plan: Some(plan), .. } => {
                    self.step_canary(name, stable, canary, plan, status, now)
                }
                Strategy::AbTest { arms, control, plan: Some(plan), .. } => {
                    self.step_ab(name, arms, control, plan, status, now)
                }
                Strategy::BlueGreen { active, preview, plan: Some(plan), .. } => {
                    self.step_blue_green(name, active, preview, plan, status, now)
                }
                _ => None,
            };
            let Some((next, publish)) = step else { continue };
            let version = if publish { inner.generation + 1 } else { state.version };
            inner.routes.insert(name.to_string(), RouteState { status: next, version, ..state.clone() });
            changed = true;
            if publish {
                if let Err(e) = self.publish(&mut inner, &[]).await {
                    tracing::error!(route = %name, error = %e, "analysis decision could not be published");
                    inner.routes.insert(name.to_string(), state);
                }
            }
        }
        if changed {
            self.commit(&inner, Vec::new());
        }
    }

    /// A canary with steps: judge the step, then hold, advance, promote or roll back.
    fn step_canary(
        &self,
        name: &str,
        stable: &str,
        canary: &str,
        plan: &engine::CanaryPlan,
        status: &RouteStatus,
        now: u64,
    ) -> Option<(RouteStatus, bool)> {
        if status.phase != Phase::Progressing || status.canary_weight.is_some() {
            return None; // finished, or steered by hand
        }
        let mut progress = status.progress.clone().unwrap_or_else(|| fresh_progress(now));
        let (s, c) = (self.telemetry.variant(name, stable), self.telemetry.variant(name, canary));
        let decision = engine::tick(plan, &mut progress, now, &s.step_window(), &c.step_window());
        if progress == status.progress.clone().unwrap_or_default() {
            return None;
        }
        let mut next = status.clone();
        let numbers = serde_json::json!({ "stable": s.step(), "canary": c.step(), "verdict": progress.last_verdict });
        match &decision {
            Decision::Nothing => {
                // A failed analysis below the failure limit is worth an event too.
                if let (true, Some(Verdict::Fail(why))) = (progress.last_analysis_ms == now, &progress.last_verdict) {
                    self.emit(now, name, "analysis_failed", why.clone(), numbers);
                }
            }
            Decision::Advance(step) => {
                s.reset_step();
                c.reset_step();
                let w = plan.weight(*step);
                self.emit(now, name, "step_advanced", format!("step {step}: canary at {w}%"), numbers);
            }
            Decision::Promote => {
                next.phase = Phase::Promoted;
                self.emit(now, name, "promoted", format!("{canary} passed every step and takes all traffic"), numbers);
            }
            Decision::Rollback(why) => {
                next.phase = Phase::RolledBack;
                self.emit(now, name, "rolled_back", why.clone(), numbers);
            }
        }
        next.last_analysis = progress.last_verdict.as_ref().map(|v| format!("{v:?}"));
        next.progress = Some(progress);
        Some((next, decision != Decision::Nothing))
    }

    /// An A/B test: stop harmful arms, halt on a sample-ratio mismatch, find a winner. The
    /// control arm is judged first; the others against it.
    fn step_ab(
        &self,
        name: &str,
        arms: &[(String, f64)],
        control: &str,
        plan: &engine::AbPlan,
        status: &RouteStatus,
        now: u64,
    ) -> Option<(RouteStatus, bool)> {
        if status.phase != Phase::Progressing || status.halted.is_some() || status.suggested_winner.is_some() {
            return None;
        }
        let progress = match analysis_due(status, plan.interval, now) {
            Ok(p) => p,
            Err(not_yet) => return not_yet,
        };
        // Control first, then the other live arms as written; each weighed by the buckets it
        // owns now (a stopped arm's buckets went to the live arms).
        let layout = super::status::layout_of_arms(arms, status);
        let mut live: Vec<(String, f64)> = layout
            .shares
            .iter()
            .filter(|s| !status.stopped_arms.contains(&s.name))
            .map(|s| (s.name.clone(), f64::from(s.buckets)))
            .collect();
        live.sort_by_key(|(a, _)| a != control);
        let stats: Vec<_> = live.iter().map(|(a, _)| self.telemetry.variant(name, a)).collect();
        let windows: Vec<Window> = stats.iter().map(|s| s.step_window()).collect();
        let refs: Vec<&Window> = windows.iter().collect();
        let weights: Vec<f64> = live.iter().map(|(_, w)| *w).collect();
        let outcome = analysis::judge_ab(&refs, &weights, &plan.criteria);
        let numbers = serde_json::json!({
            "arms": live.iter().zip(&stats).map(|((a, _), s)| (a.clone(), s.step())).collect::<BTreeMap<_, _>>(),
            "outcome": outcome,
        });
        let mut next = status.clone();
        next.progress = Some(progress);
        let mut publish = false;
        match &outcome {
            AbOutcome::Continue { why } => next.last_analysis = Some(why.clone()),
            AbOutcome::Winner { arm, why } => {
                let winner = live[*arm].0.clone();
                next.last_analysis = Some(why.clone());
                if plan.auto_promote {
                    next.winner = Some(winner.clone());
                    next.phase = Phase::Promoted;
                    publish = true;
                    self.emit(
                        now,
                        name,
                        "promoted",
                        format!("{winner} wins the A/B test and takes all traffic: {why}"),
                        numbers,
                    );
                } else {
                    next.suggested_winner = Some(winner.clone());
                    self.emit(
                        now,
                        name,
                        "winner_found",
                        format!("{winner} wins the A/B test; promote it to send all traffic: {why}"),
                        numbers,
                    );
                }
            }
            AbOutcome::SampleRatioMismatch { p } => {
                let why = format!("sample-ratio mismatch (sequential multinomial test on units, always-valid p={p:.2e}): the arms' users do not match their weights, so the test cannot be trusted");
                next.halted = Some(why.clone());
                self.emit(now, name, "halted", why, numbers);
            }
            AbOutcome::Guardrail { arm, why } => {
                let stopped = live[*arm].0.clone();
                next.stopped_arms.push(stopped.clone());
                publish = true;
                // The stopped arm's users move to the live arms: a new phase of the experiment,
                // judged on fresh windows so the sample ratio holds.
                for s in &stats {
                    s.reset_step();
                }
                self.emit(now, name, "arm_stopped", format!("{stopped} taken out of traffic: {why}"), numbers);
            }
        }
        Some((next, publish))
    }

    /// Blue-green: judge the preview before a switch (and switch on its own after
    /// `auto_promote_after`), and watch the new colour after one, switching back on a failure.
    fn step_blue_green(
        &self,
        name: &str,
        active: &str,
        preview: &str,
        plan: &engine::BlueGreenPlan,
        status: &RouteStatus,
        now: u64,
    ) -> Option<(RouteStatus, bool)> {
        if status.phase == Phase::RolledBack {
            return None;
        }
        let mut progress = match analysis_due(status, plan.interval, now) {
            Ok(p) => p,
            Err(not_yet) => return not_yet,
        };
        let serving = status.active_colour(active).to_string();
        let other = if serving == active { preview.to_string() } else { active.to_string() };
        let (new, old) = (self.telemetry.variant(name, &serving), self.telemetry.variant(name, &other));
        let mut next = status.clone();
        let mut publish = false;
        match status.switched_at_ms {
            // Watching the colour that took over.
            Some(at) if now.saturating_sub(at) <= plan.post_switch_window.as_millis() as u64 => {
                // The window is looked at every interval: its α is split over those looks
                // (Bonferroni), so a good new colour is not switched back by chance.
                let looks = plan.post_switch_window.as_millis().div_ceil(plan.interval.as_millis().max(1)).max(1);
                let criteria = crate::config::plan::CanaryCriteria {
                    alpha: plan.criteria.alpha / looks as f64,
                    ..plan.criteria.clone()
                };
                let verdict = analysis::judge_canary(&old.step_window(), &new.step_window(), &criteria);
                if let Verdict::Fail(why) = &verdict {
                    bg_switch(active, preview, &mut next, now);
                    next.phase = Phase::RolledBack;
                    publish = true;
                    let numbers = serde_json::json!({ "new": new.step(), "old": old.step(), "verdict": verdict });
                    self.emit(
                        now,
                        name,
                        "rolled_back",
                        format!("{serving} failed after the switch, back to {other}: {why}"),
                        numbers,
                    );
                }
                progress.last_verdict = Some(verdict);
            }
            Some(_) => {}
            // Before any switch: is the preview good, and has it been up long enough?
            None => {
                // The preview answers only pinned requests (smoke tests, QA): that is its evidence.
                let verdict = analysis::judge_canary(&new.step_window(), &old.pinned_window(), &plan.criteria);
                let due = plan
                    .auto_promote_after
                    .is_some_and(|d| now.saturating_sub(progress.step_started_ms) >= d.as_millis() as u64);
                if verdict == Verdict::Pass && due {
                    bg_switch(active, preview, &mut next, now);
                    next.phase = Phase::Promoted;
                    publish = true;
                    old.reset_step();
                    let numbers = serde_json::json!({ "preview": old.step(), "active": new.step() });
                    self.emit(now, name, "promoted", format!("preview {other} passed its analysis: switched"), numbers);
                }
                progress.last_verdict = Some(verdict);
            }
        }
        next.last_analysis = progress.last_verdict.as_ref().map(|v| format!("{v:?}"));
        next.progress = Some(progress);
        Some((next, publish))
    }

    /// Runs [`Controller::analyze`] every `every` until the controller is dropped.
    pub fn spawn_analysis(self: &Arc<Self>, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = me.upgrade() else { return };
                c.analyze().await;
                c.check_drift();
            }
        });
    }
}

/// The progress to analyse with, or — when it is not time for an analysis yet — what the caller
/// returns: nothing, or (for a rollout seen the first time) the status recording its start.
#[allow(clippy::result_large_err)] // built at most once per analysis interval, never on the request path
fn analysis_due(
    status: &RouteStatus,
    interval: Duration,
    now: u64,
) -> Result<engine::Progress, Option<(RouteStatus, bool)>> {
    let mut progress = status.progress.clone().unwrap_or_else(|| fresh_progress(now));
    if now.saturating_sub(progress.last_analysis_ms) < interval.as_millis() as u64 {
        return Err(status
            .progress
            .is_none()
            .then(|| (RouteStatus { progress: Some(progress), ..status.clone() }, false)));
    }
    progress.last_analysis_ms = now;
    Ok(progress)
}

pub(super) fn fresh_progress(now: u64) -> engine::Progress {
    engine::Progress { step_started_ms: now, last_analysis_ms: now, ..engine::Progress::default() }
}
