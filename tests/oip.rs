//! Open Inference Protocol v2 over real sockets, real ONNX Runtime and the shipped models.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn routes() -> String {
    format!(
        r#"
server:
  max_body_bytes: 65536
backends:
  - name: bc-v1
    onnx: {{path: "{v1}", sessions: 2}}
  - name: bc-v2
    onnx: {{path: "{v2}"}}
  - name: diabetes-v1
    onnx: {{path: "{diabetes}"}}
  - name: dtypes
    onnx: {{path: "{dtypes}"}}
routes:
  - model: breast-cancer
    backend: bc-v1
  - model: breast-cancer-v2
    backend: bc-v2
  - model: diabetes
    backend: diabetes-v1
  - model: dtypes
    backend: dtypes
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
        diabetes = model("diabetes-v1.onnx"),
        dtypes = model("dtypes.onnx"),
    )
}

/// The request that models/generate.py ran through Python onnxruntime for `model`.
fn recorded_request(model: &str) -> (Value, Value) {
    let e = &expected_outputs()["models"][model];
    let inputs: Vec<Value> = e["inputs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, t)| {
            let mut t = t.clone();
            t["name"] = json!(name);
            t
        })
        .collect();
    (json!({ "id": format!("req-{model}"), "inputs": inputs }), e["outputs"].clone())
}

fn assert_close(got: &Value, want: &Value, what: &str) {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (i, (g, w)) in g.iter().zip(w).enumerate() {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        // FP32 outputs through JSON: the same float to ~7 significant digits.
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what}[{i}]: got {g}, Python onnxruntime gave {w}");
    }
}

#[tokio::test]
async fn infer_matches_python_onnxruntime_for_every_shipped_model() {
    let gw = Gateway::start(&routes()).await;
    for (route, model) in
        [("breast-cancer", "breast-cancer-v1"), ("breast-cancer-v2", "breast-cancer-v2"), ("diabetes", "diabetes-v1")]
    {
        let (req, expected) = recorded_request(model);
        let a = post_json(&gw.url(&format!("/v2/models/{route}/infer")), &req).await;
        assert_eq!(a.status, StatusCode::OK, "{route}: {:?}", a.body);
        let body = a.json();
        assert_eq!(body["model_name"], route);
        assert_eq!(body["id"], format!("req-{model}"));
        let outputs = body["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), expected.as_object().unwrap().len());
        for out in outputs {
            let name = out["name"].as_str().unwrap();
            let want = &expected[name];
            assert_eq!(out["datatype"], want["datatype"], "{route}.{name}");
            assert_eq!(out["shape"], want["shape"], "{route}.{name}");
            if want["datatype"] == "INT64" {
                assert_eq!(out["data"], want["data"], "{route}.{name}");
            } else {
                assert_close(&out["data"], &want["data"], &format!("{route}.{name}"));
            }
        }
        assert_eq!(a.headers["x-modelgate-variant"], model.replace("breast-cancer", "bc"));
    }
}

#[tokio::test]
async fn every_datatype_round_trips_through_ort() {
    let gw = Gateway::start(&routes()).await;
    let req = json!({
        "inputs": [
            {"name": "i32", "shape": [2, 2], "datatype": "INT32", "data": [[1, -2], [2147483647, -2147483648]]},
            {"name": "i64", "shape": [2, 2], "datatype": "INT64", "data": [1, -2, 9007199254740993i64, -4]},
            {"name": "flag", "shape": [2, 2], "datatype": "BOOL", "data": [true, false, false, true]},
            {"name": "f32", "shape": [2, 2], "datatype": "FP32", "data": [0.5, -1.25, 3.0e38, 1.0e-3]},
            {"name": "f64", "shape": [2, 2], "datatype": "FP64", "data": [0.1, -2.5, 1.0e300, 1.0e-300]},
        ],
        "outputs": [{"name": "f64_out"}, {"name": "i32_out"}, {"name": "flag_out"}, {"name": "i64_out"}, {"name": "f32_out"}]
    });
    let a = post_json(&gw.url("/v2/models/dtypes/infer"), &req).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let outs = a.json()["outputs"].clone();
    let names: Vec<&str> = outs.as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["f64_out", "i32_out", "flag_out", "i64_out", "f32_out"], "outputs come in the order asked");
    assert_eq!(outs[1]["data"], json!([1, -2, 2147483647, -2147483648i64]));
    assert_eq!(outs[1]["datatype"], "INT32");
    assert_eq!(outs[2]["data"], json!([true, false, false, true]));
    assert_eq!(outs[3]["data"], json!([1, -2, 9007199254740993i64, -4]));
    assert_eq!(outs[4]["data"], json!([0.5, -1.25, 3.0e38, 0.001]));
    assert_eq!(outs[0]["data"], json!([0.1, -2.5, 1.0e300, 1.0e-300]));
    assert_eq!(outs[0]["shape"], json!([2, 2]));
}

#[tokio::test]
async fn outputs_selection_returns_only_what_was_asked() {
    let gw = Gateway::start(&routes()).await;
    let (mut req, expected) = recorded_request("breast-cancer-v1");
    req["outputs"] = json!([{"name": "probabilities"}]);
    let a = post_json(&gw.url("/v2/models/breast-cancer/infer"), &req).await;
    let outs = a.json()["outputs"].clone();
    assert_eq!(outs.as_array().unwrap().len(), 1);
    assert_close(&outs[0]["data"], &expected["probabilities"]["data"], "probabilities");
}

#[tokio::test]
async fn server_health_and_model_endpoints() {
    let gw = Gateway::start(&routes()).await;
    let a = get(&gw.url("/v2")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["name"], "modelgate");
    assert!(a.json()["version"].is_string());
    assert_eq!(get(&gw.url("/v2/health/live")).await.status, StatusCode::OK);
    assert_eq!(get(&gw.url("/v2/health/ready")).await.status, StatusCode::OK);

    let meta = get(&gw.url("/v2/models/breast-cancer")).await.json();
    assert_eq!(meta["name"], "breast-cancer");
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    assert_eq!(meta["versions"], json!(["bc-v1"]));
    assert_eq!(meta["inputs"], json!([{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]));
    assert_eq!(meta["outputs"][0], json!({"name": "label", "datatype": "INT64", "shape": [-1]}));
    assert_eq!(meta["outputs"][1], json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}));
    // Versions are pins: the test gateway's default policy (overrides: admin_token) wants the token.
    let pinned = |url: String| async move { send(Method::GET, &url, "", &[PIN_AUTH]).await };
    let meta = pinned(gw.url("/v2/models/diabetes/versions/diabetes-v1")).await.json();
    assert_eq!(meta["inputs"][0]["datatype"], "FP64");

    let ready = get(&gw.url("/v2/models/breast-cancer/ready")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["ready"], true);
    assert_eq!(pinned(gw.url("/v2/models/breast-cancer/versions/bc-v1/ready")).await.status, StatusCode::OK);

    // The version form pins the variant.
    let (req, _) = recorded_request("breast-cancer-v1");
    let a = send(Method::POST, &gw.url("/v2/models/breast-cancer/versions/bc-v1/infer"), req.to_string(), &[PIN_AUTH])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["model_version"], "bc-v1");
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let gw = Gateway::start(&routes()).await;
    let a = send(Method::GET, &gw.url("/v2/health/live"), "", &[("x-request-id", "trace-42")]).await;
    assert_eq!(a.headers["x-request-id"], "trace-42");
    let a = get(&gw.url("/v2/health/live")).await;
    let made = a.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32, "{made}");
    let b = get(&gw.url("/v2/health/live")).await;
    assert_ne!(b.headers["x-request-id"], made.as_str());
    // Errors carry one too.
    assert!(get(&gw.url("/v2/models/nope")).await.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn each_bad_input_gets_its_status_and_names_the_problem_and_serving_goes_on() {
    let gw = Gateway::start(&routes()).await;
    let infer = gw.url("/v2/models/breast-cancer/infer");
    let row: Vec<f32> = vec![1.0; 30];
    let input = |name: &str, datatype: &str, shape: Value, data: Value| {
        json!({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}).to_string()
    };
    let cases: Vec<(&str, String, String, StatusCode, &str)> = vec![
        ("malformed JSON", infer.clone(), "{\"inputs\": [".into(), StatusCode::BAD_REQUEST, "malformed JSON"),
        (
            "not a request",
            infer.clone(),
            "{\"inputz\": []}".into(),
            StatusCode::BAD_REQUEST,
            "invalid inference request: missing field `inputs`",
        ),
        (
            "unknown model",
            gw.url("/v2/models/risk-v3/infer"),
            input("input", "FP32", json!([1, 30]), json!(row)),
            StatusCode::NOT_FOUND,
            "unknown model \"risk-v3\"; routed models: breast-cancer, breast-cancer-v2, diabetes, dtypes",
        ),
        (
            "unknown version",
            gw.url("/v2/models/breast-cancer/versions/v9/infer"),
            input("input", "FP32", json!([1, 30]), json!(row)),
            StatusCode::NOT_FOUND,
            "model \"breast-cancer\" has no version \"v9\"; versions: bc-v1",
        ),
        (
            "wrong input name",
            infer.clone(),
            input("features", "FP32", json!([1, 30]), json!(row)),
            StatusCode::BAD_REQUEST,
            "unknown input \"features\"; the model's inputs are: input",
        ),
        (
            "wrong datatype",
            infer.clone(),
            input("input", "FP64", json!([1, 30]), json!(row)),
            StatusCode::BAD_REQUEST,
            "input \"input\": expected datatype FP32, got FP64",
        ),
        (
            "wrong shape",
            infer.clone(),
            input("input", "FP32", json!([1, 29]), json!(row[..29])),
            StatusCode::BAD_REQUEST,
            "input \"input\": expected shape [-1, 30] (-1: any size), got [1, 29]",
        ),
        (
            "data length is not the product of the shape",
            infer.clone(),
            input("input", "FP32", json!([2, 30]), json!(row)),
            StatusCode::BAD_REQUEST,
            "input \"input\": shape [2, 30] needs 60 elements, data has 30",
        ),
        (
            "element of the wrong type",
            infer.clone(),
            input("input", "FP32", json!([1, 30]), json!(vec![true; 30])),
            StatusCode::BAD_REQUEST,
            "input \"input\": element 0 is true, not a valid FP32 value",
        ),
        (
            "oversized body",
            infer.clone(),
            input("input", "FP32", json!([1, 30]), json!(vec![1.0; 20_000])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body is larger than the limit of 65536 bytes",
        ),
        (
            "unknown endpoint",
            gw.url("/v2/models/breast-cancer/explain"),
            "{}".into(),
            StatusCode::NOT_FOUND,
            "no Open Inference Protocol endpoint",
        ),
        (
            "no route",
            gw.url("/nothing/here"),
            "{}".into(),
            StatusCode::NOT_FOUND,
            "no route for path \"/nothing/here\"",
        ),
    ];
    for (what, url, body, status, message) in cases {
        // With the admin token, so that a pinned version gets as far as the version lookup.
        let a = send(Method::POST, &url, body, &[("content-type", "application/json"), PIN_AUTH]).await;
        assert_eq!(a.status, status, "{what}: {:?}", String::from_utf8_lossy(&a.body));
        assert_eq!(a.headers["content-type"], "application/json", "{what}");
        let error = a.error();
        assert!(error.starts_with(message), "{what}: got {error:?}, want it to start with {message:?}");
    }
    // Wrong method.
    let a = send(Method::GET, &infer, "", &[]).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.error(), "use POST for this endpoint, not GET");

    // Oversized body without a Content-Length (chunked) is cut off while streaming.
    let big = input("input", "FP32", json!([1, 30]), json!(vec![1.0; 20_000]));
    let stream = chunked_body(big);
    let req = http::Request::post(&infer).body(stream).unwrap();
    let resp = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // And the server keeps serving.
    let (req, _) = recorded_request("breast-cancer-v1");
    assert_eq!(post_json(&infer, &req).await.status, StatusCode::OK);
}

type Chunk = Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>;
type ChunkedBody = http_body_util::StreamBody<tokio_stream::Iter<std::vec::IntoIter<Chunk>>>;

/// A body sent in chunks with no Content-Length.
fn chunked_body(text: String) -> ChunkedBody {
    let chunks: Vec<_> = text
        .into_bytes()
        .chunks(8192)
        .map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    http_body_util::StreamBody::new(tokio_stream::iter(chunks))
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let gw = Gateway::start(&routes()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let (req, _) = recorded_request("breast-cancer-v1");
    let req = http::Request::post(gw.url("/v2/models/breast-cancer/infer"))
        .body(http_body_util::Full::new(bytes::Bytes::from(req.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn inference_runs_on_named_worker_threads_not_on_tokio() {
    // Each session lives on its own thread, `onnx-<backend>-<i>`; the worker also asserts (in
    // debug builds, as tests run) that it is not inside a tokio runtime.
    let gw = Gateway::start(&routes()).await;
    let (req, _) = recorded_request("breast-cancer-v1");
    assert_eq!(post_json(&gw.url("/v2/models/breast-cancer/infer"), &req).await.status, StatusCode::OK);
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    for worker in ["onnx-bc-v1-0", "onnx-bc-v1-1", "onnx-bc-v2-0", "onnx-dtypes-0"] {
        assert!(names.iter().any(|n| n == worker), "no thread {worker} in {names:?}");
    }
}

#[tokio::test]
async fn concurrent_batched_requests_all_answer() {
    let gw = Gateway::start(&routes()).await;
    let (req, _) = recorded_request("breast-cancer-v2");
    let url = gw.url("/v2/models/breast-cancer-v2/infer");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (url, req) = (url.clone(), req.clone());
        tasks.push(tokio::spawn(async move { post_json(&url, &req).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_huge_shape_is_refused_without_allocating_and_a_slow_client_is_cut_off() {
    let gw = Gateway::start(&format!(
        "server:\n  header_read_timeout: 300ms\n{}",
        routes().replace("server:\n  max_body_bytes: 65536\n", "")
    ))
    .await;
    let body =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1_000_000_000u64, 30], "data": [1.0]}]});
    let a = post_json(&gw.url("/v2/models/breast-cancer/infer"), &body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.error(), "input \"input\": shape [1000000000, 30] needs 30000000000 elements, data has 1");

    // Slowloris: a request head that never ends is cut off after header_read_timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the connection on its own");
    // Meanwhile and afterwards, others are served.
    assert_eq!(get(&gw.url("/v2/health/live")).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_wait_too_long_for_a_session_are_shed_not_run_late() {
    let gw = Gateway::start(&format!(
        "backends:\n  - name: one\n    onnx: {{path: \"{}\", sessions: 1, queue: 1000, queue_timeout: 1us}}\nroutes:\n  - model: m\n    backend: one\n",
        model("breast-cancer-v2.onnx")
    ))
    .await;
    // A deadline shorter than any hand-over from the queue to the session: every request that
    // waits is shed. (Whether one slips through depends on thread wake-up times, so only the
    // shedding is asserted.)
    let holdout: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("models/breast-cancer-holdout.json")).unwrap())
            .unwrap();
    let rows: Vec<Value> =
        holdout["samples"].as_array().unwrap().iter().take(100).map(|s| s["features"].clone()).collect();
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [100, 30], "data": rows}]});
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (url, body) = (gw.url("/v2/models/m/infer"), body.clone());
            tokio::spawn(async move { post_json(&url, &body).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(a.headers["retry-after"], "1");
                assert!(a.error().contains("waited more than 1µs for a session"), "{}", a.error());
                shed += 1;
            }
            other => panic!("{other}: {:?}", a.body),
        }
    }
    assert!(shed > 0, "{ok} answered, {shed} shed");
    println!("queue deadline: {ok} answered, {shed} shed");
}

// --- Triton's binary tensor data extension ------------------------------------------------------

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
