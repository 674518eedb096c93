//! Forwarding that stays invisible: an upstream model server knows a route's model by its own
//! name (`upstream_model`); its answers are given back under the name the client asked for —
//! metadata `name`, infer `model_name`, and the model's name quoted in error messages. Binary
//! tensor answers keep their raw tail untouched: only the JSON header is rewritten and its
//! `Inference-Header-Content-Length` adjusted.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use serde_json::Value;

use crate::protocol::binary::HEADER_LENGTH;

/// Rewrites an upstream answer's body from `upstream` to `client` naming. Returns the body as
/// it was when there is nothing to rewrite or it is not JSON the gateway can read.
pub fn client_facing(body: Bytes, headers: &mut HeaderMap, upstream: &str, client: &str) -> Bytes {
    if upstream == client {
        return body;
    }
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) if n <= body.len() => n,
            _ => return body,
        },
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&body[..json_len]) else { return body };
    let Some(object) = value.as_object_mut() else { return body };
    let mut changed = false;
    for field in ["name", "model_name"] {
        if object.get(field).and_then(Value::as_str) == Some(upstream) {
            object.insert(field.to_string(), Value::String(client.to_string()));
            changed = true;
        }
    }
    if let Some(Value::String(error)) = object.get_mut("error") {
        for quote in ['"', '\''] {
            let (from, to) = (format!("{quote}{upstream}{quote}"), format!("{quote}{client}{quote}"));
            if error.contains(&from) {
                *error = error.replace(&from, &to);
                changed = true;
            }
        }
    }
    if !changed {
        return body;
    }
    let Ok(mut out) = serde_json::to_vec(&value) else { return body };
    if headers.contains_key(HEADER_LENGTH) {
        headers.insert(HEADER_LENGTH, HeaderValue::from(out.len()));
    }
    out.extend_from_slice(&body[json_len..]);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_error_messages_are_the_clients_and_binary_tails_stay() {
        let mut h = HeaderMap::new();
        let body = Bytes::from_static(br#"{"name":"bc","versions":["1"],"platform":"onnx"}"#);
        let out = client_facing(body, &mut h, "bc", "remote-bc");
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["name"], "remote-bc");
        assert_eq!(h[header::CONTENT_LENGTH], out.len().to_string().as_str());

        let mut h = HeaderMap::new();
        let err = Bytes::from_static(br#"{"error":"model \"bc\" has no input 'x'"}"#);
        let out = client_facing(err, &mut h, "bc", "remote-bc");
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["error"], r#"model "remote-bc" has no input 'x'"#);

        let json = br#"{"model_name":"bc","outputs":[{"name":"y","parameters":{"binary_data_size":4}}]}"#;
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, HeaderValue::from(json.len()));
        let body = Bytes::from([&json[..], &[1, 2, 3, 4]].concat());
        let out = client_facing(body, &mut h, "bc", "remote-bc");
        let n: usize = h[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&out[..n]).unwrap()["model_name"], "remote-bc");
        assert_eq!(&out[n..], &[1, 2, 3, 4], "the raw tensor bytes are untouched");

        let mut h = HeaderMap::new();
        let other = Bytes::from_static(b"not json");
        assert_eq!(client_facing(other.clone(), &mut h, "bc", "remote-bc"), other);
    }
}
