//! The Open Inference Protocol over gRPC (KServe v2 `inference.GRPCInferenceService`) on
//! `server.grpc_listen`: the same routing, limits, variant windows, metrics and request ids as
//! the HTTP endpoints, with HTTP's errors as gRPC statuses.

use super::handler::{request_id, AppState, REQUEST_ID};
use super::oip::{client_facing, find_model, in_process, tensor_answer, upstream_name, upstream_path, Action};
use super::pipeline::{self, pick, Entry, Pending, Picked};
use super::{response, serve_with, ListenerSettings};
use crate::backend::{Backend, OnnxBackend, UpstreamBackend};
use crate::protocol::grpc::pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::protocol::grpc::pb::model_metadata_response::TensorMetadata;
use crate::protocol::grpc::pb::{
    self, ModelConfigRequest, ModelConfigResponse, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ModelStatisticsRequest, ModelStatisticsResponse,
    ModelStreamInferResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
};
use crate::protocol::grpc::{declared, decode_inputs, encode_outputs, selected_outputs};
use crate::protocol::oip::{plain_request, server_metadata, InferRequest, RequestInput};
use crate::protocol::request_id;
use crate::protocol::{ApiError, Signature, Tensor, TensorSpec};
use crate::routing::{assign, Route};
use crate::server::shadow::predict_and_shadow;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use upstream::{forward, upstream_metadata};

pub(super) mod client;
mod upstream;

/// Serves the gRPC inference service on `listener` (h2c, or TLS with `tls`) until `shutdown`
/// completes, then lets in-flight calls finish like the HTTP listener does.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let settings = ListenerSettings::inference(&state, tls, "grpc");
    let limit = state.settings.max_body_bytes;
    let service = GrpcInferenceServiceServer::new(Inference { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Deflate)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Deflate);
    serve_with(listener, settings, shutdown, move |mut req, peer| {
        let mut service = service.clone();
        req.extensions_mut().insert(Peer(peer));
        async move {
            let resp = match service.call(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            too_large(resp, limit)
        }
    })
    .await;
}

/// tonic refuses a message over the decoding limit with OUT_OF_RANGE; gRPC's own servers say
/// RESOURCE_EXHAUSTED, as HTTP says 413. The service itself never answers OUT_OF_RANGE, so
/// that code here is always the size limit.
fn too_large(resp: http::Response<tonic::body::Body>, limit: usize) -> http::Response<tonic::body::Body> {
    let out_of_range = HeaderValue::from(Code::OutOfRange as i32);
    if resp.headers().get("grpc-status") != Some(&out_of_range) {
        return resp;
    }
    Status::resource_exhausted(format!(
        "the request message is larger than the gateway's max_body_bytes of {limit} bytes: send fewer rows per \
         request, or raise server.max_body_bytes"
    ))
    .into_http()
}

/// The client's address, for the `Forwarded` headers of calls forwarded upstream.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

/// The `inference.GRPCInferenceService` implementation.
#[derive(Debug, Clone)]
pub struct Inference {
    state: Arc<AppState>,
}

impl Inference {
    /// The service over a listener's shared state.
    pub fn new(state: Arc<AppState>) -> Inference {
        Inference { state }
    }
}

/// A gRPC status with an API error's message, its code the one gRPC gives the HTTP status.
fn status(e: &ApiError, headers: HeaderMap) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND | StatusCode::GONE => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_client_error() => Code::FailedPrecondition,
        _ => Code::Internal,
    };
    let mut metadata = MetadataMap::from_headers(headers);
    let message = match e.retry_after {
        Some(after) => {
            // gRPC's retry pushback: clients with a retry policy wait this long.
            if let Ok(v) = after.as_millis().to_string().parse() {
                metadata.insert("grpc-retry-pushback-ms", v);
            }
            format!("{} (retry after {}s)", e.message, after.as_secs().max(1))
        }
        None => e.message.clone(),
    };
    Status::with_metadata(code, message, metadata)
}

/// A failure as [`status`], with no metadata.
fn refuse(e: ApiError) -> Status {
    status(&e, HeaderMap::new())
}

/// The client's deadline from `grpc-timeout` (digits and a unit: H, M, S, m, u or n), if it
/// sent a valid one.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let split = text.len().checked_sub(1)?;
    let (digits, unit) = (text.get(..split)?, text.get(split..)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What a call's answer carries besides its message: the gateway's headers as metadata.
fn metadata(headers: HeaderMap) -> MetadataMap {
    MetadataMap::from_headers(headers)
}

/// A decoded and answered inference, and the prediction its request id carries.
struct Answered {
    response: ModelInferResponse,
    prediction: Option<Vec<i64>>,
}

impl Inference {
    /// One inference call under its deadline (the client's `grpc-timeout` when shorter than
    /// the gateway's); the answer or status carries `x-request-id`.
    async fn infer_call(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let state = &*self.state;
        let pending = Pending::new();
        let _in_flight = state.telemetry.in_flight();
        let (metadata_in, extensions, message) = request.into_parts();
        let peer = extensions.get::<Peer>().map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
        let mut headers = metadata_in.into_headers();
        let id = request_id(&headers);
        let model = message.model_name.clone();
        let gateway = state.settings.request_timeout;
        let (deadline, which) = match grpc_timeout(&headers).filter(|d| *d < gateway) {
            Some(client) => (client, "its grpc-timeout"),
            None => (gateway, "the gateway's request_timeout"),
        };
        let call = Call { id: &id, peer, deadline };
        // Boxed: the call's state machine is several KB, and tonic's box and the deadline's
        // timeout would otherwise each copy it (memcpy was 3% of a one-row gRPC call's CPU).
        let result = pending
            .within(deadline, which, Box::pin(self.infer(&mut headers, message, &pending, call)))
            .await
            .unwrap_or_else(|e| Err(status(&e, HeaderMap::new())));
        let micros = pending.elapsed().as_micros() as u64;
        let request_id = id.to_str().unwrap_or("-");
        match result {
            Ok((answer, mut headers)) => {
                tracing::debug!(model, code = "OK", micros, request_id, "grpc infer");
                headers.insert(REQUEST_ID, id.clone());
                Ok(Response::from_parts(metadata(headers), answer, Default::default()))
            }
            Err(mut status) => {
                let code = status.code();
                if matches!(code, Code::Internal | Code::DeadlineExceeded | Code::Unknown) {
                    tracing::warn!(model, ?code, micros, request_id, "grpc infer failed");
                } else {
                    tracing::debug!(model, ?code, micros, request_id, "grpc infer refused");
                }
                if let Ok(v) = request_id.parse() {
                    status.metadata_mut().insert(REQUEST_ID, v);
                }
                Err(status)
            }
        }
    }

    /// Routes, admits and answers one inference through the shared pipeline. Refusals before
    /// a variant is picked are the error; everything after is a status with the gateway's
    /// metadata, counted for the variant.
    async fn infer(
        &self,
        headers: &mut HeaderMap,
        message: ModelInferRequest,
        pending: &Pending,
        call: Call<'_>,
    ) -> Result<Result<(ModelInferResponse, HeaderMap), Status>, ApiError> {
        let state = &*self.state;
        let table = state.table.load();
        let route = find_model(&table, &message.model_name)?;
        let version = Some(message.model_version.clone()).filter(|v| !v.is_empty());
        let entry = pipeline::enter(state, pending, route, version.as_deref(), headers, None)?;
        // The forwarding steps are boxed: kilobytes of state that an in-process call would
        // otherwise carry (and copy) too.
        let answered = entry
            .call(std::pin::pin!(async {
                match entry.variant.backend.as_ref() {
                    Backend::Onnx(model) => answer(&entry, model, message).await,
                    Backend::Upstream(up) if up.speaks_grpc() => {
                        Box::pin(client::pass_infer(state, &entry, up, message, headers, call)).await
                    }
                    Backend::Upstream(up) => Box::pin(forward(state, &entry, up, message, call)).await,
                }
            }))
            .await;
        let code = match &answered {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status,
        };
        let mut out = HeaderMap::new();
        match answered {
            Ok(Answered { response, prediction }) => {
                entry.finish(state, pending, code.as_u16(), &mut out, prediction.as_deref());
                Ok(Ok((response, out)))
            }
            Err(e) => {
                entry.finish(state, pending, code.as_u16(), &mut out, None);
                Ok(Err(status(&e, out)))
            }
        }
    }

    /// The route and variant a metadata or readiness call is about.
    fn picked<'t>(&self, route: &'t Route, version: &str, headers: &HeaderMap) -> Result<Picked<'t>, ApiError> {
        let version = Some(version).filter(|v| !v.is_empty());
        pick(&self.state, route, version, headers, None)
    }
}

/// Where a call came from, the id the gateway correlates it by, and its deadline.
#[derive(Clone, Copy)]
struct Call<'a> {
    id: &'a HeaderValue,
    peer: SocketAddr,
    deadline: Duration,
}

/// Runs an in-process model on a gRPC request: the inputs decoded
/// against the model's signature, the shared model call, the route's shadow copy, and the
/// outputs in the form the inputs came in (raw for raw).
async fn answer(entry: &Entry<'_>, model: &OnnxBackend, message: ModelInferRequest) -> Result<Answered, ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let sig = model.signature();
    let raw = !message.raw_input_contents.is_empty();
    let selected = selected_outputs(&message.outputs, sig)?;
    let inputs = decode_inputs(message.inputs, message.raw_input_contents, sig)?;
    // A shadow takes the request in the JSON form, as an HTTP client would have sent it.
    let shadow = entry.shadow();
    let names = shadow.and_then(|_| selected.clone());
    let copy = |inputs: &[Tensor]| plain_request(inputs, output_names(&names), None).ok().map(Bytes::from);
    let (outputs, prediction) = in_process(entry, model, inputs, selected, shadow, copy).await?;
    let (outputs, raw_output_contents) = encode_outputs(outputs, raw);
    let response = ModelInferResponse {
        model_name: route.name.clone(),
        model_version: variant.name.clone(),
        id: message.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    };
    Ok(Answered { response, prediction })
}

/// The names of the outputs asked for, as the OIP JSON request lists them.
fn output_names(selected: &Option<Vec<String>>) -> Option<Vec<&str>> {
    selected.as_ref().map(|s| s.iter().map(String::as_str).collect())
}

fn tensor_metadata(specs: &[TensorSpec]) -> Vec<TensorMetadata> {
    specs
        .iter()
        .map(|s| TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        // A table is only published once every backend in it is loaded and warmed up; a
        // replica that is shutting down is not ready.
        Ok(Response::new(ServerReadyResponse { ready: !self.state.is_draining() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let (metadata_in, _, message) = request.into_parts();
        let headers = metadata_in.into_headers();
        let table = self.state.table.load();
        let Some(route) = table.model(&message.name) else {
            return Ok(Response::new(ModelReadyResponse { ready: false }));
        };
        match self.picked(route, &message.version, &headers) {
            Ok(_) => Ok(Response::new(ModelReadyResponse { ready: true })),
            Err(e) if e.status == StatusCode::NOT_FOUND => Ok(Response::new(ModelReadyResponse { ready: false })),
            Err(e) => Err(refuse(e)),
        }
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        let meta = server_metadata();
        let text = |key: &str| meta[key].as_str().unwrap_or_default().to_string();
        let extensions = meta["extensions"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok(Response::new(ServerMetadataResponse { name: text("name"), version: text("version"), extensions }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let (metadata_in, extensions, message) = request.into_parts();
        let headers = metadata_in.into_headers();
        let table = self.state.table.load();
        let route = find_model(&table, &message.name).map_err(refuse)?;
        let picked = self.picked(route, &message.version, &headers).map_err(refuse)?;
        let mut out = HeaderMap::new();
        picked.decorate_headers(&self.state, &route.name, &mut out, None);
        let model = match picked.variant.backend.as_ref() {
            Backend::Onnx(model) => model,
            Backend::Upstream(up) => {
                let peer = extensions.get::<Peer>().map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
                let answer = if up.speaks_grpc() {
                    client::metadata_of(&self.state, route, up, &headers, peer).await
                } else {
                    upstream_metadata(&self.state, route, up, &headers, peer).await
                };
                return match answer {
                    Ok(answer) => Ok(Response::from_parts(metadata(out), answer, Default::default())),
                    Err(e) => Err(status(&e, out)),
                };
            }
        };
        let sig = model.signature();
        let answer = ModelMetadataResponse {
            name: route.name.clone(),
            versions: route.variants.iter().map(|v| v.name.clone()).collect(),
            platform: "onnxruntime_onnx".to_string(),
            inputs: tensor_metadata(&sig.inputs),
            outputs: tensor_metadata(&sig.outputs),
        };
        Ok(Response::from_parts(metadata(out), answer, Default::default()))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.infer_call(request).await
    }

    type ModelStreamInferStream = ReceiverStream<Result<ModelStreamInferResponse, Status>>;

    /// Triton's streaming extension: each request on the stream goes through the same call as
    /// `ModelInfer`, in order; a refusal is an `error_message` and the stream goes on. What an
    /// answer's metadata carries for `ModelInfer` (variant, request ids) is in its parameters.
    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (metadata_in, extensions, mut incoming) = request.into_parts();
        let service = self.clone();
        // A few answers may wait for a slow reader; then the stream reads no further requests.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let message = match incoming.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let call = Request::from_parts(metadata_in.clone(), extensions.clone(), message);
                let answer = match service.infer_call(call).await {
                    Ok(resp) => {
                        let (meta, mut response, _) = resp.into_parts();
                        for name in [assign::OVERRIDE_HEADER, request_id::HEADER, REQUEST_ID] {
                            if let Some(v) = meta.get(name).and_then(|v| v.to_str().ok()) {
                                let choice = pb::infer_parameter::ParameterChoice::StringParam(v.to_string());
                                response
                                    .parameters
                                    .insert(name.to_string(), pb::InferParameter { parameter_choice: Some(choice) });
                            }
                        }
                        ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) }
                    }
                    Err(status) => {
                        ModelStreamInferResponse { error_message: status.message().to_string(), infer_response: None }
                    }
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break; // the client went away
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        let (metadata_in, extensions, message) = request.into_parts();
        let headers = metadata_in.into_headers();
        let table = self.state.table.load();
        let route = find_model(&table, &message.name).map_err(refuse)?;
        let picked = self.picked(route, &message.version, &headers).map_err(refuse)?;
        let model = match picked.variant.backend.as_ref() {
            Backend::Onnx(model) => model,
            Backend::Upstream(up) if up.speaks_grpc() => {
                let peer = extensions.get::<Peer>().map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
                let answer = client::config_of(&self.state, route, up, &headers, peer).await.map_err(refuse)?;
                return Ok(Response::new(answer));
            }
            Backend::Upstream(_) => {
                return Err(Status::unimplemented(format!(
                    "route {:?} forwards to an HTTP upstream model server; its configuration is at GET \
                     /v2/models/{}/config over HTTP",
                    route.name, route.name
                )))
            }
        };
        let sig = model.signature();
        let c = super::triton::config(&sig.inputs, &sig.outputs);
        let datatype = |name: &str| pb::DataType::from_str_name(name).unwrap_or(pb::DataType::TypeInvalid) as i32;
        let config = pb::ModelConfig {
            name: route.name.clone(),
            platform: "onnxruntime_onnx".to_string(),
            backend: "onnxruntime".to_string(),
            max_batch_size: i32::try_from(c.max_batch_size).unwrap_or(i32::MAX),
            input: c
                .inputs
                .iter()
                .map(|t| pb::ModelInput {
                    name: t.name.to_string(),
                    data_type: datatype(&t.data_type),
                    dims: t.dims.to_vec(),
                })
                .collect(),
            output: c
                .outputs
                .iter()
                .map(|t| pb::ModelOutput {
                    name: t.name.to_string(),
                    data_type: datatype(&t.data_type),
                    dims: t.dims.to_vec(),
                })
                .collect(),
        };
        Ok(Response::new(ModelConfigResponse { config: Some(config) }))
    }

    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        let message = request.into_inner();
        let table = self.state.table.load();
        let route = find_model(&table, &message.name).map_err(refuse)?;
        let version = Some(message.version.as_str()).filter(|v| !v.is_empty());
        let duration = |count, ns| Some(pb::StatisticDuration { count, ns });
        let model_stats = super::triton::counts(route, version)
            .iter()
            .map(|c| pb::ModelStatistics {
                name: route.name.clone(),
                version: c.version.to_string(),
                inference_count: c.ok,
                execution_count: c.ok,
                inference_stats: Some(pb::InferStatistics {
                    success: duration(c.ok, c.ok_ns),
                    fail: duration(c.failed, c.failed_ns),
                }),
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(t("50m"), Some(Duration::from_millis(50)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("m"), None);
        assert_eq!(t("123456789m"), None);
        assert_eq!(t("5x"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn api_errors_become_the_matching_grpc_codes() {
        let code = |s: StatusCode| refuse(ApiError::new(s, "m")).code();
        assert_eq!(code(StatusCode::BAD_REQUEST), Code::InvalidArgument);
        assert_eq!(code(StatusCode::NOT_FOUND), Code::NotFound);
        assert_eq!(code(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
        assert_eq!(code(StatusCode::GATEWAY_TIMEOUT), Code::DeadlineExceeded);
        assert_eq!(code(StatusCode::PAYLOAD_TOO_LARGE), Code::ResourceExhausted);
        assert_eq!(code(StatusCode::INTERNAL_SERVER_ERROR), Code::Internal);
        assert_eq!(code(StatusCode::FORBIDDEN), Code::PermissionDenied);
        let shed = refuse(ApiError::unavailable("busy", Duration::from_secs(1)));
        assert_eq!(shed.message(), "busy (retry after 1s)");
        assert_eq!(shed.metadata().get("grpc-retry-pushback-ms").unwrap(), "1000");
    }
}
