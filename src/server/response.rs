//! Building answers: JSON bodies, error bodies, the body-size limit.

use crate::backend::{Body, BodyError};
use crate::protocol::ApiError;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

/// `path`, with `?query` when there is one.
pub fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

pub use crate::backend::full;

/// A JSON answer.
pub fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.extensions_mut().insert(super::encoding::Compressible);
    resp
}

/// A JSON answer from a serializable value.
pub fn json_value<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => json(status, body),
        Err(e) => error(&ApiError::internal(format!("cannot encode the answer: {e}"))),
    }
}

/// Marks a "try again shortly" answer the gateway made itself (shed, queue full, recreate gap),
/// as opposed to one passed on from an upstream.
#[derive(Debug, Clone, Copy)]
pub struct Refused;

/// `{"error": "..."}` with the error's status (and `Retry-After` when it has one).
pub fn error(e: &ApiError) -> Response<Body> {
    let mut resp = json(e.status, e.body());
    if let Some(after) = e.retry_after {
        resp.extensions_mut().insert(Refused);
        let secs = after.as_secs().max(1);
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body is larger than the limit of {limit} bytes"))
}

/// Refuses a declared `Content-Length` over `limit` before reading anything.
pub fn check_length(headers: &http::HeaderMap, limit: usize) -> Result<(), ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => Err(too_large(limit)),
        _ => Ok(()),
    }
}

/// Reads a whole body of at most `limit` bytes.
pub async fn collect(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
    }
}

/// Reads and discards a refused request's body, up to 64 KiB and 250 ms, so that the client's
/// connection stays usable: an unread body makes the server close it, and under overload every
/// reconnection is work the gateway cannot spare. Larger or slower bodies are left unread (the
/// connection is then closed).
pub async fn discard(body: Body) {
    let drain = async {
        let mut body = std::pin::pin!(Limited::new(body, 64 * 1024));
        while let Some(Ok(_)) = body.frame().await {}
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(250), drain).await;
}

/// A body that fails once more than `limit` bytes have passed, for streaming.
pub fn limited(body: Body, limit: usize) -> Body {
    Limited::new(body, limit).map_err(BodyError).boxed()
}
