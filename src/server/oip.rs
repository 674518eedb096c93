//! Open Inference Protocol v2 REST endpoints.

use super::handler::AppState;
use super::pipeline::{self, pick, strip_gateway_headers, Entry, Pending};
use super::{feedback, response, shadow};
use crate::backend::{Backend, Body, InferError, OnnxBackend, UpstreamBackend};
use crate::config::RouteKind;
use crate::protocol::binary;
use crate::protocol::oip::{encode_response, server_metadata, InferRequest, ModelMetadata, OutputForms};
use crate::protocol::{ApiError, Tensor};
use crate::routing::{Route, RouteTable, ShadowTarget, Variant};
use crate::telemetry::shadow::{flatten_json, prediction};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which endpoint a path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Server,
    Feedback,
    Live,
    Ready,
    Model { name: &'a str, version: Option<&'a str>, action: Action },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Action {
    Metadata,
    Ready,
    Infer,
    /// Triton's model configuration extension.
    Config,
    /// Triton's statistics extension.
    Stats,
}

fn parse(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let action = |s: &str| match s {
        "ready" => Some(Action::Ready),
        "infer" => Some(Action::Infer),
        "config" => Some(Action::Config),
        "stats" => Some(Action::Stats),
        _ => None,
    };
    Some(match segments.as_slice() {
        [] | [""] => Endpoint::Server,
        ["health", "live"] => Endpoint::Live,
        ["feedback"] => Endpoint::Feedback,
        ["health", "ready"] => Endpoint::Ready,
        ["models", m] => Endpoint::Model { name: m, version: None, action: Action::Metadata },
        ["models", m, a] => Endpoint::Model { name: m, version: None, action: action(a)? },
        ["models", m, "versions", v] => Endpoint::Model { name: m, version: Some(v), action: Action::Metadata },
        ["models", m, "versions", v, a] => Endpoint::Model { name: m, version: Some(v), action: action(a)? },
        _ => return None,
    })
}

fn allow(method: &Method, wanted: Method) -> Result<(), ApiError> {
    if *method == wanted || (wanted == Method::GET && *method == Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use {wanted} for this endpoint, not {method}")))
    }
}

pub(super) async fn handle(
    state: &AppState,
    mut req: Request<Body>,
    peer: SocketAddr,
    pending: &Pending,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let Some(endpoint) = parse(&path) else {
        return Err(ApiError::not_found(format!("no Open Inference Protocol endpoint at {path:?}")));
    };
    match endpoint {
        Endpoint::Server => {
            allow(req.method(), Method::GET)?;
            Ok(response::json_value(StatusCode::OK, &server_metadata()))
        }
        Endpoint::Feedback => {
            allow(req.method(), Method::POST)?;
            let req = super::encoding::decode_request(req, state.settings.max_body_bytes).await?;
            feedback::handle(state, req).await
        }
        Endpoint::Live => {
            allow(req.method(), Method::GET)?;
            Ok(response::json_value(StatusCode::OK, &json!({ "live": true })))
        }
        Endpoint::Ready => {
            // A table is only published once every backend in it is loaded and warmed up.
            allow(req.method(), Method::GET)?;
            if state.is_draining() {
                return Err(ApiError::unavailable(
                    "shutting down: this replica still answers requests for a moment, but send new ones elsewhere",
                    Duration::from_secs(1),
                ));
            }
            Ok(response::json_value(StatusCode::OK, &json!({ "ready": true })))
        }
        Endpoint::Model { name, version, action } => {
            let table = state.table.load();
            let route = find_model(&table, name)?;
            let expected = if action == Action::Infer { Method::POST } else { Method::GET };
            allow(req.method(), expected)?;
            if action == Action::Infer {
                return infer_call(state, route, version, req, peer, pending).await;
            }
            let picked = pick(state, route, version, req.headers(), req.uri().query())?;
            strip_gateway_headers(state, route, req.headers_mut());
            let variant = picked.variant;
            let mut resp = match (variant.backend.as_ref(), action) {
                (Backend::Upstream(up), _) if up.speaks_grpc() => {
                    super::grpc::client::http_model(state, route, up, action, req.headers(), peer).await?
                }
                (Backend::Upstream(up), _) => {
                    let target = upstream_path(route, action, req.uri().query());
                    let resp = up.forward(req, &target, peer).await?;
                    client_facing(route, resp, state.settings.max_body_bytes).await?
                }
                (Backend::Onnx(_), Action::Metadata | Action::Infer) => metadata(route, variant),
                (Backend::Onnx(model), Action::Config) => {
                    let sig = model.signature();
                    response::json_value(StatusCode::OK, &super::triton::config_json(route, &sig.inputs, &sig.outputs))
                }
                (Backend::Onnx(_), Action::Stats) => {
                    response::json_value(StatusCode::OK, &super::triton::stats_json(route, version))
                }
                (Backend::Onnx(_), Action::Ready) => response::json_value(
                    StatusCode::OK,
                    &json!({ "name": route.name, "version": variant.name, "ready": true }),
                ),
            };
            picked.decorate_headers(state, &route.name, resp.headers_mut(), None);
            Ok(resp)
        }
    }
}

/// An inference over HTTP (JSON or binary tensors, maybe compressed) through the shared
/// pipeline: admitted and picked before its body is read or inflated, so a shed request costs
/// neither; failures count against the variant like answers do.
async fn infer_call(
    state: &AppState,
    route: &Route,
    version: Option<&str>,
    req: Request<Body>,
    peer: SocketAddr,
    pending: &Pending,
) -> Result<Response<Body>, ApiError> {
    let (mut parts, body) = req.into_parts();
    // A Uri clone shares its bytes: the query is borrowed from it, not copied.
    let uri = parts.uri.clone();
    let entry = match pipeline::enter(state, pending, route, version, &mut parts.headers, uri.query()) {
        Ok(entry) => entry,
        Err(e) => {
            response::discard(body).await;
            return Err(e);
        }
    };
    let req = Request::from_parts(parts, body);
    let answered = entry
        .call(std::pin::pin!(async {
            let req = super::encoding::decode_request(req, state.settings.max_body_bytes).await?;
            infer(state, &entry, req, peer).await
        }))
        .await;
    let (mut resp, prediction) = answered.unwrap_or_else(|e| (response::error(&e), None));
    entry.finish_response(state, pending, &mut resp, prediction.as_deref());
    Ok(resp)
}

/// The route of a model name, or a 404 that lists the routed models.
pub(super) fn find_model<'t>(table: &'t RouteTable, name: &str) -> Result<&'t Route, ApiError> {
    table.model(name).map(|r| r.as_ref()).ok_or_else(|| {
        ApiError::not_found(format!("unknown model {name:?}; routed models: {}", table.model_names().join(", ")))
    })
}

/// The model name the upstream knows the route by, when it differs from the route's.
fn upstream_model(route: &Route) -> Option<&str> {
    match &route.kind {
        RouteKind::Model { name, upstream_model: Some(m) } if m != name => Some(m.as_str()),
        _ => None,
    }
}

/// An upstream's answer under the client-facing model name. Answers with a known length up to
/// `limit` are read and rewritten; longer or streamed ones pass as they are.
pub(super) async fn client_facing(
    route: &Route,
    resp: Response<Body>,
    limit: usize,
) -> Result<Response<Body>, ApiError> {
    let Some(upstream) = upstream_model(route) else { return Ok(resp) };
    let small = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= limit);
    if !small || resp.headers().contains_key(http::header::CONTENT_ENCODING) {
        return Ok(resp);
    }
    let (mut parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer broke off: {e}")))?
        .to_bytes();
    let body = super::rename::client_facing(body, &mut parts.headers, upstream, &route.name);
    Ok(Response::from_parts(parts, response::full(body)))
}

/// An inference answer over HTTP: JSON, or a JSON header and binary tensors when `forms` ask
/// for any output in binary.
pub(super) fn tensor_answer(
    model: &str,
    version: &str,
    request: &InferRequest,
    outputs: &[Tensor],
    forms: &OutputForms,
) -> Result<Response<Body>, ApiError> {
    let encoded = encode_response(model, Some(version), request.id.as_deref(), outputs, forms)?;
    let mut resp = response::json(StatusCode::OK, encoded.body);
    if let Some(n) = encoded.header_length {
        let headers = resp.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(binary::HEADER_LENGTH, HeaderValue::from(n));
    }
    Ok(resp)
}

/// The model name an upstream model server knows a route by.
pub(super) fn upstream_name(route: &Route) -> &str {
    match &route.kind {
        RouteKind::Model { upstream_model: Some(m), .. } => m.as_str(),
        _ => route.name.as_str(),
    }
}

/// The path of a model endpoint at an upstream model server.
pub(super) fn upstream_path(route: &Route, action: Action, query: Option<&str>) -> String {
    let model = upstream_name(route);
    let tail = match action {
        Action::Metadata => "",
        Action::Ready => "/ready",
        Action::Infer => "/infer",
        Action::Config => "/config",
        Action::Stats => "/stats",
    };
    response::with_query(&format!("/v2/models/{model}{tail}"), query)
}

fn metadata(route: &Route, variant: &Variant) -> Response<Body> {
    let Backend::Onnx(model) = variant.backend.as_ref() else {
        return response::error(&ApiError::internal("metadata asked of an upstream backend"));
    };
    let sig = model.signature();
    response::json_value(
        StatusCode::OK,
        &ModelMetadata {
            name: &route.name,
            versions: route.variants.iter().map(|v| v.name.as_str()).collect(),
            platform: "onnxruntime_onnx",
            inputs: &sig.inputs,
            outputs: &sig.outputs,
        },
    )
}

fn infer_error(e: InferError) -> ApiError {
    match e {
        InferError::Overloaded { .. } | InferError::QueueTimeout { .. } => {
            ApiError::unavailable(e.to_string(), Duration::from_secs(1))
        }
        InferError::Invalid { .. } => ApiError::bad_request(e.to_string()),
        InferError::Failed { .. } => ApiError::internal(e.to_string()),
    }
}

/// Runs an in-process model on a decoded request.
pub(super) async fn run_local(model: &OnnxBackend, mut request: InferRequest) -> Result<Vec<Tensor>, ApiError> {
    let sig = model.signature();
    let inputs = request.decode_inputs(sig)?;
    let selected = request.selected_outputs(sig)?;
    run_model(model, inputs, selected).await.map(|(outputs, _)| outputs)
}

/// Runs an in-process model on inputs already checked against its signature: the one call
/// into a model that HTTP and gRPC share, with its failures as client-facing errors. Also says
/// how many requests shared the run (dynamic batching).
pub(super) async fn run_model(
    model: &OnnxBackend,
    inputs: Vec<Tensor>,
    selected: Option<Vec<String>>,
) -> Result<crate::backend::onnx::Ran, ApiError> {
    model.infer(inputs, selected).await.map_err(infer_error)
}

/// The in-process step that HTTP and gRPC share, after decoding: the route's input checks, the
/// model run (counted with its batch), capture, output checks, the prediction, and the shadow's
/// copy (made by `copy` from the checked inputs, sent with the primary's outputs). Returns the
/// outputs and, for classifiers, the top class of each row.
pub(super) async fn in_process(
    entry: &Entry<'_>,
    model: &OnnxBackend,
    inputs: Vec<Tensor>,
    selected: Option<Vec<String>>,
    shadow: Option<&ShadowTarget>,
    copy: impl FnOnce(&[Tensor]) -> Option<Bytes>,
) -> Result<(Vec<Tensor>, Option<Vec<i64>>), ApiError> {
    entry.check_inputs(&inputs)?;
    let copy = shadow.and_then(|target| Some((target, copy(&inputs)?)));
    let kept = entry.wants_capture().then(|| inputs.clone());
    let started = Instant::now();
    let (outputs, batch) = run_model(model, inputs, selected).await?;
    entry.variant.stats.inference(started.elapsed(), batch);
    if let Some(inputs) = kept {
        entry.capture(&inputs, &outputs);
    }
    entry.check_outputs(&outputs);
    let predicted = shadow::predict_and_shadow(&outputs, entry.route, copy);
    Ok((outputs, predicted))
}

/// An answer and, for classifiers, the top class of each row (carried in the request id).
type Answered = (Response<Body>, Option<Vec<i64>>);

async fn infer(
    state: &AppState,
    entry: &Entry<'_>,
    req: Request<Body>,
    peer: SocketAddr,
) -> Result<Answered, ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let limit = state.settings.max_body_bytes;
    response::check_length(req.headers(), limit)?;
    let shadow = entry.shadow();
    match variant.backend.as_ref() {
        Backend::Onnx(model) => {
            let header_length = req.headers().get(binary::HEADER_LENGTH).map(|v| v.as_bytes().to_vec());
            let body = response::collect(req.into_body(), limit).await?;
            let mut request = InferRequest::from_body(body.clone(), header_length.as_deref())?;
            let sig = model.signature();
            let forms = request.output_forms(sig)?;
            let inputs = request.decode_inputs(sig)?;
            let selected = request.selected_outputs(sig)?;
            // A shadow gets the body as it came, or, for a binary request, the same request in
            // plain JSON (shadows need not speak the binary extension; BF16 inputs have no JSON
            // form, so such requests are not shadowed).
            let copy = |inputs: &[Tensor]| {
                if request.uses_binary() {
                    request.to_plain_json(inputs).map(Bytes::from)
                } else {
                    Some(body.clone())
                }
            };
            let (outputs, predicted) = in_process(entry, model, inputs, selected, shadow, copy).await?;
            let resp = tensor_answer(&route.name, &variant.name, &request, &outputs, &forms)?;
            Ok((resp, predicted))
        }
        // The forwarding steps are boxed: kilobytes of state that an in-process inference would
        // otherwise carry (and copy) too.
        Backend::Upstream(up) if up.speaks_grpc() => {
            Box::pin(super::grpc::client::http_infer(state, entry, up, req, peer)).await
        }
        Backend::Upstream(up) => Box::pin(forward_infer(state, entry, up, req, peer, shadow)).await,
    }
}

/// An inference forwarded to an HTTP upstream model server (streamed, or buffered for a shadow).
async fn forward_infer(
    state: &AppState,
    entry: &Entry<'_>,
    up: &UpstreamBackend,
    req: Request<Body>,
    peer: SocketAddr,
    shadow: Option<&ShadowTarget>,
) -> Result<Answered, ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let limit = state.settings.max_body_bytes;
    let target = upstream_path(route, Action::Infer, req.uri().query());
    let (parts, body) = req.into_parts();
    // The request is buffered when a shadow needs a copy; otherwise it streams.
    let (body, copy) = match shadow {
        Some(_) => {
            let bytes = response::collect(body, limit).await?;
            (response::full(bytes.clone()), Some(bytes))
        }
        None => (response::limited(body, limit), None),
    };
    let started = Instant::now();
    let resp = up.forward(Request::from_parts(parts, body), &target, peer).await?;
    variant.stats.upstream(started.elapsed());
    let resp = client_facing(route, resp, limit).await?;
    entry.business_value(up, resp.headers());
    // Small successful answers are read to learn the prediction (and for the shadow).
    let small = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= limit);
    if !(resp.status().is_success() && (small || copy.is_some())) {
        return Ok((resp, None));
    }
    let (parts, answer) = resp.into_parts();
    let answer = answer
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer broke off: {e}")))?
        .to_bytes();
    let flat = serde_json::from_slice(&answer).ok().as_ref().and_then(flatten_json);
    let predicted = flat.as_deref().and_then(prediction);
    if let (Some(target), Some(copy), Some(flat)) = (shadow, copy, flat) {
        shadow::spawn(target, route, copy, flat);
    }
    Ok((Response::from_parts(parts, response::full(answer)), predicted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_endpoints() {
        assert_eq!(parse("/v2"), Some(Endpoint::Server));
        assert_eq!(parse("/v2/"), Some(Endpoint::Server));
        assert_eq!(parse("/v2/health/live"), Some(Endpoint::Live));
        assert_eq!(parse("/v2/health/ready"), Some(Endpoint::Ready));
        assert_eq!(parse("/v2/models/m"), Some(Endpoint::Model { name: "m", version: None, action: Action::Metadata }));
        assert_eq!(
            parse("/v2/models/m/infer"),
            Some(Endpoint::Model { name: "m", version: None, action: Action::Infer })
        );
        assert_eq!(
            parse("/v2/models/m/versions/v1/ready"),
            Some(Endpoint::Model { name: "m", version: Some("v1"), action: Action::Ready })
        );
        assert_eq!(parse("/v2/models/m/explain"), None);
        assert_eq!(parse("/v2/models/m/versions/v/infer/x"), None);
        assert_eq!(parse("/v3"), None);
        assert_eq!(parse("/v2x"), None);
    }
}
