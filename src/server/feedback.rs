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
    let scored = fb.labels;
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
