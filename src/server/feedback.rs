//! `POST /v2/feedback`: business outcomes of earlier answers, attributed to the variant that
//! gave them. The variant (and, for classifiers, what it predicted) is read from the request id
//! alone, so feedback may reach any replica.

use super::handler::AppState;
use super::response;
use crate::backend::Body;
use crate::protocol::request_id::GatewayRequestId;
use crate::protocol::{feedback, ApiError};
use crate::telemetry::Feedback;
use http::{Request, Response, StatusCode};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What feedback this gateway has counted, by request id, so that a retried or replayed post
/// is never counted twice while its id is still accepted (`server.feedback_max_age`).
///
/// Ids are forgotten by their issue time, oldest first: once they are past the maximum age
/// (the id itself is then refused as expired), or when the ledger is full. Each time ids are
/// forgotten the *horizon* rises to the newest issue time forgotten, and every id issued at or
/// before the horizon is refused (410): this gateway can no longer tell whether it was counted.
/// So memory stays bounded and nothing is ever counted twice; under more feedback than the
/// ledger holds over `feedback_max_age`, late feedback is refused rather than double-counted.
/// Each replica keeps its own ledger; in a fleet it is the fast first check, and the claim
/// through [`FeedbackClaims`] (etcd) is what makes a post replayed to another replica count once.
#[derive(Debug)]
pub struct FeedbackLedger {
    capacity: usize,
    max_age: Duration,
    seen: Mutex<Seen>,
}

/// The ledger's contents: kinds counted by nonce, the same ids ordered by issue time, and the
/// horizon (unix seconds).
#[derive(Debug, Default)]
struct Seen {
    by_nonce: HashMap<u64, (u64, u8)>,
    by_issue: BTreeSet<(u64, u64)>,
    horizon: u64,
}

const CONVERSION: u8 = 1;
const REWARD: u8 = 2;
const LABEL: u8 = 4;
/// Each kind's bit and name (the name is its part of a fleet-wide claim's key).
const KINDS: [(u8, &str); 3] = [(CONVERSION, "conversion"), (REWARD, "reward"), (LABEL, "label")];

/// The names of the kinds in `bits`.
fn kind_names(bits: u8) -> Vec<&'static str> {
    KINDS.iter().filter(|(bit, _)| bits & bit != 0).map(|(_, name)| *name).collect()
}

/// The bits of the kinds named.
fn kind_bits(names: &[&str]) -> u8 {
    KINDS.iter().filter(|(_, name)| names.contains(name)).fold(0, |bits, (bit, _)| bits | bit)
}

/// Why a fleet-wide claim of feedback did not go through.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClaimError {
    /// These kinds of outcome of the answer were claimed before (on any replica).
    #[error("already claimed: {}", .0.join(", "))]
    Taken(Vec<&'static str>),
    /// The store could not be asked: nothing was claimed.
    #[error("{0}")]
    Unavailable(String),
}

/// Where feedback is claimed fleet-wide, so an outcome posted to several replicas counts once
/// (fleet mode's etcd; a gateway alone has none and its ledger is the whole truth).
pub trait FeedbackClaims: Send + Sync + std::fmt::Debug {
    /// Claims the kinds of outcome named (`conversion`, `reward`, `label`) of the answer with
    /// request id (`nonce`, `issued`), all or none, for at least `keep` from now (the time its
    /// id is still accepted).
    fn claim<'a>(
        &'a self,
        nonce: u64,
        issued: u64,
        kinds: Vec<&'static str>,
        keep: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClaimError>> + Send + 'a>>;
}

/// The kinds of outcome in a post, as ledger bits.
fn kinds(fb: &feedback::FeedbackPost) -> u8 {
    (u8::from(fb.conversion.is_some()) * CONVERSION)
        | (u8::from(fb.reward.is_some()) * REWARD)
        | (u8::from(fb.labels.is_some()) * LABEL)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl FeedbackLedger {
    /// Ids remembered by default: about 20 MiB when full (a hash map and an ordered set entry
    /// each, ~77 bytes an id as measured with a counting allocator).
    pub const DEFAULT_CAPACITY: usize = 262_144;

    /// A ledger remembering up to `capacity` request ids, for ids accepted up to `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self { capacity: capacity.max(1), max_age, seen: Mutex::default() }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.lock().by_nonce.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids issued at or before this unix second are refused.
    pub fn horizon(&self) -> u64 {
        self.lock().horizon
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `kinds` for the id; refuses when any of them was counted before (409), or when
    /// the id is at or before the horizon (410).
    fn record(&self, id: &GatewayRequestId, kinds: u8) -> Result<(), ApiError> {
        self.record_at(id.nonce, id.issued, kinds, now())
    }

    /// Refuses like [`FeedbackLedger::record`] would, without recording anything: the fast
    /// first check before the fleet-wide claim.
    fn check(&self, id: &GatewayRequestId, kinds: u8) -> Result<(), ApiError> {
        let mut seen = self.lock();
        self.admit(&mut seen, id.nonce, id.issued, kinds, now())
    }

    /// Records `kinds` for the id after the fleet accepted (or refused) its claim: the fleet's
    /// answer stands, so a refusal here (the horizon rose meanwhile) changes nothing.
    fn note(&self, id: &GatewayRequestId, kinds: u8) {
        let _ = self.record(id, kinds);
    }

    /// Whether `kinds` of the id may be counted (see [`FeedbackLedger::record`]); forgets
    /// what is past the maximum age first.
    fn admit(&self, seen: &mut Seen, nonce: u64, issued: u64, kinds: u8, now: u64) -> Result<(), ApiError> {
        // Past the maximum age the id is refused as expired: forget it, raising the horizon so
        // that even a clock stepped back cannot bring it back.
        let expired = now.saturating_sub(self.max_age.as_secs()).saturating_sub(1);
        seen.forget_through(expired);
        if issued <= seen.horizon {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!(
                    "this request_id was issued before this gateway's feedback horizon ({}s ago): it has forgotten which \
                     older answers were already counted, so it cannot count this one without risking counting it twice; \
                     post feedback sooner after the answer",
                    now.saturating_sub(seen.horizon)
                ),
            ));
        }
        let before = match seen.by_nonce.get(&nonce) {
            Some(&(_, before)) => before,
            None => 0,
        };
        if before & kinds != 0 {
            return Err(already(&kind_names(before & kinds)));
        }
        Ok(())
    }

    fn record_at(&self, nonce: u64, issued: u64, kinds: u8, now: u64) -> Result<(), ApiError> {
        let mut seen = self.lock();
        self.admit(&mut seen, nonce, issued, kinds, now)?;
        match seen.by_nonce.get_mut(&nonce) {
            Some(entry) => entry.1 |= kinds,
            None => {
                seen.by_nonce.insert(nonce, (issued, kinds));
                seen.by_issue.insert((issued, nonce));
                // Full: forget the oldest-issued ids (every id of that second, which the
                // horizon refuses anyway). The id just counted may be among them: counted once,
                // it is then refused by the horizon.
                while seen.by_nonce.len() > self.capacity {
                    let Some(&(oldest, _)) = seen.by_issue.first() else { break };
                    seen.forget_through(oldest);
                }
            }
        }
        Ok(())
    }
}

fn already(names: &[&str]) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "feedback ({}) on this request_id was already recorded; each answer's outcome counts once",
            names.join(", ")
        ),
    )
}

/// Counts `kinds` of the answer `id` once: the local ledger alone, or in a fleet the local
/// ledger as the fast first check and then the fleet-wide claim, which decides. The store
/// unreachable is a 503 (nothing counted, retry), never a count the fleet may repeat.
async fn count_once(state: &AppState, id: &GatewayRequestId, kinds: u8) -> Result<(), ApiError> {
    let Some(claims) = state.claims.get() else { return state.feedback.record(id, kinds) };
    state.feedback.check(id, kinds)?;
    match claims.claim(id.nonce, id.issued, kind_names(kinds), state.settings.feedback_max_age).await {
        Ok(()) => {
            state.feedback.note(id, kinds);
            Ok(())
        }
        Err(ClaimError::Taken(names)) => {
            // Counted on another replica (or by a concurrent post here): remember it locally too.
            state.feedback.note(id, kind_bits(&names));
            Err(already(&names))
        }
        Err(ClaimError::Unavailable(why)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "feedback could not be recorded fleet-wide ({why}): it was not counted, so that it cannot count twice; \
                 retry (on any replica)"
            ),
        )),
    }
}

impl Seen {
    /// Forgets every id issued at or before `second`, and raises the horizon to it.
    fn forget_through(&mut self, second: u64) {
        if second <= self.horizon {
            return;
        }
        while let Some(&(issued, nonce)) = self.by_issue.first() {
            if issued > second {
                break;
            }
            self.by_issue.pop_first();
            self.by_nonce.remove(&nonce);
        }
        self.horizon = second;
    }
}

pub(super) async fn handle(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let body = response::collect(req.into_body(), 64 * 1024).await?;
    let fb = feedback::parse(&body, &state.ids)?;
    let id = &fb.id;
    // Only the published table is consulted, so that feedback naming what is not served
    // allocates nothing (no stats, no ledger entry).
    let table = state.table.load();
    let route = table.route(&id.route).ok_or_else(|| {
        ApiError::bad_request(format!(
            "request_id names route {:?}, which this gateway does not serve (now): the route was removed from \
             routes.yaml since the answer, or the id comes from another gateway; this feedback cannot be counted",
            id.route
        ))
    })?;
    let variant = route.variants.iter().find(|v| v.name == id.variant).ok_or_else(|| {
        let names: Vec<&str> = route.variants.iter().map(|v| v.name.as_str()).collect();
        ApiError::bad_request(format!(
            "request_id names variant {:?} of route {:?}, which the route no longer has (variants now: {}): it was \
             scaled down or removed since the answer, and its numbers are closed; this feedback cannot be counted",
            id.variant,
            id.route,
            names.join(", ")
        ))
    })?;
    count_once(state, id, kinds(&fb)).await?;
    let scored = fb.labels;
    variant.stats.feedback(&Feedback { conversion: fb.conversion, reward: fb.reward, labels: scored }, id.unit);
    if let (Some(q), Some((rows, right))) = (&variant.quality, scored) {
        q.labels(rows, right);
    }
    if let Some(capture) = variant.quality.as_ref().and_then(|q| q.capture.as_ref()) {
        let given = json!({ "label": fb.truth, "conversion": fb.conversion, "reward": fb.reward });
        let line = crate::quality::capture::Capture::feedback_line(id.nonce, id.issued, given);
        if capture.offer(&line) {
            capture.labelled(scored.map_or(0, |s| s.0));
        }
    }
    Ok(response::json_value(
        StatusCode::OK,
        &json!({
            "route": id.route,
            "variant": id.variant,
            "conversion": fb.conversion,
            "reward": fb.reward,
            "labels_scored": scored.map(|s| s.0),
            "labels_correct": scored.map(|s| s.1),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: u64 = 1_700_000_000;

    #[test]
    fn an_outcome_counts_once_per_kind() {
        let l = FeedbackLedger::new(16, DAY);
        assert!(l.record_at(1, NOW, REWARD, NOW).is_ok());
        assert_eq!(l.record_at(1, NOW, REWARD, NOW).unwrap_err().status, StatusCode::CONFLICT);
        assert_eq!(l.record_at(1, NOW, REWARD | LABEL, NOW).unwrap_err().status, StatusCode::CONFLICT);
        assert!(l.record_at(1, NOW, LABEL, NOW).is_ok(), "another kind on the same answer");
        assert_eq!(l.record_at(1, NOW, LABEL, NOW).unwrap_err().status, StatusCode::CONFLICT);
        // The same nonce with another issue time (only an unsigned id can say so) is the same id.
        assert_eq!(l.record_at(1, NOW - 5, REWARD, NOW).unwrap_err().status, StatusCode::CONFLICT);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn a_full_ledger_forgets_the_oldest_issued_and_refuses_up_to_its_horizon() {
        let l = FeedbackLedger::new(4, DAY);
        // Recorded out of issue order: the ledger keeps issue order, not arrival order.
        for (nonce, issued) in [(1, NOW - 10), (2, NOW - 30), (3, NOW - 20), (4, NOW - 20)] {
            l.record_at(nonce, issued, CONVERSION, NOW).unwrap();
        }
        // Until the ledger fills, the horizon is where the maximum age puts it.
        assert_eq!((l.len(), l.horizon()), (4, NOW - 86_401));
        l.record_at(5, NOW - 5, CONVERSION, NOW).unwrap();
        assert_eq!((l.len(), l.horizon()), (4, NOW - 30), "only the oldest-issued id went");
        // The forgotten id, and any other id as old, is refused: never counted twice.
        assert_eq!(l.record_at(2, NOW - 30, CONVERSION, NOW).unwrap_err().status, StatusCode::GONE);
        assert_eq!(l.record_at(99, NOW - 31, REWARD, NOW).unwrap_err().status, StatusCode::GONE);
        // Newer ones are still told apart.
        assert_eq!(l.record_at(3, NOW - 20, CONVERSION, NOW).unwrap_err().status, StatusCode::CONFLICT);
        l.record_at(6, NOW - 1, CONVERSION, NOW).unwrap();
        assert_eq!((l.len(), l.horizon()), (3, NOW - 20), "both ids of second NOW - 20 went at once");
        assert_eq!(l.record_at(4, NOW - 20, LABEL, NOW).unwrap_err().status, StatusCode::GONE);
        // An id older than everything kept is counted, then forgotten behind the horizon.
        l.record_at(7, NOW - 2, CONVERSION, NOW).unwrap();
        assert_eq!(l.len(), 4);
        l.record_at(9, NOW - 15, REWARD, NOW).unwrap();
        assert_eq!((l.len(), l.horizon()), (4, NOW - 15));
        assert_eq!(l.record_at(9, NOW - 15, REWARD, NOW).unwrap_err().status, StatusCode::GONE);
    }

    #[test]
    fn ids_past_the_maximum_age_are_forgotten_and_stay_refused() {
        let l = FeedbackLedger::new(100, Duration::from_secs(60));
        l.record_at(1, NOW, CONVERSION, NOW).unwrap();
        l.record_at(2, NOW + 30, CONVERSION, NOW + 30).unwrap();
        assert_eq!(l.len(), 2);
        // 61 s later the first is past the maximum age: forgotten, and behind the horizon.
        l.record_at(3, NOW + 61, CONVERSION, NOW + 61).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.horizon(), NOW);
        // Even with the clock stepped back, it cannot be counted again.
        assert_eq!(l.record_at(1, NOW, CONVERSION, NOW + 10).unwrap_err().status, StatusCode::GONE);
        assert_eq!(l.record_at(2, NOW + 30, CONVERSION, NOW + 61).unwrap_err().status, StatusCode::CONFLICT);
    }

    #[test]
    fn memory_stays_bounded_and_nothing_counts_twice_under_random_traffic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let l = FeedbackLedger::new(64, Duration::from_secs(600));
        let mut counted: HashMap<u64, u8> = HashMap::new();
        let mut clock = NOW;
        for _ in 0..20_000 {
            clock += u64::from(rng.random_range(0..3u8) == 0);
            let nonce = rng.random_range(0..400u64);
            // A nonce always comes with the same issue time, as a signed id does.
            let issued = NOW + nonce;
            let kind = [CONVERSION, REWARD, LABEL][rng.random_range(0..3usize)];
            if let Ok(()) = l.record_at(nonce, issued, kind, clock.max(issued)) {
                let before = counted.entry(nonce).or_default();
                assert_eq!(*before & kind, 0, "nonce {nonce} kind {kind} counted twice");
                *before |= kind;
            }
            assert!(l.len() <= 64);
        }
        assert!(l.horizon() > NOW, "the bound was reached");
    }
}
