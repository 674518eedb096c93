//! The controller's side of fleet mode. What it asks of the fleet — may this replica decide,
//! write a status where the fleet keeps it, the fleet's aggregate of a variant's window — is the
//! [`Fleet`] trait (implemented over etcd by `crate::cluster`); a status seen in the fleet is
//! applied here through the same build → validate → swap path as every other change.

use super::control::{Controller, RouteState};
use super::status::{layout, RouteStatus};
use crate::config::{RouteSpec, Strategy};
use crate::protocol::ApiError;
use crate::telemetry::window::Window;
use http::StatusCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A boxed future, for the trait's async methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a status could not be written where the fleet keeps it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    /// The route's status changed since this replica read it (a 412 for an admin call).
    #[error("{0}")]
    Stale(String),
    /// This replica is not the leader any more: its decision is refused.
    #[error("{0}")]
    NotLeader(String),
    /// The store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        match e {
            FleetError::Stale(m) => ApiError::new(StatusCode::PRECONDITION_FAILED, m),
            FleetError::NotLeader(m) => ApiError::new(StatusCode::CONFLICT, m),
            FleetError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

/// What a controller in a fleet asks of the fleet.
pub trait Fleet: Send + Sync + std::fmt::Debug {
    /// `Ok` when this replica may take analysis decisions now (it holds the leadership and its
    /// lease is alive); otherwise why not, for the status.
    fn may_decide(&self) -> Result<(), String>;

    /// Writes a route's status of spec `revision`, compare-and-swap on the status at the
    /// store's revision `base` (the one the change was made on; 0: none yet; `None`: the
    /// newest this replica has seen) — and, with `if_match` (a fleet ETag), on the status being
    /// no newer than that; a `decision` is also fenced by this replica's leadership. Returns the
    /// store's revision of the status written.
    fn write<'a>(
        &'a self,
        route: &'a str,
        revision: &'a str,
        status: &'a RouteStatus,
        decision: bool,
        if_match: Option<u64>,
        base: Option<i64>,
    ) -> BoxFuture<'a, Result<i64, FleetError>>;

    /// A route's fleet-wide ETag: the store's revision of its status (0 before the first write).
    fn route_etag(&self, route: &str, revision: &str) -> u64;

    /// The fleet-wide ETag of everything this replica has seen (the store's newest revision):
    /// an If-Match with it is stale for a route changed after it.
    fn etag(&self) -> u64;

    /// The fleet's window of a variant in the current step: `local` (this replica's) plus the
    /// windows other replicas published for the same spec revision and [`epoch`].
    fn window(&self, route: &str, revision: &str, epoch: u64, variant: &str, pinned: bool, local: Window) -> Window;

    /// The fleet as this replica sees it, for `GET /admin/cluster`.
    fn view(&self) -> serde_json::Value;
}

/// What became of a status from the fleet on this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Applied now.
    Now,
    /// This replica had applied it, or a newer status, already.
    Already,
    /// This replica runs another spec revision of the route (or not the route).
    OtherRevision,
}

/// Identifies the analysis step a status is in: replicas' windows are merged only within one,
/// and a replica empties its step windows when a status from the fleet starts another.
pub fn epoch(status: &RouteStatus) -> u64 {
    let p = status.progress.as_ref().map(|p| (p.step, p.step_started_ms));
    let text = format!("{p:?}|{}|{:?}", status.switches, status.stopped_arms);
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Whether `a` and `b` differ only in the analysis' bookkeeping (when it last looked, how many
/// looks, its last verdict and failures in a row): such a change does not make an If-Match
/// read before it stale.
pub fn bookkeeping_only(a: &RouteStatus, b: &RouteStatus) -> bool {
    let plain = |s: &RouteStatus| {
        let mut s = s.clone();
        s.last_analysis = None;
        if let Some(p) = &mut s.progress {
            p.last_analysis_ms = 0;
            p.looks = 0;
            p.last_verdict = None;
            p.failures = 0;
        }
        s
    };
    plain(a) == plain(b)
}

/// The variants whose step windows a status change from `before` to `after` empties: all of
/// them for a new step (or arms stopped), the colour that took over for a blue-green switch.
pub(super) fn resets(spec: &RouteSpec, before: &RouteStatus, after: &RouteStatus) -> Vec<String> {
    let step = |s: &RouteStatus| (s.progress.as_ref().map(|p| (p.step, p.step_started_ms)), s.stopped_arms.clone());
    if step(before) != step(after) {
        return spec.strategy.backends().into_iter().map(str::to_string).collect();
    }
    match (&spec.strategy, before.switches != after.switches) {
        (Strategy::BlueGreen { active, .. }, true) => vec![after.active_colour(active).to_string()],
        _ => Vec::new(),
    }
}

impl Controller {
    /// Joins a fleet: from now on analysis runs only while the fleet says this replica may
    /// decide, decisions and admin changes are written through it, and windows are its
    /// aggregate. Set once; a second call is ignored.
    pub fn join_fleet(&self, fleet: Arc<dyn Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    /// Why analysis decisions are held on this replica, if they are (not the leader, etcd
    /// unreachable); `None` when it decides (or is not in a fleet).
    pub fn decisions_held(&self) -> Option<String> {
        super::control::lock(&self.held).clone()
    }

    /// The fleet as this replica sees it; `None` outside a fleet.
    pub fn fleet_view(&self) -> Option<serde_json::Value> {
        self.fleet.get().map(|f| f.view())
    }

    /// Each route's spec revision, as last published.
    pub fn revisions(&self) -> Arc<Vec<(String, String)>> {
        self.revisions.load_full()
    }

    /// Applies a status the fleet holds for `route` at spec `revision`, written at the store's
    /// revision `at`. Ignored (false) when this replica runs another revision of the route, or
    /// has applied that status or a newer one.
    pub async fn apply_fleet_status(
        &self,
        route: &str,
        revision: &str,
        status: RouteStatus,
        at: i64,
    ) -> Result<bool, String> {
        Ok(self.apply_fleet(route, revision, status, at).await? == Applied::Now)
    }

    /// [`Controller::apply_fleet_status`], telling apart why a status was not applied.
    pub(super) async fn apply_fleet(
        &self,
        route: &str,
        revision: &str,
        status: RouteStatus,
        at: i64,
    ) -> Result<Applied, String> {
        let mut inner = self.inner.lock().await;
        let Some(spec) = inner.config.routes.iter().find(|r| r.name() == route).cloned() else {
            return Ok(Applied::OtherRevision);
        };
        let Some(state) = inner.routes.get(route).cloned() else { return Ok(Applied::OtherRevision) };
        if state.revision != revision {
            return Ok(Applied::OtherRevision);
        }
        if at <= state.fleet_rev {
            return Ok(Applied::Already);
        }
        if state.status == status {
            // The same status at a newer revision (this replica's own write, seen again).
            inner.routes.insert(route.to_string(), RouteState { fleet_rev: at, ..state });
            return Ok(Applied::Already);
        }
        // Like the leader's own analysis: only a change of routing (layout, phase) makes a new
        // table and a new ETag; the analysis' bookkeeping (last look, verdict) does not.
        let routing = layout(&spec, &state.status) != layout(&spec, &status) || state.status.phase != status.phase;
        if !routing {
            inner
                .routes
                .insert(route.to_string(), RouteState { status: status.clone(), fleet_rev: at, ..state.clone() });
            for variant in resets(&spec, &state.status, &status) {
                self.telemetry.variant(route, &variant).reset_step();
            }
            self.commit(&inner, Vec::new());
            return Ok(Applied::Now);
        }
        let version = inner.generation + 1;
        inner
            .routes
            .insert(route.to_string(), RouteState { status: status.clone(), version, fleet_rev: at, ..state.clone() });
        match self.publish(&mut inner, &[]).await {
            Ok(generation) => {
                for variant in resets(&spec, &state.status, &status) {
                    self.telemetry.variant(route, &variant).reset_step();
                }
                self.commit(&inner, Vec::new());
                tracing::info!(route, revision, generation, phase = ?status.phase, "applied the fleet's status");
                Ok(Applied::Now)
            }
            Err(e) => {
                inner.routes.insert(route.to_string(), state);
                super::control::prune(&mut inner);
                Err(e.to_string())
            }
        }
    }

    /// A variant's window in the current step for judging: the fleet's aggregate in a fleet,
    /// this replica's own otherwise.
    pub(super) fn judged_window(&self, route: &str, state: &RouteState, variant: &str, pinned: bool) -> Window {
        let stats = self.telemetry.variant(route, variant);
        let local = if pinned { stats.pinned_window() } else { stats.step_window() };
        match self.fleet.get() {
            Some(f) => f.window(route, &state.revision, epoch(&state.status), variant, pinned, local),
            None => local,
        }
    }

    /// Writes a status change through the fleet (see [`Fleet::write`]), compare-and-swap on
    /// the fleet revision of the status it was made on (`base`); returns the new revision.
    /// Called off the controller's lock: the caller applies the result through
    /// [`Controller::apply_fleet`], which takes it only if nothing newer was applied meanwhile.
    pub(super) async fn write_fleet(
        &self,
        route: &str,
        revision: &str,
        status: &RouteStatus,
        decision: bool,
        if_match: Option<u64>,
        base: i64,
    ) -> Result<i64, FleetError> {
        match self.fleet.get() {
            Some(f) => f.write(route, revision, status, decision, if_match, Some(base)).await,
            None => Ok(0),
        }
    }

    /// Whether this controller is in a fleet.
    pub fn in_fleet(&self) -> bool {
        self.fleet.get().is_some()
    }

    /// The ETag of admin answers: the table generation, or in a fleet the fleet-wide ETag (the
    /// same on every replica, so an If-Match read on one replica holds on another).
    pub fn etag(&self) -> u64 {
        self.fleet.get().map_or_else(|| self.generation(), |f| f.etag())
    }

    /// A route's ETag: `version` (the generation it last changed at), or in a fleet its
    /// fleet-wide ETag.
    pub fn route_etag(&self, route: &str, version: u64) -> u64 {
        let Some(f) = self.fleet.get() else { return version };
        let revisions = self.revisions();
        revisions.iter().find(|(r, _)| r == route).map_or(version, |(_, rev)| f.route_etag(route, rev))
    }

    /// Whether analysis may decide now; records why not for [`Controller::decisions_held`].
    pub(super) fn may_decide(&self) -> bool {
        let why = self.fleet.get().and_then(|f| f.may_decide().err());
        let held = why.is_some();
        *super::control::lock(&self.held) = why;
        !held
    }
}
