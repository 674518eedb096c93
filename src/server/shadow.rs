//! Shadow traffic: a copy of a request goes to another backend after the client has its answer;
//! the two answers are compared and the agreement recorded. Nothing here reaches the client.

use super::oip::run_local;
use super::response;
use crate::backend::Backend;
use crate::config::RouteKind;
use crate::protocol::oip::InferRequest;
use crate::protocol::Tensor;
use crate::routing::{Route, ShadowTarget};
use crate::telemetry::shadow::{compare, flatten_json, flatten_tensors, prediction_of, Flat};
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::net::SocketAddr;

/// The largest gRPC answer a shadow's copy may get (its HTTP answers are read as they come).
const SHADOW_ANSWER_LIMIT: usize = 64 << 20;

/// The top class of each row of a primary's `outputs` (classifiers) and, with a shadow copy to
/// send, the copy sent off with those outputs reduced for comparison (only then: reducing every
/// output was a visible share of each in-process request's allocations).
pub(super) fn predict_and_shadow(
    outputs: &[Tensor],
    route: &Route,
    shadow: Option<(&ShadowTarget, Bytes)>,
) -> Option<Vec<i64>> {
    if let Some((target, copy)) = shadow {
        spawn(target, route, copy, flatten_tensors(outputs));
    }
    prediction_of(outputs)
}

/// Sends `body` (an inference request) to the shadow off the client's path, and records how its
/// answer compares with the primary's outputs.
pub(super) fn spawn(target: &ShadowTarget, route: &Route, body: Bytes, primary: Vec<Flat>) {
    let backend = target.backend.clone();
    let stats = target.stats.clone();
    let model = match &route.kind {
        RouteKind::Model { upstream_model: Some(m), .. } => m.clone(),
        _ => route.name.clone(),
    };
    let shadow_name = target.name.clone();
    // Copies never queue: beyond max_in_flight they are skipped, so a slow shadow cannot pile
    // up tasks and memory in the gateway.
    let Some(slot) = stats.begin(target.max_in_flight) else { return };
    stats.sent();
    tokio::spawn(async move {
        let _slot = slot;
        let outputs: Result<Vec<Flat>, String> = match backend.as_ref() {
            Backend::Onnx(m) => match InferRequest::from_json(&body) {
                Ok(req) => run_local(m, req).await.map(|t| flatten_tensors(&t)).map_err(|e| e.message),
                Err(e) => Err(e.message),
            },
            Backend::Upstream(up) if up.speaks_grpc() => {
                let local = SocketAddr::from(([127, 0, 0, 1], 0));
                match grpc_inputs(&body) {
                    Ok((inputs, outputs)) => super::grpc::client::infer_tensors(
                        (up, local, SHADOW_ANSWER_LIMIT),
                        (&model, &model),
                        inputs,
                        outputs,
                        None,
                        &http::HeaderMap::new(),
                    )
                    .await
                    .map(|(t, _)| flatten_tensors(&t))
                    .map_err(|e| e.message),
                    Err(e) => Err(e.message),
                }
            }
            Backend::Upstream(up) => {
                let req = Request::post("/").header("content-type", "application/json").body(response::full(body));
                match req {
                    Ok(req) => {
                        let local = SocketAddr::from(([127, 0, 0, 1], 0));
                        match up.forward(req, &format!("/v2/models/{model}/infer"), local).await {
                            Ok(resp) if resp.status().is_success() => match resp.into_body().collect().await {
                                Ok(b) => serde_json::from_slice(&b.to_bytes())
                                    .ok()
                                    .as_ref()
                                    .and_then(flatten_json)
                                    .ok_or_else(|| "answer is not an inference response".to_string()),
                                Err(e) => Err(e.to_string()),
                            },
                            Ok(resp) => Err(format!("status {}", resp.status())),
                            Err(e) => Err(e.message),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match outputs {
            Ok(shadow) => stats.record(&compare(&primary, &shadow)),
            Err(e) => {
                stats.failed();
                tracing::debug!(shadow = %shadow_name, error = %e, "shadow request failed");
            }
        }
    });
}

/// A shadow copy's tensors (plain JSON) as declared, and the outputs it asks for: what a gRPC
/// shadow is sent.
fn grpc_inputs(body: &[u8]) -> Result<(Vec<crate::protocol::Tensor>, Option<Vec<String>>), crate::protocol::ApiError> {
    let mut request = InferRequest::from_json(body)?;
    let specs = crate::protocol::grpc::declared(
        request.inputs.iter().map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.as_slice())),
    )?;
    let sig = crate::protocol::Signature { inputs: specs, outputs: Vec::new() };
    let outputs = request.outputs.as_ref().map(|os| os.iter().map(|o| o.name.clone()).collect());
    Ok((request.decode_inputs(&sig)?, outputs))
}
