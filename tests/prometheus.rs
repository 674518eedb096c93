//! Prometheus checks in a canary analysis, against a real Prometheus (Debian's `prometheus`;
//! `make test` installs it) scraping the gateway's /metrics on loopback: a check with no data
//! holds the canary as inconclusive, a check whose value breaches its bound rolls it back, and
//! an A/B arm whose check fails is taken out of traffic; an A/B winner is held while its check
//! has no data, and found (or stopped) once the data says so.

mod support;

use http::StatusCode;
use modelgate::rollout::Phase;
use serde_json::json;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

/// A Prometheus of its own on 127.0.0.1, killed when dropped.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Prometheus {
    /// Starts Prometheus on `port`, scraping `target` (host:port) every 200 ms.
    async fn start(port: u16, target: &str) -> Prometheus {
        let bin = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "/usr/bin/prometheus".to_string());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/fetch-tools.sh (make test does) or set PROMETHEUS_BIN"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 200ms, scrape_timeout: 200ms}}\nscrape_configs:\n  - job_name: modelgate\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
            ),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let mut p = Prometheus { child, _dir: dir };
        for _ in 0..400 {
            assert!(p.child.try_wait().ok().flatten().is_none(), "prometheus exited (port {port} taken?)");
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            if listening && get(&format!("http://127.0.0.1:{port}/-/ready")).await.status == StatusCode::OK {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("prometheus did not become ready");
    }
}

fn route(name: &str, check: &str, prometheus: u16) -> String {
    format!(
        r#"  - model: {name}
    strategy:
      canary:
        stable: stable
        canary: good
        steps:
          - {{weight: 50, pause: 1h}}
        analysis:
          interval: 100ms
          min_samples: 5
          max_error_rate: 0.5
          failure_limit: 1
          checks:
            - {{name: {check}, prometheus: "http://127.0.0.1:{prometheus}", {query}}}
"#,
        query = match check {
            // Nobody posts feedback: Prometheus has no series for it.
            "conversions" =>
                r#"query: 'sum(modelgate_feedback_conversions_total{route="{{route}}",variant="{{variant}}"})', min: 0.5"#,
            _ => r#"query: 'sum(modelgate_requests_total{route="{{route}}",variant="{{variant}}"})', max: 5"#,
        }
    )
}

/// A routes.yaml with backends `stable` (breast-cancer v1) and `good` (v2) and `routes`.
fn two_models(routes: &str) -> String {
    format!(
        "backends:\n  - name: stable\n    onnx: {{path: \"{v1}\"}}\n  - name: good\n    onnx: {{path: \"{v2}\"}}\nroutes:\n{routes}",
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_data_holds_and_a_breached_check_rolls_back_or_stops_an_arm() {
    let port = free_port();
    let yaml = two_models(&(route("quiet", "conversions", port) + &route("busy", "requests", port)))
        + &format!(
            r#"  - model: arms
    strategy:
      ab_test:
        variants: {{stable: 50, good: 50}}
        sticky: {{header: x-user}}
        analysis:
          metric: conversion
          min_samples: 100000000
          interval: 100ms
          checks:
            - {{name: requests, prometheus: "http://127.0.0.1:{port}", query: 'sum(modelgate_requests_total{{route="{{{{route}}}}",variant="{{{{variant}}}}"}})', max: 5}}
"#
        );
    let gw = Gateway::start(&yaml).await;
    let _prometheus = Prometheus::start(port, &gw.admin.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = |name: &str| gw.controller.statuses().iter().find(|(r, _)| r == name).map(|(_, s)| s.clone()).unwrap();
    let mut user = 0;
    loop {
        for r in ["quiet", "busy"] {
            for _ in 0..5 {
                let answer = post_json(&gw.url(&format!("/v2/models/{r}/infer")), &body()).await;
                assert_eq!(answer.status, StatusCode::OK);
            }
        }
        for _ in 0..10 {
            user += 1;
            let url = gw.url("/v2/models/arms/infer");
            let answer = send(http::Method::POST, &url, body().to_string(), &[("x-user", &format!("u{user}"))]).await;
            assert_eq!(answer.status, StatusCode::OK);
        }
        let (quiet, busy, arms) = (status("quiet"), status("busy"), status("arms"));
        let held = quiet.last_analysis.as_deref().is_some_and(|w| w.contains("check conversions: no data"));
        if held && busy.phase == Phase::RolledBack && !arms.stopped_arms.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "quiet: {quiet:?}\nbusy: {busy:?}\narms: {arms:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status("quiet").phase, Phase::Progressing, "no data never fails a check");
    let events = gw.controller.events(0, Some("busy"));
    let rolled = events.iter().find(|e| e.kind == "rolled_back").expect("a rolled_back event");
    assert!(
        rolled.message.contains("check requests") && rolled.message.contains("above its maximum 5"),
        "{}",
        rolled.message
    );
    assert!(gw.controller.events(0, Some("quiet")).iter().all(|e| e.kind != "rolled_back"));
    // An A/B arm whose check fails is taken out of traffic; control is never checked.
    assert_eq!(status("arms").stopped_arms, ["good"]);
    let stopped = gw.controller.events(0, Some("arms"));
    let stopped = stopped.iter().find(|e| e.kind == "arm_stopped").expect("an arm_stopped event");
    assert!(stopped.message.contains("check requests"), "{}", stopped.message);
}

/// A sticky A/B route whose arm `good` converts far better than control: a winner as soon as
/// its check allows. Its check sums the rewards reported for the arm (none until the test posts
/// one): `bound` is `min: 0.5` (the reward must be there) or `max: 0.5` (it must not be).
fn ab_route(name: &str, bound: &str, prometheus: u16) -> String {
    format!(
        r#"  - model: {name}
    strategy:
      ab_test:
        variants: {{stable: 50, good: 50}}
        sticky: {{header: x-user}}
        analysis:
          metric: conversion
          alpha: 0.05
          min_samples: 50
          effect: 0.2
          interval: 100ms
          checks:
            - {{name: reward, prometheus: "http://127.0.0.1:{prometheus}", query: 'sum(modelgate_feedback_reward{{route="{{{{route}}}}",variant="{{{{variant}}}}"}})', {bound}}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ab_winner_is_held_while_its_check_has_no_data_then_found_or_stopped_as_the_data_says() {
    let port = free_port();
    let yaml = two_models(&(ab_route("held", "min: 0.5", port) + &ab_route("vetoed", "max: 0.5", port)));
    let gw = Gateway::start(&yaml).await;
    let _prometheus = Prometheus::start(port, &gw.admin.to_string()).await;
    let status = |name: &str| gw.controller.statuses().iter().find(|(r, _)| r == name).map(|(_, s)| s.clone()).unwrap();
    let decided = |name: &str| {
        gw.controller
            .events(0, Some(name))
            .into_iter()
            .filter(|e| matches!(e.kind, "winner_found" | "arm_stopped" | "promoted" | "halted"))
            .collect::<Vec<_>>()
    };
    // Users of arm good convert at 50%, of control at 10%. Returns one request id of arm good.
    let mut user = 0u64;
    let mut traffic = |route: &'static str| {
        user += 20;
        let gw = &gw;
        let first = user - 20;
        async move {
            let mut good = None;
            for u in first..first + 20 {
                let url = gw.url(&format!("/v2/models/{route}/infer"));
                let a = send(http::Method::POST, &url, body().to_string(), &[("x-user", &format!("user-{u}"))]).await;
                assert_eq!(a.status, StatusCode::OK);
                let arm = a.headers["x-modelgate-variant"].to_str().unwrap().to_string();
                let id = a.headers["x-modelgate-request-id"].to_str().unwrap().to_string();
                let converted = (u * 7919 % 100) < if arm == "good" { 50 } else { 10 };
                let posted =
                    post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": converted})).await;
                assert_eq!(posted.status, StatusCode::OK);
                if arm == "good" {
                    good = Some(id);
                }
            }
            good
        }
    };

    // 1. The conversions name a winner, but the check has no data: both routes hold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut good_ids = Vec::new();
    loop {
        for route in ["held", "vetoed"] {
            good_ids.extend(traffic(route).await.map(|id| (route, id)));
        }
        let leads = |name: &str| {
            status(name)
                .last_analysis
                .is_some_and(|w| w.starts_with("good leads, held by its checks") && w.contains("no data"))
        };
        if leads("held") && leads("vetoed") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "held: {:?}\nvetoed: {:?}", status("held"), status("vetoed"));
    }
    // Held for several analyses more: no winner, no arm stopped, while the check has no data.
    let looks = gw.controller.events(0, None).len();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for route in ["held", "vetoed"] {
            let s = status(route);
            assert!(decided(route).is_empty(), "{route}: {:?}", decided(route));
            assert_eq!(
                (s.phase, s.suggested_winner.clone(), s.stopped_arms.len()),
                (Phase::Progressing, None, 0),
                "{s:?}"
            );
            assert!(s.last_analysis.as_deref().is_some_and(|w| w.contains("held by its checks")), "{s:?}");
        }
    }
    assert_eq!(gw.controller.events(0, None).len(), looks, "holding emits nothing");

    // 2. Data arrives: a reward on one answer of arm good, on each route.
    for route in ["held", "vetoed"] {
        let (_, id) = good_ids.iter().find(|(r, _)| *r == route).expect("an answer of arm good");
        let posted = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "reward": 1.0})).await;
        assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.body);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status("held").suggested_winner.is_none() || status("vetoed").stopped_arms.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "held: {:?}\nvetoed: {:?}", status("held"), status("vetoed"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // min: 0.5 is met: the winner is found. max: 0.5 is breached: the arm is taken out.
    let held = decided("held");
    assert_eq!(held.iter().map(|e| e.kind).collect::<Vec<_>>(), ["winner_found"], "{held:?}");
    assert_eq!(status("held").suggested_winner.as_deref(), Some("good"));
    let vetoed = decided("vetoed");
    assert_eq!(vetoed.iter().map(|e| e.kind).collect::<Vec<_>>(), ["arm_stopped"], "{vetoed:?}");
    assert!(
        vetoed[0].message.contains("check reward") && vetoed[0].message.contains("above its maximum 0.5"),
        "{}",
        vetoed[0].message
    );
    assert_eq!(status("vetoed").stopped_arms, ["good"]);
    assert!(status("vetoed").suggested_winner.is_none(), "a stopped arm wins nothing");
}
