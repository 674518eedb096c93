//! gRPC calls to routes whose variant is an HTTP upstream model server: the call forwarded as
//! the Open Inference Protocol JSON request, checked against the tensors it declares, and the
//! upstream's answer (outputs, refusals, model metadata) given back in gRPC form.

use super::*;

/// Forwards a gRPC inference to an HTTP upstream as the Open Inference Protocol JSON request
/// (checked against the shapes and datatypes it declares), and answers with the upstream's
/// outputs, raw for raw like in-process answers.
pub(super) async fn forward(
    state: &AppState,
    entry: &Entry<'_>,
    up: &UpstreamBackend,
    message: ModelInferRequest,
    call: Call<'_>,
) -> Result<Answered, ApiError> {
    let (route, variant) = (entry.route, entry.variant);
    let limit = state.settings.max_body_bytes;
    let raw = !message.raw_input_contents.is_empty();
    let inputs = declared(message.inputs.iter().map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.as_slice())))?;
    let sig = Signature { inputs, outputs: Vec::new() };
    let names: Vec<String> = message.outputs.iter().map(|o| o.name.clone()).collect();
    let selected = (!names.is_empty()).then_some(names);
    let inputs = decode_inputs(message.inputs, message.raw_input_contents, &sig)?;
    let body = plain_request(&inputs, output_names(&selected), Some(&message.id))
        .map_err(|e| ApiError::bad_request(format!("the inputs have no JSON form: {e}")))?;
    let body = Bytes::from(body);
    let req = http::Request::post("/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(REQUEST_ID, call.id.clone())
        .body(response::full(body.clone()))
        .map_err(|e| ApiError::internal(format!("cannot build the upstream request: {e}")))?;
    let sent = Instant::now();
    let resp = up.forward(req, &upstream_path(route, Action::Infer, None), call.peer).await?;
    variant.stats.upstream(sent.elapsed());
    let resp = client_facing(route, resp, limit).await?;
    entry.business_value(up, resp.headers());
    let code = resp.status();
    let answer = response::collect(resp.into_body(), limit)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer unreadable: {}", e.message)))?;
    let json: Value = serde_json::from_slice(&answer).map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answered {code} with a body that is not JSON: {e}"))
    })?;
    if !code.is_success() {
        let message = json["error"].as_str().map_or_else(|| format!("upstream answered {code}"), str::to_string);
        return Err(ApiError::new(code, message));
    }
    // As over HTTP, the version is the upstream's own (the gateway's variant is in the metadata).
    let model_version = json["model_version"].as_str().map_or_else(|| variant.name.clone(), str::to_string);
    let outputs = upstream_outputs(json).map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer is not an inference response: {}", e.message))
    })?;
    let prediction = predict_and_shadow(&outputs, route, entry.shadow().map(|target| (target, body)));
    let (outputs, raw_output_contents) = encode_outputs(outputs, raw);
    let response = ModelInferResponse {
        model_name: route.name.clone(),
        model_version,
        id: message.id,
        parameters: Default::default(),
        outputs,
        raw_output_contents,
    };
    Ok(Answered { response, prediction })
}

/// An upstream's JSON answer's outputs as tensors, each checked against its own shape.
pub(super) fn upstream_outputs(json: Value) -> Result<Vec<Tensor>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        outputs: Vec<RequestInput>,
    }
    let answer: Answer = serde_json::from_value(json).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let specs = declared(answer.outputs.iter().map(|o| (o.name.as_str(), o.datatype.as_str(), o.shape.as_slice())))?;
    let sig = Signature { inputs: specs, outputs: Vec::new() };
    InferRequest { id: None, parameters: None, inputs: answer.outputs, outputs: None, ..Default::default() }
        .decode_inputs(&sig)
}

/// An upstream's model metadata (`GET /v2/models/{model}`), under the route's name.
pub(super) async fn upstream_metadata(
    state: &AppState,
    route: &Route,
    up: &UpstreamBackend,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<ModelMetadataResponse, ApiError> {
    let limit = state.settings.max_body_bytes;
    let req = http::Request::get("/")
        .header(REQUEST_ID, request_id(headers))
        .body(response::full(Bytes::new()))
        .map_err(|e| ApiError::internal(format!("cannot build the upstream request: {e}")))?;
    let resp = up.forward(req, &upstream_path(route, Action::Metadata, None), peer).await?;
    let resp = client_facing(route, resp, limit).await?;
    let code = resp.status();
    let body = response::collect(resp.into_body(), limit)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answer unreadable: {}", e.message)))?;
    let json: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream answered {code} with a body that is not JSON: {e}"))
    })?;
    if !code.is_success() {
        let message = json["error"].as_str().map_or_else(|| format!("upstream answered {code}"), str::to_string);
        return Err(ApiError::new(code, message));
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let tensors = |v: &Value| -> Vec<TensorMetadata> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|t| TensorMetadata {
                        name: text(&t["name"]),
                        datatype: text(&t["datatype"]),
                        shape: t["shape"]
                            .as_array()
                            .map(|d| d.iter().filter_map(Value::as_i64).collect())
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(ModelMetadataResponse {
        name: route.name.clone(),
        versions: json["versions"].as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default(),
        platform: text(&json["platform"]),
        inputs: tensors(&json["inputs"]),
        outputs: tensors(&json["outputs"]),
    })
}
