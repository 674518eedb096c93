//! One request: request id, deadline, dispatch to the OIP handlers or a proxy route.

use super::{oip, response};
use crate::backend::{Backend, Body, BodyError, UpstreamBackend};
use crate::config::{OverridePolicy, RouteKind, ServerSettings};
use crate::protocol::request_id::{self, IdCodec};
use crate::protocol::secret::constant_time_eq;
use crate::protocol::ApiError;
use crate::routing::{assign, normalize_path, Route, SharedTable, Variant};
use crate::telemetry::window::Unit;
use crate::telemetry::{names, Feedback, Telemetry, VariantStats};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The published routing table.
    pub table: SharedTable,
    /// Limits and timeouts.
    pub settings: ServerSettings,
    /// Metrics and per-variant windows.
    pub telemetry: Arc<Telemetry>,
    /// Issues and reads the gateway request ids that feedback refers to.
    pub ids: IdCodec,
    /// Feedback already recorded, so none is counted twice.
    pub feedback: super::FeedbackLedger,
    /// The admin token: under `overrides: admin_token` a pin needs it as a bearer token (with
    /// none, any caller may pin: a loopback dev setup). Never forwarded upstream.
    pub admin_token: Option<String>,
}

impl AppState {
    /// The state of an inference listener, with a feedback ledger of the default size.
    pub fn new(
        table: SharedTable,
        settings: ServerSettings,
        telemetry: Arc<Telemetry>,
        ids: IdCodec,
        admin_token: Option<String>,
    ) -> AppState {
        let feedback = super::FeedbackLedger::new(super::FeedbackLedger::DEFAULT_CAPACITY, settings.feedback_max_age);
        AppState { table, settings, telemetry, ids, feedback, admin_token }
    }
}

/// Marks an answer to be counted for a variant once it is complete.
#[derive(Clone)]
pub(super) struct Track(pub Arc<VariantStats>, pub Unit);

/// The variant a request was given, set as soon as it is picked: a request cut off by the
/// gateway's request_timeout still counts (as a 504) against the variant that was too slow.
/// It lives on the handler's stack and is lent to the dispatch it outlives.
pub(super) type Claim = OnceLock<(Arc<VariantStats>, Unit)>;

pub(super) const REQUEST_ID: &str = "x-request-id";

/// A client's `x-request-id` is kept when it is short printable ASCII; otherwise one is made.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            // 128 random bits from the thread-local generator: no system call per request.
            HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>())).unwrap_or(HeaderValue::from_static("-"))
        })
}

pub(super) async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let started = Instant::now();
    let _in_flight = state.telemetry.in_flight();
    let id = request_id(req.headers());
    let method = req.method().clone();
    // For the log line: a Uri clone shares its bytes, where copying the path would allocate.
    let uri = req.uri().clone();
    let coding = super::encoding::accepted(req.headers());
    let mut req = req.map(|b| b.map_err(BodyError::new).boxed());
    // Forwarded with the request, so upstream logs correlate with the gateway's.
    req.headers_mut().insert(REQUEST_ID, id.clone());
    forwarded_headers(&state.settings, req.headers_mut(), peer);
    let claim = Claim::new();
    let deadline = state.settings.request_timeout;
    let mut resp = match tokio::time::timeout(deadline, dispatch(&state, req, peer, &claim)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => response::error(&e),
        Err(_) => {
            // Cut off by the deadline: the variant's answer never came, and counts against it.
            if let Some((stats, unit)) = claim.get() {
                stats.record(StatusCode::GATEWAY_TIMEOUT.as_u16(), started.elapsed(), *unit);
            }
            response::error(&ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("request did not finish within the gateway's request_timeout of {deadline:?}"),
            ))
        }
    };
    resp.headers_mut().insert(REQUEST_ID, id.clone());
    let mut resp = super::encoding::encode_response(resp, coding).await;
    let status = resp.status().as_u16();
    if let Some(Track(stats, unit)) = resp.extensions_mut().remove::<Track>() {
        stats.record(status, started.elapsed(), unit);
    }
    let micros = started.elapsed().as_micros() as u64;
    let request_id = id.to_str().unwrap_or("-");
    let refused = resp.extensions().get::<response::Refused>().is_some();
    if status >= 500 && !refused {
        tracing::warn!(%method, path = uri.path(), status, micros, request_id, %peer, "request failed");
    } else if status >= 500 {
        // Refused by the gateway's own overload protection (503 + Retry-After): counted in
        // modelgate_shed_requests_total; a log line each would add work exactly when there is
        // too much of it.
        tracing::debug!(%method, path = uri.path(), status, micros, request_id, "request refused; retry later");
    } else {
        tracing::debug!(%method, path = uri.path(), status, micros, request_id, "request");
    }
    resp
}

async fn dispatch(
    state: &AppState,
    mut req: Request<Body>,
    peer: SocketAddr,
    claim: &Claim,
) -> Result<Response<Body>, ApiError> {
    if let Cow::Owned(normal) = normalize_path(req.uri().path())? {
        let pq = response::with_query(&normal, req.uri().query());
        *req.uri_mut() = pq.parse().map_err(|e| ApiError::bad_request(format!("invalid path {normal:?}: {e}")))?;
    }
    // A Uri clone shares its bytes: the path is borrowed from it, not copied.
    let uri = req.uri().clone();
    let path = uri.path();
    if path == "/v2" || path.starts_with("/v2/") {
        return oip::handle(state, req, peer, claim).await;
    }
    let table = state.table.load();
    let Some((route, rest)) = table.prefix(path) else {
        return Err(ApiError::not_found(format!("no route for path {path:?}")));
    };
    let RouteKind::Prefix { prefix, rewrite } = &route.kind else {
        return Err(ApiError::internal("prefix table holds a model route"));
    };
    let (_permit, mut req) = admit(state, route, req).await?;
    let picked = pick(state, route, None, req.headers(), req.uri().query())?;
    strip_gateway_headers(state, route, req.headers_mut());
    picked.claim(claim);
    let variant = picked.variant;
    let Backend::Upstream(up) = variant.backend.as_ref() else {
        return Err(ApiError::internal(format!("route {prefix:?} points at an in-process model")));
    };
    let target = response::with_query(&format!("{}{rest}", rewrite.as_deref().unwrap_or(prefix)), req.uri().query());
    response::check_length(req.headers(), state.settings.max_body_bytes)?;
    let limit = state.settings.max_body_bytes;
    let req = req.map(|b| response::limited(b, limit));
    let sent = Instant::now();
    let result = match inject_fault(variant).await {
        Ok(()) => up.forward(req, &target, peer).await,
        Err(e) => Err(e),
    };
    variant.stats.upstream(sent.elapsed());
    let mut resp = result.unwrap_or_else(|e| response::error(&e));
    business_value(up, variant, picked.unit, &resp);
    picked.decorate(state, &route.name, &mut resp, None);
    picked.track(&mut resp);
    Ok(resp)
}

/// What a forwarded request may say about where it came from: `X-Forwarded-*` and `Forwarded`
/// are believed only from `server.trusted_proxies` (dropped from anyone else, so a client cannot
/// claim another address); the listener's scheme is `X-Forwarded-Proto` unless a trusted proxy
/// said it. The upstream forward then appends the peer to `X-Forwarded-For`.
fn forwarded_headers(settings: &ServerSettings, headers: &mut HeaderMap, peer: SocketAddr) {
    let trusted = settings.trusted_proxies.iter().any(|net| net.contains(&peer.ip()));
    if !trusted {
        for name in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "forwarded"] {
            headers.remove(name);
        }
    }
    if settings.tls.is_some() {
        headers.entry("x-forwarded-proto").or_insert(HeaderValue::from_static("https"));
    }
}

/// Admits a request under its route's concurrency limit, or sheds it: counted, its body read
/// and dropped (so the connection stays usable), and a 503 + Retry-After.
pub(super) async fn admit(
    state: &AppState,
    route: &Route,
    req: Request<Body>,
) -> Result<(Option<OwnedSemaphorePermit>, Request<Body>), ApiError> {
    match admit_permit(state, route) {
        Ok(permit) => Ok((permit, req)),
        Err(e) => {
            response::discard(req.into_body()).await;
            Err(e)
        }
    }
}

/// Takes a place under the route's concurrency limit, or counts the request as shed.
pub(super) fn admit_permit(state: &AppState, route: &Route) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    route.admit().inspect_err(|_| {
        let label = metrics::Label::new("route", route.name.clone());
        state.telemetry.counter(names::SHED_TOTAL, vec![label]).increment(1);
    })
}

/// Applies a backend's injected faults: its delay, then an error for its share of requests.
pub(super) async fn inject_fault(variant: &Variant) -> Result<(), ApiError> {
    let Some(fault) = &variant.fault else { return Ok(()) };
    if !fault.delay.is_zero() {
        tokio::time::sleep(fault.delay).await;
    }
    if fault.error_percent > 0.0 && rand::random::<f64>() * 100.0 < fault.error_percent {
        return Err(ApiError::internal(format!(
            "fault injected into backend {:?} (routes.yaml fault.error_percent)",
            variant.name
        )));
    }
    Ok(())
}

/// Records the business value an upstream reports in its configured header, as a reward.
pub(super) fn business_value(up: &UpstreamBackend, variant: &Variant, unit: Unit, resp: &Response<Body>) {
    let Some(name) = up.business_header() else { return };
    let value = resp.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    if let Some(reward) = value.filter(|v| v.is_finite()) {
        variant.stats.feedback(&Feedback { reward: Some(reward), ..Feedback::default() }, unit);
    }
}

/// The variant chosen for a request, and what the answer must carry because of it.
pub(super) struct Picked<'r> {
    pub variant: &'r Variant,
    pub set_cookie: Option<String>,
    /// Who the answer counts for: pinned, the sticky key's user, or the request itself.
    pub unit: Unit,
}

/// Assigns a variant: pinned version, override header, sticky key, weighted draw. A pin must be
/// allowed by the route's `overrides` policy.
pub(super) fn pick<'r>(
    state: &AppState,
    route: &'r Route,
    version: Option<&str>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Picked<'r>, ApiError> {
    let override_header = match headers.get(assign::OVERRIDE_HEADER) {
        Some(v) => {
            Some(v.to_str().map_err(|_| ApiError::bad_request(format!("{} is not text", assign::OVERRIDE_HEADER)))?)
        }
        None => None,
    };
    if version.is_some() || override_header.is_some() {
        may_pin(state, route, headers)?;
    }
    let key = match (&route.sticky, version, override_header) {
        (Some(sticky), None, None) => assign::sticky_key(sticky, headers, query),
        _ => None,
    };
    let (variant, reason) = assign::assign(route, version, override_header, key.as_ref().map(|k| k.key.as_str()))?;
    let unit = match (reason, &key) {
        (assign::Reason::Version | assign::Reason::Override, _) => Unit::Pinned,
        (_, Some(k)) => Unit::Key(assign::unit_id(&k.key)),
        (_, None) => Unit::Request(rand::random()),
    };
    Ok(Picked { variant, set_cookie: key.and_then(|k| k.set_cookie), unit })
}

/// The bearer token an `Authorization` header carries, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `headers` carry `token` as their bearer token (compared in constant time).
pub fn carries_token(headers: &HeaderMap, token: &str) -> bool {
    bearer(headers).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Refuses a pin (version path or override header) that the route's policy does not allow.
fn may_pin(state: &AppState, route: &Route, headers: &HeaderMap) -> Result<(), ApiError> {
    let how = format!("/v2/models/{{model}}/versions/{{variant}} or {}", assign::OVERRIDE_HEADER);
    match route.overrides {
        OverridePolicy::Allow => Ok(()),
        OverridePolicy::Deny => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "route {:?} does not let clients pin a variant ({how}; overrides: deny): send the request without \
                 the pin, or set `overrides: admin_token` or `overrides: allow` on the route in routes.yaml",
                route.name
            ),
        )),
        OverridePolicy::AdminToken => match state.admin_token.as_deref() {
            None => Ok(()),
            Some(token) if carries_token(headers, token) => Ok(()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "pinning a variant of route {:?} ({how}) needs the gateway's admin token: send \
                     `Authorization: Bearer <admin token>`, or set `overrides: allow` on the route (or under server:) \
                     in routes.yaml to let any client pin",
                    route.name
                ),
            )),
        },
    }
}

/// Removes the gateway's own control headers before a request is forwarded: the override
/// header, and an `Authorization` that carries the admin token (any other is the upstream's).
pub(super) fn strip_gateway_headers(state: &AppState, route: &Route, headers: &mut HeaderMap) {
    headers.remove(assign::OVERRIDE_HEADER);
    headers.remove(request_id::HEADER);
    if state.admin_token.as_deref().is_some_and(|t| carries_token(headers, t)) {
        headers.remove(http::header::AUTHORIZATION);
    }
    // The route's sticky cookie is the gateway's; the client's other cookies go on.
    if let Some(crate::config::Sticky::Cookie(name)) = &route.sticky {
        if headers.contains_key(http::header::COOKIE) {
            let kept: Vec<String> =
                assign::cookies(headers).filter(|(k, _)| k != name).map(|(k, v)| format!("{k}={v}")).collect();
            headers.remove(http::header::COOKIE);
            if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                if !kept.is_empty() {
                    headers.insert(http::header::COOKIE, v);
                }
            }
        }
    }
}

impl Picked<'_> {
    /// Adds `x-modelgate-variant`, the gateway request id (with the prediction, if any) and any
    /// sticky cookie to an answer.
    pub fn decorate(&self, state: &AppState, route: &str, resp: &mut Response<Body>, prediction: Option<&[i64]>) {
        self.decorate_headers(state, route, resp.headers_mut(), prediction);
    }

    /// Adds what [`Picked::decorate`] adds to an answer's headers (or gRPC metadata).
    pub fn decorate_headers(&self, state: &AppState, route: &str, headers: &mut HeaderMap, prediction: Option<&[i64]>) {
        if let Ok(v) = HeaderValue::from_str(&self.variant.name) {
            headers.insert(assign::OVERRIDE_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&state.ids.issue(route, &self.variant.name, self.unit, prediction)) {
            headers.insert(request_id::HEADER, v);
        }
        if let Some(cookie) = self.set_cookie.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            headers.append(http::header::SET_COOKIE, cookie);
        }
    }

    /// Notes the pick, so that a deadline cutting the request off counts for the variant.
    pub fn claim(&self, claim: &Claim) {
        let _ = claim.set((self.variant.stats.clone(), self.unit));
    }

    /// Counts the answer for the variant (status and latency) when it completes.
    pub fn track(&self, resp: &mut Response<Body>) {
        resp.extensions_mut().insert(Track(self.variant.stats.clone(), self.unit));
    }
}
