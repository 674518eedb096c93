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
//! - `POST /admin/routes/{route}/rollback` (or `abort`) — candidate out.
//! - `POST /admin/routes/{route}/pause|resume|retry` — automatic canary steps.
//! - `GET  /admin/status` — every route's rollout status alone.
//! - `GET  /admin/events[?since=N&route=R]` — decisions with the numbers behind them.
//! - `GET  /admin/cluster` — fleet mode: replicas, leader, spec revisions, last publications
//!   (404 outside a fleet).
//! - `GET  /admin/series[?route=R][&since=T]` — the last 15 minutes per variant, second by
//!   second (only the points after `T` with `since`), with the route's events as markers (what
//!   the console charts).
//! - `GET  /ui/` — the operator console ([`console`]).
//!
//! Mutations need `Authorization: Bearer <token>` when the gateway has a token, and take
//! `If-Match: "<generation>"` (the `ETag` of any answer, or a route's `etag` in
//! `GET /admin/routes`): it is refused with 412 only when that route changed after that
//! generation — a decision on another route does not make it stale. In a fleet the ETags are
//! etcd revisions, the same on every replica: read on one, write on another.
//!
//! `{route}` is the model name, or the path prefix percent-encoded (`%2Fremote%2F`).

pub mod client;
pub mod console;

use crate::backend::Body;
use crate::protocol::secret::{constant_time_eq, hex};
use crate::protocol::ApiError;
use crate::rollout::Action;
use crate::rollout::Controller;
use crate::server::response;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const MAX_BODY: usize = 64 * 1024;

/// What the admin handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The one path through which the table changes.
    pub controller: Arc<Controller>,
    /// Bearer token every mutation must carry; `None` leaves mutations open (loopback only).
    pub token: Option<String>,
}

/// Who made a change, for the audit trail: `token:` and the first 8 hex digits of the token's
/// SHA-256, or `anonymous` when the gateway has no token. The token itself is never logged.
pub fn token_id(token: Option<&str>) -> String {
    use sha2::Digest;
    match token {
        Some(t) => format!("token:{}", hex(&sha2::Sha256::digest(t.as_bytes())[..4])),
        None => "anonymous".to_string(),
    }
}

fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &state.token else { return Ok(()) };
    match crate::server::bearer(req.headers()) {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is not the admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin changes need `Authorization: Bearer <token>` (the MODELGATE_ADMIN_TOKEN the gateway runs with)",
        )),
    }
}

fn if_match(req: &Request<Incoming>) -> Result<Option<u64>, ApiError> {
    let Some(v) = req.headers().get(http::header::IF_MATCH) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim().trim_start_matches("W/").trim_matches('"');
    if text == "*" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a table generation such as \"12\" (from GET /admin/routes), got {text:?}"
        ))
    })
}

/// Answers one admin request.
pub async fn handle(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Body> {
    let controller = state.controller.clone();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if path == "/metrics" && (method == Method::GET || method == Method::HEAD) {
        let mut resp = Response::new(response::full(controller.telemetry().render().into()));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return resp;
    }
    if method == Method::GET || method == Method::HEAD {
        if let Some(resp) = console::asset(&path).filter(|_| controller.telemetry().series().running()) {
            return resp;
        }
    }
    if method != Method::GET && method != Method::HEAD {
        if let Err(e) = authorize(&state, &req) {
            tracing::warn!(%method, path, "admin change refused: {}", e.message);
            return response::error(&e);
        }
    }
    let who = token_id(state.token.as_deref());
    let result = route(&controller, req, &who).await;
    match result {
        Ok(v) => {
            let mut resp = response::json_value(StatusCode::OK, &v);
            if let Ok(etag) = http::HeaderValue::from_str(&format!("\"{}\"", controller.etag())) {
                resp.headers_mut().insert(http::header::ETAG, etag);
            }
            resp
        }
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
    #[serde(default)]
    full: bool,
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

async fn route(controller: &Arc<Controller>, req: Request<Incoming>, who: &str) -> Result<Value, ApiError> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/admin/routes" {
        return if method == Method::GET {
            Ok(view(controller).await)
        } else {
            Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("use GET for {path}")))
        };
    }
    if path == "/admin/status" {
        let statuses = controller.statuses();
        let routes: Vec<Value> =
            statuses.iter().map(|(route, status)| json!({ "route": route, "status": status })).collect();
        return Ok(json!({
            "generation": controller.generation(),
            "persist_error": controller.persist_error(),
            "decisions_held": controller.decisions_held(),
            "routes": routes,
        }));
    }
    if path == "/admin/cluster" {
        return controller
            .fleet_view()
            .ok_or_else(|| ApiError::not_found("not in a fleet: routes.yaml has no cluster: section"));
    }
    if path == "/admin/events" {
        let query = req.uri().query().unwrap_or("");
        let param =
            |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')));
        let since = param("since")
            .map_or(Ok(0), |v| v.parse::<u64>())
            .map_err(|_| ApiError::bad_request("since must be an event sequence number"))?;
        let route = param("route").map(decode).transpose()?;
        return Ok(json!({ "events": controller.events(since, route.as_deref()) }));
    }
    if path == "/admin/series" {
        let query = req.uri().query().unwrap_or("");
        let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        let route = param("route").map(decode).transpose()?;
        let since = param("since")
            .map_or(Ok(0), |v| v.parse::<u64>())
            .map_err(|_| ApiError::bad_request("since must be unix seconds (the newest of a previous answer)"))?;
        return console::series(controller, route.as_deref(), since);
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
    let expected = if_match(&req)?;
    let action = match action {
        "weight" => {
            let body: WeightBody = read_json(req, None).await?;
            Action::Weight(body.weight)
        }
        "switch" => Action::Switch,
        "promote" => {
            let body: PromoteBody = read_json(req, Some(PromoteBody::default())).await?;
            Action::Promote { variant: body.variant, full: body.full }
        }
        "rollback" | "abort" => Action::Rollback,
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "retry" => Action::Retry,
        other => {
            return Err(ApiError::not_found(format!(
                "no admin action {other:?}; actions: weight, switch, promote, rollback, abort, pause, resume, retry"
            )))
        }
    };
    let action_name = action.name();
    let generation = controller.act(&name, action, expected, who).await?;
    Ok(json!({ "route": name, "action": action_name, "generation": generation }))
}

/// `GET /admin/stats`: per route and variant, the lifetime numbers and the current analysis step's.
pub fn stats(controller: &Controller) -> Value {
    let mut routes: Vec<(String, Vec<Value>)> = Vec::new();
    for v in controller.telemetry().variants() {
        let entry = json!({ "variant": v.variant, "total": v.total(), "step": v.step(), "pinned": v.pinned() });
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
    let statuses = controller.statuses();
    let revisions = controller.revisions();
    let table = controller.table().load();
    let routes: Vec<Value> = table
        .routes()
        .iter()
        .map(|r| {
            let status = statuses.iter().find(|(n, _)| *n == r.name).map(|(_, s)| s.clone()).unwrap_or_default();
            let variants: Vec<Value> = r
                .variants
                .iter()
                .map(|v| json!({ "name": v.name, "role": v.role, "weight": v.weight, "buckets": v.buckets }))
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
                "etag": controller.route_etag(&r.name, r.version),
                "revision": revisions.iter().find(|(n, _)| *n == r.name).map(|(_, rev)| rev),
                "status": status,
            })
        })
        .collect();
    json!({
        "generation": table.generation(),
        "reload": controller.report(),
        "persist_error": controller.persist_error(),
        "routes": routes,
    })
}
