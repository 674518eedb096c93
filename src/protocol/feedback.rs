//! `POST /v2/feedback` bodies: a request id plus a business outcome, checked without touching
//! any state, so the parser can be fuzzed and tested on its own.

use super::error::ApiError;
use super::request_id::{GatewayRequestId, IdCodec};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackBody {
    request_id: String,
    conversion: Option<bool>,
    reward: Option<f64>,
    /// One true label, or one per row of the answer.
    label: Option<Value>,
}

/// A checked feedback post.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackPost {
    /// Whose answer this is about.
    pub id: GatewayRequestId,
    /// Converted or not.
    pub conversion: Option<bool>,
    /// A finite reward.
    pub reward: Option<f64>,
    /// Rows scored against true labels, and rows predicted right.
    pub labels: Option<(u64, u64)>,
    /// The true labels given, one per row of the answer.
    pub truth: Option<Vec<i64>>,
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

/// Parses and checks a feedback body: its shape, the id's signature and age, and the labels
/// against the prediction the id carries.
pub fn parse(body: &[u8], ids: &IdCodec) -> Result<FeedbackPost, ApiError> {
    let fb: FeedbackBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid feedback: {e}; send {{\"request_id\": \"...\", \"conversion\": true | \"reward\": 1.5 | \"label\": 1}}"
        ))
    })?;
    let id = ids.decode(&fb.request_id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if fb.conversion.is_none() && fb.reward.is_none() && fb.label.is_none() {
        return Err(ApiError::bad_request("feedback carries nothing: give conversion, reward or label"));
    }
    if fb.reward.is_some_and(|r| !r.is_finite()) {
        return Err(ApiError::bad_request("reward must be a finite number"));
    }
    let mut given = None;
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
            let rows = truth.len() as u64;
            given = Some(truth);
            Some((rows, right))
        }
    };
    Ok(FeedbackPost { id, conversion: fb.conversion, reward: fb.reward, labels: scored, truth: given })
}
