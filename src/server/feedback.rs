//! `POST /v2/feedback`: business outcomes of earlier answers, attributed to the variant that
//! gave them. The variant (and, for classifiers, what it predicted) is read from the request id
//! alone, so feedback may reach any replica.

use super::handler::AppState;
use super::response;
use crate::backend::Body;
use crate::protocol::{feedback, ApiError};
use crate::telemetry::Feedback;
use http::{Request, Response, StatusCode};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What feedback this gateway has recorded, by request id, so that a retried or replayed post
/// is not counted twice. Bounded: past `capacity` ids the oldest are forgotten. Replicas keep
/// their own ledgers (a post replayed to another replica is not caught).
#[derive(Debug)]
pub struct FeedbackLedger {
    capacity: usize,
    /// Kinds recorded by nonce, and the nonces oldest first.
    seen: Mutex<(HashMap<u64, u8>, VecDeque<u64>)>,
}

impl Default for FeedbackLedger {
    fn default() -> Self {
        Self::new(262_144)
    }
}

const CONVERSION: u8 = 1;
const REWARD: u8 = 2;
const LABEL: u8 = 4;

impl FeedbackLedger {
    /// A ledger remembering up to `capacity` request ids.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), seen: Mutex::default() }
    }

    /// Records the kinds in `post` for its request id; refuses when any was recorded before.
    fn record(&self, nonce: u64, kinds: u8) -> Result<(), ApiError> {
        let mut guard = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seen, order) = &mut *guard;
        let before = seen.get(&nonce).copied().unwrap_or(0);
        if before & kinds != 0 {
            let names: Vec<&str> = [(CONVERSION, "conversion"), (REWARD, "reward"), (LABEL, "label")]
                .iter()
                .filter(|(bit, _)| before & kinds & bit != 0)
                .map(|(_, name)| *name)
                .collect();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "feedback ({}) on this request_id was already recorded; each answer's outcome counts once",
                    names.join(", ")
                ),
            ));
        }
        if before == 0 {
            if order.len() >= self.capacity {
                if let Some(oldest) = order.pop_front() {
                    seen.remove(&oldest);
                }
            }
            order.push_back(nonce);
        }
        seen.insert(nonce, before | kinds);
        Ok(())
    }
}

pub(super) async fn handle(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let body = response::collect(req.into_body(), 64 * 1024).await?;
    let fb = feedback::parse(&body, &state.ids)?;
    let id = &fb.id;
    if state.table.load().route(&id.route).is_none() {
        return Err(ApiError::bad_request(format!(
            "request_id names route {:?}, which this gateway does not serve",
            id.route
        )));
    }
    let kinds = (u8::from(fb.conversion.is_some()) * CONVERSION)
        | (u8::from(fb.reward.is_some()) * REWARD)
        | (u8::from(fb.labels.is_some()) * LABEL);
    state.feedback.record(id.nonce, kinds)?;
    let scored = fb.labels;
    let stats = state.telemetry.variant(&id.route, &id.variant);
    stats.feedback(&Feedback { conversion: fb.conversion, reward: fb.reward, labels: scored }, id.unit);
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
