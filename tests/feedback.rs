//! Who may pin a variant (`overrides:`), and feedback that must change nothing: forged,
//! naming what is not served, or replayed.

mod support;

use http::{Method, StatusCode};
use modelgate::protocol::request_id::IdCodec;
use modelgate::telemetry::window::{Unit, WindowSnapshot};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

fn backends() -> String {
    format!(
        "backends:\n  - name: v1\n    onnx: {{path: \"{}\"}}\n  - name: v2\n    onnx: {{path: \"{}\"}}\n",
        model("breast-cancer-v1.onnx"),
        model("breast-cancer-v2.onnx"),
    )
}

/// A canary at 0%: `risk` (server policy), `open` (overrides: allow), `closed` (overrides: deny).
fn routes(server: &str) -> String {
    let canary = "canary: {stable: v1, canary: v2, weight: 0}";
    format!(
        "{server}{}routes:\n  - model: risk\n    strategy:\n      {canary}\n  - model: open\n    overrides: allow\n    strategy:\n      {canary}\n  - model: closed\n    overrides: deny\n    strategy:\n      {canary}\n",
        backends()
    )
}

fn infer_body() -> Value {
    let text = std::fs::read_to_string(root().join("models/breast-cancer-holdout.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": v["samples"][0]["features"]}]})
}

fn variant(a: &Answer) -> String {
    a.headers.get("x-modelgate-variant").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Every variant's windows (total, step, pinned), by route and variant.
fn windows(gw: &Gateway) -> Vec<(String, String, [WindowSnapshot; 3])> {
    gw.controller
        .telemetry()
        .variants()
        .iter()
        .map(|v| (v.route.clone(), v.variant.clone(), [v.total(), v.step(), v.pinned()]))
        .collect()
}

fn stats(gw: &Gateway, route: &str, variant: &str) -> [WindowSnapshot; 3] {
    windows(gw)
        .into_iter()
        .find(|(r, v, _)| r == route && v == variant)
        .map(|(_, _, w)| w)
        .unwrap_or_else(|| panic!("no stats for {route}/{variant}"))
}

#[tokio::test]
async fn pins_follow_the_route_policy_and_the_default_wants_the_admin_token() {
    let gw = Gateway::start(&routes("")).await;
    let body = infer_body().to_string();
    let pin_header = ("x-modelgate-variant", "v2");
    let wrong = ("authorization", "Bearer not-the-token");
    // (what, model, pinned by path or header, extra header, expected status)
    type Case<'a> = (&'a str, &'a str, bool, Option<(&'a str, &'a str)>, StatusCode);
    let cases: Vec<Case> = vec![
        ("default, no token", "risk", true, None, StatusCode::FORBIDDEN),
        ("default, no token", "risk", false, None, StatusCode::FORBIDDEN),
        ("default, wrong token", "risk", true, Some(wrong), StatusCode::FORBIDDEN),
        ("default, wrong token", "risk", false, Some(wrong), StatusCode::FORBIDDEN),
        ("default, admin token", "risk", true, Some(PIN_AUTH), StatusCode::OK),
        ("default, admin token", "risk", false, Some(PIN_AUTH), StatusCode::OK),
        ("allow, no token", "open", true, None, StatusCode::OK),
        ("allow, no token", "open", false, None, StatusCode::OK),
        ("deny, admin token", "closed", true, Some(PIN_AUTH), StatusCode::FORBIDDEN),
        ("deny, admin token", "closed", false, Some(PIN_AUTH), StatusCode::FORBIDDEN),
    ];
    for (what, model, by_path, auth, status) in cases {
        let mut headers: Vec<(&str, &str)> = auth.into_iter().collect();
        let base = if by_path {
            format!("/v2/models/{model}/versions/v2")
        } else {
            headers.push(pin_header);
            format!("/v2/models/{model}")
        };
        // Infer, metadata and readiness: a pin is a pin.
        for (method, path, body) in [
            (Method::POST, format!("{base}/infer"), body.clone()),
            (Method::GET, base.clone(), String::new()),
            (Method::GET, format!("{base}/ready"), String::new()),
        ] {
            let a = send(method, &gw.url(&path), body, &headers).await;
            let case = format!("{what}: {path} (by path: {by_path})");
            assert_eq!(a.status, status, "{case}: {:?}", String::from_utf8_lossy(&a.body));
            if status == StatusCode::OK {
                assert_eq!(variant(&a), "v2", "{case}");
                continue;
            }
            assert_eq!(a.headers["content-type"], "application/json", "{case}");
            let error = a.error();
            assert!(error.contains(&format!("route {model:?}")), "{case}: {error}");
            if model == "closed" {
                assert!(error.contains("overrides: deny") && error.contains("`overrides: allow`"), "{case}: {error}");
            } else {
                assert!(error.contains("Authorization: Bearer <admin token>"), "{case}: {error}");
                assert!(error.contains("`overrides: allow`"), "{case}: {error}");
            }
        }
    }
    // Unpinned traffic is not affected by the policy.
    for model in ["risk", "closed"] {
        let a = post_json(&gw.url(&format!("/v2/models/{model}/infer")), &infer_body()).await;
        assert_eq!((a.status, variant(&a).as_str()), (StatusCode::OK, "v1"), "{model}");
    }
}

#[tokio::test]
async fn the_server_policy_applies_where_a_route_says_nothing() {
    let gw = Gateway::start(&routes("server:\n  overrides: deny\n")).await;
    let pinned = |model: &str| {
        let url = gw.url(&format!("/v2/models/{model}/versions/v2/ready"));
        async move { send(Method::GET, &url, "", &[PIN_AUTH]).await.status }
    };
    assert_eq!(pinned("risk").await, StatusCode::FORBIDDEN, "server: deny");
    assert_eq!(pinned("open").await, StatusCode::OK, "the route's allow wins");
    let gw = Gateway::start(&routes("server:\n  overrides: allow\n")).await;
    let a = get(&gw.url("/v2/models/risk/versions/v2/ready")).await;
    assert_eq!((a.status, variant(&a).as_str()), (StatusCode::OK, "v2"), "server: allow, no token");
}

#[tokio::test]
async fn the_admin_token_and_the_override_header_are_not_forwarded_upstream() {
    let up = Upstream::start(Duration::from_secs(1)).await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: up\n    upstream: {{url: \"{}\"}}\nroutes:\n  - model: remote\n    backend: up\n  - path_prefix: /remote/\n    backend: up\n    rewrite: /\n",
        up.url()
    ))
    .await;
    let pin = [("x-modelgate-variant", "up"), PIN_AUTH];
    for path in ["/v2/models/remote/infer", "/remote/anything"] {
        let a = send(Method::POST, &gw.url(path), "{}", &pin).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {:?}", a.body);
        let seen = up.last();
        assert!(!seen.headers.contains_key("x-modelgate-variant"), "{path}: {:?}", seen.headers);
        assert!(!seen.headers.contains_key("authorization"), "{path}: the admin token leaked upstream");
    }
    // Not even when the request does not pin; another Authorization is the upstream's and passes.
    let a = send(Method::POST, &gw.url("/remote/x"), "{}", &[PIN_AUTH]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!up.last().headers.contains_key("authorization"));
    let a = send(Method::POST, &gw.url("/remote/x"), "{}", &[("authorization", "Bearer upstream-secret")]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().headers["authorization"], "Bearer upstream-secret");
}

#[tokio::test]
async fn pinned_answers_to_a_zero_weight_canary_are_counted_apart_with_their_feedback() {
    let gw = Gateway::start(&routes("")).await;
    let codec = IdCodec::new(Some(FEEDBACK_KEY.to_vec()), Duration::from_secs(60));
    let url = gw.url("/v2/models/risk/versions/v2/infer");
    let mut ids = Vec::new();
    for _ in 0..5 {
        let a = send(Method::POST, &url, infer_body().to_string(), &[PIN_AUTH]).await;
        assert_eq!((a.status, variant(&a).as_str()), (StatusCode::OK, "v2"));
        let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.split('~').nth(4), Some("p"), "a pinned answer's id says so: {id}");
        assert_eq!(codec.decode(&id).unwrap().unit, Unit::Pinned);
        ids.push(id);
    }
    // Unpinned traffic stays on the stable side of a 0% canary.
    let a = post_json(&gw.url("/v2/models/risk/infer"), &infer_body()).await;
    assert_eq!(variant(&a), "v1");
    let unpinned_id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    assert_eq!(unpinned_id.split('~').nth(4), Some("r"));
    for id in &ids {
        let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": true})).await;
        assert_eq!(fb.status, StatusCode::OK, "{:?}", fb.body);
    }
    let [total, step, pinned] = stats(&gw, "risk", "v2");
    assert_eq!((total.requests, step.requests, step.units), (0, 0, 0), "the canary's windows saw no pinned answer");
    assert_eq!((total.conversion_samples, step.conversion_samples), (0, 0));
    assert_eq!((pinned.requests, pinned.conversion_samples), (5, 5), "{pinned:?}");
    let [_, stable_step, stable_pinned] = stats(&gw, "risk", "v1");
    assert_eq!((stable_step.requests, stable_pinned.requests), (1, 0));
    // /admin/stats shows the same: nothing in the canary's step.
    let view = get(&gw.admin_url("/admin/stats")).await.json();
    let risk = view["routes"].as_array().unwrap().iter().find(|r| r["route"] == "risk").unwrap().clone();
    let v2 = risk["variants"].as_array().unwrap().iter().find(|v| v["variant"] == "v2").unwrap().clone();
    assert_eq!(v2["step"]["requests"], 0, "{v2}");
}

#[tokio::test]
async fn forged_unknown_and_replayed_feedback_change_nothing() {
    let gw = Gateway::start(&routes("")).await;
    let a = post_json(&gw.url("/v2/models/risk/infer"), &infer_body()).await;
    assert_eq!(a.status, StatusCode::OK);
    let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
    let ok = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": true, "reward": 2.0})).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let before = windows(&gw);
    let count = gw.controller.telemetry().variants().len();

    let ours = IdCodec::new(Some(FEEDBACK_KEY.to_vec()), Duration::from_secs(60));
    let theirs = IdCodec::new(Some(b"another-key".to_vec()), Duration::from_secs(60));
    let unsigned = IdCodec::new(None, Duration::from_secs(60));
    let tampered = {
        let mut parts: Vec<&str> = id.split('~').collect();
        parts[3] = "v2";
        parts.join("~")
    };
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("tampered variant", tampered, StatusCode::BAD_REQUEST, "request_id signature does not match"),
        (
            "another gateway's key",
            theirs.issue("risk", "v1", Unit::Request(7), None),
            StatusCode::BAD_REQUEST,
            "request_id signature does not match",
        ),
        (
            "unsigned",
            unsigned.issue("risk", "v1", Unit::Request(8), None),
            StatusCode::BAD_REQUEST,
            "request_id signature does not match",
        ),
        (
            "unknown route",
            ours.issue("nope", "v1", Unit::Request(9), None),
            StatusCode::BAD_REQUEST,
            "request_id names route \"nope\", which this gateway does not serve",
        ),
        (
            "unknown variant",
            ours.issue("risk", "v9", Unit::Request(10), None),
            StatusCode::BAD_REQUEST,
            "request_id names variant \"v9\" of route \"risk\", which the route no longer has (variants now: v1, v2)",
        ),
        ("replayed", id.clone(), StatusCode::CONFLICT, "feedback (conversion) on this request_id was already recorded"),
    ];
    for (what, request_id, status, message) in cases {
        let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": request_id, "conversion": false})).await;
        assert_eq!(fb.status, status, "{what}: {:?}", fb.body);
        let error = fb.error();
        assert!(error.starts_with(message), "{what}: {error}");
        assert_eq!(windows(&gw), before, "{what} changed a window");
        assert_eq!(gw.controller.telemetry().variants().len(), count, "{what} made variant state");
    }
    // A replay of another kind on the same answer is counted once too.
    let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "reward": 1.0})).await;
    assert_eq!(fb.status, StatusCode::CONFLICT);
    assert!(fb.error().starts_with("feedback (reward)"), "{}", fb.error());
    assert_eq!(windows(&gw), before);
    let [total, step, _] = stats(&gw, "risk", "v1");
    assert_eq!((total.conversion_samples, total.conversion_rate, step.reward_mean), (1, Some(1.0), Some(2.0)));
}
