//! Upstream HTTP servers: requests forwarded through pooled connections, bodies streamed.
//!
//! Plain `http://` upstreams speaking HTTP/1.1 go through [`super::pool`], whose connections are
//! driven on the request's own task (our own HTTP/1.1 client, [`super::h1`], or hyper's
//! `client::conn` with `MODELGATE_UPSTREAM_CLIENT=hyper`); TLS and gRPC (h2) upstreams, and every
//! upstream when `MODELGATE_UPSTREAM_CLIENT=legacy` is set, go through hyper-util's legacy client
//! (a task per connection).

mod headers;

use super::pool::{self, HostPool, PoolError};
use crate::config::{OutlierPolicy, RetryPolicy, UpstreamProtocol, UpstreamSpec};
use crate::protocol::ApiError;
use crate::tls::{self, TlsError};
use bytes::Bytes;
use headers::{add_forwarded, strip_hop_by_hop};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::retry::budget::{Budget as _, TpsBudget};

/// Why a body stopped: a client or upstream connection error, or a size limit.
///
/// A concrete type rather than `Box<dyn Error>`: generic body bounds such as
/// `B::Error: Into<Box<dyn Error>>` then hold for every lifetime, which spawned futures need.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl BodyError {
    /// Wraps any error.
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        BodyError(e.into())
    }
}

/// The body type on both sides of the gateway.
pub type Body = BoxBody<Bytes, BodyError>;

/// A body of bytes already in memory (none: an empty body, at its end from the start).
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// One endpoint of an upstream backend, with its passive health.
#[derive(Debug)]
struct Endpoint {
    base: Uri,
    base_path: String,
    /// Requests in flight to it (for least-outstanding picks).
    outstanding: AtomicUsize,
    /// Failures in a row.
    failures: AtomicU32,
    /// Ejected until this many ms after the backend was made.
    ejected_until: AtomicU64,
    /// Times ejected so far (each ejection lasts longer, up to 10×).
    ejections: AtomicU32,
    /// Its own connection pool (plain HTTP/1.1), else the backend's legacy client is used.
    pool: Option<Arc<HostPool>>,
    /// The `Host` header sent to it through the pool.
    host: HeaderValue,
}

/// What an upstream backend has done about failures, for tests and the admin API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpstreamStats {
    /// Retries made.
    pub retries: u64,
    /// Retries refused by the budget.
    pub retries_refused: u64,
    /// Ejections made.
    pub ejections: u64,
    /// Endpoints now ejected.
    pub ejected: Vec<String>,
}

/// An upstream server (one or more endpoints) behind a pooled client.
#[derive(Debug)]
pub struct UpstreamBackend {
    name: String,
    endpoints: Vec<Endpoint>,
    client: Client<HttpsConnector<HttpConnector>, Body>,
    request_timeout: Duration,
    connect_timeout: Duration,
    business_header: Option<String>,
    protocol: UpstreamProtocol,
    retry: RetryPolicy,
    outlier: OutlierPolicy,
    born: Instant,
    /// Retries allowed: `budget_percent` of the last 10 s of requests plus a reserve of
    /// `min_per_second` (tower's budget, which slides over ten 1 s slots).
    budget: TpsBudget,
    retries: AtomicU64,
    retries_refused: AtomicU64,
    ejections: AtomicU64,
}

/// How long a request counts toward the retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// How long an idle upstream connection is kept, and how many per endpoint.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// The client of the pool driven on the request's task that plain HTTP/1.1 upstreams use: our
/// own (the default) or hyper's `client::conn` (`MODELGATE_UPSTREAM_CLIENT=hyper`); none with
/// `MODELGATE_UPSTREAM_CLIENT=legacy`, where they use hyper-util's legacy client like TLS and gRPC
/// upstreams.
fn pool_client() -> Option<pool::Client> {
    match std::env::var("MODELGATE_UPSTREAM_CLIENT").as_deref() {
        Ok("legacy") => None,
        Ok("hyper") => Some(pool::Client::Hyper),
        _ => Some(pool::Client::Own),
    }
}

impl UpstreamBackend {
    /// A backend for `spec`. Connections are made lazily and pooled; `https://` endpoints are
    /// verified against `spec.ca` (else the system's roots) and may speak h2 (ALPN).
    pub fn new(name: &str, spec: &UpstreamSpec) -> Result<UpstreamBackend, TlsError> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let https = spec.urls.iter().any(|u| u.scheme_str() == Some("https"));
        let tls = if https {
            tls::client_config(spec.ca.as_deref())?
        } else {
            // Never used: every endpoint is plain http.
            tls::client_config_without_roots()?
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector);
        let grpc = spec.protocol == UpstreamProtocol::Grpc;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
            // gRPC is HTTP/2 only: prior knowledge over h2c, ALPN h2 over TLS.
            .http2_only(grpc)
            .build(connector);
        let pool_client = if grpc || https { None } else { pool_client() };
        let endpoints = spec
            .urls
            .iter()
            .map(|u| {
                let authority = u.authority().map_or("", |a| a.as_str());
                let host = HeaderValue::from_str(authority).unwrap_or(HeaderValue::from_static(""));
                let pool = pool_client.map(|client| {
                    let addr = format!("{}:{}", u.host().unwrap_or("localhost"), u.port_u16().unwrap_or(80));
                    Arc::new(HostPool::new(addr, client, spec.connect_timeout, IDLE_TIMEOUT, MAX_IDLE_PER_ENDPOINT))
                });
                Endpoint {
                    base_path: u.path().trim_end_matches('/').to_string(),
                    base: u.clone(),
                    outstanding: AtomicUsize::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                    ejections: AtomicU32::new(0),
                    pool,
                    host,
                }
            })
            .collect();
        Ok(UpstreamBackend {
            name: name.to_string(),
            endpoints,
            client,
            request_timeout: spec.request_timeout,
            connect_timeout: spec.connect_timeout,
            business_header: spec.business_header.clone(),
            protocol: spec.protocol,
            retry: spec.retries.clone(),
            outlier: spec.outlier.clone(),
            born: Instant::now(),
            // Config checks keep the percentage within 0–100 (tower asserts 0–1000).
            budget: TpsBudget::new(
                BUDGET_WINDOW,
                spec.retries.min_per_second.min(i32::MAX as u32 - 1),
                spec.retries.budget_ratio.clamp(0.0, 10.0) as f32,
            ),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        })
    }

    /// The response header in which this upstream reports a business value, if any.
    pub fn business_header(&self) -> Option<&str> {
        self.business_header.as_deref()
    }

    /// Whether the upstream speaks the Open Inference Protocol's gRPC service.
    pub fn speaks_grpc(&self) -> bool {
        self.protocol == UpstreamProtocol::Grpc
    }

    /// The first endpoint's base URL.
    pub fn url(&self) -> &Uri {
        &self.endpoints[0].base
    }

    /// Retries, ejections, and the endpoints ejected now.
    pub fn stats(&self) -> UpstreamStats {
        let now = self.now_ms();
        UpstreamStats {
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            ejected: self
                .endpoints
                .iter()
                .filter(|e| e.ejected_until.load(Ordering::Relaxed) > now)
                .map(|e| e.base.to_string())
                .collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Picks an endpoint not yet tried: the less busy of two healthy ones drawn at random. When
    /// every endpoint is ejected, ejection is ignored (better a weak endpoint than none).
    /// Public for `cargo bench --bench upstream`, which weighs it against tower's balancer.
    #[doc(hidden)]
    pub fn pick(&self, tried: &[usize]) -> usize {
        if self.endpoints.len() == 1 {
            return 0;
        }
        let now = self.now_ms();
        let untried: Vec<usize> = (0..self.endpoints.len()).filter(|i| !tried.contains(i)).collect();
        let pool = if untried.is_empty() { (0..self.endpoints.len()).collect() } else { untried };
        let healthy: Vec<usize> =
            pool.iter().copied().filter(|&i| self.endpoints[i].ejected_until.load(Ordering::Relaxed) <= now).collect();
        let candidates = if healthy.is_empty() { pool } else { healthy };
        if candidates.len() == 1 {
            return candidates[0];
        }
        let a = candidates[rand::random_range(0..candidates.len())];
        let mut b = candidates[rand::random_range(0..candidates.len() - 1)];
        if b == a {
            b = candidates[candidates.len() - 1];
        }
        let load = |i: usize| self.endpoints[i].outstanding.load(Ordering::Relaxed);
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }

    /// Counts a failure of `ep`; enough in a row eject it for a while.
    fn failed(&self, ep: &Endpoint) {
        let limit = self.outlier.consecutive_failures;
        if limit == 0 || ep.failures.fetch_add(1, Ordering::Relaxed) + 1 < limit {
            return;
        }
        ep.failures.store(0, Ordering::Relaxed);
        let times = (ep.ejections.fetch_add(1, Ordering::Relaxed) + 1).min(10);
        let until = self.now_ms() + self.outlier.ejection_time.as_millis() as u64 * u64::from(times);
        ep.ejected_until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(backend = %self.name, endpoint = %ep.base, failures = limit, ejected_for = ?self.outlier.ejection_time * times, "upstream endpoint ejected");
    }

    /// Takes one retry from the budget, counting it either way.
    fn withdraw(&self) -> bool {
        if self.budget.withdraw() {
            self.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.retries_refused.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Forwards `req` to `path_and_query` (which starts with `/`) under an endpoint's base URL,
    /// and streams the answer back. Refused → 502, too slow → 504, both with JSON errors. With
    /// several endpoints, a bodiless idempotent request whose connection failed is retried on
    /// another endpoint while the budget allows, and a failing backend's answers (5xx) come back
    /// as they are. Apart from that, a request goes once more only on a fresh connection to the
    /// same endpoint when a reused one was closed under it before any answer (see
    /// [`super::h1::send`]): never one whose body went out in part.
    pub async fn forward(
        &self,
        req: Request<Body>,
        path_and_query: &str,
        client: SocketAddr,
    ) -> Result<Response<Body>, ApiError> {
        self.forward_by(req, path_and_query, client, None).await
    }

    /// Like [`UpstreamBackend::forward`], for a caller whose own deadline `by` cuts the request
    /// off: when the upstream's `request_timeout` would end no sooner, no second timer is set
    /// (the caller's fires first: one timer per request), and an attempt cut off by the caller's
    /// deadline still counts as a failure of its endpoint.
    pub async fn forward_by(
        &self,
        req: Request<Body>,
        path_and_query: &str,
        client: SocketAddr,
        by: Option<Instant>,
    ) -> Result<Response<Body>, ApiError> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        add_forwarded(&mut parts.headers, client, original_host);
        let version = if self.speaks_grpc() {
            // The one hop-by-hop header gRPC requires end to end.
            parts.headers.insert(header::TE, HeaderValue::from_static("trailers"));
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        parts.version = version;
        let idempotent = is_idempotent(&parts.method);
        // Another endpoint is what makes a retry worth it (and the header copy it needs).
        let retryable = self.retry.attempts > 0 && self.endpoints.len() > 1 && idempotent && body.is_end_stream();
        self.budget.deposit();
        let mut body = Some(body);
        let mut tried = Vec::new();
        loop {
            let i = self.pick(&tried);
            let ep = &self.endpoints[i];
            let uri = if ep.pool.is_some() {
                // Origin-form: the pool writes the URI as it is, and `Host` names the endpoint.
                Uri::try_from(format!("{}{}", ep.base_path, path_and_query)).map_err(http::Error::from)
            } else {
                Uri::builder()
                    .scheme(ep.base.scheme_str().unwrap_or("http"))
                    .authority(ep.base.authority().map_or("", |a| a.as_str()))
                    .path_and_query(format!("{}{}", ep.base_path, path_and_query))
                    .build()
            }
            .map_err(|e| ApiError::bad_request(format!("cannot forward path {path_and_query:?}: {e}")))?;
            let mut attempt = Request::new(body.take().unwrap_or_else(|| full(Bytes::new())));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = uri;
            *attempt.version_mut() = version;
            *attempt.headers_mut() = if retryable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
            // Only when this upstream's timeout ends before the caller's deadline does it need a timer.
            let limit = by.is_none_or(|by| Instant::now() + self.request_timeout < by).then_some(self.request_timeout);
            let in_flight = InFlight::new(self, ep, by);
            let answer = match &ep.pool {
                Some(pool) => {
                    attempt.headers_mut().insert(header::HOST, ep.host.clone());
                    let send = std::pin::pin!(pool.send(attempt));
                    bounded(limit, send).await.map(|r| r.map_err(Failure::Pool))
                }
                None => {
                    let send = std::pin::pin!(self.client.request(attempt));
                    bounded(limit, send)
                        .await
                        .map(|r| r.map(|resp| resp.map(|b| b.map_err(BodyError::new).boxed())).map_err(Failure::Legacy))
                }
            };
            in_flight.done();
            let mut resp = match answer {
                Err(_) => {
                    self.failed(ep);
                    return Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("upstream {:?} did not answer within {:?}", self.name, self.request_timeout),
                    ));
                }
                Ok(Err(e)) if e.is_client_side() => return Err(self.classify(&e, &ep.base)),
                Ok(Err(e)) => {
                    self.failed(ep);
                    if e.is_connect() && retryable && (tried.len() as u32) < self.retry.attempts && self.withdraw() {
                        tried.push(i);
                        continue;
                    }
                    return Err(self.classify(&e, &ep.base));
                }
                Ok(Ok(resp)) => resp,
            };
            if resp.status().is_server_error() {
                self.failed(ep);
            } else {
                ep.failures.store(0, Ordering::Relaxed);
            }
            strip_hop_by_hop(resp.headers_mut());
            return Ok(resp);
        }
    }

    fn classify(&self, e: &Failure, base: &Uri) -> ApiError {
        let mut cause: Option<&dyn std::error::Error> = e.source();
        let mut root = e.to_string();
        let mut timed_out = false;
        let mut too_large = false;
        while let Some(c) = cause {
            root = c.to_string();
            if let Some(io) = c.downcast_ref::<std::io::Error>() {
                timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            }
            too_large |= c.is::<http_body_util::LengthLimitError>();
            if let Some(b) = c.downcast_ref::<BodyError>() {
                too_large |= b.0.is::<http_body_util::LengthLimitError>();
            }
            cause = c.source();
        }
        if too_large {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the limit: {root}"),
            );
        }
        if e.is_client_side() {
            let what = e.to_string();
            let why = if root == what { what } else { format!("{what}: {root}") };
            return ApiError::bad_request(format!(
                "the request could not be forwarded to upstream {:?}: {why}",
                self.name
            ));
        }
        if e.is_connect() && (timed_out || root.contains("timed out")) {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream {:?} at {} did not accept a connection within {:?}",
                    self.name, base, self.connect_timeout
                ),
            );
        }
        if e.is_connect() {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("upstream {:?} at {} refused the connection: {root}", self.name, base),
            );
        }
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream {:?} at {} failed: {root}", self.name, base))
    }
}

/// `work`, cut off after `limit` when there is one. Pinned where the caller made it: taken by
/// value, the send (a kilobyte and more) would be stored twice in this future.
async fn bounded<F: std::future::Future>(
    limit: Option<Duration>,
    work: std::pin::Pin<&mut F>,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await,
        None => Ok(work.await),
    }
}

/// An attempt waiting for an endpoint's answer: counted as outstanding until done or dropped;
/// dropped at or after the caller's deadline (cut off by it), it counts as a failure.
struct InFlight<'a> {
    up: &'a UpstreamBackend,
    ep: &'a Endpoint,
    by: Option<Instant>,
}

impl<'a> InFlight<'a> {
    fn new(up: &'a UpstreamBackend, ep: &'a Endpoint, by: Option<Instant>) -> InFlight<'a> {
        ep.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight { up, ep, by }
    }

    /// The answer (or an error) came: the caller judges it.
    fn done(mut self) {
        self.by = None;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ep.outstanding.fetch_sub(1, Ordering::Relaxed);
        if self.by.is_some_and(|by| Instant::now() >= by) {
            self.up.failed(self.ep);
        }
    }
}

/// Why an attempt failed, in either client.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Legacy(hyper_util::client::legacy::Error),
    #[error(transparent)]
    Pool(PoolError),
}

impl Failure {
    /// No connection was made: the request never reached the endpoint.
    fn is_connect(&self) -> bool {
        match self {
            Failure::Legacy(e) => e.is_connect(),
            Failure::Pool(e) => matches!(e, PoolError::Connect(_)),
        }
    }

    /// The client's request broke, not the endpoint (an aborted upload, a body of another length
    /// than declared, a method not forwarded): the endpoint is not blamed for it. The request's
    /// body fails as a [`BodyError`] in every client's cause chain.
    fn is_client_side(&self) -> bool {
        matches!(self, Failure::Pool(e) if e.is_request_fault())
            || std::iter::successors(self.source(), |&c| c.source()).any(|c| c.is::<BodyError>())
    }
}

/// Methods whose request may be sent twice without changing what it does (RFC 9110 §9.2.2;
/// PUT left out: it carries a body).
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE)
}
