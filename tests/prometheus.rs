//! Prometheus checks in a canary analysis, against a real Prometheus (Debian's `prometheus`;
//! `make test` installs it) scraping the gateway's /metrics on loopback: a check with no data
//! holds the canary as inconclusive, a check whose value breaches its bound rolls it back, and
//! an A/B arm whose check fails is taken out of traffic.

mod support;

use http::StatusCode;
use modelgate::rollout::Phase;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_data_holds_and_a_breached_check_rolls_back_or_stops_an_arm() {
    let port = free_port();
    let yaml = format!(
        "backends:\n  - name: stable\n    onnx: {{path: \"{v1}\"}}\n  - name: good\n    onnx: {{path: \"{v2}\"}}\nroutes:\n{quiet}{busy}",
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
        quiet = route("quiet", "conversions", port),
        busy = route("busy", "requests", port),
    ) + &format!(
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
