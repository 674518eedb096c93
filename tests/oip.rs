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
    // A model that answers after 800 ms: a request in flight longer than header_read_timeout.
    let slow = format!(
        "backends:\n  - name: slow\n    onnx: {{path: \"{}\"}}\n    fault: {{delay: 800ms}}\n",
        model("breast-cancer-v2.onnx")
    );
    let config = routes().replace("server:\n  max_body_bytes: 65536\n", "").replacen("backends:\n", &slow, 1).replacen(
        "routes:\n",
        "routes:\n  - model: slow\n    backend: slow\n",
        1,
    );
    let gw = Gateway::start(&format!("server:\n  header_read_timeout: 300ms\n  keepalive_timeout: 3s\n{config}")).await;
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
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));

    // A kept-alive connection may wait longer than header_read_timeout for its next request
    // (keepalive_timeout is its own clock)...
    let mut kept = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        kept.write_all(live).await.unwrap();
        assert!(read_answer(&mut kept).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    // A request that runs longer than header_read_timeout is not cut off either.
    kept.write_all(raw_infer_post("slow").as_bytes()).await.unwrap();
    let answer = read_answer(&mut kept).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ...but a head begun on it is held to header_read_timeout, not to keepalive_timeout.
    kept.write_all(b"GET /v2/health/live HTTP/1.1\r\n").await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(2), kept.read_to_end(&mut Vec::new())).await;
    assert!(read.is_ok(), "a slow head on a kept-alive connection is cut off after header_read_timeout");

    // A connection left idle after its answer is closed after keepalive_timeout.
    let mut idle = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(live).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server closed the idle connection on its own");
    assert!(buf.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf));
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

/// Reads one HTTP/1.1 answer (head and a `content-length` body) from `conn`.
async fn read_answer(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "connection closed in an answer's head");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}
