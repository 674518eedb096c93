//! Open Inference Protocol v2 REST endpoints.

use super::handler::AppState;
use super::response;
use crate::backend::{Backend, Body};
use crate::config::RouteKind;
use crate::protocol::oip::{
    server_metadata, InferRequest, InferResponse, ModelMetadata, ResponseOutput,
};
use crate::protocol::ApiError;
use crate::routing::{Route, Variant};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;
use std::net::SocketAddr;

/// Which endpoint a path names.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Server,
    Live,
    Ready,
    Model {
        name: &'a str,
        version: Option<&'a str>,
        action: Action,
    },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Action {
    Metadata,
    Ready,
    Infer,
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
        _ => None,
    };
    Some(match segments.as_slice() {
        [] | [""] => Endpoint::Server,
        ["health", "live"] => Endpoint::Live,
        ["health", "ready"] => Endpoint::Ready,
        ["models", m] => Endpoint::Model {
            name: m,
            version: None,
            action: Action::Metadata,
        },
        ["models", m, a] => Endpoint::Model {
            name: m,
            version: None,
            action: action(a)?,
        },
        ["models", m, "versions", v] => Endpoint::Model {
            name: m,
            version: Some(v),
            action: Action::Metadata,
        },
        ["models", m, "versions", v, a] => Endpoint::Model {
            name: m,
            version: Some(v),
            action: action(a)?,
        },
        _ => return None,
    })
}

fn allow(method: &Method, wanted: Method) -> Result<(), ApiError> {
    if *method == wanted || (wanted == Method::GET && *method == Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("use {wanted} for this endpoint, not {method}"),
        ))
    }
}

pub(super) async fn handle(
    state: &AppState,
    req: Request<Body>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let Some(endpoint) = parse(&path) else {
        return Err(ApiError::not_found(format!(
            "no Open Inference Protocol endpoint at {path:?}"
        )));
    };
    match endpoint {
        Endpoint::Server => {
            allow(req.method(), Method::GET)?;
            Ok(response::json_value(StatusCode::OK, &server_metadata()))
        }
        Endpoint::Live => {
            allow(req.method(), Method::GET)?;
            Ok(response::json_value(
                StatusCode::OK,
                &json!({ "live": true }),
            ))
        }
        Endpoint::Ready => {
            // A table is only published once every backend in it is loaded and warmed up.
            allow(req.method(), Method::GET)?;
            Ok(response::json_value(
                StatusCode::OK,
                &json!({ "ready": true }),
            ))
        }
        Endpoint::Model {
            name,
            version,
            action,
        } => {
            let table = state.table.load();
            let route = table.model(name).ok_or_else(|| {
                let known: Vec<&str> = table
                    .routes()
                    .iter()
                    .filter(|r| matches!(r.kind, RouteKind::Model { .. }))
                    .map(|r| r.name.as_str())
                    .collect();
                ApiError::not_found(format!(
                    "unknown model {name:?}; routed models: {}",
                    known.join(", ")
                ))
            })?;
            let variant = route.variant(version)?;
            let expected = if action == Action::Infer {
                Method::POST
            } else {
                Method::GET
            };
            allow(req.method(), expected)?;
            let mut resp = match variant.backend.as_ref() {
                Backend::Upstream(up) => {
                    let RouteKind::Model { upstream_model, .. } = &route.kind else {
                        return Err(ApiError::internal("model table holds a prefix route"));
                    };
                    let model = upstream_model.as_deref().unwrap_or(&route.name);
                    let tail = match action {
                        Action::Metadata => "",
                        Action::Ready => "/ready",
                        Action::Infer => "/infer",
                    };
                    let target = match req.uri().query() {
                        Some(q) => format!("/v2/models/{model}{tail}?{q}"),
                        None => format!("/v2/models/{model}{tail}"),
                    };
                    response::check_length(req.headers(), state.settings.max_body_bytes)?;
                    let limit = state.settings.max_body_bytes;
                    up.forward(req.map(|b| response::limited(b, limit)), &target, peer)
                        .await?
                }
                Backend::Onnx(_) => match action {
                    Action::Metadata => metadata(route, variant),
                    Action::Ready => response::json_value(
                        StatusCode::OK,
                        &json!({ "name": route.name, "version": variant.name, "ready": true }),
                    ),
                    Action::Infer => infer(state, route, variant, req).await?,
                },
            };
            if let Ok(v) = HeaderValue::from_str(&variant.name) {
                resp.headers_mut().insert("x-modelgate-variant", v);
            }
            Ok(resp)
        }
    }
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

async fn infer(
    state: &AppState,
    route: &Route,
    variant: &Variant,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let Backend::Onnx(model) = variant.backend.as_ref() else {
        return Err(ApiError::internal("infer asked of an upstream backend"));
    };
    let limit = state.settings.max_body_bytes;
    response::check_length(req.headers(), limit)?;
    let body = response::collect(req.into_body(), limit).await?;
    let request = InferRequest::from_json(&body)?;
    let sig = model.signature();
    let inputs = request.decode_inputs(sig)?;
    let selected = request.selected_outputs(sig)?;
    let outputs = model.infer(inputs, selected).await.map_err(|e| match e {
        crate::backend::InferError::Overloaded { .. } => {
            ApiError::unavailable(e.to_string(), std::time::Duration::from_secs(1))
        }
        crate::backend::InferError::Invalid { .. } => ApiError::bad_request(e.to_string()),
        crate::backend::InferError::Failed { .. } => ApiError::internal(e.to_string()),
    })?;
    let answer = InferResponse {
        model_name: &route.name,
        model_version: Some(&variant.name),
        id: request.id.as_deref(),
        outputs: outputs.iter().map(ResponseOutput::from_tensor).collect(),
    };
    Ok(response::json_value(StatusCode::OK, &answer))
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
        assert_eq!(
            parse("/v2/models/m"),
            Some(Endpoint::Model {
                name: "m",
                version: None,
                action: Action::Metadata
            })
        );
        assert_eq!(
            parse("/v2/models/m/infer"),
            Some(Endpoint::Model {
                name: "m",
                version: None,
                action: Action::Infer
            })
        );
        assert_eq!(
            parse("/v2/models/m/versions/v1/ready"),
            Some(Endpoint::Model {
                name: "m",
                version: Some("v1"),
                action: Action::Ready
            })
        );
        assert_eq!(parse("/v2/models/m/explain"), None);
        assert_eq!(parse("/v2/models/m/versions/v/infer/x"), None);
        assert_eq!(parse("/v3"), None);
        assert_eq!(parse("/v2x"), None);
    }
}
