//! Upstream HTTP servers: requests forwarded through a pooled hyper-util client, bodies streamed.

use crate::config::UpstreamSpec;
use crate::protocol::ApiError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::error::Error as _;
use std::net::SocketAddr;
use std::time::Duration;

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

/// Headers that describe one connection, not the message: never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An upstream server behind a pooled client.
#[derive(Debug)]
pub struct UpstreamBackend {
    name: String,
    base: Uri,
    base_path: String,
    client: Client<HttpConnector, Body>,
    request_timeout: Duration,
    connect_timeout: Duration,
    business_header: Option<String>,
}

impl UpstreamBackend {
    /// A backend for `spec`. Connections are made lazily and pooled.
    pub fn new(name: &str, spec: &UpstreamSpec) -> UpstreamBackend {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        UpstreamBackend {
            name: name.to_string(),
            base_path: spec.url.path().trim_end_matches('/').to_string(),
            base: spec.url.clone(),
            client,
            request_timeout: spec.request_timeout,
            connect_timeout: spec.connect_timeout,
            business_header: spec.business_header.clone(),
        }
    }

    /// The response header in which this upstream reports a business value, if any.
    pub fn business_header(&self) -> Option<&str> {
        self.business_header.as_deref()
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &Uri {
        &self.base
    }

    /// Forwards `req` to `path_and_query` (which starts with `/`) under the base URL, and streams
    /// the answer back. Refused → 502, too slow → 504, both with JSON errors.
    pub async fn forward(
        &self,
        req: Request<Body>,
        path_and_query: &str,
        client: SocketAddr,
    ) -> Result<Response<Body>, ApiError> {
        let (mut parts, body) = req.into_parts();
        let uri = Uri::builder()
            .scheme(self.base.scheme_str().unwrap_or("http"))
            .authority(self.base.authority().map_or("", |a| a.as_str()))
            .path_and_query(format!("{}{}", self.base_path, path_and_query))
            .build()
            .map_err(|e| ApiError::bad_request(format!("cannot forward path {path_and_query:?}: {e}")))?;
        let original_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        add_forwarded(&mut parts.headers, client, original_host);
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let answer = tokio::time::timeout(self.request_timeout, self.client.request(req)).await;
        let mut resp = match answer {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("upstream {:?} did not answer within {:?}", self.name, self.request_timeout),
                ))
            }
            Ok(Err(e)) => return Err(self.classify(&e)),
            Ok(Ok(resp)) => resp,
        };
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp.map(|b| b.map_err(BodyError::new).boxed()))
    }

    fn classify(&self, e: &hyper_util::client::legacy::Error) -> ApiError {
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
        if e.is_connect() && (timed_out || root.contains("timed out")) {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "upstream {:?} at {} did not accept a connection within {:?}",
                    self.name, self.base, self.connect_timeout
                ),
            );
        }
        if e.is_connect() {
            return ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("upstream {:?} at {} refused the connection: {root}", self.name, self.base),
            );
        }
        ApiError::new(StatusCode::BAD_GATEWAY, format!("upstream {:?} at {} failed: {root}", self.name, self.base))
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, host: Option<HeaderValue>) {
    let ip = client.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    if let Some(host) = host {
        headers.entry("x-forwarded-host").or_insert(host);
    }
    headers.entry("x-forwarded-proto").or_insert(HeaderValue::from_static("http"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        add_forwarded(&mut h, "127.0.0.1:5000".parse().unwrap(), Some(HeaderValue::from_static("gw:8080")));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "gw:8080");
    }
}
