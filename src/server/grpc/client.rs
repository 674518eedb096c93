//! Upstream model servers that speak the Open Inference Protocol over gRPC
//! (`upstream.protocol: grpc`): gRPC clients' calls passed through under the upstream's model
//! name, and HTTP clients' requests (JSON or binary tensors) carried as raw tensor contents.
//!
//! What maps one to one, both ways: `ModelInfer` ↔ `POST /v2/models/{m}/infer` (every datatype,
//! the outputs asked for, the request id; BF16 only in binary form on the HTTP side),
//! `ModelMetadata` ↔ `GET /v2/models/{m}`, `ModelReady` ↔ `GET /v2/models/{m}/ready`, and gRPC
//! statuses ↔ HTTP error statuses with the same message. What does not: request and tensor
//! `parameters` (not carried), and plain `path_prefix` proxying (refused when routes.yaml is
//! read). Triton's configuration comes from the upstream (`ModelConfig`, rendered in its JSON
//! form over HTTP); statistics are the gateway's own, as for every route.

use super::*;
use crate::backend::Body;
use crate::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::protocol::grpc::{decode_outputs, encode_inputs};
use http_body_util::BodyExt;
use serde_json::json;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The generated client's transport: one upstream backend's pooled HTTP/2 connections, with
/// its endpoint balancing, outlier ejection, timeouts and forwarded headers.
#[derive(Clone, Copy)]
struct Link<'a> {
    up: &'a UpstreamBackend,
    peer: SocketAddr,
}

impl<'a> Service<http::Request<tonic::body::Body>> for Link<'a> {
    type Response = http::Response<Body>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Status>> + Send + 'a>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let Link { up, peer } = *self;
        Box::pin(async move {
            let path = req.uri().path().to_string();
            // Unary calls: the message the gateway just encoded, whole (tonic's body type is
            // not `Sync`, which the gateway's body type is).
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            up.forward(http::Request::from_parts(parts, response::full(bytes)), &path, peer).await.map_err(refuse)
        })
    }
}

type Client<'a> = GrpcInferenceServiceClient<Link<'a>>;

fn client(up: &UpstreamBackend, peer: SocketAddr, limit: usize) -> Client<'_> {
    GrpcInferenceServiceClient::new(Link { up, peer })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// Headers that belong to the client's own connection or call, never carried upstream (the
/// gateway sets its own): gRPC's reserved ones, HTTP's body and content negotiation, and the
/// binary tensor extension's.
const NOT_CARRIED: [&str; 14] = [
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "accept",
    "accept-encoding",
    "te",
    "user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "inference-header-content-length",
    "forwarded",
    "x-forwarded-for",
];

/// A call to the upstream carrying the client's metadata (without [`NOT_CARRIED`]) and the
/// gateway's request id, within what is left of the request's deadline.
fn call<T>(message: T, headers: &HeaderMap, id: &HeaderValue, deadline: Option<Duration>) -> Request<T> {
    let mut carried = headers.clone();
    for name in NOT_CARRIED {
        carried.remove(name);
    }
    carried.insert(REQUEST_ID, id.clone());
    let mut request = Request::from_parts(MetadataMap::from_headers(carried), Default::default(), message);
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    request
}

/// An upstream's refusal as an API error with the same message, under the route's name.
fn from_status(s: &Status, route: &Route) -> ApiError {
    refusal(s, upstream_name(route), &route.name)
}

/// An upstream's refusal as an API error with the same message, the model's `upstream` name
/// in it replaced by the `client`-facing one.
fn refusal(s: &Status, upstream: &str, client: &str) -> ApiError {
    let code = match s.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::BAD_GATEWAY,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists | Code::OutOfRange => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut message = s.message().to_string();
    if upstream != client {
        for quote in ['"', '\''] {
            message = message.replace(&format!("{quote}{upstream}{quote}"), &format!("{quote}{client}{quote}"));
        }
    }
    ApiError::new(code, message)
}

/// A gRPC client's inference passed through to a gRPC upstream: the message as it came, under
/// the upstream's model name (the client's version pin was the gateway's), the answer under
/// the route's name. The outputs are decoded only for the prediction and a shadow's copy.
pub(super) async fn pass_infer(
    state: &AppState,
    entry: &Entry<'_>,
    up: &UpstreamBackend,
    mut message: ModelInferRequest,
    headers: &HeaderMap,
    call_info: Call<'_>,
) -> Result<Answered, ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let limit = state.settings.max_body_bytes;
    message.model_name = upstream_name(route).to_string();
    message.model_version.clear();
    let shadow = entry.shadow().and_then(|target| {
        let specs =
            declared(message.inputs.iter().map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.as_slice()))).ok()?;
        let sig = Signature { inputs: specs, outputs: Vec::new() };
        let inputs = decode_inputs(message.inputs.clone(), message.raw_input_contents.clone(), &sig).ok()?;
        let names: Vec<&str> = message.outputs.iter().map(|o| o.name.as_str()).collect();
        let wanted = (!names.is_empty()).then_some(names);
        Some((target, plain_request(&inputs, wanted, Some(&message.id)).ok()?))
    });
    let sent = Instant::now();
    let answer = client(up, call_info.peer, limit)
        .model_infer(call(message, headers, call_info.id, Some(call_info.deadline)))
        .await;
    variant.stats.upstream(sent.elapsed());
    let (upstream_meta, mut response, _) = answer.map_err(|s| from_status(&s, route))?.into_parts();
    entry.business_value(up, &upstream_meta.into_headers());
    response.model_name = route.name.clone();
    let outputs = decode_outputs(response.outputs.clone(), response.raw_output_contents.clone()).map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer is not an inference response: {}", e.message))
    })?;
    let prediction = predict_and_shadow(&outputs, route, shadow.map(|(target, body)| (target, body.into())));
    Ok(Answered { response, prediction })
}

/// Tensors through a gRPC upstream, sent as raw contents: the call that HTTP clients' requests
/// and shadow copies make (to `up`, for a client at `peer`, answers up to `limit` bytes).
/// Returns the outputs and the upstream's model version.
pub(crate) async fn infer_tensors(
    (up, peer, limit): (&UpstreamBackend, SocketAddr, usize),
    (upstream, client_name): (&str, &str),
    inputs: Vec<Tensor>,
    outputs: Option<Vec<String>>,
    id: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Vec<Tensor>, String), ApiError> {
    let (inputs, raw_input_contents) = encode_inputs(inputs);
    let message = ModelInferRequest {
        model_name: upstream.to_string(),
        id: id.unwrap_or_default().to_string(),
        inputs,
        outputs: outputs
            .into_iter()
            .flatten()
            .map(|name| pb::model_infer_request::InferRequestedOutputTensor { name, parameters: Default::default() })
            .collect(),
        raw_input_contents,
        ..Default::default()
    };
    let id = headers.get(REQUEST_ID).cloned().unwrap_or(HeaderValue::from_static("-"));
    let answer = client(up, peer, limit)
        .model_infer(call(message, headers, &id, None))
        .await
        .map_err(|s| refusal(&s, upstream, client_name))?
        .into_inner();
    let outputs = decode_outputs(answer.outputs, answer.raw_output_contents).map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer is not an inference response: {}", e.message))
    })?;
    Ok((outputs, answer.model_version))
}

/// An HTTP client's inference (JSON or binary tensors) through a gRPC upstream, answered in the
/// forms the client asked for.
pub(crate) async fn http_infer(
    state: &AppState,
    entry: &Entry<'_>,
    up: &UpstreamBackend,
    req: http::Request<Body>,
    peer: SocketAddr,
) -> Result<(http::Response<Body>, Option<Vec<i64>>), ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let limit = state.settings.max_body_bytes;
    let header_length = req.headers().get(crate::protocol::binary::HEADER_LENGTH).map(|v| v.as_bytes().to_vec());
    let (parts, body) = req.into_parts();
    let body = response::collect(body, limit).await?;
    let mut request = InferRequest::from_body(body.clone(), header_length.as_deref())?;
    let specs = declared(request.inputs.iter().map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.as_slice())))?;
    let mut sig = Signature { inputs: specs, outputs: Vec::new() };
    let inputs = request.decode_inputs(&sig)?;
    let wanted: Option<Vec<String>> = request.outputs.as_ref().map(|os| os.iter().map(|o| o.name.clone()).collect());
    let shadow = entry.shadow().and_then(|target| {
        let copy = if request.uses_binary() { Bytes::from(request.to_plain_json(&inputs)?) } else { body.clone() };
        Some((target, copy))
    });
    let sent = Instant::now();
    let names = (upstream_name(route), route.name.as_str());
    let (outputs, version) =
        infer_tensors((up, peer, limit), names, inputs, wanted, request.id.as_deref(), &parts.headers).await?;
    variant.stats.upstream(sent.elapsed());
    sig.outputs = outputs
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            datatype: t.data.datatype(),
            shape: t.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect(),
        })
        .collect();
    let forms = request.output_forms(&sig)?;
    let prediction = predict_and_shadow(&outputs, route, shadow);
    let version = if version.is_empty() { variant.name.as_str() } else { version.as_str() };
    Ok((tensor_answer(&route.name, version, &request, &outputs, &forms)?, prediction))
}

/// A gRPC upstream's model metadata, under the route's name.
pub(super) async fn metadata_of(
    state: &AppState,
    route: &Route,
    up: &UpstreamBackend,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<ModelMetadataResponse, ApiError> {
    let id = request_id(headers);
    let message = ModelMetadataRequest { name: upstream_name(route).to_string(), version: String::new() };
    let mut answer = client(up, peer, state.settings.max_body_bytes)
        .model_metadata(call(message, headers, &id, None))
        .await
        .map_err(|s| from_status(&s, route))?
        .into_inner();
    answer.name = route.name.clone();
    Ok(answer)
}

/// A gRPC upstream's model configuration (Triton's extension), under the route's name.
pub(super) async fn config_of(
    state: &AppState,
    route: &Route,
    up: &UpstreamBackend,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<ModelConfigResponse, ApiError> {
    let id = request_id(headers);
    let message = ModelConfigRequest { name: upstream_name(route).to_string(), version: String::new() };
    let mut answer = client(up, peer, state.settings.max_body_bytes)
        .model_config(call(message, headers, &id, None))
        .await
        .map_err(|s| from_status(&s, route))?
        .into_inner();
    if let Some(config) = answer.config.as_mut() {
        config.name = route.name.clone();
    }
    Ok(answer)
}

/// An HTTP client's metadata or readiness request to a gRPC upstream, in the REST form.
pub(crate) async fn http_model(
    state: &AppState,
    route: &Route,
    up: &UpstreamBackend,
    action: Action,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<http::Response<Body>, ApiError> {
    match action {
        Action::Metadata | Action::Infer => {
            let m = metadata_of(state, route, up, headers, peer).await?;
            let tensors = |ts: &[TensorMetadata]| -> Vec<Value> {
                ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect()
            };
            Ok(response::json_value(
                StatusCode::OK,
                &json!({
                    "name": m.name,
                    "versions": m.versions,
                    "platform": m.platform,
                    "inputs": tensors(&m.inputs),
                    "outputs": tensors(&m.outputs),
                }),
            ))
        }
        Action::Ready => {
            let id = request_id(headers);
            let message = ModelReadyRequest { name: upstream_name(route).to_string(), version: String::new() };
            let ready = client(up, peer, state.settings.max_body_bytes)
                .model_ready(call(message, headers, &id, None))
                .await
                .map_err(|s| from_status(&s, route))?
                .into_inner()
                .ready;
            if !ready {
                return Err(ApiError::unavailable(
                    format!("model {:?} is not ready at its upstream", route.name),
                    Duration::from_secs(1),
                ));
            }
            Ok(response::json_value(StatusCode::OK, &json!({ "name": route.name, "ready": true })))
        }
        Action::Config => {
            // Triton's JSON form of the configuration is the protobuf's JSON mapping.
            let answer = config_of(state, route, up, headers, peer).await?;
            let c = answer.config.unwrap_or_default();
            let kind = |d: i32| pb::DataType::try_from(d).unwrap_or(pb::DataType::TypeInvalid).as_str_name();
            let tensor = |name: &str, d: i32, dims: &[i64]| json!({"name": name, "data_type": kind(d), "dims": dims});
            Ok(response::json_value(
                StatusCode::OK,
                &json!({
                    "name": c.name,
                    "platform": c.platform,
                    "backend": c.backend,
                    "max_batch_size": c.max_batch_size,
                    "input": c.input.iter().map(|t| tensor(&t.name, t.data_type, &t.dims)).collect::<Vec<_>>(),
                    "output": c.output.iter().map(|t| tensor(&t.name, t.data_type, &t.dims)).collect::<Vec<_>>(),
                }),
            ))
        }
        // What the gateway answered for the route, as for in-process models and over gRPC.
        Action::Stats => Ok(response::json_value(StatusCode::OK, &super::super::triton::stats_json(route, None))),
    }
}
