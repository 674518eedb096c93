//! The one way the routing table changes: mutate spec or status under one lock → load what is
//! missing → build → validate → publish with one atomic swap. File reloads, SIGHUP, admin calls
//! and analysis decisions all come through here, one at a time. Readers never take the lock:
//! the table and every route's status are published through `ArcSwap`.

use super::engine::{Clock, SystemClock};
use super::events::{Event, EventLog};
use super::persist::Persister;
pub use super::reload::ReloadReport;
use super::revision::revision;
use super::status::{layout, RouteStatus};
use super::store::{Saved, Store};
use crate::backend::{self, Backend};
use crate::config::{BackendSpec, Config, ConfigErrors};
use crate::protocol::ApiError;
use crate::routing::build::{self, Limit, Parts};
use crate::routing::{RouteTable, SharedTable};
use crate::telemetry::shadow::ShadowStats;
use crate::telemetry::{names, Telemetry};
use arc_swap::ArcSwap;
use http::StatusCode;
use metrics::Label;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

pub(super) struct Loaded {
    pub spec: BackendSpec,
    pub backend: Arc<Backend>,
}

/// A route's rollout as the controller holds it.
#[derive(Debug, Clone)]
pub(super) struct RouteState {
    /// The spec revision the status belongs to.
    pub revision: String,
    pub status: RouteStatus,
    /// Generation at which the route's spec or status last changed (its ETag).
    pub version: u64,
    /// In a fleet: the store's revision of `status` (0 before any was seen). A status from the
    /// fleet is applied only when newer, and a change is written compare-and-swap on it.
    pub fleet_rev: i64,
}

pub(super) struct Inner {
    pub config: Config,
    pub routes: HashMap<String, RouteState>,
    pub loaded: HashMap<String, Loaded>,
    shadow_stats: HashMap<String, Arc<ShadowStats>>,
    limits: HashMap<String, Limit>,
    pub generation: u64,
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

/// Every route's status in file order, as last published.
pub type Statuses = Vec<(String, RouteStatus)>;

/// Owns the routing table and every change to it.
pub struct Controller {
    pub(super) table: SharedTable,
    pub(super) telemetry: Arc<Telemetry>,
    persister: Option<Persister>,
    pub(super) events: EventLog,
    pub(super) webhooks: Mutex<Vec<crate::config::WebhookSpec>>,
    pub(super) dispatcher: super::webhooks::Dispatcher,
    pub(super) clock: Arc<dyn Clock>,
    ort_library: PathBuf,
    pub(super) inner: tokio::sync::Mutex<Inner>,
    /// One routes-file reload at a time (held while the file is read, off `inner`), so a file
    /// read earlier is never applied after one read later.
    pub(super) reloads: tokio::sync::Mutex<()>,
    statuses: ArcSwap<Statuses>,
    pub(super) revisions: ArcSwap<Vec<(String, String)>>,
    pub(super) fleet: std::sync::OnceLock<Arc<dyn super::fleet::Fleet>>,
    pub(super) held: Mutex<Option<String>>,
    pub(super) checks: super::checks::CheckResults,
    pub(super) report: Mutex<ReloadReport>,
    pub(super) me: Weak<Controller>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("generation", &self.table.load().generation()).finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Controller {
    /// Loads every backend that `config` routes to and publishes the first table (generation 1).
    pub async fn start(config: Config, options: Options) -> Result<Arc<Controller>, ConfigErrors> {
        Self::start_with_clock(config, options, Arc::new(SystemClock)).await
    }

    /// [`Controller::start`] with time from `clock` (tests run whole rollouts in simulated time).
    pub async fn start_with_clock(
        config: Config,
        options: Options,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Controller>, ConfigErrors> {
        let Options { ort_library, telemetry, state_dir } = options;
        let state_error = |e: String| ConfigErrors::one(&config.source, "state_dir", e);
        let (store, saved) = match state_dir {
            Some(dir) => tokio::task::spawn_blocking(move || {
                let store = Store::new(&dir).map_err(|e| format!("cannot use state folder {}: {e}", dir.display()))?;
                let saved = store.load()?;
                Ok::<_, String>((Some(store), saved))
            })
            .await
            .map_err(|e| state_error(e.to_string()))?
            .map_err(state_error)?,
            None => (None, BTreeMap::new()),
        };
        // A restart resumes each route whose revision is unchanged; changed ones start over, and
        // their old status goes to the history.
        let mut routes = HashMap::new();
        let mut archive = Vec::new();
        for r in &config.routes {
            let rev = revision(r, &config.backends);
            let status = match saved.get(r.name()) {
                Some(s) if s.revision == rev => {
                    tracing::info!(route = r.name(), phase = ?s.status.phase, "resuming rollout status");
                    s.status.clone()
                }
                Some(old) => {
                    archive.push((r.name().to_string(), old.clone()));
                    RouteStatus::default()
                }
                None => RouteStatus::default(),
            };
            routes.insert(r.name().to_string(), RouteState { revision: rev, status, version: 1, fleet_rev: 0 });
        }
        let source = config.source.display().to_string();
        let webhooks = config.webhooks.clone();
        let inner = Inner {
            config,
            routes,
            loaded: HashMap::new(),
            shadow_stats: HashMap::new(),
            limits: HashMap::new(),
            generation: 0,
        };
        let at_unix_ms = clock.now_ms();
        let controller = Arc::new_cyclic(|me| Controller {
            table: SharedTable::new(RouteTable::default()),
            telemetry,
            persister: store.map(Persister::start),
            events: EventLog::new(1000),
            webhooks: Mutex::new(webhooks),
            dispatcher: Default::default(),
            clock,
            ort_library,
            inner: tokio::sync::Mutex::new(inner),
            reloads: tokio::sync::Mutex::new(()),
            statuses: ArcSwap::default(),
            revisions: ArcSwap::default(),
            fleet: std::sync::OnceLock::new(),
            held: Mutex::new(None),
            checks: Default::default(),
            report: Mutex::new(ReloadReport { source, ok: true, at_unix_ms, ..ReloadReport::default() }),
            me: me.clone(),
        });
        let ticket = {
            let mut inner = controller.inner.lock().await;
            controller.publish(&mut inner, &[]).await?;
            controller.commit(&inner, archive)
        };
        controller.saved(ticket).await;
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
        lock(&self.report).clone()
    }

    /// The generation of the published table.
    pub fn generation(&self) -> u64 {
        self.table.load().generation()
    }

    /// The status of every route, in file order, as last published. Never waits on the
    /// controller's lock (model loads, drains).
    pub fn statuses(&self) -> Arc<Statuses> {
        self.statuses.load_full()
    }

    /// The last error saving status, if the last save failed.
    pub fn persist_error(&self) -> Option<String> {
        self.persister.as_ref().and_then(Persister::error)
    }

    /// Recent events after sequence number `since`, for `route` if given.
    pub fn events(&self, since: u64, route: Option<&str>) -> Vec<Event> {
        self.events.since(since, route)
    }

    /// The routes.yaml that is applied now.
    pub async fn config(&self) -> Config {
        self.inner.lock().await.config.clone()
    }

    /// Records an event from outside the controller (the registry poller) at the clock's now.
    pub fn record_event(&self, route: &str, kind: &'static str, message: String, details: serde_json::Value) {
        self.emit(self.clock.now_ms(), route, kind, message, details);
    }

    /// Records an event (log line, `GET /admin/events`) and sends it to the webhooks.
    pub(super) fn emit(
        &self,
        at_ms: u64,
        route: &str,
        kind: &'static str,
        message: String,
        details: serde_json::Value,
    ) {
        let event = self.events.emit(at_ms, route, kind, message, details);
        let hooks = lock(&self.webhooks).clone();
        if !hooks.is_empty() {
            self.dispatcher.send(&hooks, &event);
        }
    }

    /// Publishes every route's status for readers and queues a save (with the statuses of
    /// replaced revisions for the history). Returns the save's ticket for [`Controller::saved`].
    pub(super) fn commit(&self, inner: &Inner, archive: Vec<(String, Saved)>) -> u64 {
        let statuses = inner
            .config
            .routes
            .iter()
            .map(|r| (r.name().to_string(), inner.routes.get(r.name()).map(|s| s.status.clone()).unwrap_or_default()))
            .collect();
        self.statuses.store(Arc::new(statuses));
        let revisions = inner
            .config
            .routes
            .iter()
            .filter_map(|r| Some((r.name().to_string(), inner.routes.get(r.name())?.revision.clone())))
            .collect();
        self.revisions.store(Arc::new(revisions));
        let Some(persister) = &self.persister else { return 0 };
        let all = inner
            .routes
            .iter()
            .map(|(name, s)| (name.clone(), Saved { revision: s.revision.clone(), status: s.status.clone() }))
            .collect();
        persister.save(all, archive)
    }

    /// Waits until the save with `ticket` was attempted (an acknowledged change survives a crash).
    pub(super) async fn saved(&self, ticket: u64) {
        if let Some(p) = &self.persister {
            p.saved(ticket).await;
        }
    }

    /// Loads what the routes need, builds and publishes the next table, and lets go of
    /// backends no route uses any more (they finish their in-flight requests first).
    pub(super) async fn publish(&self, inner: &mut Inner, unavailable: &[&str]) -> Result<u64, ConfigErrors> {
        let want = needed(inner);
        let missing: Vec<String> = want
            .iter()
            .filter(|name| {
                let spec = inner.config.backends.iter().find(|b| &b.name == *name);
                inner.loaded.get(*name).map(|l| &l.spec) != spec
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
            let telemetry = &self.telemetry;
            inner
                .shadow_stats
                .entry(spec.name().to_string())
                .or_insert_with_key(|name| Arc::new(ShadowStats::new(telemetry, name)));
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

    /// Builds a table of the running spec and status at `generation` (nothing is published).
    pub(super) fn build(
        &self,
        inner: &Inner,
        generation: u64,
        unavailable: &[&str],
    ) -> Result<RouteTable, ConfigErrors> {
        let layouts = inner
            .config
            .routes
            .iter()
            .map(|r| {
                let status = inner.routes.get(r.name()).map(|s| &s.status).cloned().unwrap_or_default();
                (r.name().to_string(), layout(r, &status))
            })
            .collect();
        let versions = inner.routes.iter().map(|(n, s)| (n.clone(), s.version)).collect();
        let backends = inner.loaded.iter().map(|(n, l)| (n.clone(), l.backend.clone())).collect();
        let parts = Parts {
            config: &inner.config,
            layouts: &layouts,
            versions: &versions,
            backends: &backends,
            telemetry: &self.telemetry,
            limits: &inner.limits,
            shadow_stats: &inner.shadow_stats,
            unavailable,
        };
        build::build(&parts, generation)
    }

    /// Runs `change` on a route's status and publishes; on failure the status is restored.
    /// With `if_match`, refuses (412) unless the route has not changed since that generation.
    /// In a fleet the change is written to the fleet first, off the controller's lock
    /// (compare-and-swap on the fleet revision of the status it was made on), then applied like
    /// any status from the fleet.
    pub(super) async fn mutate(
        &self,
        route: &str,
        if_match: Option<u64>,
        change: impl FnOnce(&crate::config::RouteSpec, &mut RouteStatus) -> Result<(), ApiError>,
    ) -> Result<(u64, RouteStatus, RouteStatus), ApiError> {
        let (ticket, answer) = {
            let mut inner = self.inner.lock().await;
            let Some(spec) = inner.config.routes.iter().find(|r| r.name() == route).cloned() else {
                let known: Vec<&str> = inner.config.routes.iter().map(|r| r.name()).collect();
                return Err(ApiError::not_found(format!("unknown route {route:?}; routes: {}", known.join(", "))));
            };
            let Some(state) = inner.routes.get(route).cloned() else {
                return Err(ApiError::internal(format!("route {route:?} has no status")));
            };
            // In a fleet, If-Match is a fleet-wide ETag, checked by the fleet's compare-and-swap.
            if let (Some(expected), false) = (if_match, self.in_fleet()) {
                if expected < state.version || expected > inner.generation {
                    return Err(ApiError::new(
                        StatusCode::PRECONDITION_FAILED,
                        format!(
                            "If-Match generation {expected} is stale: route {route:?} changed at generation {} (the table is at {}); read it again",
                            state.version, inner.generation
                        ),
                    ));
                }
            }
            let mut next = state.status.clone();
            change(&spec, &mut next)?;
            if next == state.status {
                return Ok((inner.generation, state.status, next));
            }
            if self.in_fleet() {
                // The fleet's first, off the lock (a change made elsewhere meanwhile makes the
                // compare-and-swap fail: a 412); then applied unless something newer was.
                drop(inner);
                let at = self.write_fleet(route, &state.revision, &next, false, if_match, state.fleet_rev).await?;
                return match self.apply_fleet(route, &state.revision, next.clone(), at).await {
                    Ok(super::fleet::Applied::OtherRevision) => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        format!("route {route:?} was reloaded with another spec while the change was written; read it again"),
                    )),
                    Ok(_) => Ok((self.generation(), state.status, next)),
                    Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e)),
                };
            }
            let version = inner.generation + 1;
            inner.routes.insert(route.to_string(), RouteState { status: next.clone(), version, ..state.clone() });
            match self.publish(&mut inner, &[]).await {
                Ok(g) => {
                    // A new step (or colour) is judged on its own requests, as in a fleet.
                    for variant in super::fleet::resets(&spec, &state.status, &next) {
                        self.telemetry.variant(route, &variant).reset_step();
                    }
                    (self.commit(&inner, Vec::new()), (g, state.status, next))
                }
                Err(e) => {
                    inner.routes.insert(route.to_string(), state);
                    prune(&mut inner);
                    return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()));
                }
            }
        };
        self.saved(ticket).await;
        Ok(answer)
    }
}

/// Backends the routes need: every variant that can answer, and every shadow.
fn needed(inner: &Inner) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    for spec in &inner.config.routes {
        let status = inner.routes.get(spec.name()).map(|s| s.status.clone()).unwrap_or_default();
        want.extend(layout(spec, &status).shares.into_iter().map(|s| s.name));
        if let Some(sh) = &spec.shadow {
            want.insert(sh.backend.clone());
        }
    }
    want
}

/// Forgets backends that no route needs; the tables and requests still holding them keep them
/// alive until they finish.
pub(super) fn prune(inner: &mut Inner) {
    let want = needed(inner);
    inner.loaded.retain(|name, _| want.contains(name));
}
