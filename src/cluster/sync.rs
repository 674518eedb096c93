//! Keeping a replica in step with its fleet: statuses watched and applied through the
//! controller (only those of the replica's own spec revision), other replicas' windows and
//! records gathered for the leader's merge and the cluster view, and this replica's own
//! windows and record published under its lease every interval.

use super::keys::{PublishedWindows, ReplicaRecord, StoredStatus};
use super::{now_ms, timed, Remote, Shared, MAX_REMOTE_WINDOWS};
use crate::rollout::fleet::epoch;
use crate::rollout::Controller;
use crate::telemetry::window::Window;
use etcd_client::{Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, WatchOptions};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When a listing is taken: `Before` it is applied (forget what it replaces), `After` (synced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    Before,
    After,
}

/// Reads every key in `[start, end)`, hands each to `apply`, then follows changes from that
/// revision on (`apply(kv, false)` for a deletion); starts over after any failure. `listing`
/// is told before and after each listing is applied.
async fn follow<F, Fut>(
    shared: &Arc<Shared>,
    (start, end): (String, String),
    what: &str,
    listing: impl Fn(Listing),
    apply: F,
) where
    F: Fn(KeyValue, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let why = follow_once(shared, (&start, &end), what, &listing, &apply).await;
        tracing::debug!(what, error = %why, "fleet watch restarts");
        shared.set_error(Some(why));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn follow_once<F, Fut>(
    shared: &Arc<Shared>,
    (start, end): (&str, &str),
    what: &str,
    listing: &impl Fn(Listing),
    apply: &F,
) -> String
where
    F: Fn(KeyValue, bool) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut client = shared.client.clone();
    let all = match timed(what, client.get(start, Some(GetOptions::new().with_range(end)))).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let revision = all.header().map_or(0, |h| h.revision());
    shared.note(revision);
    // What was deleted while the watch was down is not in the listing: start from it afresh.
    listing(Listing::Before);
    for kv in all.kvs() {
        apply(kv.clone(), true).await;
    }
    listing(Listing::After);
    let options = WatchOptions::new().with_range(end).with_start_revision(revision + 1);
    let mut stream = match timed(what, client.watch(start, Some(options))).await {
        Ok(s) => s,
        Err(e) => return e,
    };
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled() {
                    return format!("etcd {what}: watch canceled ({})", resp.cancel_reason());
                }
                if let Some(h) = resp.header() {
                    shared.note(h.revision());
                }
                for event in resp.events() {
                    if let Some(kv) = event.kv() {
                        apply(kv.clone(), event.event_type() == EventType::Put).await;
                    }
                }
            }
            Ok(None) => return format!("etcd {what}: watch closed"),
            Err(e) => return format!("etcd {what}: {e}"),
        }
    }
}

/// Follows every route's status and applies those of this replica's revisions.
pub(super) async fn watch_statuses(shared: Arc<Shared>) {
    let statuses = shared.keys.statuses();
    let range = (statuses.clone(), prefix_end(&statuses));
    let me = shared.clone();
    let synced = shared.clone();
    let listing = move |when| {
        if when == Listing::After {
            synced.synced.send_replace(true);
        }
    };
    follow(&shared, range, "status watch", listing, move |kv, put| on_status(me.clone(), kv, put)).await;
}

async fn on_status(shared: Arc<Shared>, kv: KeyValue, put: bool) {
    let Some((route, revision)) = shared.keys.parse_status(kv.key()) else { return };
    let key = shared.keys.status(&route, &revision);
    if !put {
        let mut st = shared.lock();
        st.seen.remove(&key);
        st.known.remove(&key);
        st.etags.remove(&key);
        return;
    }
    let stored: StoredStatus = match serde_json::from_slice(kv.value()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(route, revision, error = %e, "a status in etcd is not readable; ignored");
            return;
        }
    };
    {
        let mut st = shared.lock();
        let seen = st.seen.entry(key.clone()).or_insert(0);
        if kv.mod_revision() < *seen {
            return; // older than what this replica wrote or applied
        }
        *seen = kv.mod_revision();
        st.etags.insert(key.clone(), stored.changed_at.unwrap_or(kv.mod_revision()));
        st.known.insert(key, (stored.status.clone(), kv.mod_revision()));
    }
    let Some(controller) = shared.controller.upgrade() else { return };
    if let Err(e) = controller.apply_fleet_status(&route, &revision, stored.status, kv.mod_revision()).await {
        tracing::error!(route, revision, error = %e, "the fleet's status could not be applied here");
    }
}

/// The end of the range of keys starting with `prefix` (which ends with `/`).
fn prefix_end(prefix: &str) -> String {
    format!("{}0", prefix.trim_end_matches('/'))
}

/// Follows other replicas' windows and records (not the feedback claims, which can be many).
pub(super) async fn watch_windows(shared: Arc<Shared>) {
    let range = shared.keys.gathered();
    let (me, cleared) = (shared.clone(), shared.clone());
    let clear = move |when| {
        if when == Listing::Before {
            let mut st = cleared.lock();
            st.windows.clear();
            st.replicas.clear();
        }
    };
    follow(&shared, range, "window watch", clear, move |kv, put| {
        let shared = me.clone();
        async move { gather(&shared, &kv, put) }
    })
    .await;
}

fn gather(shared: &Shared, kv: &KeyValue, put: bool) {
    if let Some(id) = kv.key().strip_prefix(shared.keys.replicas().as_bytes()) {
        let id = String::from_utf8_lossy(id).replace("%2F", "/").replace("%25", "%");
        let mut st = shared.lock();
        match (put, serde_json::from_slice::<ReplicaRecord>(kv.value())) {
            (true, Ok(record)) => {
                st.replicas.insert(id, record);
            }
            _ => {
                st.replicas.remove(&id);
            }
        }
        return;
    }
    let Some((replica, route, variant)) = shared.keys.parse_window(kv.key()) else { return };
    if replica == shared.replica {
        return;
    }
    let key = (replica, route, variant);
    if !put {
        shared.lock().windows.remove(&key);
        return;
    }
    let decoded = PublishedWindows::decode(kv.value()).map_err(|e| e.to_string()).and_then(|p| {
        Ok(Remote {
            step: Window::from_bytes(&p.step).map_err(|e| e.to_string())?,
            pinned: Window::from_bytes(&p.pinned).map_err(|e| e.to_string())?,
            revision: p.revision,
            epoch: p.epoch,
            published_ms: p.published_ms,
        })
    });
    let mut st = shared.lock();
    match decoded {
        Ok(remote) if st.windows.len() < MAX_REMOTE_WINDOWS || st.windows.contains_key(&key) => {
            st.windows.insert(key, remote);
        }
        Ok(_) => tracing::warn!(replica = %key.0, "too many published windows kept; this one is ignored"),
        Err(e) => {
            tracing::warn!(replica = %key.0, route = %key.1, error = %e, "published windows not readable; ignored");
            st.windows.remove(&key);
        }
    }
}

/// Publishes this replica's windows and record every interval, under its lease.
pub(super) async fn publish(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.settings.publish_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What each window key last carried under which lease: unchanged windows are not sent again.
    let mut sent: HashMap<String, (i64, u64)> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(lease) = shared.lock().lease.map(|(id, _)| id) else { continue };
        let Some(controller) = shared.controller.upgrade() else { return };
        reconcile(&shared, &controller).await;
        prune_statuses(&shared, &controller).await;
        let revisions: BTreeMap<String, String> = controller.revisions().iter().cloned().collect();
        let statuses = controller.statuses();
        let now = now_ms();
        let mut puts = Vec::new();
        let mut fresh = Vec::new();
        for stats in controller.telemetry().variants() {
            let Some(revision) = revisions.get(&stats.route) else { continue };
            let Some((_, status)) = statuses.iter().find(|(r, _)| *r == stats.route) else { continue };
            if status.progress.is_none() {
                continue; // no analysis judges this route
            }
            let mut windows = PublishedWindows {
                revision: revision.clone(),
                epoch: epoch(status),
                published_ms: 0,
                step: stats.step_window().to_bytes(),
                pinned: stats.pinned_window().to_bytes(),
            };
            let key = shared.keys.window(&shared.replica, &stats.route, &stats.variant);
            let digest = xxhash_rust::xxh3::xxh3_64(&windows.encode_to_vec());
            if sent.get(&key) == Some(&(lease, digest)) {
                continue;
            }
            windows.published_ms = now;
            puts.push((key.clone(), windows.encode_to_vec()));
            fresh.push((key, (lease, digest)));
        }
        let record = ReplicaRecord { replica: shared.replica.clone(), revisions, published_ms: now };
        if let Ok(value) = serde_json::to_vec(&record) {
            puts.push((shared.keys.replica(&shared.replica), value));
        }
        let mut client = shared.client.clone();
        let mut failed = None;
        for batch in batches(puts) {
            let ops: Vec<TxnOp> = batch
                .into_iter()
                .map(|(key, value)| TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))))
                .collect();
            if let Err(e) = timed("publish", client.txn(Txn::new().and_then(ops))).await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => {
                shared.lock().last_publish_ms = Some(now);
                sent.extend(fresh);
            }
            Some(e) => tracing::debug!(error = %e, "windows not published this round"),
        }
    }
}

/// Applies the fleet's status of each route's current revision when this replica's differs:
/// a replica that reloaded routes.yaml after the leader wrote the new revision's status has
/// seen no watch event for it.
async fn reconcile(shared: &Shared, controller: &Controller) {
    let statuses = controller.statuses();
    let pending: Vec<(String, String, crate::rollout::RouteStatus, i64)> = {
        let st = shared.lock();
        controller
            .revisions()
            .iter()
            .filter_map(|(route, revision)| {
                let (known, at) = st.known.get(&shared.keys.status(route, revision))?;
                let mine = statuses.iter().find(|(r, _)| r == route).map(|(_, s)| s);
                (mine != Some(known)).then(|| (route.clone(), revision.clone(), known.clone(), *at))
            })
            .collect()
    };
    for (route, revision, status, at) in pending {
        if let Err(e) = controller.apply_fleet_status(&route, &revision, status, at).await {
            tracing::error!(route, revision, error = %e, "the fleet's status could not be applied here");
        }
    }
}

/// The leader deletes the status of a revision no replica has run for three lease TTLs: its
/// rollout is over, as a replaced revision's is on a gateway alone (coming back to that
/// revision later starts it over). Fenced like every leader write.
async fn prune_statuses(shared: &Shared, controller: &Controller) {
    let grace = shared.settings.lease_ttl * 3;
    let (leader, stale) = {
        let mut st = shared.lock();
        let leader = match (shared.decide_check(&st), st.leader_key.clone()) {
            (Ok(()), Some(leader)) => leader,
            _ => {
                st.unrun.clear();
                return;
            }
        };
        let mut running: HashSet<(String, String)> = controller.revisions().iter().cloned().collect();
        running.extend(st.replicas.values().flat_map(|r| r.revisions.iter().map(|(a, b)| (a.clone(), b.clone()))));
        let unrun: Vec<String> = st
            .known
            .keys()
            .filter(|key| shared.keys.parse_status(key.as_bytes()).is_some_and(|k| !running.contains(&k)))
            .cloned()
            .collect();
        st.unrun.retain(|key, _| unrun.contains(key));
        let now = Instant::now();
        let stale: Vec<String> = unrun
            .into_iter()
            .filter(|key| now.duration_since(*st.unrun.entry(key.clone()).or_insert(now)) >= grace)
            .collect();
        (leader, stale)
    };
    for key in stale {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(leader.key().to_vec(), CompareOp::Equal, leader.rev())])
            .and_then(vec![TxnOp::delete(key.clone(), None)]);
        let mut client = shared.client.clone();
        match timed("status prune", client.txn(txn)).await {
            Ok(r) if r.succeeded() => {
                tracing::info!(key, "no replica runs this revision any more: its status is deleted")
            }
            Ok(_) => return, // not the leader any more
            Err(e) => {
                tracing::debug!(error = %e, "status prune failed");
                return;
            }
        }
    }
}

/// Puts grouped into transactions within etcd's limits (128 operations, 1.5 MiB a request by
/// default): at most 64 puts and about 1 MiB each; a larger value goes alone.
fn batches(puts: Vec<(String, Vec<u8>)>) -> Vec<Vec<(String, Vec<u8>)>> {
    const MAX_OPS: usize = 64;
    const MAX_BYTES: usize = 1 << 20;
    let mut out: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    let mut size = 0;
    for (key, value) in puts {
        let len = key.len() + value.len();
        match out.last_mut() {
            Some(batch) if batch.len() < MAX_OPS && size + len <= MAX_BYTES => {
                size += len;
                batch.push((key, value));
            }
            _ => {
                size = len;
                out.push(vec![(key, value)]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn puts_are_batched_within_etcds_limits() {
        let puts = |n: usize, len: usize| (0..n).map(|i| (format!("k{i}"), vec![0u8; len])).collect::<Vec<_>>();
        assert_eq!(batches(puts(130, 10)).iter().map(Vec::len).collect::<Vec<_>>(), [64, 64, 2]);
        assert_eq!(batches(puts(5, 400_000)).iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(batches(puts(2, 2_000_000)).iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert!(batches(Vec::new()).is_empty());
    }
}
