//! Per-variant telemetry and business feedback: /metrics, /admin/stats, /v2/feedback.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::*;

fn routes(extra_backends: &str, extra_routes: &str) -> String {
    format!(
        "backends:\n  - name: v1\n    onnx: {{path: \"{}\"}}\n  - name: v2\n    onnx: {{path: \"{}\"}}\n  - name: d1\n    onnx: {{path: \"{}\"}}\n{extra_backends}routes:\n  - model: risk\n    strategy:\n      canary: {{stable: v1, canary: v2, weight: 30, sticky: {{header: x-user}}}}\n  - model: diabetes\n    backend: d1\n{extra_routes}",
        model("breast-cancer-v1.onnx"),
        model("breast-cancer-v2.onnx"),
        model("diabetes-v1.onnx"),
    )
}

fn holdout() -> Vec<(Value, i64)> {
    let text = std::fs::read_to_string(root().join("models/breast-cancer-holdout.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["samples"].as_array().unwrap().iter().map(|s| (s["features"].clone(), s["label"].as_i64().unwrap())).collect()
}

fn infer_body(features: &Value) -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]})
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_and_stats_count_exactly_what_the_client_saw() {
    let gw = Gateway::start(&routes("", "")).await;
    let mut seen: HashMap<(String, u16), u64> = HashMap::new();
    let mut slowest = Duration::ZERO;
    for (i, (features, _)) in holdout().iter().cycle().take(600).enumerate() {
        // Every tenth request is malformed: a 400 still counts for the variant that got it.
        let body = if i % 10 == 0 { json!({"inputs": [{"name": "input"}]}) } else { infer_body(features) };
        let started = Instant::now();
        let a = send(Method::POST, &gw.url("/v2/models/risk/infer"), body.to_string(), &[("x-user", &format!("u{i}"))])
            .await;
        slowest = slowest.max(started.elapsed());
        let variant = a.headers["x-modelgate-variant"].to_str().unwrap().to_string();
        *seen.entry((variant, a.status.as_u16())).or_default() += 1;
    }
    assert!(seen.keys().any(|(v, _)| v == "v1") && seen.keys().any(|(v, _)| v == "v2"), "{seen:?}");

    let metrics = get(&gw.admin_url("/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(metrics.body.to_vec()).unwrap();
    for ((variant, code), n) in &seen {
        let got = sample(
            &text,
            "modelgate_requests_total",
            &[("route", "risk"), ("variant", variant), ("code", &code.to_string())],
        );
        assert_eq!(got, Some(*n as f64), "{variant} {code}\n{text}");
        let count =
            sample(&text, "modelgate_request_duration_seconds_count", &[("route", "risk"), ("variant", variant)]);
        let total: u64 = seen.iter().filter(|((v, _), _)| v == variant).map(|(_, n)| n).sum();
        assert_eq!(count, Some(total as f64));
    }
    assert!(text.contains("# TYPE modelgate_request_duration_seconds histogram"), "histograms, not summaries");
    assert!(text.contains("modelgate_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("# HELP modelgate_requests_total"));
    assert_eq!(sample(&text, "modelgate_requests_in_flight", &[]), Some(0.0));
    assert_eq!(sample(&text, "modelgate_table_generation", &[]), Some(1.0));
    assert_eq!(sample(&text, "modelgate_variant_weight_ratio", &[("route", "risk"), ("variant", "v2")]), Some(0.3));

    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let risk = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "risk").unwrap().clone();
    for v in risk["variants"].as_array().unwrap() {
        let name = v["variant"].as_str().unwrap();
        let total: u64 = seen.iter().filter(|((n, _), _)| n == name).map(|(_, n)| n).sum();
        let t = &v["total"];
        assert_eq!(t["requests"], total, "{name}: {v}");
        assert_eq!(t["errors"], 0);
        assert_eq!(t["error_rate"], 0.0);
        let (p50, p95, p99) =
            (t["p50_ms"].as_f64().unwrap(), t["p95_ms"].as_f64().unwrap(), t["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{t}");
        // The gateway's own time never exceeds what the client measured around it.
        assert!(p99 <= slowest.as_secs_f64() * 1000.0 * 1.001 + 0.001, "p99 {p99} ms, client's slowest {slowest:?}");
        assert_eq!(v["step"]["requests"], total, "the analysis window has seen the same requests");
    }
}

#[tokio::test]
async fn feedback_is_attributed_by_request_id_and_labels_are_scored() {
    let gw = Gateway::start(&routes("", "")).await;
    let mut expected: HashMap<String, (u64, u64, u64, u64)> = HashMap::new(); // (labels, right, conversions seen, converted)
    for (i, (features, truth)) in holdout().iter().enumerate().take(150) {
        let a = send(
            Method::POST,
            &gw.url("/v2/models/risk/infer"),
            infer_body(features).to_string(),
            &[("x-user", &format!("u{i}"))],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let variant = a.headers["x-modelgate-variant"].to_str().unwrap().to_string();
        let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
        let predicted = a.json()["outputs"][0]["data"][0].as_i64().unwrap();
        let converted = i % 3 == 0;
        let fb =
            post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "label": truth, "conversion": converted}))
                .await;
        assert_eq!(fb.status, StatusCode::OK, "{:?}", fb.body);
        assert_eq!(fb.json()["variant"], variant.as_str());
        let e = expected.entry(variant).or_default();
        e.0 += 1;
        e.1 += u64::from(predicted == *truth);
        e.2 += 1;
        e.3 += u64::from(converted);
    }
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let risk = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "risk").unwrap().clone();
    for v in risk["variants"].as_array().unwrap() {
        let (labels, right, conv_n, conv) = expected[v["variant"].as_str().unwrap()];
        let t = &v["total"];
        assert_eq!(t["accuracy_samples"], labels);
        // Rates are means of per-unit cells (Welford moments): equal up to rounding.
        let close = |got: &Value, want: f64| (got.as_f64().unwrap() - want).abs() < 1e-12;
        assert!(close(&t["accuracy"], right as f64 / labels as f64), "{t}");
        assert_eq!(t["conversion_samples"], conv_n);
        assert!(close(&t["conversion_rate"], conv as f64 / conv_n as f64), "{t}");
    }
    let text = String::from_utf8(get(&gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
    let (labels, right, _, _) = expected["v1"];
    assert_eq!(
        sample(&text, "modelgate_feedback_total", &[("route", "risk"), ("variant", "v1"), ("kind", "label")]),
        Some(labels as f64)
    );
    assert_eq!(
        sample(&text, "modelgate_feedback_correct_total", &[("route", "risk"), ("variant", "v1")]),
        Some(right as f64)
    );
}

#[tokio::test]
async fn bad_feedback_is_refused_with_the_reason() {
    let gw = Gateway::start(&routes("", "")).await;
    let (features, _) = &holdout()[0];
    let a = post_json(&gw.url("/v2/models/risk/infer"), &infer_body(features)).await;
    let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let d = {
        let e = &expected_outputs()["models"]["diabetes-v1"];
        let mut input = e["inputs"]["features"].clone();
        input["name"] = json!("features");
        post_json(&gw.url("/v2/models/diabetes/infer"), &json!({"inputs": [input]})).await
    };
    let regression_id = d.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let forged = if id.contains("~v1~") { id.replacen("~v1~", "~v2~", 1) } else { id.replacen("~v2~", "~v1~", 1) };
    let cases = [
        (json!({"request_id": "nope", "conversion": true}), "request_id \"nope\" is not a modelgate request id"),
        (json!({"request_id": forged, "conversion": true}), "request_id signature does not match"),
        (json!({"request_id": id}), "feedback carries nothing"),
        (json!({"request_id": id, "label": [1, 0]}), "the answer had 1 rows; give one label or a list of 1, not 2"),
        (json!({"request_id": id, "label": "yes"}), "label must be an integer class"),
        (json!({"request_id": id, "reward": "lots"}), "invalid feedback"),
        (json!({"request_id": regression_id, "label": 1}), "this request id carries no prediction"),
        (json!({"id": id}), "invalid feedback"),
    ];
    for (body, want) in cases {
        let a = post_json(&gw.url("/v2/feedback"), &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(a.error().starts_with(want), "{body}: {}", a.error());
    }
    let a = post_json(&gw.url("/v2/feedback"), &json!({"request_id": regression_id, "reward": -2.5})).await;
    assert_eq!(a.status, StatusCode::OK, "a regression takes rewards");

    // Each outcome of an answer counts once: a replayed post is refused and changes nothing.
    let first = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": true})).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": false, "label": 1})).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(
        again.error().starts_with("feedback (conversion) on this request_id was already recorded"),
        "{}",
        again.error()
    );
    let label = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "label": 1})).await;
    assert_eq!(label.status, StatusCode::OK, "another kind of outcome of the same answer is still taken");
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let risk = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "risk").unwrap().clone();
    let conversions: u64 =
        risk["variants"].as_array().unwrap().iter().map(|v| v["total"]["conversion_samples"].as_u64().unwrap()).sum();
    assert_eq!(conversions, 1);
}

#[tokio::test]
async fn an_upstream_reports_a_business_value_in_a_header() {
    let up = Upstream::start(Duration::ZERO).await;
    let gw = Gateway::start(&routes(
        &format!("  - name: shop\n    upstream: {{url: \"{}\", business_header: x-business-value}}\n", up.url()),
        "  - path_prefix: /shop/\n    backend: shop\n",
    ))
    .await;
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/shop/checkout")).await.status, StatusCode::OK);
    }
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let shop = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "/shop/").unwrap().clone();
    let t = &shop["variants"][0]["total"];
    assert_eq!(t["requests"], 7);
    assert_eq!(t["reward_samples"], 7);
    assert_eq!(t["reward_mean"], 1.5);
}
