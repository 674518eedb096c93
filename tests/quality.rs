//! Data quality end to end: `modelgate profile` on real ONNX Runtime, profiles in routes.yaml,
//! input validation (count and reject) and drift detection over real sockets, drift events
//! through the event log and a real webhook.

mod support;

use http::StatusCode;
use modelgate::config::Config;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

/// The holdout rows the shipped profile was made from.
fn holdout() -> Vec<Vec<f64>> {
    let text = std::fs::read(root().join("models/breast-cancer-holdout.json")).unwrap();
    let doc: Value = serde_json::from_slice(&text).unwrap();
    doc["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["features"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect())
        .collect()
}

fn request(rows: &[Vec<f64>]) -> Value {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "shape": [rows.len(), 30], "datatype": "FP32", "data": data}]})
}

fn routes(route_extra: &str, tail: &str) -> String {
    format!(
        r#"
backends:
  - name: bc
    onnx: {{path: "{model}", profile: "{profile}"}}
routes:
  - model: bc
    backend: bc
{route_extra}
{tail}"#,
        model = model("breast-cancer-v1.onnx"),
        profile = model("breast-cancer.profile.json"),
    )
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_profile_command_reproduces_the_shipped_profile() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .current_dir(root())
        .args(["profile", "--model", "models/breast-cancer-v1.onnx", "--data", "models/breast-cancer-holdout.json"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let made: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let shipped: Value =
        serde_json::from_slice(&std::fs::read(root().join("models/breast-cancer.profile.json")).unwrap()).unwrap();
    assert_eq!(made, shipped, "models/breast-cancer.profile.json is what `modelgate profile` makes");
    assert_eq!(made["rows"], 171);
    assert_eq!(made["features"].as_array().unwrap().len(), 30);
    // The outputs are profiled through ONNX Runtime: the predicted label is a category.
    assert_eq!(made["outputs"][0]["name"], "label");
    // The rows came with labels: the profile keeps v1's accuracy on them, the one the generator
    // recorded from Python onnxruntime.
    let recorded = expected_outputs()["models"]["breast-cancer-v1"]["holdout_accuracy"].as_f64().unwrap();
    assert_eq!(made["reference"]["accuracy"].as_f64(), Some(recorded));
    assert!(made["outputs"][0]["categories"].is_array());

    // An OIP request body is data too; a file of the wrong width is refused, naming the shapes.
    let body = dir.path().join("body.json");
    std::fs::write(&body, request(&holdout()[..20]).to_string()).unwrap();
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, "[[1, 2, 3]]").unwrap();
    let run = |data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .current_dir(root())
            .args(["profile", "--model", "models/breast-cancer-v1.onnx", "--data"])
            .arg(data)
            .output()
            .unwrap()
    };
    let ok = run(&body);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&ok.stdout).unwrap()["rows"], 20);
    let bad = run(&wrong);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("3 columns"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[tokio::test]
async fn a_profile_that_does_not_fit_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    // Not JSON: refused when the file is read.
    std::fs::write(dir.path().join("broken.json"), "{").unwrap();
    let text = routes("    validation: {on_invalid: reject, features: [f99]}", "")
        .replace(&model("breast-cancer.profile.json"), "broken.json");
    let e = Config::parse(&text, &path).unwrap_err().to_string();
    assert!(e.contains("backends[0].onnx.profile: profile") && e.contains("broken.json"), "{e}");
    assert!(e.contains("routes[0]: validation need a profile"), "{e}");
    // Features a route names must be in the profile.
    let e = Config::parse(&routes("    drift: {features: [f0, f99]}", ""), &path).unwrap_err().to_string();
    assert!(e.contains("routes[0].drift.features[1]: \"f99\" is not a feature"), "{e}");
    // A webhook template that is not JSON once filled in, and an unknown format.
    let hooks = "webhooks:\n  - {url: \"http://127.0.0.1:9/x\", format: xml, template: '{\"k\": \"{{kind}}\"}'}\n";
    let e = Config::parse(&routes("", hooks), &path).unwrap_err().to_string();
    assert!(e.contains("webhooks[0].format: unknown format \"xml\""), "{e}");
    assert!(e.contains("webhooks[0].template: is not JSON"), "{e}");
    let hooks =
        "webhooks:\n  - {url: \"http://127.0.0.1:9/x\", header_env: {authorization: MODELGATE_TEST_UNSET_VARIABLE}}\n";
    let e = Config::parse(&routes("", hooks), &path).unwrap_err().to_string();
    assert!(
        e.contains(
            "webhooks[0].header_env.authorization: environment variable MODELGATE_TEST_UNSET_VARIABLE is not set"
        ),
        "{e}"
    );
    // A profile of another width: refused when the model is loaded, and the table is not built.
    let mut narrow: Value =
        serde_json::from_slice(&std::fs::read(root().join("models/breast-cancer.profile.json")).unwrap()).unwrap();
    narrow["features"].as_array_mut().unwrap().truncate(10);
    std::fs::write(dir.path().join("narrow.json"), narrow.to_string()).unwrap();
    let text = routes("", "").replace(&model("breast-cancer.profile.json"), "narrow.json");
    let config = Config::parse(&text, &path).unwrap();
    let options = modelgate::rollout::control::Options {
        ort_library: modelgate::backend::runtime::locate(None, None),
        telemetry: modelgate::telemetry::Telemetry::new(),
        state_dir: None,
    };
    let e = modelgate::rollout::Controller::start(config, options).await.unwrap_err().to_string();
    assert!(
        e.contains("backends[0].onnx.profile") && e.contains("profiles 10 features") && e.contains("has 30"),
        "{e}"
    );
}

#[tokio::test]
async fn rows_outside_the_profile_are_rejected_naming_feature_and_bound() {
    let gw = Gateway::start(&routes("    validation: {on_invalid: reject, margin: 0.1}", "")).await;
    let rows = holdout();
    let ok = post_json(&gw.url("/v2/models/bc/infer"), &request(&rows[..5])).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let mut bad = rows[..3].to_vec();
    bad[2][2] = 1.0e6;
    let r = post_json(&gw.url("/v2/models/bc/infer"), &request(&bad)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let error = r.error();
    assert!(error.contains("row 2 feature f2: 1000000 is above the bound"), "{error}");
    assert!(error.contains("max plus 10% of its range"), "{error}");
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    assert_eq!(metric(&metrics, "modelgate_invalid_inputs_total{route=\"bc\",feature=\"f2\"}"), Some(1.0));
    gw.shutdown().await;
}

#[tokio::test]
async fn counted_rows_are_answered_and_counted_under_bounded_labels() {
    let gw = Gateway::start(&routes("    validation: {on_invalid: count, features: [f0, f1]}", "")).await;
    let mut rows = holdout()[..4].to_vec();
    rows[0][0] = -50.0; // f0: a listed feature, its own label
    rows[1][7] = 1.0e9; // f7 and f9: not listed, counted together as "other"
    rows[2][9] = -1.0e9;
    let r = post_json(&gw.url("/v2/models/bc/infer"), &request(&rows)).await;
    assert_eq!(r.status, StatusCode::OK, "count mode answers: {:?}", r.body);
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    assert_eq!(metric(&metrics, "modelgate_invalid_inputs_total{route=\"bc\",feature=\"f0\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "modelgate_invalid_inputs_total{route=\"bc\",feature=\"other\"}"), Some(2.0));
    assert!(!metrics.contains("feature=\"f7\""), "only the listed features get a label");
    gw.shutdown().await;
}

async fn wait_for_event(gw: &Gateway, route: &str, kind: &str) -> Value {
    let started = Instant::now();
    loop {
        let events = gw.controller.events(0, Some(route));
        if let Some(e) = events.iter().find(|e| e.kind == kind) {
            return serde_json::to_value(e).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no {kind} event for {route}: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_feature_fires_one_event_through_the_webhook_and_sets_its_gauge() {
    let (hook, dispatch) = (Upstream::start(Duration::ZERO).await, Upstream::start(Duration::ZERO).await);
    let drift = "    drift: {window: 1m, min_samples: 300, psi: 0.2, p_value: 0.01, features: [f0, f1]}";
    // One hook takes CloudEvents; the other a GitHub repository_dispatch body from a template.
    let hooks = format!(
        "webhooks:\n  - {{url: \"{}/hook\", events: [drift_detected], format: cloudevents}}\n  \
         - url: \"{}/repos/o/r/dispatches\"\n    events: [drift_detected]\n    \
         template: '{{\"event_type\": {{{{kind}}}}, \"client_payload\": {{{{event}}}}}}'\n    \
         header_env: {{authorization: MODELGATE_TEST_DISPATCH_AUTH}}\n",
        hook.url(),
        dispatch.url()
    );
    // A variable only this test reads.
    std::env::set_var("MODELGATE_TEST_DISPATCH_AUTH", "Bearer dispatch-token");
    let yaml = routes(drift, &hooks);
    let gw = Gateway::start(&yaml).await;
    let rows = holdout();
    // The reference rows themselves: enough rows for a verdict, and nothing drifted.
    for chunk in rows.chunks(57).chain(rows.chunks(57)) {
        assert_eq!(post_json(&gw.url("/v2/models/bc/infer"), &request(chunk)).await.status, StatusCode::OK);
    }
    let metrics_ready = Instant::now();
    loop {
        let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
        if let Some(psi) = metric(&metrics, "modelgate_feature_drift{route=\"bc\",variant=\"bc\",feature=\"f0\"}") {
            assert!(psi < 0.05, "the reference against itself: {psi}");
            break;
        }
        assert!(metrics_ready.elapsed() < Duration::from_secs(20), "no drift gauge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gw.controller.events(0, Some("bc")).iter().all(|e| e.kind != "drift_detected"));
    // f0 moved by a standard deviation (~3.6) in every new row; the other features unchanged.
    let std = 3.6;
    let shifted: Vec<Vec<f64>> = rows.iter().map(|r| [vec![r[0] + std], r[1..].to_vec()].concat()).collect();
    for _ in 0..4 {
        for chunk in shifted.chunks(57) {
            assert_eq!(post_json(&gw.url("/v2/models/bc/infer"), &request(chunk)).await.status, StatusCode::OK);
        }
    }
    let event = wait_for_event(&gw, "bc", "drift_detected").await;
    assert_eq!(event["details"]["features"], json!(["f0"]), "{event}");
    assert_eq!(event["details"]["window_ms"], 60_000);
    let stats = event["details"]["statistics"].as_array().unwrap();
    let f0 = stats.iter().find(|s| s["feature"] == "f0").unwrap();
    assert!(f0["psi"].as_f64().unwrap() >= 0.2 && f0["p_value"].as_f64().unwrap() < 0.01, "{f0}");
    // Delivered to the webhook, once (the drifted set did not change afterwards).
    let started = Instant::now();
    while hook.seen.lock().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the webhook got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = hook.last();
    assert_eq!(seen.headers["content-type"], "application/cloudevents+json");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(sent["specversion"], "1.0");
    assert_eq!(sent["type"], "io.modelgate.drift_detected");
    assert_eq!(sent["source"], "/modelgate/routes/bc");
    assert_eq!(sent["data"]["details"]["features"], json!(["f0"]));
    while dispatch.seen.lock().unwrap().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "the templated webhook got nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = dispatch.last();
    assert_eq!(seen.headers["content-type"], "application/json");
    let sent: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(seen.headers["authorization"], "Bearer dispatch-token");
    assert_eq!(sent["event_type"], "drift_detected");
    assert_eq!(sent["client_payload"]["details"]["features"], json!(["f0"]));
    gw.controller.check_drift();
    let count = gw.controller.events(0, Some("bc")).iter().filter(|e| e.kind == "drift_detected").count();
    assert_eq!(count, 1, "one event per change of the drifted set");
    gw.shutdown().await;
}

/// Rows of the holdout with their true labels.
fn labelled() -> Vec<(Vec<f64>, i64)> {
    let text = std::fs::read(root().join("models/breast-cancer-holdout.json")).unwrap();
    let doc: Value = serde_json::from_slice(&text).unwrap();
    let rows = holdout();
    doc["samples"].as_array().unwrap().iter().zip(rows).map(|(s, r)| (r, s["label"].as_i64().unwrap())).collect()
}

/// Sends the holdout in requests of 9 rows and posts labels for each answer: the true ones, or
/// flipped ones when `flip`.
async fn answer_and_label(gw: &Gateway, flip: bool) {
    let data = labelled();
    for chunk in data.chunks(9) {
        let rows: Vec<Vec<f64>> = chunk.iter().map(|(r, _)| r.clone()).collect();
        let r = post_json(&gw.url("/v2/models/bc/infer"), &request(&rows)).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = r.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
        let labels: Vec<i64> = chunk.iter().map(|(_, l)| if flip { 1 - l } else { *l }).collect();
        let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "label": labels})).await;
        assert_eq!(fb.status, StatusCode::OK, "{:?}", fb.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accuracy_from_labels_below_its_floor_fires_performance_degraded() {
    // No profile needed: label feedback alone. v1 is right on about 90% of the holdout.
    let yaml = routes("    performance: {window: 1m, min_samples: 150, floor: 0.8, confidence: 0.95}", "")
        .replace(&format!(", profile: \"{}\"", model("breast-cancer.profile.json")), "");
    let gw = Gateway::start(&yaml).await;
    answer_and_label(&gw, false).await;
    gw.controller.check_drift();
    let events = gw.controller.events(0, Some("bc"));
    assert!(events.iter().all(|e| e.kind != "performance_degraded"), "90% is not shown below 80%: {events:?}");
    // Labels that contradict every answer: the window's accuracy falls to about a third.
    answer_and_label(&gw, true).await;
    answer_and_label(&gw, true).await;
    let event = wait_for_event(&gw, "bc", "performance_degraded").await;
    let report = &event["details"]["report"];
    // Judged while the flipped labels arrive: at least the true round and some flipped rows.
    assert!(report["rows"].as_u64().unwrap() > 171, "{event}");
    assert!(report["upper_bound"].as_f64().unwrap() < 0.8, "{event}");
    assert_eq!(report["degraded"], true);
    gw.shutdown().await;
}

/// Every line of every capture file under `dir`.
fn captured(dir: &std::path::Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut lines = Vec::new();
    for f in entries {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        lines.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    lines
}

#[tokio::test]
async fn answers_and_their_labels_are_captured_under_one_key() {
    let logger = Upstream::start(Duration::ZERO).await;
    let capture =
        format!("    capture: {{dir: captures, sample_percent: 100, ready_after: 3, post: \"{}/log\"}}", logger.url());
    let gw = Gateway::start(&routes(&capture, "")).await;
    let data = labelled();
    let rows: Vec<Vec<f64>> = data[..3].iter().map(|(r, _)| r.clone()).collect();
    let r = post_json(&gw.url("/v2/models/bc/infer"), &request(&rows)).await;
    assert_eq!(r.status, StatusCode::OK);
    let id = r.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let truth: Vec<i64> = data[..3].iter().map(|(_, l)| *l).collect();
    let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "label": truth})).await;
    assert_eq!(fb.status, StatusCode::OK);
    let dir = gw.dir.path().join("captures");
    let started = Instant::now();
    let lines = loop {
        let lines = captured(&dir);
        if lines.len() == 2 {
            break lines;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "captured: {lines:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = lines.iter().find(|l| l["type"] == "answer").unwrap();
    let feedback = lines.iter().find(|l| l["type"] == "feedback").unwrap();
    let key = id.splitn(3, '~').take(2).collect::<Vec<_>>().join("~");
    assert_eq!((answer["key"].as_str(), feedback["key"].as_str()), (Some(key.as_str()), Some(key.as_str())));
    assert_eq!((answer["route"].as_str(), answer["variant"].as_str()), (Some("bc"), Some("bc")));
    assert_eq!(answer["inputs"][0]["shape"], json!([3, 30]));
    assert_eq!(answer["outputs"][0]["name"], "label");
    assert_eq!(feedback["feedback"]["label"], json!(truth));
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    assert_eq!(metric(&metrics, "modelgate_capture_lines_total{route=\"bc\",outcome=\"written\"}"), Some(2.0));
    // Both lines were also posted as CloudEvents, as KServe's payload logger does.
    while logger.seen.lock().unwrap().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "the logger got {:?}", logger.seen.lock().unwrap().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for seen in logger.seen.lock().unwrap().iter() {
        assert_eq!(seen.headers["content-type"], "application/cloudevents+json");
        let ce: Value = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(
            (ce["type"].as_str(), ce["data"]["key"].as_str()),
            (Some("io.modelgate.capture"), Some(key.as_str()))
        );
    }
    // Three label rows captured: ready_after 3 announces them once.
    let ready = wait_for_event(&gw, "bc", "labelled_data_ready").await;
    assert_eq!((ready["details"]["new_rows"].as_u64(), ready["details"]["total_rows"].as_u64()), (Some(3), Some(3)));
    gw.controller.check_drift();
    let events = gw.controller.events(0, Some("bc"));
    assert_eq!(events.iter().filter(|e| e.kind == "labelled_data_ready").count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn grpc_inferences_are_validated_and_captured_like_http_ones() {
    use support::grpc::{recorded, request as grpc_request};
    let yaml = format!(
        "server: {{grpc_listen: \"127.0.0.1:0\"}}\n{}",
        routes("    validation: {on_invalid: reject}\n    capture: {dir: captures}", "")
    );
    let gw = Gateway::start(&yaml).await;
    let mut client = gw.grpc_client();
    let (name, input, _) = recorded("breast-cancer-v1");
    let ok = client.model_infer(grpc_request("bc", &name, &input, true)).await;
    assert!(ok.is_ok(), "{ok:?}");
    let mut bad = input.clone();
    bad["data"][32] = json!(1.0e6); // row 1, feature f2
    let refused = client.model_infer(grpc_request("bc", &name, &bad, false)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("input row 1 feature f2: 1000000 is above the bound"), "{}", refused.message());
    let dir = gw.dir.path().join("captures");
    let started = Instant::now();
    loop {
        let lines = captured(&dir);
        if !lines.is_empty() {
            assert_eq!(lines.len(), 1, "the refused request is not captured: {lines:?}");
            assert_eq!(lines[0]["inputs"][0]["shape"], json!([5, 30]));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "nothing captured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_in_predictions_is_found_on_the_outputs() {
    let drift = "    drift: {window: 1m, min_samples: 300, psi: 0.2, p_value: 0.01, outputs: true}";
    let gw = Gateway::start(&routes(drift, "")).await;
    // Only benign cases (true label 1, 124 of the 171): v1 predicts 1 for nearly all of them,
    // against 72.5% in the profile's outputs.
    let benign: Vec<Vec<f64>> = labelled().into_iter().filter(|(_, l)| *l == 1).map(|(r, _)| r).collect();
    for _ in 0..3 {
        for chunk in benign.chunks(31) {
            assert_eq!(post_json(&gw.url("/v2/models/bc/infer"), &request(chunk)).await.status, StatusCode::OK);
        }
    }
    let started = Instant::now();
    let event = loop {
        let events = gw.controller.events(0, Some("bc"));
        let found = events.iter().find(|e| e.kind == "drift_detected" && e.details["on"] == "outputs");
        if let Some(e) = found {
            break serde_json::to_value(e).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no drift on the outputs: {events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let features = event["details"]["features"].as_array().unwrap();
    assert!(features.contains(&json!("label")), "{event}");
    gw.shutdown().await;
}

#[test]
fn evaluate_gates_a_candidate_by_its_exit_code() {
    let run = |baseline: &str, candidate: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
            .current_dir(root())
            .args(["evaluate", "--data", "models/breast-cancer-holdout.json", "--baseline"])
            .arg(format!("models/{baseline}.onnx"))
            .arg("--candidate")
            .arg(format!("models/{candidate}.onnx"))
            .args(extra)
            .output()
            .unwrap()
    };
    // v2 is better: it passes even with no regression allowed; the accuracies are the ones the
    // generator recorded from Python onnxruntime's labels (models/expected-outputs.json).
    let better = run("breast-cancer-v1", "breast-cancer-v2", &["--json", "--max-regression", "0"]);
    assert_eq!(better.status.code(), Some(0), "{}", String::from_utf8_lossy(&better.stderr));
    let e: Value = serde_json::from_slice(&better.stdout).unwrap();
    let recorded = expected_outputs();
    for (side, model) in [("baseline", "breast-cancer-v1"), ("candidate", "breast-cancer-v2")] {
        let want = recorded["models"][model]["holdout_accuracy"].as_f64().unwrap();
        assert!((e[side].as_f64().unwrap() - want).abs() < 1e-12, "{side}: {e}");
    }
    assert!(e["regression_upper"].as_f64().unwrap() < 0.0 && e["mcnemar_p"].as_f64().is_some(), "{e}");
    // v1 replacing v2 is four points worse: refused with exit code 1, and the table says FAIL.
    let worse = run("breast-cancer-v2", "breast-cancer-v1", &["--max-regression", "0.01"]);
    assert_eq!(worse.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&worse.stdout).contains("verdict     FAIL"));
    // Usage errors are exit code 2, with the reason.
    let bad = run("breast-cancer-v1", "breast-cancer-v2", &["--metric", "f1"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown metric \"f1\""));
}

/// Time that moves only when told.
#[derive(Debug)]
struct ManualClock(std::sync::atomic::AtomicU64);

impl modelgate::rollout::engine::Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A controller (no listeners) for a route with `schedule: {schedule}` and no profile, on a
/// manual clock that starts at `start` ms.
async fn scheduled(
    schedule: &str,
    path: &std::path::Path,
    start: u64,
) -> (std::sync::Arc<modelgate::rollout::Controller>, std::sync::Arc<ManualClock>) {
    let yaml = routes(&format!("    schedule: {schedule}"), "")
        .replace(&format!(", profile: \"{}\"", model("breast-cancer.profile.json")), "");
    let config = Config::parse(&yaml, path).unwrap();
    let clock = std::sync::Arc::new(ManualClock(std::sync::atomic::AtomicU64::new(start)));
    let options = modelgate::rollout::control::Options {
        ort_library: modelgate::backend::runtime::locate(None, None),
        telemetry: modelgate::telemetry::Telemetry::new(),
        state_dir: None,
    };
    let controller = modelgate::rollout::Controller::start_with_clock(config, options, clock.clone()).await.unwrap();
    (controller, clock)
}

#[tokio::test]
async fn a_schedule_fires_retrain_due_at_each_instant_and_not_on_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let hour = 3_600_000u64;
    let start = 1_800_000_000_000u64 + hour / 2; // half past
    let (controller, clock) = scheduled("{every: 1h}", &path, start).await;
    let due = |c: &modelgate::rollout::Controller| {
        c.events(0, Some("bc"))
            .iter()
            .filter(|e| e.kind == "retrain_due")
            .map(|e| e.details["due_ms"].clone())
            .collect::<Vec<_>>()
    };
    controller.check_drift();
    assert!(due(&controller).is_empty(), "starting is not a due instant");
    clock.0.fetch_add(hour / 4, std::sync::atomic::Ordering::SeqCst);
    controller.check_drift();
    assert!(due(&controller).is_empty());
    clock.0.fetch_add(hour / 4, std::sync::atomic::Ordering::SeqCst); // the hour
    controller.check_drift();
    controller.check_drift();
    assert_eq!(due(&controller), [json!(1_800_000_000_000u64 + hour)], "once per instant");
    clock.0.fetch_add(hour, std::sync::atomic::Ordering::SeqCst);
    controller.check_drift();
    assert_eq!(due(&controller).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_drop_judges_against_the_profiles_reference_accuracy() {
    // Floor = v1's reference accuracy (0.9006) less 0.1.
    let gw = Gateway::start(&routes("    performance: {window: 1m, min_samples: 150, max_drop: 0.1}", "")).await;
    answer_and_label(&gw, true).await;
    let event = wait_for_event(&gw, "bc", "performance_degraded").await;
    let floor = event["details"]["report"]["floor"].as_f64().unwrap();
    assert!((floor - (0.9005847953216374 - 0.1)).abs() < 1e-12, "{event}");
    gw.shutdown().await;
    // Without a profile there is no reference to drop from: the file is refused.
    let yaml = routes("    performance: {max_drop: 0.1}", "")
        .replace(&format!(", profile: \"{}\"", model("breast-cancer.profile.json")), "");
    let e = Config::parse(&yaml, std::path::Path::new("/tmp/r.yaml")).unwrap_err().to_string();
    assert!(
        e.contains("routes[0].performance.max_drop: backend \"bc\" has no profile with a reference accuracy"),
        "{e}"
    );
}

#[tokio::test]
async fn a_cron_schedule_fires_retrain_due_at_the_minutes_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    let minute = 60_000u64;
    let hour_start = 1_800_000_000_000u64; // a whole hour, UTC
    let (controller, clock) = scheduled("{cron: \"15 * * * *\"}", &path, hour_start + 5 * minute).await;
    let due = |c: &modelgate::rollout::Controller| {
        c.events(0, Some("bc"))
            .iter()
            .filter(|e| e.kind == "retrain_due")
            .map(|e| (e.details["due_ms"].clone(), e.details["cron"].clone()))
            .collect::<Vec<_>>()
    };
    let tick = |to: u64| {
        clock.0.store(to, std::sync::atomic::Ordering::SeqCst);
        controller.check_drift();
    };
    tick(hour_start + 5 * minute);
    tick(hour_start + 14 * minute + 59_000);
    assert!(due(&controller).is_empty(), "starting and other minutes are not due");
    tick(hour_start + 15 * minute + 1_000);
    tick(hour_start + 15 * minute + 30_000);
    let fired = due(&controller);
    assert_eq!(fired, [(json!(hour_start + 15 * minute), json!("15 * * * *"))], "once in the minute");
    tick(hour_start + 16 * minute);
    tick(hour_start + 75 * minute);
    assert_eq!(due(&controller).len(), 2, "and again the next hour");
    // A bad expression is refused with its place.
    let bad = routes("    schedule: {cron: \"61 * * * *\"}", "")
        .replace(&format!(", profile: \"{}\"", model("breast-cancer.profile.json")), "");
    let e = Config::parse(&bad, &path).unwrap_err().to_string();
    assert!(e.contains("schedule.cron: minute field \"61\""), "{e}");
}
