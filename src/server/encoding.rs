//! HTTP content codings on the inference listener: gzip and deflate request bodies are
//! inflated (never past `max_body_bytes`: a decompression bomb is refused with 413 while it
//! inflates, having allocated at most the limit), and answers the gateway makes are compressed
//! when the client's `Accept-Encoding` asks for it. Plain proxy routes pass bodies through as
//! they are. flate2 does the (de)compression.

use super::response;
use crate::backend::Body;
use crate::protocol::ApiError;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::io::{Read, Write};

/// A content coding the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// RFC 1952.
    Gzip,
    /// RFC 1950 (zlib); a raw RFC 1951 stream is accepted too, as some clients send one.
    Deflate,
}

impl Coding {
    fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

/// Answers smaller than this are sent as they are: compressing them costs more than it saves.
const MIN_COMPRESS: usize = 1024;
/// Bodies this large are (de)compressed on the blocking pool, not on an async thread.
const BLOCKING_FROM: usize = 64 * 1024;

/// Marks an answer the gateway made itself (JSON or binary tensors), which may be compressed.
#[derive(Debug, Clone, Copy)]
pub struct Compressible;

/// The request body's coding; `None` for identity. An unknown coding is a 415.
pub fn request_coding(headers: &HeaderMap) -> Result<Option<Coding>, ApiError> {
    let Some(v) = headers.get(header::CONTENT_ENCODING) else { return Ok(None) };
    let text = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match text.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
        "deflate" => Ok(Some(Coding::Deflate)),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported; send the body as is, or gzip or deflate it"),
        )),
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body inflates past the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// Inflates `data` into at most `limit` bytes.
pub fn inflate(data: &[u8], coding: Coding, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        // zlib-wrapped deflate has a header whose 16-bit value is a multiple of 31.
        Coding::Deflate if data.len() >= 2 && (u16::from(data[0]) << 8 | u16::from(data[1])) % 31 == 0 => {
            Box::new(flate2::read::ZlibDecoder::new(data))
        }
        Coding::Deflate => Box::new(flate2::read::DeflateDecoder::new(data)),
    };
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit));
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .map_err(|e| ApiError::bad_request(format!("the {} request body is corrupt: {e}", coding.name())))?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Replaces a gzip or deflate request body by its inflated bytes (bounded by `limit`), so that
/// everything after — the JSON or binary tensor decoder, a forward, a shadow copy — sees the
/// body as sent before compression. Identity bodies are left streaming.
pub async fn decode_request(req: Request<Body>, limit: usize) -> Result<Request<Body>, ApiError> {
    let Some(coding) = request_coding(req.headers())? else { return Ok(req) };
    let (mut parts, body) = req.into_parts();
    let compressed = response::collect(body, limit).await?;
    let plain = if compressed.len() >= BLOCKING_FROM {
        tokio::task::spawn_blocking(move || inflate(&compressed, coding, limit))
            .await
            .map_err(|e| ApiError::internal(format!("inflating failed: {e}")))??
    } else {
        inflate(&compressed, coding, limit)?
    };
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(plain.len()));
    Ok(Request::from_parts(parts, response::full(Bytes::from(plain))))
}

/// The coding a client accepts for its answer, by `Accept-Encoding` (gzip preferred at equal
/// weight; `q=0` refuses a coding).
pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
    let mut best: Option<(Coding, f32)> = None;
    for v in headers.get_all(header::ACCEPT_ENCODING) {
        for item in v.to_str().unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let coding = match name.as_str() {
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                _ => continue,
            };
            let better = match best {
                None => true,
                Some((b, bq)) => q > bq || (q == bq && coding == Coding::Gzip && b != Coding::Gzip),
            };
            if q > 0.0 && better {
                best = Some((coding, q));
            }
        }
    }
    best.map(|(c, _)| c)
}

fn compress(data: &[u8], coding: Coding) -> std::io::Result<Vec<u8>> {
    let level = flate2::Compression::fast();
    match coding {
        Coding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2), level);
            w.write_all(data)?;
            w.finish()
        }
        Coding::Deflate => {
            let mut w = flate2::write::ZlibEncoder::new(Vec::with_capacity(data.len() / 2), level);
            w.write_all(data)?;
            w.finish()
        }
    }
}

/// Compresses an answer the gateway made (marked [`Compressible`]) when the client accepts a
/// coding and the answer is worth it; anything else is left as it is.
pub async fn encode_response(resp: Response<Body>, coding: Option<Coding>) -> Response<Body> {
    let Some(coding) = coding else { return resp };
    if resp.extensions().get::<Compressible>().is_none() || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Gateway-made answers are already in memory: collecting them does not wait.
    let Ok(collected) = body.collect().await else {
        return error_answer();
    };
    let bytes = collected.to_bytes();
    if bytes.len() < MIN_COMPRESS {
        return Response::from_parts(parts, response::full(bytes));
    }
    let packed = if bytes.len() >= BLOCKING_FROM {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || compress(&b, coding)).await.ok().and_then(Result::ok)
    } else {
        compress(&bytes, coding).ok()
    };
    match packed {
        Some(packed) => {
            parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding.name()));
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(packed.len()));
            parts.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
            Response::from_parts(parts, response::full(Bytes::from(packed)))
        }
        None => Response::from_parts(parts, response::full(bytes)),
    }
}

fn error_answer() -> Response<Body> {
    response::error(&ApiError::internal("the answer could not be read for compression"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codings_round_trip_and_raw_deflate_is_read_too() {
        let text = br#"{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}"#.repeat(50);
        for coding in [Coding::Gzip, Coding::Deflate] {
            let packed = compress(&text, coding).unwrap();
            assert_eq!(inflate(&packed, coding, 1 << 20).unwrap(), text);
        }
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(inflate(&raw.finish().unwrap(), Coding::Deflate, 1 << 20).unwrap(), text);
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_and_garbage_is_a_400() {
        let bomb = compress(&vec![0u8; 16 << 20], Coding::Gzip).unwrap();
        assert!(bomb.len() < 1 << 20, "16 MiB of zeros pack small: {}", bomb.len());
        let e = inflate(&bomb, Coding::Gzip, 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("max_body_bytes"), "{}", e.message);
        let e = inflate(b"not gzip at all", Coding::Gzip, 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn accept_encoding_is_read_with_weights() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(accepted(&h("gzip")), Some(Coding::Gzip));
        assert_eq!(accepted(&h("deflate, gzip")), Some(Coding::Gzip));
        assert_eq!(accepted(&h("gzip;q=0.5, deflate")), Some(Coding::Deflate));
        assert_eq!(accepted(&h("gzip;q=0, br")), None);
        assert_eq!(accepted(&h("identity")), None);
        assert_eq!(accepted(&HeaderMap::new()), None);
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(request_coding(&m).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
