//! Content codings on the inference listener: gzip and deflate requests, compressed answers,
//! and a decompression bomb refused while it inflates — the process's peak memory measured.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::{Read, Write};
use support::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// `rows` rows of the holdout's first sample.
fn request(rows: usize) -> (Value, Value) {
    let e = &expected_outputs()["models"]["breast-cancer-v2"];
    let input = &e["inputs"]["input"];
    let width = input["shape"][1].as_u64().unwrap() as usize;
    let first: Vec<Value> = input["data"].as_array().unwrap()[..width].to_vec();
    let data: Vec<Value> = (0..rows).flat_map(|_| first.clone()).collect();
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, width], "data": data}]});
    (body, e["outputs"]["label"]["data"][0].clone())
}

fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_deflate_in_compressed_answers_out_and_a_bomb_refused() {
    let limit = 1 << 20;
    let gw = Gateway::start(&format!(
        "server: {{max_body_bytes: {limit}}}\nbackends:\n  - name: v2\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: bc\n    backend: v2\n",
        model("breast-cancer-v2.onnx")
    ))
    .await;
    let url = gw.url("/v2/models/bc/infer");
    let (body, label) = request(300);
    let plain = body.to_string().into_bytes();

    // Requests: gzip and deflate give the same answer as the plain body.
    let reference = send(Method::POST, &url, plain.clone(), &[]).await;
    assert_eq!(reference.status, StatusCode::OK, "{:?}", reference.body);
    assert_eq!(reference.json()["outputs"][0]["data"][299], label);
    for (coding, packed) in [("gzip", gzip(&plain)), ("deflate", zlib(&plain))] {
        assert!(packed.len() < plain.len() / 5);
        let a = send(Method::POST, &url, packed, &[("content-encoding", coding)]).await;
        assert_eq!(a.status, StatusCode::OK, "{coding}: {:?}", a.body);
        assert_eq!(a.json()["outputs"], reference.json()["outputs"], "{coding}");
    }
    let a = send(Method::POST, &url, plain.clone(), &[("content-encoding", "br")]).await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(a.error().contains("gzip or deflate"), "{}", a.error());
    let a = send(Method::POST, &url, b"\x1f\x8b not really".to_vec(), &[("content-encoding", "gzip")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);

    // Answers: compressed when the client accepts it, and only then.
    let a = send(Method::POST, &url, plain.clone(), &[("accept-encoding", "gzip")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["content-encoding"], "gzip");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&a.body[..]).read_to_end(&mut inflated).unwrap();
    let answer: Value = serde_json::from_slice(&inflated).unwrap();
    assert_eq!(answer["outputs"], reference.json()["outputs"]);
    assert!(a.body.len() < inflated.len());
    assert!(!reference.headers.contains_key("content-encoding"));
    let small = send(Method::POST, &url, request(1).0.to_string(), &[("accept-encoding", "gzip")]).await;
    assert!(!small.headers.contains_key("content-encoding"), "a small answer is not worth compressing");

    // A bomb: 256 concatenated gzip members of 1 MiB of zeros each (256 MiB inflated, a few
    // hundred KiB sent). Refused at the limit; the process's peak memory grows by about the
    // limit, never by what the bomb would inflate to.
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = w.finish().unwrap();
    let bomb: Vec<u8> = member.iter().copied().cycle().take(member.len() * 256).collect();
    assert!(bomb.len() < limit, "the bomb itself is under the limit: {}", bomb.len());
    let before = status_kb("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let a = send(Method::POST, &url, bomb, &[("content-encoding", "gzip")]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert!(a.error().contains("max_body_bytes"), "{}", a.error());
    let peak = if reset { status_kb("VmHWM:") } else { status_kb("VmRSS:") };
    let grown = peak.saturating_sub(before) * 1024;
    eprintln!("bomb: RSS before {before} KiB, peak {peak} KiB (peak reset: {reset}), grown {grown} bytes");
    assert!(grown < 4 * limit as u64 + (16 << 20), "grew by {grown} bytes for a {limit}-byte limit");
    // The same gzip answer path still works after it.
    let a = send(Method::POST, &url, gzip(&plain), &[("content-encoding", "gzip")]).await;
    assert_eq!(a.status, StatusCode::OK);

    // Feedback bodies may be compressed too.
    let id = reference.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let fb = json!({"request_id": id, "conversion": true}).to_string();
    let a = send(Method::POST, &gw.url("/v2/feedback"), gzip(fb.as_bytes()), &[("content-encoding", "gzip")]).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}
