//! One HTTP request: request id, deadline, dispatch to the OIP handlers or a proxy route
//! (which enters the shared [`pipeline`] like every inference).

use super::pipeline::{self, Pending};
use super::{oip, response};
use crate::backend::{Backend, Body, BodyError};
use crate::config::{RouteKind, ServerSettings};
use crate::protocol::request_id::IdCodec;
use crate::protocol::secret::constant_time_eq;
use crate::protocol::ApiError;
use crate::routing::{normalize_path, SharedTable};
use crate::telemetry::Telemetry;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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
    /// In a fleet: where feedback is claimed fleet-wide (set once, when the replica joined).
    pub claims: std::sync::OnceLock<Arc<dyn super::FeedbackClaims>>,
    /// The admin token: under `overrides: admin_token` a pin needs it as a bearer token (with
    /// none, any caller may pin: a loopback dev setup). Never forwarded upstream.
    pub admin_token: Option<String>,
    /// Set when shutdown begins: readiness answers "not ready" while requests are still served.
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// Whether shutdown has begun (readiness is then false).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts the drain: readiness turns false; the listeners go on serving until told to stop.
    pub fn start_draining(&self) {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Claims feedback through the fleet from now on (a replica in a fleet); set once.
    pub fn claim_feedback_through(&self, claims: Arc<dyn super::FeedbackClaims>) {
        let _ = self.claims.set(claims);
    }

    /// The state of an inference listener, with a feedback ledger of the default size.
    pub fn new(
        table: SharedTable,
        settings: ServerSettings,
        telemetry: Arc<Telemetry>,
        ids: IdCodec,
        admin_token: Option<String>,
    ) -> AppState {
        let feedback = super::FeedbackLedger::new(super::FeedbackLedger::DEFAULT_CAPACITY, settings.feedback_max_age);
        AppState {
            table,
            settings,
            telemetry,
            ids,
            feedback,
            claims: std::sync::OnceLock::new(),
            admin_token,
            draining: Default::default(),
        }
    }
}

pub(super) const REQUEST_ID: &str = "x-request-id";
const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);

/// A client's `x-request-id` is kept when it is short printable ASCII; otherwise one is made.
pub(super) fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic()))
        .cloned()
        .unwrap_or_else(|| {
            // 128 random bits from the thread-local generator: no system call per request.
            HeaderValue::try_from(format!("{:032x}", rand::random::<u128>())).unwrap_or(HeaderValue::from_static("-"))
        })
}

pub(super) async fn handle(state: Arc<AppState>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let pending = Pending::new();
    let _in_flight = state.telemetry.in_flight();
    let id = request_id(req.headers());
    let method = req.method().clone();
    // For the log line: a Uri clone shares its bytes, where copying the path would allocate.
    let uri = req.uri().clone();
    let coding = super::encoding::accepted(req.headers());
    let mut req = req.map(|b| b.map_err(BodyError::new).boxed());
    // Forwarded with the request, so upstream logs correlate with the gateway's.
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    forwarded_headers(&state.settings, req.headers_mut(), peer);
    let deadline = state.settings.request_timeout;
    // Boxed: the dispatch future (every protocol's state machine) is large, and hyper moves the
    // handler's future several times per request; a memmove of it was 5% of the proxy's CPU.
    let dispatched = Box::pin(dispatch(&state, req, peer, &pending));
    let answered = pending.within(deadline, "the gateway's request_timeout", dispatched).await;
    let mut resp = answered.unwrap_or_else(|e| response::error(&e));
    resp.headers_mut().insert(X_REQUEST_ID, id.clone());
    let resp = super::encoding::encode_response(resp, coding).await;
    let status = resp.status().as_u16();
    let micros = pending.elapsed().as_micros() as u64;
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
    pending: &Pending,
) -> Result<Response<Body>, ApiError> {
    if let Cow::Owned(normal) = normalize_path(req.uri().path())? {
        let pq = response::with_query(&normal, req.uri().query());
        *req.uri_mut() = pq.parse().map_err(|e| ApiError::bad_request(format!("invalid path {normal:?}: {e}")))?;
    }
    let path = req.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        return oip::handle(state, req, peer, pending).await;
    }
    // Boxed: the forwarding state is kilobytes that every OIP request would otherwise carry.
    Box::pin(forward_prefix(state, req, peer, pending)).await
}

/// A request for a path-prefix route, forwarded to its upstream.
async fn forward_prefix(
    state: &AppState,
    req: Request<Body>,
    peer: SocketAddr,
    pending: &Pending,
) -> Result<Response<Body>, ApiError> {
    // A Uri clone shares its bytes: the path is borrowed from it, not copied.
    let uri = req.uri().clone();
    let path = uri.path();
    let table = state.table.load();
    let Some((route, rest)) = table.prefix(path) else {
        return Err(ApiError::not_found(format!("no route for path {path:?}")));
    };
    let RouteKind::Prefix { prefix, rewrite } = &route.kind else {
        return Err(ApiError::internal("prefix table holds a model route"));
    };
    let (mut parts, body) = req.into_parts();
    let entry = match pipeline::enter(state, pending, route, None, &mut parts.headers, uri.query()) {
        Ok(entry) => entry,
        Err(e) => {
            // Read and dropped, so the connection stays usable.
            response::discard(body).await;
            return Err(e);
        }
    };
    let Backend::Upstream(up) = entry.variant.backend.as_ref() else {
        return Err(ApiError::internal(format!("route {prefix:?} points at an in-process model")));
    };
    let target = response::with_query(&format!("{}{rest}", rewrite.as_deref().unwrap_or(prefix)), uri.query());
    let limit = state.settings.max_body_bytes;
    let req = Request::from_parts(parts, response::limited(body, limit));
    let sent = Instant::now();
    let result = entry
        .call(std::pin::pin!(async {
            response::check_length(req.headers(), limit)?;
            // The gateway's deadline is the one timer: the upstream sets its own only when shorter.
            up.forward_by(req, &target, peer, Some(pending.deadline(state.settings.request_timeout))).await
        }))
        .await;
    entry.variant.stats.upstream(sent.elapsed());
    let mut resp = result.unwrap_or_else(|e| response::error(&e));
    entry.business_value(up, resp.headers());
    entry.finish_response(state, pending, &mut resp, None);
    Ok(resp)
}

/// What a forwarded request may say about where it came from: `X-Forwarded-*` and `Forwarded`
/// are believed only from `server.trusted_proxies` (dropped from anyone else, so a client cannot
/// claim another address); the listener's scheme is `X-Forwarded-Proto` unless a trusted proxy
/// said it. The upstream forward then appends the peer to `X-Forwarded-For`.
fn forwarded_headers(settings: &ServerSettings, headers: &mut HeaderMap, peer: SocketAddr) {
    const CLAIMS: [HeaderName; 4] = [
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-forwarded-proto"),
        http::header::FORWARDED,
    ];
    let claims = headers.keys().any(|k| CLAIMS.contains(k));
    if claims && !settings.trusted_proxies.iter().any(|net| net.contains(&peer.ip())) {
        for name in &CLAIMS {
            headers.remove(name);
        }
    }
    if settings.tls.is_some() {
        headers.entry(CLAIMS[2].clone()).or_insert(HeaderValue::from_static("https"));
    }
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
