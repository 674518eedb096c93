//! What the fuzz targets check (`fuzz/`), kept in the library so that every input they ever
//! crashed on is replayed by an ordinary test (`tests/fuzz_regressions.rs`).
//!
//! Each function takes arbitrary bytes and panics only when an invariant is broken: the parsers
//! under test must answer every input with a value or an error, never a panic, an abort or an
//! allocation the input's size does not justify.

use crate::config::Config;
use crate::protocol::binary;
use crate::protocol::feedback;
use crate::protocol::oip::{InferRequest, ResponseOutput};
use crate::protocol::request_id::{IdCodec, MAX_ROWS};
use crate::protocol::{DataType, Signature, TensorSpec};
use crate::telemetry::window::Unit;
use std::path::Path;
use std::time::Duration;

fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
    TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
}

/// Signatures the decoder is checked against: dynamic and fixed dimensions, every datatype.
fn signatures() -> Vec<Signature> {
    let out = vec![spec("y", DataType::Int64, &[-1])];
    vec![
        Signature { inputs: vec![spec("x", DataType::Fp32, &[-1, 4])], outputs: out.clone() },
        Signature {
            inputs: vec![spec("x", DataType::Fp64, &[2, 3]), spec("flag", DataType::Bool, &[-1])],
            outputs: out.clone(),
        },
        Signature {
            inputs: DataType::ALL.iter().map(|d| spec(&d.as_str().to_lowercase(), *d, &[-1, -1])).collect(),
            outputs: out,
        },
    ]
}

/// The OIP v2 request decoder: parse, decode against each signature, encode what was decoded.
/// The same bytes are also read as a binary-extension body whose JSON header is the first JSON
/// value in them (`Inference-Header-Content-Length` = where it ends) and whose tail is the rest.
pub fn oip(data: &[u8]) {
    if InferRequest::from_json(data).is_ok() {
        check_decoded(|| InferRequest::from_json(data), false);
    }
    let mut values = serde_json::Deserializer::from_slice(data).into_iter::<serde::de::IgnoredAny>();
    if let Some(Ok(_)) = values.next() {
        let length = values.byte_offset().to_string();
        let parse = || InferRequest::from_body(bytes::Bytes::copy_from_slice(data), Some(length.as_bytes()));
        match parse() {
            Ok(_) => check_decoded(parse, true),
            Err(e) => assert_eq!(e.status, http::StatusCode::BAD_REQUEST, "{}", e.message),
        }
    }
    // Arbitrary header values are refused cleanly, never trusted.
    let _ = InferRequest::from_body(bytes::Bytes::copy_from_slice(data), Some(data));
}

/// `parse` reads the request afresh for each signature: decoding moves the inputs' data out.
fn check_decoded(parse: impl Fn() -> Result<InferRequest, crate::protocol::ApiError>, binary_body: bool) {
    for sig in signatures() {
        let Ok(mut req) = parse() else { return };
        let _ = req.selected_outputs(&sig);
        let _ = req.output_forms(&sig);
        let Ok(tensors) = req.decode_inputs(&sig) else { continue };
        assert_eq!(tensors.len(), sig.inputs.len(), "one tensor per model input");
        for (t, s) in tensors.iter().zip(&sig.inputs) {
            assert_eq!(t.data.datatype(), s.datatype, "decoded as the model's datatype");
            assert_eq!(t.shape.len(), s.shape.len(), "rank kept");
            let elements: usize = t.shape.iter().product();
            assert_eq!(elements, t.data.len(), "shape {:?} describes the data", t.shape);
            for (got, want) in t.shape.iter().zip(&s.shape) {
                assert!(*want < 0 || *got as i64 == *want, "fixed dimension kept");
            }
            let mut raw = Vec::new();
            binary::encode(&t.data, &mut raw).expect("a decoded tensor encodes in binary form");
            assert_eq!(raw.len(), binary::encoded_len(&t.data));
            assert_eq!(binary::decode(&raw, s.datatype, elements).as_ref(), Ok(&t.data), "binary round trip");
            let json = serde_json::to_vec(&ResponseOutput::from_tensor(t));
            // Only binary data can hold what JSON cannot (BF16, BYTES that are not UTF-8).
            assert!(binary_body || json.is_ok(), "a tensor decoded from JSON encodes in JSON");
        }
    }
}

/// The routes.yaml loader: any text is either a config or a list of errors, each with a place.
pub fn routes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("/nonexistent-modelgate-fuzz/routes.yaml")) {
        Ok(config) => {
            for route in &config.routes {
                assert!(!route.name().is_empty(), "a valid route has a name");
            }
        }
        Err(errors) => {
            assert!(!errors.issues.is_empty(), "a refusal says why");
            let text = errors.to_string();
            assert!(text.contains("routes.yaml"), "a refusal names the file: {text}");
        }
    }
}

/// The request id and feedback parsers: arbitrary ids are refused cleanly; ids this gateway
/// issued (for any unit, route, variant and prediction the fuzzer picks) read back exactly, and
/// feedback bodies built around them are either accepted or refused with a 400.
pub fn request_id(data: &[u8]) {
    let keyed = IdCodec::new(Some(b"fuzz-key".to_vec()), Duration::from_secs(3600));
    let open = IdCodec::new(None, Duration::from_secs(3600));
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let _ = keyed.decode(&text);
            let _ = open.decode(&text);
        }
        1 => {
            // unit byte, then route \0 variant \0 prediction bytes (each 8 bytes → one i64)
            let Some((&unit, rest)) = rest.split_first() else { return };
            let unit = match unit % 3 {
                0 => Unit::Pinned,
                1 => Unit::Request((u64::from(unit) << 40) | 0x5eed),
                _ => Unit::Key(u64::from(unit).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            let mut parts = rest.splitn(3, |b| *b == 0);
            let route = String::from_utf8_lossy(parts.next().unwrap_or_default()).replace('~', "");
            let variant = String::from_utf8_lossy(parts.next().unwrap_or_default()).replace('~', "");
            if route.is_empty() || variant.is_empty() {
                return;
            }
            let prediction: Vec<i64> = parts
                .next()
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8")))
                .collect();
            let id = keyed.issue(&route, &variant, unit, Some(&prediction));
            let back = keyed.decode(&id).expect("an issued id reads back");
            assert_eq!((back.route.as_str(), back.variant.as_str()), (route.as_str(), variant.as_str()));
            assert_eq!(back.unit, unit, "the unit reads back (a pinned answer's id says so)");
            if let Unit::Request(nonce) = unit {
                assert_eq!(back.nonce, nonce, "an unkeyed request's unit id is its nonce");
            }
            let carried = !prediction.is_empty() && prediction.len() <= MAX_ROWS;
            assert_eq!(back.prediction, carried.then_some(prediction));
            assert!(open.decode(&id).is_err(), "a signed id is refused by an unkeyed gateway");
        }
        _ => {
            // A valid id with the fuzzer's bytes as the rest of the feedback body.
            let id = keyed.issue("r", "v", Unit::Request(1), Some(&[0, 1, 2]));
            let body = [format!("{{\"request_id\":\"{id}\",").as_bytes(), rest].concat();
            match feedback::parse(&body, &keyed) {
                Ok(post) => {
                    assert_eq!(post.id.variant, "v");
                    assert!(post.reward.is_none_or(f64::is_finite));
                    if let Some((scored, right)) = post.labels {
                        assert!(scored == 3 && right <= scored);
                    }
                }
                Err(e) => assert_eq!(e.status, http::StatusCode::BAD_REQUEST),
            }
            let _ = feedback::parse(rest, &keyed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary seeds reach the decoder's far end: every signature they target decodes.
    #[test]
    fn binary_seeds_decode() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/oip");
        for (seed, sig) in [("binary-fp32.bin", 0), ("binary-every-datatype.bin", 2)] {
            let data = std::fs::read(seeds.join(seed)).expect("seed");
            let mut values = serde_json::Deserializer::from_slice(&data).into_iter::<serde::de::IgnoredAny>();
            assert!(matches!(values.next(), Some(Ok(_))), "{seed}");
            let length = values.byte_offset().to_string();
            let mut req = InferRequest::from_body(bytes::Bytes::from(data), Some(length.as_bytes())).expect(seed);
            let decoded = req.decode_inputs(&signatures()[sig]);
            assert!(decoded.is_ok(), "{seed}: {decoded:?}");
            oip(&std::fs::read(seeds.join(seed)).expect("seed"));
        }
    }
}
