//! The console in fleet mode, against a real etcd: two replicas, requests sent to each, and
//! `/admin/series` on either shows the fleet's sum, and the console (headless Chromium) says it
//! charts a fleet of two.

mod support;

use http::StatusCode;
use modelgate::cluster::Cluster;
use modelgate::config::Config;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::browser::Browser;
use support::etcd::Etcd;
use support::*;

fn routes(etcd: &str, replica: &str) -> String {
    format!(
        r#"cluster:
  etcd: {{endpoints: ["{etcd}"], prefix: "/t/console"}}
  replica_id: {replica}
  lease_ttl: 2s
  publish_interval: 200ms
backends:
  - name: stable
    onnx: {{path: "{v1}"}}
  - name: good
    onnx: {{path: "{v2}"}}
routes:
  - model: risk
    strategy:
      canary:
        stable: stable
        canary: good
        steps: [{{weight: 50, pause: until_promoted}}]
        analysis: {{interval: 100ms, min_samples: 100000000}}
  - model: plain
    backend: stable
"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

/// A gateway in this process that joined the fleet, its console fed by the fleet's windows.
async fn replica(etcd: &Etcd, name: &str) -> (Gateway, Cluster) {
    let gw = Gateway::start(&routes(&etcd.url, name)).await;
    let config = Config::load(&gw.routes_file()).unwrap();
    let cluster = Cluster::join(config.cluster.clone().unwrap(), &gw.controller).await.unwrap();
    gw.controller.telemetry().series().set_peers(cluster.peers());
    (gw, cluster)
}

/// Requests of `route` over every point of every variant in a series answer.
fn requests(series: &Value, route: &str) -> f64 {
    let r = series["routes"].as_array().unwrap().iter().find(|r| r["route"] == route).unwrap();
    let variants = r["variants"].as_array().unwrap();
    // Points are a second apart; each holds that second's requests/s.
    variants.iter().flat_map(|v| v["requests_per_s"].as_array().unwrap()).map(|x| x.as_f64().unwrap()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_fleet_the_series_on_either_replica_is_the_sum_of_both() {
    let etcd = Etcd::start().await;
    let (a, _ca) = replica(&etcd, "a").await;
    let (b, _cb) = replica(&etcd, "b").await;
    // Windows are published once the step has started (only routes under analysis publish).
    let deadline = Instant::now() + Duration::from_secs(30);
    for gw in [&a, &b] {
        while !gw.controller.statuses().iter().any(|(r, s)| r == "risk" && s.progress.is_some()) {
            assert!(Instant::now() < deadline, "the step did not start within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Only b serves at first: a's series of the route can only hold b's requests.
    let (url_a, url_b) = (a.url("/v2/models/risk/infer"), b.url("/v2/models/risk/infer"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..10 {
            assert_eq!(post_json(&url_b, &body()).await.status, StatusCode::OK);
        }
        let s = get(&a.admin_url("/admin/series?route=risk")).await.json();
        if requests(&s, "risk") > 0.0 && s["routes"][0]["replicas"] == 2 {
            assert_eq!(s["fleet"]["replicas"], 2, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "b's requests never reached a's series: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then the same number to each; both replicas' series count both (each request once).
    let mut before = Vec::new();
    for gw in [&a, &b] {
        before.push(requests(&get(&gw.admin_url("/admin/series")).await.json(), "risk"));
    }
    const EACH: usize = 200;
    let payload = body();
    for _ in 0..EACH {
        let (x, y) = tokio::join!(post_json(&url_a, &payload), post_json(&url_b, &payload));
        assert_eq!((x.status, y.status), (StatusCode::OK, StatusCode::OK));
    }
    for (gw, before) in [&a, &b].into_iter().zip(before) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = get(&gw.admin_url("/admin/series")).await.json();
            let seen = requests(&s, "risk") - before;
            // The sum of per-second rates is a count only as far as seconds are a second long
            // (the sampler's ticks on a shared machine): more than one replica's share is the point.
            if seen > 1.5 * EACH as f64 {
                eprintln!("{}: {seen:.1} requests of the 2 x {EACH} in its series", gw.admin_url(""));
                let plain = s["routes"].as_array().unwrap().iter().find(|r| r["route"] == "plain").unwrap();
                assert_eq!(plain["replicas"], 1, "a route that is not under analysis is this replica's: {s}");
                break;
            }
            assert!(Instant::now() < deadline, "the series never showed both replicas' requests ({seen}): {s}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The page says whose numbers it charts.
    let mut browser = Browser::start().await;
    browser.call("Page.navigate", json!({ "url": a.admin_url("/ui/") })).await;
    browser
        .wait_for("document.getElementById('scope')?.textContent === 'charts: fleet of 2 replicas'", "the fleet label")
        .await;
    browser
        .wait_for(
            "document.querySelector('section[data-route=risk] .scope')?.textContent === 'charts: fleet of 2 replicas'",
            "the risk route's fleet label",
        )
        .await;
    let plain = browser.eval("document.querySelector('section[data-route=plain] .scope').textContent").await;
    assert!(plain.as_str().unwrap().starts_with("charts: this replica"), "{plain}");
    browser.screenshot("fleet.png").await;
    drop(browser);
    a.shutdown().await;
    b.shutdown().await;
}
