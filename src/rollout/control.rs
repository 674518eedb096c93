//! The one way the routing table changes: mutate spec or status → load what is missing →
//! build → validate → publish with one atomic swap. File reloads, SIGHUP and admin calls all
//! come through here, one at a time.

use super::analysis::{self, AbOutcome, Verdict};
use super::engine::{self, Clock, Decision, SystemClock};
use super::events::{Event, EventLog};
use super::status::{shares, Phase, RouteStatus};
use super::store::{revision, Saved, Store};
use crate::backend::{self, Backend};
use crate::config::{BackendSpec, Config, ConfigErrors, ConfigIssue, RouteSpec, Strategy};
use crate::protocol::ApiError;
use crate::routing::{Route, RouteTable, ShadowTarget, SharedTable, Variant};
use crate::telemetry::shadow::ShadowStats;
use crate::telemetry::window::Window;
use crate::telemetry::{names, Telemetry};
use http::StatusCode;
use metrics::Label;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The outcome of the last attempt to apply routes.yaml.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// The file.
    pub source: String,
    /// Whether the last attempt applied.
    pub ok: bool,
    /// When it was made (ms since the epoch).
    pub at_unix_ms: u64,
    /// Every error of a refused file; empty when it applied.
    pub errors: Vec<ConfigIssue>,
    /// Attempts that applied.
    pub applied: u64,
    /// Attempts that were refused.
    pub refused: u64,
}

struct Loaded {
    spec: BackendSpec,
    backend: Arc<Backend>,
}

struct Inner {
    config: Config,
    /// By route name: the spec revision the status belongs to, and the status.
    routes: HashMap<String, (RouteSpec, RouteStatus)>,
    loaded: HashMap<String, Loaded>,
    shadow_stats: HashMap<String, Arc<ShadowStats>>,
    /// Concurrency limits by route: the limit and its permits, kept while the limit is unchanged.
    limits: HashMap<String, (usize, Arc<tokio::sync::Semaphore>)>,
    generation: u64,
}

/// What a controller needs besides the config.
#[derive(Debug, Clone)]
pub struct Options {
    /// ONNX Runtime shared library.
    pub ort_library: PathBuf,
    /// Metrics and windows.
    pub telemetry: Arc<Telemetry>,
    /// Where rollout status is persisted; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
}

/// Owns the routing table and every change to it.
pub struct Controller {
    table: SharedTable,
    telemetry: Arc<Telemetry>,
    store: Option<Store>,
    events: EventLog,
    webhooks: Mutex<Vec<crate::config::WebhookSpec>>,
    dispatcher: super::webhooks::Dispatcher,
    clock: Arc<dyn Clock>,
    persist_error: Mutex<Option<String>>,
    ort_library: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
    report: Mutex<ReloadReport>,
    me: Weak<Controller>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("generation", &self.table.load().generation()).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

impl Controller {
    /// Loads every backend that `config` routes to and publishes the first table (generation 1).
    pub async fn start(config: Config, options: Options) -> Result<Arc<Controller>, ConfigErrors> {
        let Options { ort_library, telemetry, state_dir } = options;
        let store = match &state_dir {
            Some(dir) => Some(Store::new(dir).map_err(|e| {
                ConfigErrors::one(
                    &config.source,
                    "state_dir",
                    format!("cannot use state folder {}: {e}", dir.display()),
                )
            })?),
            None => None,
        };
        // A restart resumes each route whose spec is unchanged; changed ones start over, and
        // their old status goes to the history.
        let saved = match &store {
            Some(store) => store.load().map_err(|e| ConfigErrors::one(&config.source, "state_dir", e))?,
            None => Default::default(),
        };
        let mut routes = HashMap::new();
        for r in &config.routes {
            let status = match saved.get(r.name()) {
                Some(s) if s.revision == revision(r) => {
                    tracing::info!(route = r.name(), phase = ?s.status.phase, "resuming rollout status");
                    s.status.clone()
                }
                Some(old) => {
                    if let Some(store) = &store {
                        let _ = store.archive(r.name(), old);
                    }
                    RouteStatus::default()
                }
                None => RouteStatus::default(),
            };
            routes.insert(r.name().to_string(), (r.clone(), status));
        }
        let source = config.source.display().to_string();
        let inner = Inner {
            config,
            routes,
            loaded: HashMap::new(),
            shadow_stats: HashMap::new(),
            limits: HashMap::new(),
            generation: 0,
        };
        let controller = Arc::new_cyclic(|me| Controller {
            table: SharedTable::new(RouteTable::default()),
            telemetry,
            store,
            events: EventLog::new(1000),
            webhooks: Mutex::new(inner.config.webhooks.clone()),
            dispatcher: Default::default(),
            clock: Arc::new(SystemClock),
            persist_error: Mutex::new(None),
            ort_library,
            inner: tokio::sync::Mutex::new(inner),
            report: Mutex::new(ReloadReport { source, ok: true, at_unix_ms: now_ms(), ..ReloadReport::default() }),
            me: me.clone(),
        });
        {
            let mut inner = controller.inner.lock().await;
            controller.publish(&mut inner, &[]).await?;
            controller.persist(&inner);
        }
        Ok(controller)
    }

    /// The gateway's metrics and windows.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The published table, for request handlers.
    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// The outcome of the last reload.
    pub fn report(&self) -> ReloadReport {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, result: &Result<u64, ConfigErrors>) {
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        self.telemetry.counter(names::RELOADS_TOTAL, vec![Label::new("outcome", outcome)]).increment(1);
        let mut r = self.report.lock().unwrap_or_else(|p| p.into_inner());
        r.at_unix_ms = now_ms();
        match result {
            Ok(_) => {
                r.ok = true;
                r.errors.clear();
                r.applied += 1;
            }
            Err(e) => {
                r.ok = false;
                r.errors = e.issues.clone();
                r.refused += 1;
            }
        }
    }

    /// Reads the routes file again and applies it. A refused file changes nothing; its errors
    /// are logged and kept for `GET /admin/routes`.
    pub async fn reload_file(&self) -> Result<u64, ConfigErrors> {
        let source = self.inner.lock().await.config.source.clone();
        let result = match Config::load(&source) {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(e),
        };
        let now = self.clock.now_ms();
        match &result {
            Ok(generation) => {
                tracing::info!(file = %source.display(), generation, "routes reloaded");
                self.emit(
                    now,
                    "",
                    "reload_applied",
                    format!("{} applied", source.display()),
                    serde_json::json!({ "generation": generation }),
                );
            }
            Err(e) => {
                self.emit(now, "", "reload_refused", e.to_string(), serde_json::json!({ "errors": e.issues }));
                for issue in &e.issues {
                    tracing::error!(file = %source.display(), place = %issue.place, "{}", issue.message);
                }
                tracing::error!(file = %source.display(), errors = e.issues.len(), "routes file refused; the running table stays");
            }
        }
        self.record(&result);
        result
    }

    /// Applies a new spec. Routes whose spec is unchanged keep their status; changed routes start
    /// over. A recreate route whose backend changed unloads the old backend before loading the new
    /// one, answering 503 in between. Anything that fails leaves the running table as it was.
    pub async fn apply(&self, config: Config) -> Result<u64, ConfigErrors> {
        let mut inner = self.inner.lock().await;
        if inner.config == config {
            return Ok(inner.generation);
        }
        if inner.config.server != config.server {
            tracing::warn!("server: settings changed in routes.yaml; they apply at the next restart");
        }
        // Unchanged routes keep their status; a new revision starts over (its windows are
        // emptied once the new table is published, not before: a refused spec changes nothing).
        let mut new_revisions = Vec::new();
        let new_routes: HashMap<String, (RouteSpec, RouteStatus)> = config
            .routes
            .iter()
            .map(|r| {
                let name = r.name().to_string();
                let status = match inner.routes.get(&name) {
                    Some((spec, status)) if spec == r => status.clone(),
                    _ => {
                        new_revisions.push(r.clone());
                        RouteStatus::default()
                    }
                };
                (name, (r.clone(), status))
            })
            .collect();
        // Recreate routes whose backend changes: the old one goes before the new one comes.
        let gaps: Vec<(String, String)> = config
            .routes
            .iter()
            .filter_map(|r| {
                let Strategy::Recreate { backend: new } = &r.strategy else { return None };
                let (old_spec, _) = inner.routes.get(r.name())?;
                let Strategy::Recreate { backend: old } = &old_spec.strategy else { return None };
                let changed = old != new
                    || inner.config.backends.iter().find(|b| &b.name == old)
                        != config.backends.iter().find(|b| &b.name == new);
                changed.then(|| (r.name().to_string(), old.clone()))
            })
            .collect();
        let gap_started = Instant::now();
        if !gaps.is_empty() {
            // Publish the running spec with those routes unavailable, then release their backends
            // unless another route still answers with them (the gap table holds those).
            let gap_names: Vec<&str> = gaps.iter().map(|(r, _)| r.as_str()).collect();
            let gap_table = self.build(&inner, inner.generation + 1, &gap_names)?;
            inner.generation += 1;
            self.table.store(gap_table);
            for (route, old) in &gaps {
                let shared =
                    inner.config.routes.iter().any(|r| r.name() != route && r.backends().contains(&old.as_str()));
                if let (false, Some(loaded)) = (shared, inner.loaded.remove(old)) {
                    release(loaded.backend, config.server.request_timeout + Duration::from_secs(1)).await;
                }
            }
        }
        let old_routes = std::mem::replace(&mut inner.routes, new_routes);
        let old_config = std::mem::replace(&mut inner.config, config);
        match self.publish(&mut inner, &[]).await {
            Ok(generation) => {
                for r in &new_revisions {
                    for variant in r.strategy.backends() {
                        self.telemetry.variant(r.name(), variant).reset_step();
                    }
                }
                let gap = gap_started.elapsed();
                for (name, _) in &gaps {
                    if let Some((_, status)) = inner.routes.get_mut(name) {
                        status.last_gap = Some(gap.as_secs_f64() * 1000.0);
                    }
                    tracing::info!(route = %name, gap_ms = gap.as_secs_f64() * 1000.0, "recreate: new backend serving");
                }
                *self.webhooks.lock().unwrap_or_else(|p| p.into_inner()) = inner.config.webhooks.clone();
                self.persist(&inner);
                Ok(generation)
            }
            Err(e) => {
                inner.config = old_config;
                inner.routes = old_routes;
                if !gaps.is_empty() {
                    // The old backends were released: bring them back.
                    if let Err(again) = self.publish(&mut inner, &[]).await {
                        tracing::error!(error = %again, "recreate: could not restore the previous backend");
                    }
                } else {
                    prune(&mut inner);
                }
                Err(e)
            }
        }
    }

    /// Loads what the routes need, builds and publishes the next table, and lets go of
    /// backends no route uses any more (they finish their in-flight requests first).
    async fn publish(&self, inner: &mut Inner, unavailable: &[&str]) -> Result<u64, ConfigErrors> {
        let want = needed(&inner.config, &inner.routes);
        let missing: Vec<String> = want
            .iter()
            .filter(|name| {
                let spec = inner.config.backends.iter().find(|b| &b.name == *name);
                inner.loaded.get(*name).map(|l| Some(&l.spec)) != Some(spec)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let config = inner.config.clone();
            let lib = self.ort_library.clone();
            let set = tokio::task::spawn_blocking(move || {
                let names: Vec<&str> = missing.iter().map(String::as_str).collect();
                backend::load(&config, &names, &lib)
            })
            .await
            .map_err(|e| ConfigErrors::one(&inner.config.source, "backends", format!("loading failed: {e}")))??;
            for (name, backend) in set {
                if let Some(spec) = inner.config.backends.iter().find(|b| b.name == name) {
                    inner.loaded.insert(name, Loaded { spec: spec.clone(), backend });
                }
            }
        }
        let limited: Vec<(String, usize)> =
            inner.config.routes.iter().filter_map(|r| Some((r.name().to_string(), r.max_concurrency?))).collect();
        inner.limits.retain(|name, (max, _)| limited.iter().any(|(n, m)| n == name && m == max));
        for (name, max) in limited {
            inner.limits.entry(name).or_insert_with(|| (max, Arc::new(tokio::sync::Semaphore::new(max))));
        }
        for spec in inner.config.routes.iter().filter(|r| r.shadow.is_some()) {
            let name = spec.name().to_string();
            let telemetry = &self.telemetry;
            inner.shadow_stats.entry(name).or_insert_with_key(|name| Arc::new(ShadowStats::new(telemetry, name)));
        }
        let table = self.build(inner, inner.generation + 1, unavailable)?;
        inner.generation += 1;
        for route in table.routes() {
            for v in &route.variants {
                let labels = vec![Label::new("route", route.name.clone()), Label::new("variant", v.name.clone())];
                self.telemetry.gauge(names::VARIANT_WEIGHT, labels).set(v.weight / 100.0);
            }
        }
        self.telemetry.gauge(names::TABLE_GENERATION, vec![]).set(inner.generation as f64);
        self.table.store(table);
        prune(inner);
        Ok(inner.generation)
    }

    fn build(&self, inner: &Inner, generation: u64, unavailable: &[&str]) -> Result<RouteTable, ConfigErrors> {
        let mut routes = Vec::with_capacity(inner.config.routes.len());
        let mut issues = Vec::new();
        for (i, spec) in inner.config.routes.iter().enumerate() {
            let name = spec.name();
            let status = inner.routes.get(name).map(|(_, s)| s.clone()).unwrap_or_default();
            let gap = unavailable.contains(&name);
            let mut upper = 0;
            let mut variants = Vec::new();
            if !gap {
                for share in shares(spec, &status) {
                    let Some(loaded) = inner.loaded.get(&share.name) else {
                        issues.push(ConfigIssue {
                            place: format!("routes[{i}]"),
                            message: format!("backend {:?} is not loaded", share.name),
                        });
                        continue;
                    };
                    upper += share.buckets;
                    let stats = self.telemetry.variant(name, &share.name);
                    variants.push(Variant {
                        name: share.name,
                        role: share.role,
                        backend: loaded.backend.clone(),
                        weight: share.weight,
                        upper,
                        stats,
                        fault: loaded.spec.fault.clone(),
                    });
                }
            }
            let shadow = spec.shadow.as_ref().filter(|_| !gap).and_then(|sh| {
                let loaded = inner.loaded.get(&sh.backend)?;
                let stats = inner.shadow_stats.get(name).cloned().unwrap_or_default();
                Some(ShadowTarget {
                    name: sh.backend.clone(),
                    backend: loaded.backend.clone(),
                    percent: sh.percent,
                    max_in_flight: sh.max_in_flight,
                    stats,
                })
            });
            // Every in-process model a route may send a request to must take the same inputs.
            let mut sigs = variants
                .iter()
                .map(|v| (&v.name, &v.backend))
                .chain(shadow.iter().map(|s| (&s.name, &s.backend)))
                .filter_map(|(n, b)| match b.as_ref() {
                    Backend::Onnx(m) => Some((n, m.signature())),
                    Backend::Upstream(_) => None,
                });
            if let Some((first, sig)) = sigs.next() {
                for (other, s) in sigs {
                    if s.inputs != sig.inputs {
                        issues.push(ConfigIssue {
                            place: format!("routes[{i}]"),
                            message: format!("backends {first:?} and {other:?} take different inputs, so they cannot serve one route"),
                        });
                    }
                }
            }
            let sticky = match &spec.strategy {
                Strategy::Canary { sticky, .. } => sticky.clone(),
                Strategy::AbTest { sticky, .. } => Some(sticky.clone()),
                _ => None,
            };
            routes.push(Route {
                name: name.to_string(),
                kind: spec.kind.clone(),
                strategy: spec.strategy.name(),
                salt: name.to_string(),
                variants,
                sticky,
                shadow,
                unavailable: gap.then(|| "its backend is being replaced (recreate); retry shortly".to_string()),
                limit: inner.limits.get(name).cloned(),
                overrides: spec.overrides.unwrap_or(inner.config.server.overrides),
            });
        }
        if issues.is_empty() {
            Ok(RouteTable::new(generation, routes))
        } else {
            Err(ConfigErrors { file: inner.config.source.clone(), issues })
        }
    }

    /// Runs `change` on a route's status and publishes; on failure the status is restored.
    /// With `if_match`, refuses (412) unless the published table is still that generation.
    async fn mutate(
        &self,
        route: &str,
        if_match: Option<u64>,
        change: impl FnOnce(&RouteSpec, &mut RouteStatus) -> Result<(), ApiError>,
    ) -> Result<(u64, RouteStatus, RouteStatus), ApiError> {
        let mut inner = self.inner.lock().await;
        if let Some(expected) = if_match {
            if expected != inner.generation {
                return Err(ApiError::new(
                    StatusCode::PRECONDITION_FAILED,
                    format!(
                        "If-Match generation {expected} is stale: the table is at generation {}; read it again",
                        inner.generation
                    ),
                ));
            }
        }
        let Some((spec, status)) = inner.routes.get(route).cloned() else {
            let known: Vec<&str> = inner.config.routes.iter().map(RouteSpec::name).collect();
            return Err(ApiError::not_found(format!("unknown route {route:?}; routes: {}", known.join(", "))));
        };
        let mut next = status.clone();
        change(&spec, &mut next)?;
        if next == status {
            return Ok((inner.generation, status, next));
        }
        inner.routes.insert(route.to_string(), (spec.clone(), next.clone()));
        match self.publish(&mut inner, &[]).await {
            Ok(g) => {
                self.persist(&inner);
                Ok((g, status, next))
            }
            Err(e) => {
                inner.routes.insert(route.to_string(), (spec, status));
                prune(&mut inner);
                Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
            }
        }
    }

    /// Applies an admin action to a route's rollout; see [`Action`]. Idempotent where it can be:
    /// an action that changes nothing answers the current generation. `who` names the caller in
    /// the audit trail (a token id, never the token).
    pub async fn act(&self, route: &str, action: Action, if_match: Option<u64>, who: &str) -> Result<u64, ApiError> {
        let now = self.clock.now_ms();
        let (generation, before, after) =
            self.mutate(route, if_match, |spec, st| apply_action(route, spec, st, &action, now)).await?;
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
            let delay = {
                let inner = self.inner.lock().await;
                match inner.routes.get(route).map(|(spec, _)| &spec.strategy) {
                    Some(Strategy::BlueGreen { scale_down_delay, .. }) => Some(*scale_down_delay),
                    _ => None,
                }
            };
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

    /// One round of automatic analysis: every canary with steps that is progressing and not
    /// paused is judged on its current step's windows; decisions are published at once.
    pub async fn analyze(&self) {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().await;
        let names: Vec<String> = inner.config.routes.iter().map(|r| r.name().to_string()).collect();
        let mut changed = false;
        for name in names {
            let Some((spec, status)) = inner.routes.get(&name).cloned() else { continue };
            let step = match &spec.strategy {
                Strategy::Canary { stable, canary, plan: Some(plan), .. } => {
                    self.step_canary(&name, stable, canary, plan, &status, now)
                }
                Strategy::AbTest { arms, plan: Some(plan), .. } => self.step_ab(&name, arms, plan, &status, now),
                Strategy::BlueGreen { active, preview, plan: Some(plan), .. } => {
                    self.step_blue_green(&name, active, preview, plan, &status, now)
                }
                _ => None,
            };
            let Some((next, publish)) = step else { continue };
            inner.routes.insert(name.clone(), (spec.clone(), next));
            changed = true;
            if publish {
                if let Err(e) = self.publish(&mut inner, &[]).await {
                    tracing::error!(route = %name, error = %e, "analysis decision could not be published");
                    inner.routes.insert(name.clone(), (spec, status));
                }
            }
        }
        if changed {
            self.persist(&inner);
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

    /// An A/B test: stop harmful arms, halt on a sample-ratio mismatch, find a winner.
    fn step_ab(
        &self,
        name: &str,
        arms: &[(String, f64)],
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
        let live: Vec<&(String, f64)> = arms.iter().filter(|(a, _)| !status.stopped_arms.contains(a)).collect();
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
                let why = format!("sample-ratio mismatch (chi-square p={p:.2e}): the arms' traffic does not match their weights, so the test cannot be trusted");
                next.halted = Some(why.clone());
                self.emit(now, name, "halted", why, numbers);
            }
            AbOutcome::Guardrail { arm, why } => {
                let stopped = live[*arm].0.clone();
                next.stopped_arms.push(stopped.clone());
                publish = true;
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
                let verdict = analysis::judge_canary(&old.step_window(), &new.step_window(), &plan.criteria);
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
                let verdict = analysis::judge_canary(&new.step_window(), &old.step_window(), &plan.criteria);
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
            }
        });
    }

    /// Records an event (log line, `GET /admin/events`) and sends it to the webhooks.
    fn emit(&self, at_ms: u64, route: &str, kind: &'static str, message: String, details: serde_json::Value) {
        let event = self.events.emit(at_ms, route, kind, message, details);
        let hooks = self.webhooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !hooks.is_empty() {
            self.dispatcher.send(&hooks, &event);
        }
    }

    /// Recent events after sequence number `since`, for `route` if given.
    pub fn events(&self, since: u64, route: Option<&str>) -> Vec<Event> {
        self.events.since(since, route)
    }

    /// Saves every route's status; a failure is logged and shown, and serving goes on.
    fn persist(&self, inner: &Inner) {
        let Some(store) = &self.store else { return };
        let all = inner
            .routes
            .iter()
            .map(|(name, (spec, st))| (name.clone(), Saved { revision: revision(spec), status: st.clone() }))
            .collect();
        let result = store.save(&all);
        let mut err = self.persist_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => *err = None,
            Err(e) => {
                let message = format!("cannot save rollout status in {}: {e}", store.dir().display());
                if err.as_deref() != Some(message.as_str()) {
                    tracing::error!("{message}; serving goes on, status changes are kept in memory");
                }
                *err = Some(message);
            }
        }
    }

    /// The last error saving status, if the last save failed.
    pub fn persist_error(&self) -> Option<String> {
        self.persist_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The generation of the published table.
    pub fn generation(&self) -> u64 {
        self.table.load().generation()
    }

    /// The status of every route, in file order, with its spec revision's strategy.
    pub async fn statuses(&self) -> Vec<(String, RouteStatus)> {
        let inner = self.inner.lock().await;
        inner
            .config
            .routes
            .iter()
            .map(|r| (r.name().to_string(), inner.routes.get(r.name()).map(|(_, s)| s.clone()).unwrap_or_default()))
            .collect()
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

fn bg_switch(active: &str, preview: &str, st: &mut RouteStatus, now: u64) {
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

fn fresh_progress(now: u64) -> engine::Progress {
    engine::Progress { step_started_ms: now, last_analysis_ms: now, ..engine::Progress::default() }
}

/// Backends the routes need: every variant that can answer, and every shadow.
fn needed(config: &Config, routes: &HashMap<String, (RouteSpec, RouteStatus)>) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for spec in &config.routes {
        let status = routes.get(spec.name()).map(|(_, s)| s.clone()).unwrap_or_default();
        want.extend(shares(spec, &status).into_iter().map(|s| s.name));
        if let Some(sh) = &spec.shadow {
            want.insert(sh.backend.clone());
        }
    }
    want
}

/// Forgets backends that no route needs; the tables and requests still holding them keep them
/// alive until they finish.
fn prune(inner: &mut Inner) {
    let want = needed(&inner.config, &inner.routes);
    inner.loaded.retain(|name, _| want.contains(name));
    let names: Vec<String> =
        inner.config.routes.iter().filter(|r| r.shadow.is_some()).map(|r| r.name().to_string()).collect();
    for name in names {
        inner.shadow_stats.entry(name).or_default();
    }
}

/// Waits until nothing else holds `backend` (in-flight requests finished, old tables gone), then
/// unloads it and waits for its sessions to be released. Gives up waiting after `limit`.
async fn release(backend: Arc<Backend>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Arc::strong_count(&backend) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    match Arc::try_unwrap(backend) {
        Ok(Backend::Onnx(model)) => {
            let _ = tokio::task::spawn_blocking(move || model.shutdown()).await;
        }
        Ok(Backend::Upstream(_)) => {}
        Err(still_used) => {
            tracing::warn!(
                ?limit,
                "recreate: old backend still in use after the drain limit; it unloads when its last request ends"
            );
            drop(still_used);
        }
    }
}

impl Controller {
    /// Reloads the routes file whenever it settles after a change, until the returned watch is
    /// dropped. Also returns the sender that SIGHUP (or anything else) can use to ask for a reload.
    pub fn watch_file(
        self: &Arc<Self>,
    ) -> Result<(crate::config::watch::FileWatch, tokio::sync::mpsc::Sender<()>), notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
        let source = self.report().source;
        let watch = crate::config::watch::watch(std::path::Path::new(&source), tx.clone())?;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let Some(controller) = me.upgrade() else { return };
                let _ = controller.reload_file().await;
            }
        });
        Ok((watch, tx))
    }
}
