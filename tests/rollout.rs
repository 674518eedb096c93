//! Automatic rollouts end to end: real sockets, real models, the analysis deciding on its own.

mod support;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn routes(canary_backend: &str) -> String {
    format!(
        r#"backends:
  - name: stable
    onnx: {{path: "{v1}"}}
  - name: good
    onnx: {{path: "{v2}"}}
  - name: faulty
    onnx: {{path: "{v2}"}}
    fault: {{error_percent: 30}}
routes:
  - model: risk
    strategy:
      canary:
        stable: stable
        canary: {canary_backend}
        steps:
          - {{weight: 20, pause: 300ms}}
          - {{weight: 50, pause: 300ms}}
        analysis:
          interval: 100ms
          min_samples: 20
          max_error_rate: 0.02
          failure_limit: 2
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

/// Clients sending inferences until `stop`; returns (status, variant) of every answer.
fn clients(url: String, n: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..n)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let a = post_json(&url, &body()).await;
                    let v = a
                        .headers
                        .get("x-modelgate-variant")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    seen.push((a.status.as_u16(), v));
                }
                seen
            })
        })
        .collect()
}

async fn wait_for_phase(gw: &Gateway, phase: &str, limit: Duration) -> Value {
    let started = Instant::now();
    loop {
        let v = get(&gw.admin_url("/admin/routes")).await.json();
        if v["routes"][0]["status"]["phase"] == phase {
            return v;
        }
        assert!(started.elapsed() < limit, "never reached {phase}: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_canary_is_rolled_back_on_its_own_and_traffic_returns_to_stable() {
    let gw = Gateway::start(&routes("faulty")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(gw.url("/v2/models/risk/infer"), 4, stop.clone());
    let view = wait_for_phase(&gw, "rolled_back", Duration::from_secs(30)).await;
    stop.store(true, Ordering::SeqCst);
    let mut errors_before = 0;
    for c in load {
        errors_before += c.await.unwrap().iter().filter(|(s, _)| *s != 200).count();
    }
    assert!(errors_before > 0, "the fault injection made errors to find");
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 0.0, "{view}");
    // After the rollback: everything on stable, no client errors.
    for _ in 0..200 {
        let a = post_json(&gw.url("/v2/models/risk/infer"), &body()).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers["x-modelgate-variant"], "stable");
    }
    let events = get(&gw.admin_url("/admin/events?route=risk")).await.json();
    let rolled: Vec<&Value> =
        events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "rolled_back").collect();
    assert_eq!(rolled.len(), 1, "{events}");
    assert!(rolled[0]["message"].as_str().unwrap().contains("canary error rate"), "{}", rolled[0]);
    assert!(rolled[0]["details"]["canary"]["errors"].as_u64().unwrap() > 0, "the numbers behind the decision");
    println!("rolled back: {}", rolled[0]["message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_on_its_own() {
    let gw = Gateway::start(&routes("good")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(gw.url("/v2/models/risk/infer"), 4, stop.clone());
    let view = wait_for_phase(&gw, "promoted", Duration::from_secs(30)).await;
    stop.store(true, Ordering::SeqCst);
    for c in load {
        assert!(c.await.unwrap().iter().all(|(s, _)| *s == 200), "a good canary makes no errors");
    }
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 100.0, "{view}");
    for _ in 0..50 {
        let a = post_json(&gw.url("/v2/models/risk/infer"), &body()).await;
        assert_eq!(a.headers["x-modelgate-variant"], "good");
    }
    let events = get(&gw.admin_url("/admin/events")).await.json();
    let kinds: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["step_advanced", "promoted"], "{events}");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401_and_a_stale_if_match_is_412_and_nothing_changes() {
    let gw = Gateway::start(&routes("good").replace("steps:", "weight: 5\n        steps:")).await;
    let before = get(&gw.admin_url("/admin/routes")).await;
    let etag = before.headers["etag"].to_str().unwrap().to_string();
    let generation = before.json()["generation"].clone();
    let url = gw.admin_url("/admin/routes/risk/weight");
    let cases: [(&[(&str, &str)], StatusCode); 4] = [
        (&[], StatusCode::UNAUTHORIZED),
        (&[("authorization", "Bearer wrong")], StatusCode::UNAUTHORIZED),
        (&[("authorization", "Basic dGVzdA==")], StatusCode::UNAUTHORIZED),
        (
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}")), ("if-match", "\"999\"")],
            StatusCode::PRECONDITION_FAILED,
        ),
    ];
    for (headers, status) in cases {
        let a = send(Method::POST, &url, r#"{"weight": 77}"#, headers).await;
        assert_eq!(a.status, status, "{headers:?}: {:?}", a.body);
        assert!(!a.error().is_empty());
    }
    let after = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(after["generation"], generation, "nothing was published");
    assert_ne!(after["routes"][0]["variants"][1]["weight"], 77.0);
    // The right token with the current generation goes through, once.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let ok = send(Method::POST, &url, r#"{"weight": 77}"#, &[("authorization", &auth), ("if-match", &etag)]).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let again = send(Method::POST, &url, r#"{"weight": 78}"#, &[("authorization", &auth), ("if-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::PRECONDITION_FAILED, "the generation moved on");
    // The change is in the audit trail under the token's id, never the token.
    let events = get(&gw.admin_url("/admin/events")).await;
    let admin_events: Vec<Value> =
        events.json()["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "admin").cloned().collect();
    assert_eq!(admin_events.len(), 1, "one change, one event: {admin_events:?}");
    assert_eq!(admin_events[0]["details"]["who"], modelgate::admin::token_id(Some(ADMIN_TOKEN)));
    assert!(admin_events[0]["details"]["who"].as_str().unwrap().starts_with("token:"));
    assert!(!String::from_utf8_lossy(&events.body).contains(ADMIN_TOKEN), "the token never shows");
    // Reads need no token.
    assert_eq!(get(&gw.admin_url("/admin/stats")).await.status, StatusCode::OK);
    let status = get(&gw.admin_url("/admin/status")).await.json();
    assert_eq!(status["routes"][0]["status"]["canary_weight"], 77.0);
}

#[tokio::test]
async fn pause_resume_promote_step_and_retry() {
    let gw = Gateway::start(&routes("good").replace("pause: 300ms", "pause: 1h")).await;
    let weight = |v: &Value| v["routes"][0]["variants"][1]["weight"].as_f64().unwrap();
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(weight(&view), 20.0, "first step");
    assert_eq!(gw.admin_post("/admin/routes/risk/pause", "").await.status, StatusCode::OK);
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["status"]["progress"]["paused"], true);
    for _ in 0..10 {
        assert_eq!(post_json(&gw.url("/v2/models/risk/infer"), &body()).await.status, StatusCode::OK);
    }
    let step_requests = || {
        let t = gw.controller.telemetry();
        ["stable", "good"].iter().map(|v| t.variant("risk", v).step_window().requests).sum::<u64>()
    };
    assert_eq!(step_requests(), 10);
    assert_eq!(gw.admin_post("/admin/routes/risk/promote", "").await.status, StatusCode::OK);
    assert_eq!(step_requests(), 0, "the next step is judged on its own requests");
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(weight(&view), 50.0, "one step on");
    assert_eq!(view["routes"][0]["status"]["progress"]["step"], 1);
    assert_eq!(gw.admin_post("/admin/routes/risk/promote", r#"{"full": true}"#).await.status, StatusCode::OK);
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!((weight(&view), view["routes"][0]["status"]["phase"].as_str()), (100.0, Some("promoted")));
    assert_eq!(gw.admin_post("/admin/routes/risk/abort", "").await.status, StatusCode::OK);
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!((weight(&view), view["routes"][0]["status"]["phase"].as_str()), (0.0, Some("rolled_back")));
    assert_eq!(gw.admin_post("/admin/routes/risk/retry", "").await.status, StatusCode::OK);
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!((weight(&view), view["routes"][0]["status"]["phase"].as_str()), (20.0, Some("progressing")));
    // Doing it twice changes nothing more.
    let g = view["generation"].clone();
    assert_eq!(gw.admin_post("/admin/routes/risk/resume", "").await.status, StatusCode::OK);
    assert_eq!(gw.admin_post("/admin/routes/risk/resume", "").await.json()["generation"], g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_test_finds_the_arm_that_converts_better_and_promotes_it() {
    let gw = Gateway::start(&format!(
        r#"backends:
  - name: a
    onnx: {{path: "{v1}"}}
  - name: b
    onnx: {{path: "{v2}"}}
routes:
  - model: shop
    strategy:
      ab_test:
        variants: {{a: 50, b: 50}}
        sticky: {{header: x-user}}
        analysis: {{metric: conversion, alpha: 0.05, min_samples: 50, effect: 0.2, interval: 50ms, auto_promote: true}}
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    ))
    .await;
    // Users of arm b convert at 50%, of arm a at 10%: feedback carries the outcome.
    let mut user = 0u64;
    let started = Instant::now();
    let view = loop {
        for _ in 0..20 {
            user += 1;
            let key = format!("user-{user}");
            let a = send(Method::POST, &gw.url("/v2/models/shop/infer"), body().to_string(), &[("x-user", &key)]).await;
            let arm = a.headers["x-modelgate-variant"].to_str().unwrap().to_string();
            let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
            let converted = (user * 7919 % 100) < if arm == "b" { 50 } else { 10 };
            post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": converted})).await;
        }
        let v = get(&gw.admin_url("/admin/routes")).await.json();
        if v["routes"][0]["status"]["phase"] == "promoted" {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no winner after {user} users: {v}");
    };
    assert_eq!(view["routes"][0]["status"]["winner"], "b", "{view}");
    let events = get(&gw.admin_url("/admin/events?route=shop")).await.json();
    let promoted = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "promoted").unwrap().clone();
    assert!(promoted["message"].as_str().unwrap().contains("mSPRT"), "{promoted}");
    println!("A/B: {} after {user} users", promoted["message"]);
}

fn blue_green(preview: &str, extra: &str) -> String {
    format!(
        r#"backends:
  - name: blue
    onnx: {{path: "{v1}"}}
  - name: green
    onnx: {{path: "{v2}"}}
  - name: faulty
    onnx: {{path: "{v2}"}}
    fault: {{error_percent: 30}}
routes:
  - model: bg
    strategy:
      blue_green:
        active: blue
        preview: {preview}
        analysis: {{interval: 50ms, min_samples: 20, max_error_rate: 0.02}}
{extra}"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_to_a_failing_colour_switches_back_on_its_own() {
    let gw = Gateway::start(&blue_green("faulty", "        post_switch_window: 1h\n")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(gw.url("/v2/models/bg/infer"), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.admin_post("/admin/routes/bg/switch", "").await.status, StatusCode::OK);
    let view = wait_for_phase(&gw, "rolled_back", Duration::from_secs(30)).await;
    stop.store(true, Ordering::SeqCst);
    for c in load {
        c.await.unwrap();
    }
    assert_eq!(view["routes"][0]["variants"][0]["name"], "blue", "back on the old colour: {view}");
    for _ in 0..100 {
        let a = post_json(&gw.url("/v2/models/bg/infer"), &body()).await;
        assert_eq!((a.status, a.headers["x-modelgate-variant"].to_str().unwrap()), (StatusCode::OK, "blue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_preview_is_switched_to_on_its_own_after_auto_promote_after() {
    let gw = Gateway::start(&blue_green("green", "        auto_promote_after: 300ms\n")).await;
    // The preview only gets pinned traffic (say, a smoke test) before the switch.
    let started = Instant::now();
    let view = loop {
        for _ in 0..10 {
            post_json(&gw.url("/v2/models/bg/infer"), &body()).await;
            let url = gw.url("/v2/models/bg/versions/green/infer");
            let a = send(Method::POST, &url, body().to_string(), &[PIN_AUTH]).await;
            assert_eq!(a.status, StatusCode::OK);
        }
        let v = get(&gw.admin_url("/admin/routes")).await.json();
        if v["routes"][0]["status"]["phase"] == "promoted" {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{v}");
    };
    assert_eq!(view["routes"][0]["variants"][0]["name"], "green", "{view}");
}

/// A webhook receiver on 127.0.0.1:0 that fails its first `failures` deliveries with 503.
async fn receiver(failures: usize) -> (String, Arc<std::sync::Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/rollout", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let n = {
                            let mut s = seen.lock().unwrap();
                            s.push((parts.headers, body));
                            s.len()
                        };
                        let status = if n <= failures { 503 } else { 200 };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_a_webhook_signed_and_retried() {
    let (url, seen) = receiver(2).await;
    // SAFETY of the test: a variable only this test reads.
    std::env::set_var("MODELGATE_TEST_WEBHOOK_SECRET", "hook-secret");
    let yaml = routes("faulty")
        + &format!("webhooks:\n  - {{url: \"{url}\", secret_env: MODELGATE_TEST_WEBHOOK_SECRET, events: [rolled_back], retries: 5}}\n");
    let gw = Gateway::start(&yaml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = clients(gw.url("/v2/models/risk/infer"), 4, stop.clone());
    wait_for_phase(&gw, "rolled_back", Duration::from_secs(30)).await;
    stop.store(true, Ordering::SeqCst);
    for c in load {
        c.await.unwrap();
    }
    let started = Instant::now();
    while seen.lock().unwrap().len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "the webhook was not retried until delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "two refusals, then delivered once");
    for (headers, body) in &seen {
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["kind"], "rolled_back");
        assert_eq!(event["route"], "risk");
        let want = format!("sha256={}", modelgate::rollout::webhooks::signature(b"hook-secret", body));
        assert_eq!(headers["x-modelgate-signature"].to_str().unwrap(), want);
        assert_eq!(headers["x-modelgate-event"], "rolled_back");
    }
}

#[tokio::test]
async fn a_new_model_file_restarts_a_promoted_rollout_and_operational_changes_keep_it() {
    let spec = routes("good").replace("pause: 300ms", "pause: 1h");
    let gw = Gateway::start(&spec).await;
    let full = gw.admin_post("/admin/routes/risk/promote", r#"{"full": true}"#).await;
    assert_eq!(full.status, StatusCode::OK, "{:?}", full.body);
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["status"]["phase"], "promoted");
    for _ in 0..40 {
        let r = post_json(&gw.url("/v2/models/risk/infer"), &body()).await;
        assert_eq!(r.headers["x-modelgate-variant"], "good", "promoted: everything on the candidate");
    }

    // Operational changes (a limit, a threshold, a pause) apply to the running rollout.
    let tuned = spec
        .replace("min_samples: 20", "min_samples: 30")
        .replace("pause: 1h", "pause: 2h")
        .replace("  - model: risk\n", "  - model: risk\n    max_concurrency: 50\n");
    std::fs::write(gw.routes_file(), &tuned).unwrap();
    gw.controller.reload_file().await.unwrap();
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["status"]["phase"], "promoted", "still promoted: {view}");
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 100.0);

    // The same canary backend pointed at another model file: a new rollout, at step 0.
    let other = tuned.replace(
        &format!("name: good\n    onnx: {{path: \"{}\"}}", model("breast-cancer-v2.onnx")),
        &format!("name: good\n    onnx: {{path: \"{}\"}}", model("breast-cancer-v1.onnx")),
    );
    assert_ne!(other, tuned);
    std::fs::write(gw.routes_file(), &other).unwrap();
    gw.controller.reload_file().await.unwrap();
    let view = get(&gw.admin_url("/admin/routes")).await.json();
    assert_eq!(view["routes"][0]["status"]["phase"], "progressing", "{view}");
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 20.0, "back to the first step: {view}");
    let mut on_new = 0;
    for _ in 0..50 {
        let r = post_json(&gw.url("/v2/models/risk/infer"), &body()).await;
        on_new += u32::from(r.headers["x-modelgate-variant"] == "good");
    }
    assert!(on_new < 30, "the never-analysed model gets its first step's share, not everything: {on_new}/50");
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let variants = stats["routes"][0]["variants"].as_array().unwrap();
    let step: u64 = variants.iter().map(|v| v["step"]["requests"].as_u64().unwrap()).sum();
    assert_eq!(step, 50, "the analysis window started empty with the new revision: {stats}");
    let total: u64 = variants.iter().map(|v| v["total"]["requests"].as_u64().unwrap()).sum();
    assert_eq!(total, 90, "lifetime numbers stay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_canary_is_still_rolled_back_with_retries_and_ejection_on() {
    let good = Upstream::start(Duration::ZERO).await;
    let bad_a = Upstream::start_with(Duration::ZERO, Some(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let bad_b = Upstream::start_with(Duration::ZERO, Some(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let gw = Gateway::start(&format!(
        r#"backends:
  - name: stable
    upstream: {{url: "{}"}}
  - name: candidate
    upstream:
      urls: ["{}", "{}"]
      outlier: {{consecutive_failures: 3, ejection_time: 10s}}
      retries: {{attempts: 2}}
routes:
  - path_prefix: /svc/
    strategy:
      canary:
        stable: stable
        canary: candidate
        steps: [{{weight: 30, pause: 1h}}]
        analysis: {{interval: 50ms, min_samples: 20, max_error_rate: 0.02, failure_limit: 2}}
"#,
        good.url(),
        bad_a.url(),
        bad_b.url()
    ))
    .await;
    let started = Instant::now();
    let view = loop {
        for _ in 0..10 {
            get(&gw.url("/svc/x")).await;
        }
        let v = get(&gw.admin_url("/admin/routes")).await.json();
        if v["routes"][0]["status"]["phase"] == "rolled_back" {
            break v;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{v}");
    };
    assert_eq!(view["routes"][0]["variants"][1]["weight"], 0.0);
    // Both candidate endpoints were ejected, yet its failures reached the analysis, and no retry
    // moved a candidate request to stable: stable's hits are all its own traffic.
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let candidate = stats["routes"][0]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant"] == "candidate")
        .unwrap()
        .clone();
    assert!(candidate["total"]["errors"].as_u64().unwrap() >= 20, "{candidate}");
    let stable =
        stats["routes"][0]["variants"].as_array().unwrap().iter().find(|v| v["variant"] == "stable").unwrap().clone();
    assert_eq!(stable["total"]["requests"].as_u64().unwrap(), good.hits.load(Ordering::SeqCst) as u64);
    for _ in 0..50 {
        assert_eq!(get(&gw.url("/svc/x")).await.status, StatusCode::OK, "all traffic back on stable");
    }
}
