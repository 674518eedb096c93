//! The operator console: a page, one script and one stylesheet under `/ui/` (embedded in the
//! binary, no build step), and the per-second series it charts at `GET /admin/series`.
//!
//! The page polls `/admin/routes`, `/admin/series` and `/admin/events` every 2 s (plain GETs:
//! nothing to keep open per viewer, and it goes through every proxy). Its actions are the admin
//! API's own POSTs, so the listener's rules (loopback, token, mTLS) apply to it unchanged.

use crate::backend::Body;
use crate::protocol::ApiError;
use crate::rollout::Controller;
use crate::server::response;
use http::{HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

/// The series' window: 15 minutes.
const WINDOW_MS: u64 = 900_000;

/// No inline script or style, nothing from elsewhere, never framed.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../../assets/console/index.html");
const SCRIPT: &str = include_str!("../../assets/console/console.js");
const STYLE: &str = include_str!("../../assets/console/console.css");

/// The console's file at `path`, if it is one (`/ui` redirects to `/ui/`).
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, kind) = match path {
        "/ui" => {
            let mut resp = Response::new(response::full(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            resp.headers_mut().insert(http::header::LOCATION, HeaderValue::from_static("/ui/"));
            return Some(resp);
        }
        "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(response::full(bytes::Bytes::from_static(body.as_bytes())));
    let h = resp.headers_mut();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(http::header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(http::header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(http::header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

/// `GET /admin/series[?route=R][&since=T]`: every route's per-second series with its events of
/// the same 15 minutes as markers (weight steps, decisions, admin actions). With `since` (unix
/// seconds, the `newest` of a previous answer) only the points after it are sent; every
/// variant is still listed, and the markers are always the window's (they are few).
pub fn series(controller: &Controller, route: Option<&str>, since: u64) -> Result<Value, ApiError> {
    let telemetry = controller.telemetry();
    if !telemetry.series().running() {
        return Err(ApiError::not_found("the console is off (server.console: false): no series are sampled"));
    }
    let table = controller.table().load();
    if let Some(r) = route {
        if table.route(r).is_none() {
            return Err(ApiError::not_found(format!("no route {r:?}")));
        }
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let window_from_ms = now_ms.saturating_sub(WINDOW_MS);
    let mut by_route: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for (name, s) in telemetry.series().read(route, since) {
        by_route.entry(name).or_default().push(s);
    }
    let routes: Vec<Value> = table
        .routes()
        .iter()
        .filter(|r| route.is_none_or(|want| r.name == want))
        .map(|r| {
            let variants = by_route.remove(&r.name).unwrap_or_default();
            let markers: Vec<Value> = controller
                .events(0, Some(&r.name))
                .into_iter()
                .filter(|e| e.at_ms >= window_from_ms)
                .map(|e| json!({ "seq": e.seq, "at_ms": e.at_ms, "kind": e.kind, "message": e.message }))
                .collect();
            let replicas = telemetry.series().replicas(&r.name);
            json!({ "route": r.name, "replicas": replicas, "variants": variants, "markers": markers })
        })
        .collect();
    Ok(json!({
        "now_ms": now_ms,
        "resolution_s": 1,
        "window_s": WINDOW_MS / 1000,
        "poll_s": 2,
        "since": since,
        "newest": telemetry.series().newest(),
        "fleet": telemetry.series().fleet_size().map(|n| json!({ "replicas": n })),
        "untracked_variants": telemetry.series().untracked(),
        "routes": routes,
    }))
}
