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
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What a decision does besides the status, done only once the decision is taken (in a fleet:
/// once the fleet accepted it, so a deposed leader announces nothing).
#[derive(Default)]
struct Deferred {
    events: Vec<(&'static str, String, Value)>,
    resets: Vec<String>,
}

impl Deferred {
    fn emit(&mut self, kind: &'static str, message: String, details: Value) {
        self.events.push((kind, message, details));
    }
}

/// A route's analysis outcome, decided under the controller's lock and taken after.
struct Decided {
    route: String,
    /// The route's state it was decided on.
    before: RouteState,
    next: RouteStatus,
    /// Whether routing changes (a new table).
    publish: bool,
    later: Deferred,
}

impl Controller {
    /// One round of automatic analysis: every rollout with a plan that is due is judged on its
    /// current step's windows; decisions are published at once and bump the route's version.
    /// In a fleet only the leader analyses, on the fleet's windows, and each change is written
    /// to the fleet (fenced by the leadership) before it is applied: decided under the
    /// controller's lock, written off it (compare-and-swap on the fleet revision it was decided
    /// on, so a decision made on a status that moved meanwhile is refused), then applied like
    /// any status from the fleet (only if nothing newer was applied meanwhile).
    pub async fn analyze(&self) {
        if !self.may_decide() {
            return;
        }
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().await;
        let decided = self.decide(&inner, now);
        if !self.in_fleet() {
            // Nothing to write anywhere: taken under the same lock.
            let mut changed = false;
            for d in decided {
                changed |= self.take(&mut inner, d, now).await;
            }
            if changed {
                self.commit(&inner, Vec::new());
            }
            return;
        }
        drop(inner);
        for d in decided {
            let (route, revision) = (d.route.as_str(), d.before.revision.as_str());
            let at = match self.write_fleet(route, revision, &d.next, true, None, d.before.fleet_rev).await {
                Ok(at) => at,
                Err(e) => {
                    tracing::warn!(route, error = %e, "analysis change not taken: the fleet refused it");
                    continue;
                }
            };
            // The fleet took the decision: apply it (unless the watch did, or something newer
            // came), and announce it once.
            match self.apply_fleet(route, revision, d.next.clone(), at).await {
                Ok(_) => {
                    for (kind, message, details) in d.later.events {
                        self.emit(now, route, kind, message, details);
                    }
                }
                Err(e) => tracing::error!(route, error = %e, "analysis decision could not be published"),
            }
        }
    }

    /// Every due rollout's analysis outcome, on the state under the lock (no I/O).
    fn decide(&self, inner: &super::control::Inner, now: u64) -> Vec<Decided> {
        let mut decided = Vec::new();
        for spec in &inner.config.routes {
            let name = spec.name();
            let Some(state) = inner.routes.get(name).cloned() else { continue };
            let mut later = Deferred::default();
            let step = match &spec.strategy {
                Strategy::Canary { stable, canary, plan: Some(plan), .. } => {
                    self.step_canary(name, &state, stable, canary, plan, now, &mut later)
                }
                Strategy::AbTest { arms, control, plan: Some(plan), .. } => {
                    self.step_ab(name, &state, arms, control, plan, now, &mut later)
                }
                Strategy::BlueGreen { active, preview, plan: Some(plan), .. } => {
                    self.step_blue_green(name, &state, active, preview, plan, now, &mut later)
                }
                _ => None,
            };
            let Some((next, publish)) = step else { continue };
            decided.push(Decided { route: name.to_string(), before: state, next, publish, later });
        }
        decided
    }

    /// Takes a decision on a gateway alone (under the lock it was decided under); false when
    /// its table could not be published (nothing changed then).
    async fn take(&self, inner: &mut super::control::Inner, d: Decided, now: u64) -> bool {
        let Decided { route, before, next, publish, later } = d;
        let version = if publish { inner.generation + 1 } else { before.version };
        inner.routes.insert(route.clone(), RouteState { status: next, version, ..before.clone() });
        if publish {
            if let Err(e) = self.publish(inner, &[]).await {
                tracing::error!(route, error = %e, "analysis decision could not be published");
                inner.routes.insert(route, before);
                return false;
            }
        }
        for variant in &later.resets {
            self.telemetry.variant(&route, variant).reset_step();
        }
        for (kind, message, details) in later.events {
            self.emit(now, &route, kind, message, details);
        }
        true
    }

    /// A canary with steps: judge the step, then hold, advance, promote or roll back.
    #[allow(clippy::too_many_arguments)]
    fn step_canary(
        &self,
        name: &str,
        state: &RouteState,
        stable: &str,
        canary: &str,
        plan: &engine::CanaryPlan,
        now: u64,
        later: &mut Deferred,
    ) -> Option<(RouteStatus, bool)> {
        let status = &state.status;
        if status.phase != Phase::Progressing || status.canary_weight.is_some() {
            return None; // finished, or steered by hand
        }
        let mut progress = status.progress.clone().unwrap_or_else(|| fresh_progress(now));
        let (s, c) = (self.judged_window(name, state, stable, false), self.judged_window(name, state, canary, false));
        let checks = self.checks_verdict(name, canary, &plan.checks, super::fleet::epoch(status));
        let decision = engine::tick_with_checks(plan, &mut progress, now, &s, &c, &checks);
        if progress == status.progress.clone().unwrap_or_default() {
            return None;
        }
        let mut next = status.clone();
        let numbers =
            serde_json::json!({ "stable": s.snapshot(), "canary": c.snapshot(), "verdict": progress.last_verdict });
        match &decision {
            Decision::Nothing => {
                // A failed analysis below the failure limit is worth an event too.
                if let (true, Some(Verdict::Fail(why))) = (progress.last_analysis_ms == now, &progress.last_verdict) {
                    later.emit("analysis_failed", why.clone(), numbers);
                }
            }
            Decision::Advance(step) => {
                later.resets.extend([stable.to_string(), canary.to_string()]);
                let w = plan.weight(*step);
                later.emit("step_advanced", format!("step {step}: canary at {w}%"), numbers);
            }
            Decision::Promote => {
                next.phase = Phase::Promoted;
                later.emit("promoted", format!("{canary} passed every step and takes all traffic"), numbers);
            }
            Decision::Rollback(why) => {
                next.phase = Phase::RolledBack;
                later.emit("rolled_back", why.clone(), numbers);
            }
        }
        next.last_analysis = progress.last_verdict.as_ref().map(|v| format!("{v:?}"));
        next.progress = Some(progress);
        Some((next, decision != Decision::Nothing))
    }

    /// An A/B test: stop harmful arms, halt on a sample-ratio mismatch, find a winner. The
    /// control arm is judged first; the others against it.
    #[allow(clippy::too_many_arguments)]
    fn step_ab(
        &self,
        name: &str,
        state: &RouteState,
        arms: &[(String, f64)],
        control: &str,
        plan: &engine::AbPlan,
        now: u64,
        later: &mut Deferred,
    ) -> Option<(RouteStatus, bool)> {
        let status = &state.status;
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
        let windows: Vec<Window> = live.iter().map(|(a, _)| self.judged_window(name, state, a, false)).collect();
        let refs: Vec<&Window> = windows.iter().collect();
        let weights: Vec<f64> = live.iter().map(|(_, w)| *w).collect();
        let outcome = analysis::judge_ab(&refs, &weights, &plan.criteria);
        let outcome = self.ab_checks(name, status, &live, control, &plan.checks, outcome);
        let numbers = serde_json::json!({
            "arms": live.iter().zip(&windows).map(|((a, _), w)| (a.clone(), w.snapshot())).collect::<BTreeMap<_, _>>(),
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
                    later.emit("promoted", format!("{winner} wins the A/B test and takes all traffic: {why}"), numbers);
                } else {
                    next.suggested_winner = Some(winner.clone());
                    later.emit(
                        "winner_found",
                        format!("{winner} wins the A/B test; promote it to send all traffic: {why}"),
                        numbers,
                    );
                }
            }
            AbOutcome::SampleRatioMismatch { p } => {
                let why = format!("sample-ratio mismatch (sequential multinomial test on units, always-valid p={p:.2e}): the arms' users do not match their weights, so the test cannot be trusted");
                next.halted = Some(why.clone());
                later.emit("halted", why, numbers);
            }
            AbOutcome::Guardrail { arm, why } => {
                let stopped = live[*arm].0.clone();
                next.stopped_arms.push(stopped.clone());
                publish = true;
                // The stopped arm's users move to the live arms: a new phase of the experiment,
                // judged on fresh windows so the sample ratio holds.
                later.resets.extend(live.iter().map(|(a, _)| a.clone()));
                later.emit("arm_stopped", format!("{stopped} taken out of traffic: {why}"), numbers);
            }
        }
        Some((next, publish))
    }

    /// Blue-green: judge the preview before a switch (and switch on its own after
    /// `auto_promote_after`), and watch the new colour after one, switching back on a failure.
    #[allow(clippy::too_many_arguments)]
    fn step_blue_green(
        &self,
        name: &str,
        state: &RouteState,
        active: &str,
        preview: &str,
        plan: &engine::BlueGreenPlan,
        now: u64,
        later: &mut Deferred,
    ) -> Option<(RouteStatus, bool)> {
        let status = &state.status;
        if status.phase == Phase::RolledBack {
            return None;
        }
        let mut progress = match analysis_due(status, plan.interval, now) {
            Ok(p) => p,
            Err(not_yet) => return not_yet,
        };
        let serving = status.active_colour(active).to_string();
        let other = if serving == active { preview.to_string() } else { active.to_string() };
        let window = |variant: &str, pinned| self.judged_window(name, state, variant, pinned);
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
                let (new, old) = (window(&serving, false), window(&other, false));
                let verdict = analysis::judge_canary(&old, &new, &criteria);
                if let Verdict::Fail(why) = &verdict {
                    bg_switch(active, preview, &mut next, now);
                    next.phase = Phase::RolledBack;
                    publish = true;
                    let numbers =
                        serde_json::json!({ "new": new.snapshot(), "old": old.snapshot(), "verdict": verdict });
                    later.emit(
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
                let (new, old) = (window(&serving, false), window(&other, true));
                let verdict = analysis::judge_canary(&new, &old, &plan.criteria);
                let due = plan
                    .auto_promote_after
                    .is_some_and(|d| now.saturating_sub(progress.step_started_ms) >= d.as_millis() as u64);
                if verdict == Verdict::Pass && due {
                    bg_switch(active, preview, &mut next, now);
                    next.phase = Phase::Promoted;
                    publish = true;
                    later.resets.push(other.clone());
                    let numbers = serde_json::json!({ "preview": old.snapshot(), "active": new.snapshot() });
                    later.emit("promoted", format!("preview {other} passed its analysis: switched"), numbers);
                }
                progress.last_verdict = Some(verdict);
            }
        }
        next.last_analysis = progress.last_verdict.as_ref().map(|v| format!("{v:?}"));
        next.progress = Some(progress);
        Some((next, publish))
    }

    /// Runs [`Controller::analyze`] every `every` until the controller is dropped, and the
    /// Prometheus checks on a timer of their own.
    pub fn spawn_analysis(self: &Arc<Self>, every: Duration) {
        let checks = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(c) = checks.upgrade() else { return };
                c.run_checks().await;
            }
        });
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

impl Controller {
    /// An A/B outcome with the plan's Prometheus checks: an arm (not control) whose check fails
    /// is stopped like a guardrail failure; a winner whose checks have no data is held.
    fn ab_checks(
        &self,
        name: &str,
        status: &RouteStatus,
        live: &[(String, f64)],
        control: &str,
        checks: &[crate::config::plan::MetricCheck],
        outcome: AbOutcome,
    ) -> AbOutcome {
        if checks.is_empty() || matches!(outcome, AbOutcome::SampleRatioMismatch { .. } | AbOutcome::Guardrail { .. }) {
            return outcome;
        }
        let e = super::fleet::epoch(status);
        for (i, (arm, _)) in live.iter().enumerate().filter(|(_, (a, _))| a != control) {
            if let Verdict::Fail(why) = self.checks_verdict(name, arm, checks, e) {
                return AbOutcome::Guardrail { arm: i, why };
            }
        }
        if let AbOutcome::Winner { arm, .. } = &outcome {
            let winner = &live[*arm].0;
            if let (false, Verdict::Inconclusive(why)) =
                (winner == control, self.checks_verdict(name, winner, checks, e))
            {
                return AbOutcome::Continue { why: format!("{winner} leads, held by its checks: {why}") };
            }
        }
        outcome
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
