//! This replica's session: a lease kept alive, and a campaign for leadership under it. The
//! lease's lapse is reckoned locally from the last confirmed keep-alive (sent-at + TTL), so a
//! replica cut off from etcd stops deciding before etcd could let another one win; its
//! writes are fenced besides. On any failure the session starts over with a new lease.

use super::{timed, Shared};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs sessions one after the other until the task is aborted.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let end = session(&shared).await;
        let why = match &end {
            End::Unreachable(why) | End::Lost(why) => why.clone(),
        };
        {
            let mut st = shared.lock();
            if st.leader_key.take().is_some() {
                tracing::warn!(replica = %shared.replica, "leadership lost: {why}");
            }
            st.lease = None;
        }
        if let End::Unreachable(why) = end {
            shared.set_error(Some(why));
        }
        if started.elapsed() > Duration::from_secs(5) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Why a session ended.
enum End {
    /// etcd did not answer (or refused): decisions are held until it does.
    Unreachable(String),
    /// The lease expired or the campaign ended without the leadership: start over.
    Lost(String),
}

/// One lease and one campaign; returns why it ended.
async fn session(shared: &Arc<Shared>) -> End {
    let ttl = shared.settings.lease_ttl;
    let mut client = shared.client.clone();
    let sent = Instant::now();
    let lease = match timed("lease grant", client.lease_grant(ttl.as_secs() as i64, None)).await {
        Ok(l) => l,
        Err(e) => return End::Unreachable(e),
    };
    let id = lease.id();
    shared.lock().lease = Some((id, sent + Duration::from_secs(lease.ttl().max(0) as u64)));
    shared.set_error(None);
    let (mut keeper, mut stream) = match timed("lease keep-alive", client.lease_keep_alive(id)).await {
        Ok(k) => k,
        Err(e) => return End::Unreachable(e),
    };
    // The campaign waits until this replica's key is the oldest under the election.
    let campaigner = {
        let (shared, mut client) = (shared.clone(), shared.client.clone());
        tokio::spawn(async move {
            match client.campaign(shared.keys.election(), shared.replica.clone(), id).await {
                Ok(resp) => {
                    if let Some(key) = resp.leader() {
                        tracing::info!(replica = %shared.replica, "elected leader of the fleet");
                        let mut st = shared.lock();
                        st.leader_key = Some(key.clone());
                        st.leader = Some(shared.replica.clone());
                    }
                    Ok(())
                }
                Err(e) => Err(format!("etcd campaign: {e}")),
            }
        })
    };
    let campaign = AbortOnDrop(campaigner);
    observe_leader(shared).await;
    let every = (ttl / 3).max(Duration::from_millis(500));
    let end = loop {
        tokio::time::sleep(every).await;
        if campaign.0.is_finished() && shared.lock().leader_key.is_none() {
            // The campaign failed (or our key vanished): start over.
            break End::Lost("the campaign ended without the leadership".to_string());
        }
        let sent = Instant::now();
        if let Err(e) = timed("lease keep-alive", keeper.keep_alive()).await {
            break End::Unreachable(e);
        }
        match tokio::time::timeout(every, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                shared.lock().lease = Some((id, sent + Duration::from_secs(r.ttl() as u64)));
                shared.set_error(None);
            }
            Ok(Ok(Some(_))) => break End::Lost(format!("lease {id:x} expired")),
            Ok(Ok(None)) => break End::Unreachable("etcd keep-alive: the stream closed".to_string()),
            Ok(Err(e)) => break End::Unreachable(format!("etcd keep-alive: {e}")),
            Err(_) => break End::Unreachable(format!("etcd keep-alive: no answer within {every:?}")),
        }
        observe_leader(shared).await;
    };
    drop(campaign);
    // Let go of the lease at once (best effort): its keys need not wait out the TTL.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(id)).await;
    end
}

/// Notes who leads (for the status), without a stream: one read per keep-alive.
async fn observe_leader(shared: &Arc<Shared>) {
    let mut client = shared.client.clone();
    if let Ok(resp) = timed("leader", client.leader(shared.keys.election())).await {
        let leader = resp.kv().and_then(|kv| std::str::from_utf8(kv.value()).ok()).map(str::to_string);
        let mut st = shared.lock();
        // An answer read before this replica's election must not hide it.
        st.leader = if st.leader_key.is_some() { Some(shared.replica.clone()) } else { leader };
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), String>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
