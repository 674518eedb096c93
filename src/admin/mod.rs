//! The admin API, on its own listener (loopback by default): read the routing table, and change
//! rollouts through the controller's one mutate → build → validate → swap path.
//!
//! - `GET  /metrics` — Prometheus text exposition.
//! - `GET  /admin/stats` — per route and variant: requests, error rate, p50/p95/p99, business
//!   metrics with their sample counts (lifetime, and the current analysis step).
//! - `GET  /admin/routes` — the table with its generation, every route's variants, shares,
//!   shadow agreement and status, and the outcome of the last reload.
//! - `POST /admin/reload` — read routes.yaml again now.
//! - `POST /admin/routes/{route}/weight` `{"weight": 25}` — canary weight.
//! - `POST /admin/routes/{route}/switch` — blue-green switch.
//! - `POST /admin/routes/{route}/promote` `[{"variant": "..."}]` — candidate to all traffic.
//! - `POST /admin/routes/{route}/rollback` — candidate out.
//!
//! `{route}` is the model name, or the path prefix percent-encoded (`%2Fremote%2F`).

use crate::backend::Body;
use crate::protocol::ApiError;
use crate::rollout::Controller;
use crate::server::response;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const MAX_BODY: usize = 64 * 1024;

/// Answers one admin request.
pub async fn handle(controller: Arc<Controller>, req: Request<Incoming>) -> Response<Body> {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if path == "/metrics" && (method == Method::GET || method == Method::HEAD) {
        let mut resp = Response::new(response::full(controller.telemetry().render().into()));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return resp;
    }
    let result = route(&controller, req).await;
    match result {
        Ok(v) => response::json_value(StatusCode::OK, &v),
        Err(e) => {
            tracing::info!(%method, path, status = e.status.as_u16(), error = %e.message, "admin request refused");
            response::error(&e)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightBody {
    weight: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    variant: Option<String>,
}

async fn read_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>, empty_ok: Option<T>) -> Result<T, ApiError> {
    let body = req.into_body().map_err(crate::backend::BodyError::new).boxed();
    let bytes = response::collect(body, MAX_BODY).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if let Some(default) = empty_ok {
            return Ok(default);
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn decode(segment: &str) -> Result<String, ApiError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| ApiError::bad_request(format!("bad percent-encoding in {segment:?}")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request(format!("{segment:?} is not UTF-8")))
}

async fn route(controller: &Arc<Controller>, req: Request<Incoming>) -> Result<Value, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/admin/routes" {
        return if method == Method::GET {
            Ok(view(controller).await)
        } else {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use GET for {path}")))
        };
    }
    if path == "/admin/stats" {
        return if method == Method::GET {
            Ok(stats(controller))
        } else {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use GET for {path}")))
        };
    }
    if path == "/admin/reload" {
        if method != Method::POST {
            return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use POST for {path}")));
        }
        return match controller.reload_file().await {
            Ok(generation) => Ok(json!({ "generation": generation })),
            Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())),
        };
    }
    let Some((name, action)) = path.strip_prefix("/admin/routes/").and_then(|r| r.rsplit_once('/')) else {
        return Err(ApiError::not_found(format!("no admin endpoint at {path:?}")));
    };
    if method != Method::POST {
        return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use POST for {path}")));
    }
    let name = decode(name)?;
    let generation = match action {
        "weight" => {
            let body: WeightBody = read_json(req, None).await?;
            controller.set_weight(&name, body.weight).await?
        }
        "switch" => controller.switch(&name).await?,
        "promote" => {
            let body: PromoteBody = read_json(req, Some(PromoteBody::default())).await?;
            controller.promote(&name, body.variant.as_deref()).await?
        }
        "rollback" => controller.rollback(&name).await?,
        other => {
            return Err(ApiError::not_found(format!(
                "no admin action {other:?}; actions: weight, switch, promote, rollback"
            )))
        }
    };
    tracing::info!(route = %name, action, generation, "admin change applied");
    Ok(json!({ "route": name, "action": action, "generation": generation }))
}

/// `GET /admin/stats`: per route and variant, the lifetime numbers and the current analysis step's.
pub fn stats(controller: &Controller) -> Value {
    let mut routes: Vec<(String, Vec<Value>)> = Vec::new();
    for v in controller.telemetry().variants() {
        let entry = json!({ "variant": v.variant, "total": v.total(), "step": v.step() });
        match routes.last_mut() {
            Some((route, list)) if *route == v.route => list.push(entry),
            _ => routes.push((v.route.clone(), vec![entry])),
        }
    }
    let routes: Vec<Value> =
        routes.into_iter().map(|(route, variants)| json!({ "route": route, "variants": variants })).collect();
    json!({ "routes": routes })
}

/// `GET /admin/routes`.
pub async fn view(controller: &Controller) -> Value {
    let statuses = controller.statuses().await;
    let table = controller.table().load();
    let routes: Vec<Value> = table
        .routes()
        .iter()
        .map(|r| {
            let status = statuses.iter().find(|(n, _)| *n == r.name).map(|(_, s)| s.clone()).unwrap_or_default();
            let mut lower = 0;
            let variants: Vec<Value> = r
                .variants
                .iter()
                .map(|v| {
                    let buckets = v.upper - lower;
                    lower = v.upper;
                    json!({ "name": v.name, "role": v.role, "weight": v.weight, "buckets": buckets })
                })
                .collect();
            let sticky = r.sticky.as_ref().map(|s| match s {
                crate::config::Sticky::Header(h) => format!("header:{h}"),
                crate::config::Sticky::Cookie(c) => format!("cookie:{c}"),
                crate::config::Sticky::Query(q) => format!("query:{q}"),
            });
            let shadow = r
                .shadow
                .as_ref()
                .map(|s| json!({ "backend": s.name, "percent": s.percent, "stats": s.stats.snapshot() }));
            let kind = match &r.kind {
                crate::config::RouteKind::Model { .. } => "model",
                crate::config::RouteKind::Prefix { .. } => "path_prefix",
            };
            json!({
                "name": r.name,
                "kind": kind,
                "strategy": r.strategy,
                "variants": variants,
                "sticky": sticky,
                "shadow": shadow,
                "unavailable": r.unavailable,
                "status": status,
            })
        })
        .collect();
    json!({ "generation": table.generation(), "reload": controller.report(), "routes": routes })
}
