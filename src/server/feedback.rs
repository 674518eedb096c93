//! `POST /v2/feedback`: business outcomes of earlier answers, attributed to the variant that
//! gave them. The variant (and, for classifiers, what it predicted) is read from the request id
//! alone, so feedback may reach any replica.

use super::handler::AppState;
use super::response;
use crate::backend::Body;
use crate::protocol::ApiError;
use crate::telemetry::Feedback;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: String,
    conversion: Option<bool>,
    reward: Option<f64>,
    /// One true label, or one per row of the answer.
    label: Option<Value>,
}

fn labels(value: &Value) -> Result<Vec<i64>, ApiError> {
    let one = |v: &Value| {
        v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!("label must be an integer class (or a list of them), got {v}"))
        })
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

pub(super) async fn handle(state: &AppState, req: Request<Body>) -> Result<Response<Body>, ApiError> {
    let body = response::collect(req.into_body(), 64 * 1024).await?;
    let fb: FeedbackBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid feedback: {e}; send {{\"request_id\": \"...\", \"conversion\": true | \"reward\": 1.5 | \"label\": 1}}"
        ))
    })?;
    let id = state.ids.decode(&fb.request_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if fb.conversion.is_none() && fb.reward.is_none() && fb.label.is_none() {
        return Err(ApiError::bad_request("feedback carries nothing: give conversion, reward or label"));
    }
    if fb.reward.is_some_and(|r| !r.is_finite()) {
        return Err(ApiError::bad_request("reward must be a finite number"));
    }
    if state.table.load().route(&id.route).is_none() {
        return Err(ApiError::bad_request(format!(
            "request_id names route {:?}, which this gateway does not serve",
            id.route
        )));
    }
    let scored = match &fb.label {
        None => None,
        Some(v) => {
            let truth = labels(v)?;
            let predicted = id.prediction.as_ref().ok_or_else(|| {
                ApiError::bad_request(
                    "this request id carries no prediction (the answer was not a classifier's, or had more than 64 rows), so a label cannot be scored",
                )
            })?;
            if truth.len() != predicted.len() {
                return Err(ApiError::bad_request(format!(
                    "the answer had {} rows; give one label or a list of {}, not {}",
                    predicted.len(),
                    predicted.len(),
                    truth.len()
                )));
            }
            let right = truth.iter().zip(predicted).filter(|(t, p)| t == p).count() as u64;
            Some((truth.len() as u64, right))
        }
    };
    let stats = state.telemetry.variant(&id.route, &id.variant);
    stats.feedback(&Feedback { conversion: fb.conversion, reward: fb.reward, labels: scored });
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
