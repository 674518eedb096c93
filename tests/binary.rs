//! Triton's binary tensor data extension over HTTP: binary inputs and outputs against Python
//! onnxruntime's recorded answers, every datatype, FP16/BF16/BYTES, malformed binary requests,
//! and a shadowed binary request.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn binary_routes() -> String {
    format!(
        r#"
server:
  max_body_bytes: 65536
backends:
  - name: bin-bc-v1
    onnx: {{path: "{v1}"}}
  - name: bin-bc-v2
    onnx: {{path: "{v2}"}}
  - name: bin-dtypes
    onnx: {{path: "{dtypes}"}}
  - name: bin-halves
    onnx: {{path: "{halves}"}}
routes:
  - model: breast-cancer
    backend: bin-bc-v1
  - model: shadowed
    backend: bin-bc-v1
    shadow: {{backend: bin-bc-v2, percent: 100}}
  - model: dtypes
    backend: bin-dtypes
  - model: halves
    backend: bin-halves
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
        dtypes = model("dtypes.onnx"),
        halves = model("halves.onnx"),
    )
}

/// Posts `header` as the JSON header and `tail` after it, as tritonclient.http does.
async fn post_binary(url: &str, header: &Value, tail: &[u8]) -> Answer {
    let head = serde_json::to_vec(header).unwrap();
    let length = head.len().to_string();
    send(
        Method::POST,
        url,
        [head, tail.to_vec()].concat(),
        &[("inference-header-content-length", &length), ("content-type", "application/octet-stream")],
    )
    .await
}

/// A binary answer's JSON header, and each output's raw bytes by name (JSON outputs: none).
fn split_answer(a: &Answer) -> (Value, std::collections::HashMap<String, Vec<u8>>) {
    assert_eq!(a.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.headers["content-type"], "application/octet-stream");
    let n: usize = a.headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let head: Value = serde_json::from_slice(&a.body[..n]).unwrap();
    let mut rest = &a.body[n..];
    let mut raw = std::collections::HashMap::new();
    for out in head["outputs"].as_array().unwrap() {
        if let Some(size) = out["parameters"]["binary_data_size"].as_u64() {
            assert!(out.get("data").is_none(), "a binary output has no JSON data: {out}");
            let (mine, tail) = rest.split_at(size as usize);
            raw.insert(out["name"].as_str().unwrap().to_string(), mine.to_vec());
            rest = tail;
        }
    }
    assert!(rest.is_empty(), "{} bytes after the last binary output", rest.len());
    (head, raw)
}

fn f32s(v: &Value) -> Vec<u8> {
    v.as_array().unwrap().iter().flat_map(|x| (x.as_f64().unwrap() as f32).to_le_bytes()).collect()
}

fn read_f32(raw: &[u8]) -> Value {
    json!(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect::<Vec<_>>())
}

fn read_i64(raw: &[u8]) -> Value {
    json!(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>())
}

#[tokio::test]
async fn binary_inputs_and_outputs_match_python_onnxruntime() {
    let gw = Gateway::start(&binary_routes()).await;
    let url = gw.url("/v2/models/breast-cancer/infer");
    let e = &expected_outputs()["models"]["breast-cancer-v1"];
    let input = &e["inputs"]["input"];
    let raw = f32s(&input["data"]);
    assert_eq!(raw.len(), 5 * 30 * 4);
    // What tritonclient.http sends by default: binary inputs, no outputs named, all binary.
    let header = json!({"id": "bin-1", "inputs": [{"name": "input", "shape": input["shape"], "datatype": "FP32",
        "parameters": {"binary_data_size": raw.len()}}], "parameters": {"binary_data_output": true}});
    let a = post_binary(&url, &header, &raw).await;
    let (head, outputs) = split_answer(&a);
    assert_eq!(head["id"], "bin-1");
    assert_eq!(head["outputs"][0]["name"], "label");
    assert_eq!(head["outputs"][0]["datatype"], "INT64");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 5 * 8);
    assert_eq!(read_i64(&outputs["label"]), e["outputs"]["label"]["data"]);
    assert_eq!(head["outputs"][1]["shape"], json!([5, 2]));
    assert_close(&read_f32(&outputs["probabilities"]), &e["outputs"]["probabilities"]["data"], "probabilities");
    // The prediction still rides in the gateway's request id (feedback and analysis use it).
    let id = a.headers["x-modelgate-request-id"].to_str().unwrap();
    assert_eq!(id.split('~').count(), 7, "{id}");

    // A mix: one output in binary, the other in JSON; JSON input, binary output.
    let header = json!({"inputs": [{"name": "input", "shape": input["shape"], "datatype": "FP32", "data": input["data"]}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}, {"name": "label"}]});
    let a = post_json(&url, &header).await;
    let (head, outputs) = split_answer(&a);
    assert_eq!(head["outputs"][0]["name"], "probabilities");
    assert_close(&read_f32(&outputs["probabilities"]), &e["outputs"]["probabilities"]["data"], "probabilities");
    assert_eq!(head["outputs"][1]["data"], e["outputs"]["label"]["data"]);
    assert!(!outputs.contains_key("label"));

    // Binary input, JSON answer: the answer stays application/json.
    let header = json!({"inputs": [{"name": "input", "shape": input["shape"], "datatype": "FP32",
        "parameters": {"binary_data_size": raw.len()}}]});
    let a = post_binary(&url, &header, &raw).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert!(!a.headers.contains_key("inference-header-content-length"));
    assert_eq!(a.json()["outputs"][0]["data"], e["outputs"]["label"]["data"]);
}

#[tokio::test]
async fn every_datatype_round_trips_through_ort_in_binary_form() {
    let gw = Gateway::start(&binary_routes()).await;
    let i32s: Vec<u8> = [1i32, -2, i32::MAX, i32::MIN].iter().flat_map(|x| x.to_le_bytes()).collect();
    let i64s: Vec<u8> = [1i64, -2, 9007199254740993, i64::MIN].iter().flat_map(|x| x.to_le_bytes()).collect();
    let flags = [1u8, 0, 0, 1];
    let f64s: Vec<u8> = [0.1f64, -2.5, 1.0e300, 1.0e-300].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bin = |name: &str, datatype: &str, size: usize| json!({"name": name, "shape": [2, 2], "datatype": datatype, "parameters": {"binary_data_size": size}});
    let header = json!({"inputs": [
        bin("i32", "INT32", 16),
        {"name": "f32", "shape": [2, 2], "datatype": "FP32", "data": [0.5, -1.25, 3.0e38, 1.0e-3]},
        bin("i64", "INT64", 32), bin("flag", "BOOL", 4), bin("f64", "FP64", 32)],
        "parameters": {"binary_data_output": true}});
    let tail = [&i32s[..], &i64s, &flags, &f64s].concat();
    let a = post_binary(&gw.url("/v2/models/dtypes/infer"), &header, &tail).await;
    let (head, outputs) = split_answer(&a);
    assert_eq!(outputs["i32_out"], i32s);
    assert_eq!(outputs["i64_out"], i64s);
    assert_eq!(outputs["flag_out"], flags);
    assert_eq!(outputs["f64_out"], f64s);
    assert_eq!(read_f32(&outputs["f32_out"]), json!([0.5, -1.25, 3.0e38f32 as f64, 1.0e-3f32 as f64]));
    for out in head["outputs"].as_array().unwrap() {
        assert_eq!(out["shape"], json!([2, 2]), "{out}");
    }
}

#[tokio::test]
async fn fp16_bf16_and_bytes_run_through_ort() {
    let gw = Gateway::start(&binary_routes()).await;
    let url = gw.url("/v2/models/halves/infer");
    let h16: Vec<u8> =
        [1.5f32, -0.25, 65504.0, 0.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let b16: Vec<u8> =
        [1.5f32, -2.0, 3.0e38, 0.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let text: Vec<u8> =
        [&b"h\xc3\xa9llo"[..], b""].iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s].concat()).collect();
    let header = json!({"inputs": [
        {"name": "h16", "shape": [2, 2], "datatype": "FP16", "parameters": {"binary_data_size": h16.len()}},
        {"name": "b16", "shape": [2, 2], "datatype": "BF16", "parameters": {"binary_data_size": b16.len()}},
        {"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": text.len()}}],
        "outputs": [{"name": "h16_out"}, {"name": "h16_as_f32"}, {"name": "b16_out", "parameters": {"binary_data": true}},
            {"name": "text_out"}]});
    let a = post_binary(&url, &header, &[&h16[..], &b16, &text].concat()).await;
    let (head, outputs) = split_answer(&a);
    // FP16 in JSON is numbers; the cast shows ORT read the half-precision bits.
    assert_eq!(head["outputs"][0]["datatype"], "FP16");
    assert_eq!(head["outputs"][0]["data"], json!([1.5, -0.25, 65504.0, 0.0]));
    assert_eq!(head["outputs"][1]["data"], json!([1.5, -0.25, 65504.0, 0.0]));
    assert_eq!(outputs["b16_out"], b16);
    assert_eq!(head["outputs"][3]["datatype"], "BYTES");
    assert_eq!(head["outputs"][3]["data"], json!(["h\u{e9}llo", ""]));

    // JSON FP16 and BYTES in; everything out in binary.
    let header = json!({"inputs": [
        {"name": "h16", "shape": [1, 2], "datatype": "FP16", "data": [1.5, -0.25]},
        {"name": "b16", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["caf\u{e9}"]}],
        "parameters": {"binary_data_output": true}});
    let a = post_binary(&url, &header, &b16[..4]).await;
    let (_, outputs) = split_answer(&a);
    assert_eq!(outputs["h16_out"], h16[..4]);
    assert_eq!(outputs["b16_out"], b16[..4]);
    assert_eq!(outputs["text_out"], [&5u32.to_le_bytes()[..], "caf\u{e9}".as_bytes()].concat());

    // BF16 has no JSON form, either way; ONNX strings must be UTF-8.
    let bf16_json = json!({"inputs": [
        {"name": "h16", "shape": [1, 2], "datatype": "FP16", "data": [1.5, -0.25]},
        {"name": "b16", "shape": [1, 2], "datatype": "BF16", "data": [1.5, -2.0]},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}], "parameters": {"binary_data_output": true}});
    let a = post_json(&url, &bf16_json).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().starts_with("input \"b16\": BF16 has no JSON form"), "{}", a.error());
    let header = json!({"inputs": [
        {"name": "h16", "shape": [1, 2], "datatype": "FP16", "data": [1.5, -0.25]},
        {"name": "b16", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]});
    let a = post_binary(&url, &header, &b16[..4]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().starts_with("output \"b16_out\" is BF16, which has no JSON form"), "{}", a.error());
    let header = json!({"inputs": [
        {"name": "h16", "shape": [1, 2], "datatype": "FP16", "data": [1.5, -0.25]},
        {"name": "b16", "shape": [1, 2], "datatype": "BF16", "parameters": {"binary_data_size": 4}},
        {"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}],
        "parameters": {"binary_data_output": true}});
    let a = post_binary(&url, &header, &[&b16[..4], &[2, 0, 0, 0, 0xff, 0xfe]].concat()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().contains("input \"text\": BYTES element 0 is not UTF-8 text without NUL bytes"), "{}", a.error());
}

#[tokio::test]
async fn each_malformed_binary_request_is_a_400_naming_the_problem() {
    let gw = Gateway::start(&binary_routes()).await;
    let url = gw.url("/v2/models/breast-cancer/infer");
    let head = |size: u64, shape: Value| {
        serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
            "parameters": {"binary_data_size": size}}]}))
        .unwrap()
    };
    let row = vec![0u8; 120];
    let ok = head(120, json!([1, 30]));
    let n = ok.len().to_string();
    let cases: Vec<(&str, Vec<u8>, String, &str)> = vec![
        ("header length past the body", [&ok[..], &row].concat(), "100000".into(),
            "the Inference-Header-Content-Length header says 100000 bytes of JSON, but the body has only"),
        ("header length not a number", [&ok[..], &row].concat(), "12a".into(),
            "the Inference-Header-Content-Length header must be the JSON header's length in bytes, got \"12a\""),
        ("header length cuts the JSON", [&ok[..], &row].concat(), "10".into(), "malformed JSON"),
        ("size is not the shape's", [&head(116, json!([1, 30]))[..], &row[..116]].concat(),
            head(116, json!([1, 30])).len().to_string(),
            "input \"input\": shape [1, 30]: 30 FP32 elements need 120 bytes, binary_data_size is 116"),
        ("tail too short", [&ok[..], &row[..100]].concat(), n.clone(),
            "input \"input\": parameters.binary_data_size is 120 bytes, but only 100 bytes of binary data remain"),
        ("tail left over", [&ok[..], &row, &[0; 8]].concat(), n.clone(),
            "128 bytes of binary data follow the JSON header, but the inputs' parameters.binary_data_size add up to 120; 8 bytes are left over"),
        ("huge shape, small body", [&head(120, json!([1_000_000_000u64, 30]))[..], &row].concat(),
            head(120, json!([1_000_000_000u64, 30])).len().to_string(),
            "input \"input\": shape [1000000000, 30]: 30000000000 FP32 elements need 120000000000 bytes, binary_data_size is 120"),
    ];
    for (what, body, length, want) in cases {
        let a = send(Method::POST, &url, body, &[("inference-header-content-length", &length)]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {:?}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.headers["content-type"], "application/json", "{what}");
        assert!(a.error().starts_with(want), "{what}: got {:?}, want {want:?}", a.error());
    }
    let classification = json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
        "parameters": {"binary_data_size": 120}}], "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}]});
    let a = post_binary(&url, &classification, &row).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.error().contains("the classification extension is not supported; ask for the raw output"),
        "{}",
        a.error()
    );
    // A body over max_body_bytes is a 413 whatever its form.
    let big = vec![0u8; 70_000];
    let a = send(Method::POST, &url, [&ok[..], &big].concat(), &[("inference-header-content-length", &n)]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // And serving goes on.
    assert_eq!(
        post_binary(
            &url,
            &json!({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
        "parameters": {"binary_data_size": 120}}]}),
            &row
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_binary_request_is_shadowed_and_compared() {
    let gw = Gateway::start(&binary_routes()).await;
    let e = &expected_outputs()["models"]["breast-cancer-v1"];
    let raw = f32s(&e["inputs"]["input"]["data"]);
    let header = json!({"inputs": [{"name": "input", "shape": [5, 30], "datatype": "FP32",
        "parameters": {"binary_data_size": raw.len()}}], "parameters": {"binary_data_output": true}});
    for _ in 0..4 {
        let a = post_binary(&gw.url("/v2/models/shadowed/infer"), &header, &raw).await;
        split_answer(&a);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let v = get(&gw.admin_url("/admin/routes")).await.json();
        let route = v["routes"].as_array().unwrap().iter().find(|r| r["name"] == "shadowed").unwrap().clone();
        let s = route["shadow"]["stats"].clone();
        if s["sent"] == 4 && s["rows_compared"].as_u64().unwrap() + s["failed"].as_u64().unwrap() * 5 == 20 {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(stats["failed"], 0, "{stats}");
    assert_eq!(stats["rows_compared"], 20, "{stats}");
}
