//! `modelgate serve` as a process: the demo served and stopped on SIGTERM, the gRPC listener,
//! the drain (readiness false first), the feedback-key rule, and the capture files flushed on
//! SIGTERM. Real processes, real sockets, real ONNX Runtime.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::grpc::grpc_client;
use support::process::*;
use support::*;

#[test]
fn serve_runs_the_demo_and_stops_cleanly_on_sigterm() {
    let (mut child, addr) = spawn_serve("routes.yaml");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let e = &expected_outputs()["models"]["breast-cancer-v1"];
        let mut input = e["inputs"]["input"].clone();
        input["name"] = serde_json::json!("input");
        let a = post_json(
            &format!("http://{addr}/v2/models/breast-cancer/versions/bc-v1/infer"),
            &serde_json::json!({"inputs": [input]}),
        )
        .await;
        assert_eq!(a.status, http::StatusCode::OK);
        let got = a.json()["outputs"][1]["data"].clone();
        for (g, w) in got.as_array().unwrap().iter().zip(e["outputs"]["probabilities"]["data"].as_array().unwrap()) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-6);
        }
    });

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve did not stop after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_opens_the_grpc_listener_and_drains_it_on_sigterm() {
    use modelgate::protocol::grpc::pb::{ModelReadyRequest, ServerLiveRequest};
    let state = tempfile::tempdir().unwrap();
    let mut child = Served(
        modelgate()
            .args(["serve", "--config", "routes.yaml", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--grpc-listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .env("MODELGATE_FEEDBACK_KEY", "k")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut first, mut second) = (String::new(), String::new());
    out.read_line(&mut first).unwrap();
    out.read_line(&mut second).unwrap();
    assert!(first.starts_with("modelgate: listening on http://"), "{first:?}");
    let grpc: std::net::SocketAddr = second
        .trim()
        .strip_prefix("modelgate: Open Inference Protocol gRPC on grpc://")
        .unwrap_or_else(|| panic!("{second:?}"))
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = grpc_client(grpc);
        assert!(client.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
        let ready = ModelReadyRequest { name: "diabetes".into(), version: String::new() };
        assert!(client.model_ready(ready).await.unwrap().into_inner().ready);
    });
    // Closes the client's connection: an h2 client that stops answering (its runtime no longer
    // polled) would hold the drain for the whole shutdown_grace.
    drop(rt);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = wait_exit(&mut child, Duration::from_secs(20), "serve did not stop after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn on_sigterm_readiness_turns_false_first_and_requests_are_served_through_the_drain_delay() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "routes.yaml",
        &format!(
            "server:\n  drain_delay: 4s\n  insecure_unsigned_feedback: true\nbackends:\n  - name: b\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: m\n    backend: b\n",
            model("breast-cancer-v1.onnx")
        ),
    );
    let (mut child, addr, _) = spawn_serve_admin(file.to_str().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let ready =
        |rt: &tokio::runtime::Runtime| rt.block_on(async { get(&format!("http://{addr}/v2/health/ready")).await });
    assert_eq!(ready(&rt).status, http::StatusCode::OK);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    // Readiness turns false at once...
    let mut answer = ready(&rt);
    for _ in 0..100 {
        if answer.status != http::StatusCode::OK {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        answer = ready(&rt);
    }
    assert_eq!(answer.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.error().contains("shutting down"), "{}", answer.error());
    // ...while inference is still answered during the drain delay.
    let mut input = expected_outputs()["models"]["breast-cancer-v1"]["inputs"]["input"].clone();
    input["name"] = serde_json::json!("input");
    let served = rt.block_on(async {
        post_json(&format!("http://{addr}/v2/models/m/infer"), &serde_json::json!({"inputs": [input]})).await
    });
    assert_eq!(served.status, http::StatusCode::OK, "{}", served.error());
    assert!(child.try_wait().unwrap().is_none(), "still running during the drain delay");
    let status = wait_exit(&mut child, Duration::from_secs(30), "serve did not stop after the drain");
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_to_start_without_a_feedback_key_unless_the_file_allows_unsigned_ids() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "routes.yaml",
        &format!(
            "backends:\n  - name: b\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: m\n    backend: b\n",
            model("breast-cancer-v1.onnx")
        ),
    );
    let serve = |config: &str, key: Option<&str>| {
        let mut c = modelgate();
        c.args([
            "serve",
            "--config",
            config,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path().join("state"));
        match key {
            Some(k) => c.env("MODELGATE_FEEDBACK_KEY", k),
            None => c.env_remove("MODELGATE_FEEDBACK_KEY"),
        };
        c
    };
    for key in [None, Some("")] {
        let out = serve(file.to_str().unwrap(), key).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{key:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let f = file.display();
        assert!(stderr.contains(&format!("refusing to serve {f} without MODELGATE_FEEDBACK_KEY")), "{stderr}");
        assert!(stderr.contains(&format!("`insecure_unsigned_feedback: true` under `server:` in {f}")), "{stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    }
    // The demo file says insecure_unsigned_feedback: true, so it serves without a key.
    let mut child = Served(serve("routes.yaml", None).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("modelgate: listening on http://127.0.0.1:"), "{line:?}");
}

#[test]
fn every_acknowledged_answer_is_in_the_capture_files_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let captures = dir.path().join("captures");
    let config = write(
        &dir,
        "routes.yaml",
        &format!(
            "backends:\n  - name: bc\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: bc\n    backend: bc\n    \
             capture: {{dir: \"{}\", max_file_bytes: 4096}}\n",
            model("breast-cancer-v1.onnx"),
            captures.display()
        ),
    );
    let (mut child, addr) = spawn_serve(config.to_str().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let acknowledged = rt.block_on(async {
        let e = &expected_outputs()["models"]["breast-cancer-v1"];
        let mut input = e["inputs"]["input"].clone();
        input["name"] = serde_json::json!("input");
        let body = serde_json::json!({"inputs": [input]});
        let url = format!("http://{addr}/v2/models/bc/infer");
        let answers = futures_join(&url, &body, 64).await;
        answers.into_iter().filter(|s| *s == http::StatusCode::OK).count()
    });
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    wait_exit(&mut child, Duration::from_secs(20), "serve did not stop after SIGTERM");
    let mut answers = 0;
    for f in std::fs::read_dir(&captures).unwrap() {
        for line in std::fs::read_to_string(f.unwrap().path()).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            answers += usize::from(v["type"] == "answer");
        }
    }
    assert_eq!(acknowledged, 64);
    assert_eq!(answers, acknowledged, "every acknowledged answer was captured and reached the file");
}

/// `n` inference posts at once; their statuses.
async fn futures_join(url: &str, body: &serde_json::Value, n: usize) -> Vec<http::StatusCode> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (url, body) = (url.to_string(), body.clone());
            tokio::spawn(async move { post_json(&url, &body).await.status })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
