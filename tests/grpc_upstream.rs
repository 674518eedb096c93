//! Upstream model servers over gRPC (`upstream.protocol: grpc`): gRPC and HTTP clients reach
//! them through every path (infer, metadata, configuration, readiness, shadow), under the
//! client-facing name, with the upstream's refusals as the same status and message. The
//! upstream is a real gRPC model server on 127.0.0.1 (another gateway, serving the model
//! in-process); answers are compared with Python onnxruntime's recorded outputs.

mod support;

use modelgate::protocol::grpc::pb::{ModelConfigRequest, ModelMetadataRequest};
use serde_json::{json, Value};
use std::time::Duration;
use support::grpc::*;
use support::*;
use tonic::{Code, Request};

async fn model_server() -> Gateway {
    Gateway::start(&format!(
        "server:\n  grpc_listen: \"127.0.0.1:0\"\nbackends:\n  - name: v1\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: breast-cancer\n    backend: v1\n",
        model("breast-cancer-v1.onnx")
    ))
    .await
}

fn routes(upstream: &str) -> String {
    format!(
        r#"
server:
  grpc_listen: "127.0.0.1:0"
backends:
  - name: local
    onnx: {{path: "{v1}"}}
  - name: remote
    upstream: {{url: "http://{upstream}", protocol: grpc}}
  - name: gone
    upstream: {{url: "http://127.0.0.1:9", protocol: grpc, connect_timeout: 200ms}}
routes:
  - model: grpc-bc
    backend: remote
    upstream_model: breast-cancer
  - model: mixed
    strategy:
      canary: {{stable: local, canary: remote, weight: 50, sticky: {{header: x-user}}}}
    upstream_model: breast-cancer
  - model: breast-cancer
    backend: local
    shadow: {{backend: remote, percent: 100}}
  - model: down
    backend: gone
"#,
        v1 = model("breast-cancer-v1.onnx"),
    )
}

fn http_body(name: &str, input: &Value) -> Value {
    json!({"id": "r1", "inputs": [{"name": name, "datatype": input["datatype"], "shape": input["shape"], "data": input["data"]}]})
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{got:?} vs {want:?}");
    }
}

#[tokio::test]
async fn grpc_and_http_clients_reach_a_grpc_upstream_under_the_client_facing_name() {
    let upstream = model_server().await;
    let gw = Gateway::start(&routes(&upstream.grpc.unwrap().to_string())).await;
    let (name, input, outputs) = recorded("breast-cancer-v1");
    let want = |out: &str| -> Vec<f64> {
        outputs[out]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let mut grpc = gw.grpc_client();

    // gRPC client → gRPC upstream, typed and raw contents; a pin header the gateway owns is
    // never passed on (the upstream, a gateway itself, would refuse an unknown variant).
    for raw in [false, true] {
        let mut req = Request::new(request("grpc-bc", &name, &input, raw));
        req.metadata_mut().insert("x-modelgate-variant", "remote".parse().unwrap());
        req.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
        let answer = grpc.model_infer(req).await.unwrap_or_else(|e| panic!("raw={raw}: {e:?}"));
        assert_eq!(header(answer.metadata(), "x-modelgate-variant"), "remote");
        let answer = answer.into_inner();
        assert_eq!(answer.model_name, "grpc-bc");
        assert_eq!(answer.id, "req-grpc-bc");
        for out in ["label", "probabilities"] {
            assert_close(&output_values(&answer, out), &want(out));
        }
    }

    // HTTP JSON client → gRPC upstream.
    let resp = send(
        http::Method::POST,
        &gw.url("/v2/models/grpc-bc/infer"),
        http_body(&name, &input).to_string(),
        &[("x-modelgate-variant", "remote"), PIN_AUTH],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.error());
    let answer = resp.json();
    assert_eq!((answer["model_name"].as_str(), answer["id"].as_str()), (Some("grpc-bc"), Some("r1")));
    assert_eq!(answer["model_version"], "v1", "the upstream's own version, as over HTTP");
    let probabilities = answer["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap();
    let got: Vec<f64> = probabilities["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_close(&got, &want("probabilities"));

    // Metadata, configuration and readiness, over both protocols, under the route's name.
    let meta = get(&gw.url("/v2/models/grpc-bc")).await.json();
    assert_eq!(meta["name"], "grpc-bc");
    assert_eq!(meta["inputs"][0]["name"], name.as_str());
    let gmeta = grpc
        .model_metadata(ModelMetadataRequest { name: "grpc-bc".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((gmeta.name.as_str(), gmeta.inputs[0].name.as_str()), ("grpc-bc", name.as_str()));
    let config = get(&gw.url("/v2/models/grpc-bc/config")).await.json();
    assert_eq!(config["name"], "grpc-bc");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32", "{config}");
    let gconfig = grpc
        .model_config(ModelConfigRequest { name: "grpc-bc".into(), version: String::new() })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(gconfig.name, "grpc-bc");
    assert_eq!(get(&gw.url("/v2/models/grpc-bc/ready")).await.status, 200);

    // The upstream's refusal: the same message over HTTP and gRPC, with the matching status,
    // naming the route's model, never the upstream's.
    let mut wrong = http_body(&name, &input);
    wrong["inputs"][0]["name"] = json!("nope");
    let http_refused = post_json(&gw.url("/v2/models/grpc-bc/infer"), &wrong).await;
    assert_eq!(http_refused.status, 400, "{}", http_refused.error());
    let mut bad = request("grpc-bc", &name, &input, false);
    bad.inputs[0].name = "nope".into();
    let e = grpc.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), http_refused.error());
    assert!(e.message().contains("nope") && !e.message().contains("\"breast-cancer\""), "{}", e.message());

    // An upstream that cannot be reached: UNAVAILABLE over gRPC, 502 over HTTP.
    let e = grpc.model_infer(request("down", &name, &input, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let http_down = post_json(&gw.url("/v2/models/down/infer"), &http_body(&name, &input)).await;
    assert_eq!(http_down.status, 502, "{}", http_down.error());
}

#[tokio::test]
async fn a_grpc_upstream_as_canary_and_as_shadow() {
    let upstream = model_server().await;
    let gw = Gateway::start(&routes(&upstream.grpc.unwrap().to_string())).await;
    let (name, input, _) = recorded("breast-cancer-v1");
    let mut grpc = gw.grpc_client();

    // A canary half in-process, half on the gRPC upstream: both kinds of client, every answer
    // correct, both variants seen.
    let mut seen = std::collections::HashSet::new();
    for user in 0..24 {
        let mut req = Request::new(request("mixed", &name, &input, user % 2 == 0));
        req.metadata_mut().insert("x-user", format!("u{user}").parse().unwrap());
        let answer = grpc.model_infer(req).await.unwrap();
        seen.insert(header(answer.metadata(), "x-modelgate-variant"));
        let user = format!("h{user}");
        let resp = send(
            http::Method::POST,
            &gw.url("/v2/models/mixed/infer"),
            http_body(&name, &input).to_string(),
            &[("x-user", user.as_str())],
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.error());
        assert_eq!(resp.json()["model_name"], "mixed");
        seen.insert(resp.headers["x-modelgate-variant"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A gRPC shadow gets a copy of HTTP and gRPC requests; the same model agrees every time.
    for _ in 0..5 {
        grpc.model_infer(request("breast-cancer", &name, &input, true)).await.unwrap();
        let resp = post_json(&gw.url("/v2/models/breast-cancer/infer"), &http_body(&name, &input)).await;
        assert_eq!(resp.status, 200);
    }
    let rows = 10 * input["shape"][0].as_u64().unwrap();
    let mut shadow = Value::Null;
    for _ in 0..100 {
        let routes = get(&gw.admin_url("/admin/routes")).await.json();
        let route = routes["routes"].as_array().unwrap().iter().find(|r| r["name"] == "breast-cancer").cloned();
        shadow = route.unwrap()["shadow"]["stats"].clone();
        if shadow["sent"].as_u64() == Some(10) && shadow["rows_compared"].as_u64() == Some(rows) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((shadow["sent"].as_u64(), shadow["rows_compared"].as_u64()), (Some(10), Some(rows)), "{shadow}");
    assert_eq!(shadow["failed"], 0, "{shadow}");
    assert_eq!(shadow["agreement"], 1.0, "{shadow}");
}
