//! Shadow traffic: the copy's share, what the client sees, agreement, and the in-flight bound.

use super::*;

#[tokio::test]
async fn shadow_gets_its_share_the_client_sees_only_the_primary_and_agreement_is_recorded() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let gw = Gateway::start(&format!(
        "{}  - name: echo\n    upstream: {{url: \"{}\"}}\nroutes:\n  - model: risk\n    backend: v1\n    shadow: {{backend: v2, percent: 30}}\n  - model: risk-up\n    backend: v1\n    shadow: {{backend: echo, percent: 100}}\n",
        backends(),
        upstream.url()
    ))
    .await;
    let holdout: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("models/breast-cancer-holdout.json")).unwrap())
            .unwrap();
    let samples = holdout["samples"].as_array().unwrap();
    let n = 1000;
    for i in 0..n {
        let row = &samples[i % samples.len()]["features"];
        let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": row}]});
        let a = post_json(&gw.url("/v2/models/risk/infer"), &body).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(variant(&a), "v1", "the client only sees the primary");
        assert_eq!(a.json()["model_version"], "v1");
    }
    // Shadow copies run after the answers; wait for them to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let v = admin_routes(&gw).await;
        let s = v["routes"][0]["shadow"]["stats"].clone();
        if s["sent"].as_u64() == Some(s["rows_compared"].as_u64().unwrap() + s["failed"].as_u64().unwrap()) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sent = stats["sent"].as_u64().unwrap() as f64 / n as f64;
    assert!((0.25..=0.35).contains(&sent), "shadow share {sent}: {stats}");
    assert_eq!(stats["failed"], 0);
    let agreement = stats["agreement"].as_f64().unwrap();
    // v1 and v2 agree on most, not all, holdout samples.
    assert!((0.8..1.0).contains(&agreement), "{stats}");
    println!("shadow: {stats}");

    // An upstream shadow gets a copy of every request, at the route's model path.
    for _ in 0..20 {
        let a = post_json(&gw.url("/v2/models/risk-up/infer"), &sample()).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.hits.load(Ordering::SeqCst) < 20 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.last().path_and_query, "/v2/models/risk-up/infer");
    assert_eq!(upstream.last().body, sample().to_string());
}

#[tokio::test]
async fn a_slow_shadow_gets_at_most_max_in_flight_copies_and_the_rest_are_skipped() {
    let slow = Upstream::start(Duration::from_millis(800)).await;
    let gw = Gateway::start(&format!(
        "{}  - name: slow\n    upstream: {{url: \"{}/slow\"}}\nroutes:\n  - model: risk\n    backend: v1\n    shadow: {{backend: slow, percent: 100, max_in_flight: 2}}\n",
        backends(),
        slow.url()
    ))
    .await;
    for _ in 0..10 {
        let a = post_json(&gw.url("/v2/models/risk/infer"), &sample()).await;
        assert_eq!(a.status, StatusCode::OK, "the client never waits for the shadow");
    }
    let stats = admin_routes(&gw).await["routes"][0]["shadow"]["stats"].clone();
    assert_eq!((stats["sent"].as_u64(), stats["skipped"].as_u64()), (Some(2), Some(8)), "{stats}");
    // Once the copies in flight are answered, new ones go out again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // (The test upstream's echo is no inference answer: the copies end as failed.)
    while admin_routes(&gw).await["routes"][0]["shadow"]["stats"]["failed"].as_u64() != Some(2) {
        assert!(std::time::Instant::now() < deadline, "the slow shadow never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post_json(&gw.url("/v2/models/risk/infer"), &sample()).await.status, StatusCode::OK);
    let stats = admin_routes(&gw).await["routes"][0]["shadow"]["stats"].clone();
    assert_eq!((stats["sent"].as_u64(), stats["skipped"].as_u64()), (Some(3), Some(8)), "{stats}");
    assert_eq!(slow.hits.load(Ordering::SeqCst), 3);
    let metrics = support::get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains(r#"modelgate_shadow_requests_total{route="risk",outcome="skipped"} 8"#), "{text}");
}
