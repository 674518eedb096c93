//! The one request pipeline that every inference enters, whatever its form (HTTP JSON, HTTP
//! binary tensors, gRPC, plain proxying):
//!
//! deadline → admit (route concurrency limit, else shed) → pick (pin, override, sticky key,
//! weighted draw) → strip the gateway's own headers → claim → injected faults → the protocol's
//! backend step → count for the variant → decorate the answer (variant, request id, cookie).
//!
//! The protocols differ only in how they read a request and write an answer; the order of the
//! steps, what is counted and what the answer carries are decided here, once.

use super::handler::{carries_token, AppState};
use crate::backend::{Body, UpstreamBackend};
use crate::config::OverridePolicy;
use crate::protocol::request_id;
use crate::protocol::ApiError;
use crate::routing::{assign, Route, ShadowTarget, Variant};
use crate::telemetry::window::Unit;
use crate::telemetry::{Feedback, VariantStats};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;

/// The override header and the gateway request id header, as names made once.
const OVERRIDE: HeaderName = HeaderName::from_static(assign::OVERRIDE_HEADER);
const GATEWAY_ID: HeaderName = HeaderName::from_static(request_id::HEADER);

/// A request in flight: when it started, and the variant it was given once it has one, so a
/// request cut off by its deadline still counts (as a 504) against the variant that was too slow.
pub(super) struct Pending {
    started: Instant,
    claim: OnceLock<(Arc<VariantStats>, Unit)>,
}

impl Pending {
    /// A request that starts now.
    pub fn new() -> Pending {
        Pending { started: Instant::now(), claim: OnceLock::new() }
    }

    /// When a deadline of `timeout` from the request's start passes.
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.started + timeout
    }

    /// How long the request has run.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Runs `work` within `deadline`. Cut off, the claimed variant (if any) counts a 504 and
    /// the error says which deadline passed (`which`, e.g. "the gateway's request_timeout").
    pub async fn within<T>(
        &self,
        deadline: Duration,
        which: &str,
        work: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => {
                if let Some((stats, unit)) = self.claim.get() {
                    stats.record(StatusCode::GATEWAY_TIMEOUT.as_u16(), self.elapsed(), *unit);
                }
                Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("request did not finish within {which} of {deadline:?}"),
                ))
            }
        }
    }
}

/// An inference admitted under its route's limit, with its variant: what every protocol's
/// backend step works with. Dropping it frees the route's place.
pub(super) struct Entry<'r> {
    pub route: &'r Route,
    pub variant: &'r Variant,
    /// Who the answer counts for: pinned, the sticky key's user, or the request itself.
    pub unit: Unit,
    set_cookie: Option<String>,
    _permit: Option<OwnedSemaphorePermit>,
    /// The capture line of this answer, finished with the request id in [`Entry::finish`].
    captured: OnceLock<serde_json::Value>,
}

/// Admits an inference and picks its variant. Admission comes first: a shed request costs
/// neither a sticky-key hash nor a body parse (an HTTP caller drains up to 64 KiB of the body,
/// unparsed, to keep the connection). The gateway's own headers are then removed from `headers`, which may go upstream.
pub(super) fn enter<'r>(
    state: &AppState,
    pending: &Pending,
    route: &'r Route,
    version: Option<&str>,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Result<Entry<'r>, ApiError> {
    let permit = route.admit()?;
    let picked = pick(state, route, version, headers, query)?;
    strip_gateway_headers(state, route, headers);
    let _ = pending.claim.set((picked.variant.stats.clone(), picked.unit));
    Ok(Entry {
        route,
        variant: picked.variant,
        unit: picked.unit,
        set_cookie: picked.set_cookie,
        _permit: permit,
        captured: OnceLock::new(),
    })
}

impl Entry<'_> {
    /// The variant's injected faults (its delay, then an error for its share of requests), then
    /// the protocol's backend step. The step is pinned where the caller made it: a future taken
    /// by value would be stored twice in this one (as the argument and as what it awaits), and
    /// the protocol steps are kilobytes that every request would copy.
    pub async fn call<T>(&self, step: Pin<&mut impl Future<Output = Result<T, ApiError>>>) -> Result<T, ApiError> {
        inject_fault(self.variant).await?;
        step.await
    }

    /// Checks decoded inputs against the variant's reference profile and adds them to its drift
    /// window, when its route asks for either: a 400 naming the feature and the bound when the
    /// route rejects invalid rows.
    pub fn check_inputs(&self, inputs: &[crate::protocol::Tensor]) -> Result<(), ApiError> {
        match &self.variant.quality {
            Some(q) => q.observe(inputs).map_err(|v| {
                ApiError::bad_request(format!("{v} (route {:?} rejects rows outside its profile)", self.route.name))
            }),
            None => Ok(()),
        }
    }

    /// Adds the model's outputs to the variant's outputs drift window, if its route watches them.
    pub fn check_outputs(&self, outputs: &[crate::protocol::Tensor]) {
        if let Some(q) = &self.variant.quality {
            q.observe_outputs(outputs);
        }
    }

    /// Whether this answer is captured (the route captures, the draw says so and its writer's
    /// queue has room): the caller then keeps a copy of the inputs for [`Entry::capture`].
    pub fn wants_capture(&self) -> bool {
        self.variant.quality.as_ref().and_then(|q| q.capture.as_ref()).is_some_and(|c| c.wants())
    }

    /// Keeps the capture line of this answer until [`Entry::finish`] knows its request id.
    pub fn capture(&self, inputs: &[crate::protocol::Tensor], outputs: &[crate::protocol::Tensor]) {
        let line =
            crate::quality::capture::Capture::answer_line("", &self.route.name, &self.variant.name, inputs, outputs);
        let _ = self.captured.set(line);
    }

    /// Whether this request is copied to the route's shadow (drawn once per request).
    pub fn shadow(&self) -> Option<&ShadowTarget> {
        self.route.shadow.as_ref().filter(|s| rand::random::<f64>() * 100.0 < s.percent)
    }

    /// Records the business value an upstream reports in its configured header, as a reward.
    pub fn business_value(&self, up: &UpstreamBackend, headers: &HeaderMap) {
        let Some(name) = up.business_header() else { return };
        let value = headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
        if let Some(reward) = value.filter(|v| v.is_finite()) {
            self.variant.stats.feedback(&Feedback { reward: Some(reward), ..Feedback::default() }, self.unit);
        }
    }

    /// The end of every inference: counts the answer (`status`, latency since the request
    /// started) for the variant, and adds the variant, the gateway request id (with the
    /// prediction, if any) and any sticky cookie to the answer's headers or gRPC metadata.
    pub fn finish(
        self,
        state: &AppState,
        pending: &Pending,
        status: u16,
        out: &mut HeaderMap,
        prediction: Option<&[i64]>,
    ) {
        self.variant.stats.record(status, pending.elapsed(), self.unit);
        let picked = Picked { variant: self.variant, set_cookie: self.set_cookie, unit: self.unit };
        picked.decorate_headers(state, &self.route.name, out, prediction);
        let capture = self.variant.quality.as_ref().and_then(|q| q.capture.as_ref());
        if let (Some(capture), Some(mut line)) = (capture, self.captured.into_inner()) {
            let id = out.get(request_id::HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
            line["key"] = serde_json::Value::String(id.splitn(3, '~').take(2).collect::<Vec<_>>().join("~"));
            capture.offer(&line);
        }
    }

    /// [`Entry::finish`] for an HTTP answer.
    pub fn finish_response(
        self,
        state: &AppState,
        pending: &Pending,
        resp: &mut Response<Body>,
        prediction: Option<&[i64]>,
    ) {
        let status = resp.status().as_u16();
        self.finish(state, pending, status, resp.headers_mut(), prediction);
    }
}

/// Applies a backend's injected faults: its delay, then an error for its share of requests.
async fn inject_fault(variant: &Variant) -> Result<(), ApiError> {
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

/// The variant chosen for a request, and what the answer must carry because of it. Metadata,
/// readiness and configuration calls are picked (a pin is honoured) but not admitted or counted.
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
    let override_header = match headers.get(&OVERRIDE) {
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
/// header, the gateway request id, an `Authorization` that carries the admin token (any other
/// is the upstream's) and the route's sticky cookie (the client's other cookies go on).
pub(super) fn strip_gateway_headers(state: &AppState, route: &Route, headers: &mut HeaderMap) {
    headers.remove(&OVERRIDE);
    headers.remove(&GATEWAY_ID);
    if state.admin_token.as_deref().is_some_and(|t| carries_token(headers, t)) {
        headers.remove(http::header::AUTHORIZATION);
    }
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
    /// sticky cookie to an answer's headers (or gRPC metadata).
    pub fn decorate_headers(&self, state: &AppState, route: &str, headers: &mut HeaderMap, prediction: Option<&[i64]>) {
        if let Ok(v) = HeaderValue::from_str(&self.variant.name) {
            headers.insert(OVERRIDE, v);
        }
        // From the String itself: no copy of the id.
        if let Ok(v) = HeaderValue::try_from(state.ids.issue(route, &self.variant.name, self.unit, prediction)) {
            headers.insert(GATEWAY_ID, v);
        }
        if let Some(cookie) = self.set_cookie.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
            headers.append(http::header::SET_COOKIE, cookie);
        }
    }
}
