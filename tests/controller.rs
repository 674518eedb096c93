//! The controller under pressure: status readable while a recreate drains, racing reloads,
//! If-Match per route, pinned traffic kept out of an experiment, and whole rollouts in
//! simulated time through the injectable clock. Real models, real sockets where a client is.

mod support;

use http::{Method, StatusCode};
use modelgate::backend::runtime;
use modelgate::config::Config;
use modelgate::rollout::control::Options;
use modelgate::rollout::engine::Clock;
use modelgate::rollout::Controller;
use modelgate::telemetry::window::Unit;
use modelgate::telemetry::Telemetry;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;

fn route_of<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["routes"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_recreate_drains_a_slow_request() {
    let spec = |backend: &str| {
        format!(
            "backends:\n  - name: slow\n    onnx: {{path: \"{v1}\"}}\n    fault: {{delay: 1500ms}}\n  - name: next\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: d\n    strategy:\n      recreate: {{backend: {backend}}}\n",
            v1 = model("breast-cancer-v1.onnx"),
            v2 = model("breast-cancer-v2.onnx"),
        )
    };
    let gw = Gateway::start(&spec("slow")).await;
    let url = gw.url("/v2/models/d/infer");
    let slow = tokio::spawn(async move { post_json(&url, &body()).await });
    // The slow request holds the old backend; the reload must wait for it to drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(gw.routes_file(), spec("next")).unwrap();
    let controller = gw.controller.clone();
    let reload = tokio::spawn(async move { controller.reload_file().await });
    let mut saw_gap = false;
    while !reload.is_finished() {
        // Each read must answer while the controller waits on the drain (a bound, not a measure).
        let view = tokio::time::timeout(Duration::from_secs(1), get(&gw.admin_url("/admin/routes")))
            .await
            .expect("GET /admin/routes answered during the drain")
            .json();
        saw_gap |= !route_of(&view, "d")["unavailable"].is_null();
        let status = tokio::time::timeout(Duration::from_secs(1), get(&gw.admin_url("/admin/status")))
            .await
            .expect("GET /admin/status answered during the drain");
        assert_eq!(status.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_gap, "the route was shown unavailable while its old backend drained");
    reload.await.unwrap().unwrap();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK, "the in-flight request finished on the old model");
    let r = post_json(&gw.url("/v2/models/d/infer"), &body()).await;
    assert_eq!(r.headers["x-modelgate-variant"], "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reloads_apply_the_newest_file() {
    let spec = |weight: u32| {
        format!(
            "backends:\n  - name: a\n    onnx: {{path: \"{v1}\"}}\n  - name: b\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: r\n    max_concurrency: {weight}\n    strategy:\n      canary: {{stable: a, canary: b, weight: {weight}}}\n",
            v1 = model("breast-cancer-v1.onnx"),
            v2 = model("breast-cancer-v2.onnx"),
        )
    };
    let gw = Gateway::start(&spec(1)).await;
    for round in 0..20u32 {
        let (older, newer) = (2 + 2 * round, 3 + 2 * round);
        std::fs::write(gw.routes_file(), spec(older)).unwrap();
        let (c1, c2) = (gw.controller.clone(), gw.controller.clone());
        let first = tokio::spawn(async move { c1.reload_file().await });
        std::fs::write(gw.routes_file(), spec(newer)).unwrap();
        let second = tokio::spawn(async move { c2.reload_file().await });
        let _ = first.await.unwrap();
        let _ = second.await.unwrap();
        // Whatever order they ran in, the last read saw the newest file.
        gw.controller.reload_file().await.unwrap();
        let view = get(&gw.admin_url("/admin/routes")).await.json();
        let weight = route_of(&view, "r")["variants"][1]["weight"].as_f64().unwrap();
        assert_eq!(weight, f64::from(newer), "round {round}: {view}");
    }
}

/// A routes file that is slow to read (here a FIFO nobody writes yet, like a stalled network
/// filesystem) holds its reload, not the controller: analysis (which takes the controller's
/// lock, as admin changes do) goes on meanwhile. No file watcher here: one reader, one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_routes_file_read_does_not_hold_the_controller() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.yaml");
    let spec = format!(
        "backends:\n  - name: a\n    onnx: {{path: \"{v1}\"}}\n  - name: b\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: r\n    strategy:\n      canary: {{stable: a, canary: b, weight: 10}}\n",
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    );
    std::fs::write(&file, &spec).unwrap();
    let options = Options { ort_library: runtime::locate(None, None), telemetry: Telemetry::new(), state_dir: None };
    let controller = Controller::start(Config::load(&file).unwrap(), options).await.unwrap();
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&file).status().expect("mkfifo");
    assert!(made.success());
    let c = controller.clone();
    let reload = tokio::spawn(async move { c.reload_file().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reload.is_finished(), "the reload waits for the file");
    // A bound, not a measure: with the file read under the controller's lock this never ends.
    let analysed = tokio::time::timeout(Duration::from_secs(5), controller.analyze()).await;
    // The file arrives before any assertion (a reader left blocked on the FIFO would hold the
    // test runtime's shutdown), and the reload applies it.
    let writer = std::thread::spawn(move || std::fs::write(&file, spec).unwrap());
    reload.await.unwrap().unwrap();
    writer.join().unwrap();
    assert!(analysed.is_ok(), "analysis ran while the routes file was being read");
}

#[tokio::test]
async fn if_match_is_per_route() {
    let canary =
        |name: &str| format!("  - model: {name}\n    strategy:\n      canary: {{stable: a, canary: b, weight: 10}}\n");
    let yaml = format!(
        "backends:\n  - name: a\n    onnx: {{path: \"{}\"}}\n  - name: b\n    onnx: {{path: \"{}\"}}\nroutes:\n{}{}",
        model("breast-cancer-v1.onnx"),
        model("breast-cancer-v2.onnx"),
        canary("one"),
        canary("two"),
    );
    let gw = Gateway::start(&yaml).await;
    let view = get(&gw.admin_url("/admin/routes")).await;
    let etag = view.headers["etag"].to_str().unwrap().to_string();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let post = |route: &str, weight: u32, if_match: String| {
        let (url, auth) = (gw.admin_url(&format!("/admin/routes/{route}/weight")), auth.clone());
        async move {
            send(
                Method::POST,
                &url,
                format!("{{\"weight\": {weight}}}"),
                &[("authorization", &auth), ("if-match", &if_match)],
            )
            .await
        }
    };
    // A change to route one does not make route two's ETag stale...
    assert_eq!(post("one", 20, etag.clone()).await.status, StatusCode::OK);
    let two = post("two", 30, etag.clone()).await;
    assert_eq!(two.status, StatusCode::OK, "{:?}", two.body);
    // ...but a change to route two does.
    let stale = post("two", 40, etag.clone()).await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{:?}", stale.body);
    assert!(stale.error().contains("route \"two\" changed"), "{}", stale.error());
    let fresh = route_of(&get(&gw.admin_url("/admin/routes")).await.json(), "two")["etag"].to_string();
    assert_eq!(post("two", 40, format!("\"{fresh}\"")).await.status, StatusCode::OK);
    assert_eq!(
        post("two", 50, "\"999999\"".into()).await.status,
        StatusCode::PRECONDITION_FAILED,
        "not from the future"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_requests_to_a_zero_weight_arm_trip_no_sample_ratio_alarm() {
    let yaml = format!(
        "backends:\n  - name: a\n    onnx: {{path: \"{v1}\"}}\n  - name: b\n    onnx: {{path: \"{v2}\"}}\n  - name: c\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: ab\n    overrides: allow\n    strategy:\n      ab_test:\n        variants: {{a: 50, b: 50, c: 0}}\n        sticky: {{header: x-user}}\n        analysis: {{metric: conversion, interval: 50ms, min_samples: 100000}}\n",
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    );
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/v2/models/ab/infer");
    let mut tasks = Vec::new();
    for t in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                if i % 4 == 3 {
                    // A smoke test pinned to the arm that has no share of traffic.
                    let r = send(Method::POST, &url, body().to_string(), &[("x-modelgate-variant", "c")]).await;
                    assert_eq!(r.headers["x-modelgate-variant"], "c");
                } else {
                    let user = format!("user-{t}-{i}");
                    let r = send(Method::POST, &url, body().to_string(), &[("x-user", &user)]).await;
                    assert_ne!(r.headers["x-modelgate-variant"], "c", "a 0-weight arm gets no assigned traffic");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let the analysis look a few times.
    for _ in 0..10 {
        gw.controller.analyze().await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    let status = &route_of(&view, "ab")["status"];
    assert!(status["halted"].is_null(), "pinned traffic tripped the sample-ratio test: {status}");
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let route = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "ab").unwrap();
    let c = route["variants"].as_array().unwrap().iter().find(|v| v["variant"] == "c").unwrap();
    assert_eq!(c["step"]["requests"], 0, "pinned requests are not in the judged window: {c}");
    assert_eq!(c["total"]["requests"], 0);
    assert_eq!(c["pinned"]["requests"], 400, "but they are counted apart: {c}");
    let metrics = get(&gw.admin_url("/metrics")).await.body;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.lines().any(|l| l.starts_with("modelgate_requests_total{")
            && l.contains(r#"variant="c""#)
            && l.contains(r#"pinned="true""#)
            && l.ends_with(" 400")),
        "pinned requests carry a label on the metrics"
    );
}

/// Time that moves only when told.
#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn simulated(canary_error_rate: f64) -> (String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(
        &path,
        format!(
            "backends:\n  - name: a\n    onnx: {{path: \"{v1}\"}}\n  - name: b\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: risk\n    strategy:\n      canary:\n        stable: a\n        canary: b\n        steps: [{{weight: 10, pause: 2m}}, {{weight: 50, pause: 2m}}]\n        analysis: {{interval: 10s, min_samples: 200, max_error_rate: 0.01, failure_limit: 2}}\n",
            v1 = model("breast-cancer-v1.onnx"),
            v2 = model("breast-cancer-v2.onnx"),
        ),
    )
    .unwrap();
    let clock = Arc::new(ManualClock(AtomicU64::new(1_800_000_000_000)));
    let options = Options { ort_library: runtime::locate(None, None), telemetry: Telemetry::new(), state_dir: None };
    let controller = Controller::start_with_clock(Config::load(&path).unwrap(), options, clock.clone()).await.unwrap();
    let started = clock.now_ms();
    let (stable, canary) = (controller.telemetry().variant("risk", "a"), controller.telemetry().variant("risk", "b"));
    let mut k = 0u64;
    for _ in 0..200 {
        // Ten simulated seconds of traffic at the published weights, then one analysis.
        let weight = controller.table().load().route("risk").unwrap().variants[1].weight;
        for _ in 0..1000 {
            k += 1;
            let to_canary = (k % 1000) as f64 / 10.0 < weight;
            let (stats, rate) = if to_canary { (&canary, canary_error_rate) } else { (&stable, 0.0) };
            let error = (k.wrapping_mul(0x9e37_79b9) % 10_000) as f64 / 10_000.0 < rate;
            let code = if error { 500 } else { 200 };
            stats.record(code, Duration::from_millis(5 + k % 7), Unit::Request(k));
        }
        clock.0.fetch_add(10_000, Ordering::SeqCst);
        controller.analyze().await;
        let phase = serde_json::to_value(controller.statuses()[0].1.phase).unwrap();
        if phase != "progressing" {
            return (phase.as_str().unwrap().to_string(), clock.now_ms() - started);
        }
    }
    ("progressing".into(), clock.now_ms() - started)
}

#[tokio::test]
async fn whole_rollouts_run_in_simulated_time() {
    let (phase, took) = simulated(0.0).await;
    assert_eq!(phase, "promoted");
    assert!(took >= 240_000, "both two-minute pauses were held in simulated time: {took} ms");
    let (phase, took) = simulated(0.2).await;
    assert_eq!(phase, "rolled_back");
    assert!(took < 120_000, "a failing canary is rolled back in its first step: {took} ms");
}
