//! The official Triton clients (`tritonclient.http` and `tritonclient.grpc` from PyPI, in the
//! .venv that `scripts/python-env.sh` makes for `make test`) against every kind of route:
//! in-process, forwarded to another model server over HTTP and over gRPC, and every strategy, their answers compared
//! with Python onnxruntime on the same model files (tests/triton/conformance.py).

mod support;

use serde_json::{json, Value};
use support::*;

fn python() -> std::path::PathBuf {
    let p = root().join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: `make test` makes it (scripts/python-env.sh)", p.display());
    p
}

async fn conformance(gw: &Gateway, routes: &Value, modes: &str) {
    let diabetes = &expected_outputs()["models"]["diabetes-v1"]["inputs"]["features"];
    let width = diabetes["shape"][1].as_u64().unwrap() as usize;
    let row: Vec<Value> = diabetes["data"].as_array().unwrap()[..width].to_vec();
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root().join("tests/triton/conformance.py"))
        .arg("--url")
        .arg(gw.addr.to_string())
        .arg("--grpc-url")
        .arg(gw.grpc.expect("the gateway serves gRPC").to_string())
        .arg("--routes")
        .arg(routes.to_string())
        .arg("--modes")
        .arg(modes)
        .arg("--holdout")
        .arg(root().join("models/breast-cancer-holdout.json"))
        .arg("--diabetes")
        .arg(Value::from(row).to_string())
        .arg("--header")
        .arg(format!("authorization:Bearer {ADMIN_TOKEN}"));
    // The client blocks; the gateway serves on this runtime's other thread meanwhile.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient failed ({modes}):\n{stdout}\n{stderr}");
    assert!(stdout.contains("every answer matched onnxruntime"), "{stdout}");
    eprintln!("{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_triton_client_works_on_every_kind_of_route() {
    let (v1, v2, d1) = (model("breast-cancer-v1.onnx"), model("breast-cancer-v2.onnx"), model("diabetes-v1.onnx"));
    // Another model server, over HTTP and gRPC: the forwarded routes' upstream.
    let upstream = Gateway::start(&format!(
        "server:\n  grpc_listen: \"127.0.0.1:0\"\nbackends:\n  - name: v2\n    onnx: {{path: \"{v2}\"}}\nroutes:\n  - model: breast-cancer\n    backend: v2\n"
    ))
    .await;
    let gw = Gateway::start(&format!(
        r#"server:
  grpc_listen: "127.0.0.1:0"
backends:
  - name: bc-v1
    onnx: {{path: "{v1}"}}
  - name: bc-v2
    onnx: {{path: "{v2}"}}
  - name: diabetes-v1
    onnx: {{path: "{d1}"}}
  - name: remote
    upstream: {{url: "{up}"}}
  - name: remote-grpc
    upstream: {{url: "http://{up_grpc}", protocol: grpc}}
routes:
  - model: canary
    strategy:
      canary: {{stable: bc-v1, canary: bc-v2, weight: 50, sticky: {{header: x-user-id}}}}
  - model: bg
    strategy:
      blue_green: {{active: bc-v1, preview: bc-v2}}
  - model: ab
    strategy:
      ab_test: {{variants: {{bc-v1: 50, bc-v2: 50}}, sticky: {{cookie: mg_user}}}}
  - model: diabetes
    strategy:
      recreate: {{backend: diabetes-v1}}
  - model: shadowed
    backend: bc-v1
    shadow: {{backend: bc-v2, percent: 100}}
  - model: remote-breast-cancer
    backend: remote
    upstream_model: breast-cancer
  - model: grpc-breast-cancer
    backend: remote-grpc
    upstream_model: breast-cancer
"#,
        up = upstream.url(""),
        up_grpc = upstream.grpc.unwrap(),
    ))
    .await;
    let bc = json!({ "bc-v1": v1, "bc-v2": v2 });
    let routes = json!({
        "canary": bc,
        "bg": bc,
        "ab": bc,
        "diabetes": { "diabetes-v1": d1 },
        "shadowed": bc,
        "remote-breast-cancer": { "v2": v2 },
        "grpc-breast-cancer": { "v2": v2 },
    });
    conformance(&gw, &routes, "default,default-gzip,mixed,json,json-gzip,json-deflate,grpc,grpc-gzip,grpc-stream")
        .await;
}
