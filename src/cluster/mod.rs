//! Fleet mode: many replicas, one truth, kept in etcd. Rooms:
//! - `keys` — the key layout under the fleet's prefix and the values stored there;
//! - `session` — this replica's lease and its campaign for leadership (lose the lease → stop
//!   deciding at once);
//! - `sync` — statuses watched and applied through the controller, windows published and
//!   gathered;
//! - `claims` — feedback claimed fleet-wide, so it counts once wherever it lands.
//!
//! The controller sees the fleet through [`crate::rollout::fleet::Fleet`]: only the leader
//! decides, its writes are fenced by its leadership key's create revision, admin changes are
//! compare-and-swap on the status each replica applied, and the leader judges the merge of
//! every replica's windows on the same spec revision and step. etcd unreachable: the table
//! stays as last applied and nothing is decided.

mod claims;
pub mod keys;
mod peers;
mod session;
mod sync;

use crate::config::ClusterSettings;
use crate::rollout::fleet::{bookkeeping_only, BoxFuture, Fleet, FleetError};
use crate::rollout::status::RouteStatus;
use crate::rollout::Controller;
use crate::telemetry::window::Window;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, LeaderKey, Txn, TxnOp};
use keys::{Keys, ReplicaRecord, StoredStatus};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long one etcd request may take before etcd counts as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Published windows kept from other replicas, at most (each is bounded in size).
const MAX_REMOTE_WINDOWS: usize = 4096;

/// Why a replica could not join its fleet.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The replica has no usable id.
    #[error("{0}")]
    ReplicaId(String),
    /// The etcd client could not be made.
    #[error("cannot reach etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints tried.
        endpoints: String,
        /// What failed.
        source: etcd_client::Error,
    },
}

/// Another replica's windows of one variant.
#[derive(Debug, Clone)]
struct Remote {
    revision: String,
    epoch: u64,
    /// When it was published (its replica's clock, ms since the epoch).
    published_ms: u64,
    step: Window,
    pinned: Window,
}

/// What the fleet's tasks know, behind one short lock (never held across an await).
#[derive(Debug, Default)]
struct State {
    /// This replica's lease and when it lapses by our own reckoning.
    lease: Option<(i64, Instant)>,
    /// Our leadership key, while we hold the leadership.
    leader_key: Option<LeaderKey>,
    /// The leader as last observed (a replica id).
    leader: Option<String>,
    /// The last etcd failure, while etcd is unreachable.
    etcd_error: Option<String>,
    /// Mod revision of every status key as last seen (compare-and-swap base).
    seen: HashMap<String, i64>,
    /// The newest status of every status key seen (watched or written by this replica) and
    /// its etcd revision, for a replica that comes to a revision after its status was written
    /// (a later reload).
    known: HashMap<String, (RouteStatus, i64)>,
    /// Every status key's fleet-wide ETag (see [`keys::StoredStatus::changed_at`]).
    etags: HashMap<String, i64>,
    /// Status keys no replica runs, since when (the leader deletes them after a grace).
    unrun: HashMap<String, Instant>,
    /// Other replicas' records.
    replicas: BTreeMap<String, ReplicaRecord>,
    /// Other replicas' windows by (replica, route, variant).
    windows: HashMap<(String, String, String), Remote>,
    /// When this replica last published its windows.
    last_publish_ms: Option<u64>,
    /// The newest etcd revision seen (the fleet-wide ETag).
    newest: i64,
    /// The lease feedback claims are put under now: id, when granted, its TTL (seconds).
    feedback_lease: Option<(i64, Instant, u64)>,
}

/// One replica's membership of a fleet: the etcd client and what the fleet's tasks share.
pub struct Shared {
    settings: ClusterSettings,
    replica: String,
    keys: Keys,
    client: Client,
    controller: Weak<Controller>,
    state: Mutex<State>,
    /// One feedback lease grant at a time: the posts that find none wait for it instead of
    /// each granting its own.
    feedback_grant: tokio::sync::Mutex<()>,
    /// True once the fleet's statuses were first listed and applied.
    synced: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// A replica in a fleet; dropping it stops its tasks (its lease then lapses after its TTL;
/// [`Cluster::leave`] lets go at once).
pub struct Cluster {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("replica", &self.shared.replica).finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("etcd {what}: {e}")),
        Err(_) => Err(format!("etcd {what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

impl Cluster {
    /// Joins the fleet `settings` describe with `controller`: starts the lease and campaign,
    /// the status watch, and window publication, and returns once the fleet's statuses are
    /// applied (or after a lease TTL without etcd: the replica then serves its table as it
    /// starts and decides nothing until etcd answers).
    pub async fn join(settings: ClusterSettings, controller: &Arc<Controller>) -> Result<Cluster, ClusterError> {
        let replica = settings.resolve_replica_id().map_err(ClusterError::ReplicaId)?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(&settings.endpoints, Some(options))
            .await
            .map_err(|source| ClusterError::Connect { endpoints: settings.endpoints.join(","), source })?;
        let shared = Arc::new(Shared {
            keys: Keys::new(&settings.prefix),
            settings,
            replica,
            client,
            controller: Arc::downgrade(controller),
            state: Mutex::new(State::default()),
            feedback_grant: tokio::sync::Mutex::new(()),
            synced: tokio::sync::watch::Sender::new(false),
        });
        controller.join_fleet(shared.clone());
        let tasks = vec![
            tokio::spawn(session::run(shared.clone())),
            tokio::spawn(sync::watch_statuses(shared.clone())),
            tokio::spawn(sync::watch_windows(shared.clone())),
            tokio::spawn(sync::publish(shared.clone())),
        ];
        // Serve the fleet's statuses from the first request on: wait (bounded) for them.
        let mut synced = shared.synced.subscribe();
        let wait = shared.settings.lease_ttl;
        match tokio::time::timeout(wait, synced.wait_for(|s| *s)).await {
            Ok(_) => tracing::info!(replica = %shared.replica, prefix = %shared.settings.prefix, "joined the fleet"),
            Err(_) => tracing::warn!(
                replica = %shared.replica,
                "etcd not reachable within {wait:?}: serving the file's rollouts as they start until it is"
            ),
        }
        Ok(Cluster { shared, tasks })
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.shared.replica
    }

    /// The fleet as the controller sees it (also for tests: `write`, `may_decide`).
    pub fn fleet(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Stops this replica's tasks and revokes its lease: its leadership and windows go now.
    pub async fn leave(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let lease = self.shared.lock().lease.take();
        if let Some((id, _)) = lease {
            let mut client = self.shared.client.clone();
            if let Err(e) = timed("lease revoke", client.lease_revoke(id)).await {
                tracing::warn!(error = %e, "leaving the fleet: the lease lapses on its own");
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Notes an etcd revision seen (a listing, a watch answer, a write).
    fn note(&self, revision: i64) {
        let mut st = self.lock();
        st.newest = st.newest.max(revision);
    }

    fn set_error(&self, error: Option<String>) {
        let mut st = self.lock();
        if let (Some(e), None) = (&error, &st.etcd_error) {
            tracing::warn!(error = %e, "etcd unreachable: serving the last table, deciding nothing");
        }
        if let (None, Some(_)) = (&error, &st.etcd_error) {
            tracing::info!("etcd reachable again");
        }
        st.etcd_error = error;
    }

    /// `GET /admin/cluster`: this replica, the leader, every replica's spec revisions and
    /// last publication, and why decisions are held.
    pub fn view(&self) -> serde_json::Value {
        let controller = self.controller.upgrade();
        let own: BTreeMap<String, String> =
            controller.as_ref().map(|c| c.revisions().iter().cloned().collect()).unwrap_or_default();
        let st = self.lock();
        let now = now_ms();
        let mut replicas: Vec<serde_json::Value> = st
            .replicas
            .values()
            .filter(|r| r.replica != self.replica)
            .map(|r| {
                let same = r.revisions == own;
                json!({
                    "replica": r.replica,
                    "revisions": r.revisions,
                    "same_revisions": same,
                    "last_publish_ms": r.published_ms,
                    "last_publish_age_ms": now.saturating_sub(r.published_ms),
                })
            })
            .collect();
        replicas.insert(
            0,
            json!({
                "replica": self.replica,
                "this": true,
                "revisions": own,
                "same_revisions": true,
                "last_publish_ms": st.last_publish_ms,
                "last_publish_age_ms": st.last_publish_ms.map(|p| now.saturating_sub(p)),
            }),
        );
        let mixed = st.replicas.values().any(|r| r.revisions != own);
        json!({
            "replica": self.replica,
            "leader": st.leader,
            "is_leader": st.leader_key.is_some(),
            "decides": self.decide_check(&st).is_ok(),
            "decisions_held": self.decide_check(&st).err(),
            "etcd": { "endpoints": self.settings.endpoints, "prefix": self.settings.prefix, "error": st.etcd_error },
            "lease": st.lease.map(|(id, _)| format!("{id:x}")),
            "lease_ttl_s": self.settings.lease_ttl.as_secs(),
            "mixed_revisions": mixed,
            "replicas": replicas,
        })
    }

    fn decide_check(&self, st: &State) -> Result<(), String> {
        if let Some(e) = &st.etcd_error {
            return Err(format!("etcd unreachable ({e}): serving the last table, no decisions"));
        }
        if st.leader_key.is_none() {
            let leader = st.leader.as_deref().unwrap_or("none elected yet");
            return Err(format!("not the leader (leader: {leader})"));
        }
        // Stop a margin before the lease could lapse on etcd's side.
        let margin = self.settings.lease_ttl / 5;
        match st.lease {
            Some((_, until)) if Instant::now() + margin < until => Ok(()),
            _ => Err("the leader lease is not confirmed alive: no decisions until it is".to_string()),
        }
    }

    async fn write_status(
        &self,
        route: &str,
        revision: &str,
        status: &RouteStatus,
        decision: bool,
        if_match: Option<u64>,
        base: Option<i64>,
    ) -> Result<i64, FleetError> {
        let key = self.keys.status(route, revision);
        let (seen, leader, previous, etag) = {
            let st = self.lock();
            let etag = st.etags.get(&key).copied().unwrap_or(0);
            let seen = base.unwrap_or_else(|| st.seen.get(&key).copied().unwrap_or(0));
            (seen, st.leader_key.clone(), st.known.get(&key).map(|(s, _)| s.clone()), etag)
        };
        // If-Match: the status this replica applied changed no later than the ETag the caller
        // read (on any replica); the compare-and-swap below makes sure it is still that status.
        if let Some(tag) = if_match.filter(|tag| etag > (*tag).min(i64::MAX as u64) as i64) {
            return Err(FleetError::Stale(format!(
                "If-Match {tag} is stale: route {route:?} changed in the fleet at etcd revision {etag}; read it again"
            )));
        }
        let carried = previous.filter(|p| bookkeeping_only(p, status)).map(|_| etag);
        let mut compares = vec![if seen == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, seen)
        }];
        if decision {
            let Some(leader) = &leader else {
                return Err(FleetError::NotLeader(format!("{} is not the leader", self.replica)));
            };
            compares.push(Compare::create_revision(leader.key().to_vec(), CompareOp::Equal, leader.rev()));
        }
        let stored = StoredStatus {
            status: status.clone(),
            written_by: self.replica.clone(),
            written_ms: now_ms(),
            decision,
            changed_at: carried,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| FleetError::Unavailable(e.to_string()))?;
        let mut checks = vec![TxnOp::get(key.clone(), None)];
        if let Some(leader) = &leader {
            checks.push(TxnOp::get(leader.key().to_vec(), None));
        }
        let txn = Txn::new().when(compares).and_then(vec![TxnOp::put(key.clone(), value, None)]).or_else(checks);
        let mut client = self.client.clone();
        let resp = match timed("status write", client.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                self.set_error(Some(e.clone()));
                return Err(FleetError::Unavailable(e));
            }
        };
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            let mut st = self.lock();
            st.newest = st.newest.max(rev);
            if st.seen.get(&key).is_none_or(|s| *s < rev) {
                st.seen.insert(key.clone(), rev);
                st.etags.insert(key.clone(), carried.unwrap_or(rev));
                st.known.insert(key, (status.clone(), rev));
            }
            return Ok(rev);
        }
        let gets: Vec<_> = resp
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        let leader_gone = decision
            && leader.as_ref().is_some_and(|l| {
                gets.get(1).and_then(|g| g.kvs().first()).is_none_or(|kv| kv.create_revision() != l.rev())
            });
        if leader_gone {
            self.lock().leader_key = None;
            return Err(FleetError::NotLeader(format!(
                "{} lost its leadership (its key is gone): the write is refused",
                self.replica
            )));
        }
        let now = gets.first().and_then(|g| g.kvs().first()).map_or(0, |kv| kv.mod_revision());
        Err(FleetError::Stale(format!(
            "route {route:?} changed in the fleet since this replica applied it (etcd revision {now}, seen {seen}); read it again"
        )))
    }
}

impl Fleet for Shared {
    fn may_decide(&self) -> Result<(), String> {
        let st = self.lock();
        self.decide_check(&st)
    }

    fn write<'a>(
        &'a self,
        route: &'a str,
        revision: &'a str,
        status: &'a RouteStatus,
        decision: bool,
        if_match: Option<u64>,
        base: Option<i64>,
    ) -> BoxFuture<'a, Result<i64, FleetError>> {
        Box::pin(self.write_status(route, revision, status, decision, if_match, base))
    }

    fn route_etag(&self, route: &str, revision: &str) -> u64 {
        self.lock().etags.get(&self.keys.status(route, revision)).copied().unwrap_or(0).max(0) as u64
    }

    fn etag(&self) -> u64 {
        self.lock().newest.max(0) as u64
    }

    fn window(&self, route: &str, revision: &str, epoch: u64, variant: &str, pinned: bool, local: Window) -> Window {
        let mut merged = local;
        let st = self.lock();
        for ((replica, r, v), w) in &st.windows {
            if replica != &self.replica && r == route && v == variant && w.revision == revision && w.epoch == epoch {
                merged.merge(if pinned { &w.pinned } else { &w.step });
            }
        }
        merged
    }

    fn view(&self) -> serde_json::Value {
        Shared::view(self)
    }
}
