//! Feedback claimed fleet-wide: one key per answer and kind of outcome,
//! `{prefix}/feedback/{nonce}~{issued}/{kind}`, created only if absent (a transaction), so an
//! outcome posted to several replicas counts once. The keys live under a lease that outlasts
//! the time an id is accepted (`server.feedback_max_age`), shared by the claims of a minute, so
//! etcd forgets them on its own and a claim costs one round trip.

use super::{now_ms, timed, Shared};
use crate::server::{ClaimError, FeedbackClaims};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::time::{Duration, Instant};

/// How long one feedback lease takes new claims.
const LEASE_REUSE: Duration = Duration::from_secs(60);
/// Room for replicas' clocks to differ (an id's issue time is the issuing replica's).
const SKEW: Duration = Duration::from_secs(60);
/// The longest lease etcd grants (its `MaxLeaseTTL`, in seconds).
const MAX_TTL_S: u64 = 9_000_000_000;

impl Shared {
    /// A lease whose keys outlive `keep` from now: the one of this minute, or a new one.
    async fn feedback_lease(&self, keep: Duration) -> Result<i64, String> {
        // A key put at most LEASE_REUSE after the grant lives at least keep + SKEW more.
        let ttl = (keep + LEASE_REUSE + SKEW).as_secs().clamp(1, MAX_TTL_S);
        let reusable = || match self.lock().feedback_lease {
            Some((id, granted, t)) if t == ttl && granted.elapsed() < LEASE_REUSE => Some(id),
            _ => None,
        };
        if let Some(id) = reusable() {
            return Ok(id);
        }
        let _one_grant = self.feedback_grant.lock().await;
        if let Some(id) = reusable() {
            return Ok(id);
        }
        let granted = Instant::now();
        let mut client = self.client.clone();
        let lease = timed("feedback lease", client.lease_grant(ttl as i64, None)).await?;
        self.lock().feedback_lease = Some((lease.id(), granted, ttl));
        Ok(lease.id())
    }

    async fn claim_feedback(
        &self,
        nonce: u64,
        issued: u64,
        kinds: Vec<&'static str>,
        keep: Duration,
    ) -> Result<(), ClaimError> {
        let lease = self.feedback_lease(keep).await.map_err(ClaimError::Unavailable)?;
        let keys: Vec<String> = kinds.iter().map(|k| self.keys.feedback(nonce, issued, k)).collect();
        let value = serde_json::json!({ "replica": self.replica, "at_ms": now_ms() }).to_string();
        let txn = Txn::new()
            .when(keys.iter().map(|k| Compare::version(k.clone(), CompareOp::Equal, 0)).collect::<Vec<_>>())
            .and_then(
                keys.iter()
                    .map(|k| TxnOp::put(k.clone(), value.clone(), Some(PutOptions::new().with_lease(lease))))
                    .collect::<Vec<_>>(),
            )
            .or_else(keys.iter().map(|k| TxnOp::get(k.clone(), None)).collect::<Vec<_>>());
        let mut client = self.client.clone();
        let resp = match timed("feedback claim", client.txn(txn)).await {
            Ok(r) => r,
            Err(e) => {
                // The lease may be what failed (etcd lost it): take a new one next time.
                self.lock().feedback_lease = None;
                return Err(ClaimError::Unavailable(e));
            }
        };
        if resp.succeeded() {
            return Ok(());
        }
        let taken: Vec<&'static str> = resp
            .op_responses()
            .into_iter()
            .zip(&kinds)
            .filter_map(|(r, kind)| match r {
                TxnOpResponse::Get(g) if !g.kvs().is_empty() => Some(*kind),
                _ => None,
            })
            .collect();
        if taken.is_empty() {
            // A compare failed yet no key is there: cannot happen in one transaction; claim nothing.
            return Err(ClaimError::Unavailable("etcd feedback claim: refused without a reason".to_string()));
        }
        Err(ClaimError::Taken(taken))
    }
}

impl FeedbackClaims for Shared {
    fn claim<'a>(
        &'a self,
        nonce: u64,
        issued: u64,
        kinds: Vec<&'static str>,
        keep: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClaimError>> + Send + 'a>> {
        Box::pin(self.claim_feedback(nonce, issued, kinds, keep))
    }
}
