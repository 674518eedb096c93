//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService` on
//! `server.grpc_listen`): real sockets, real ONNX Runtime, the shipped models, and the client
//! generated from proto/grpc_service.proto. The same routing, windows and errors as HTTP.

mod support;

use http::StatusCode;
use modelgate::protocol::grpc::pb::model_infer_request::InferRequestedOutputTensor;
use modelgate::protocol::grpc::pb::{
    ModelInferRequest, ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest,
    ServerReadyRequest,
};
use serde_json::{json, Value};
use std::time::Duration;
use support::grpc::*;
use support::*;
use tonic::{Code, Request};

fn routes(extra: &str) -> String {
    format!(
        r#"
server:
  max_body_bytes: 65536
  grpc_listen: "127.0.0.1:0"
backends:
  - name: bc-v1
    onnx: {{path: "{v1}"}}
  - name: bc-v2
    onnx: {{path: "{v2}"}}
  - name: diabetes-v1
    onnx: {{path: "{diabetes}"}}
  - name: slow
    onnx: {{path: "{v1}"}}
    fault: {{delay: 200ms}}
  - name: remote
    upstream: {{url: "http://127.0.0.1:9"}}
routes:
  - model: breast-cancer
    backend: bc-v1
  - model: diabetes
    backend: diabetes-v1
  - model: canary
    strategy:
      canary: {{stable: bc-v1, canary: bc-v2, weight: 50, sticky: {{header: x-user-id}}}}
  - model: slow
    backend: slow
    max_concurrency: 1
  - model: remote
    backend: remote
  - model: shadowed
    backend: bc-v1
    shadow: {{backend: bc-v2, percent: 100}}
{extra}"#,
        v1 = model("breast-cancer-v1.onnx"),
        v2 = model("breast-cancer-v2.onnx"),
        diabetes = model("diabetes-v1.onnx"),
    )
}

#[tokio::test]
async fn infer_with_typed_and_raw_contents_matches_python_onnxruntime() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    for (route, model) in [("breast-cancer", "breast-cancer-v1"), ("diabetes", "diabetes-v1")] {
        let (name, input, expected) = recorded(model);
        for raw in [false, true] {
            let what = format!("{route} (raw: {raw})");
            let resp =
                client.model_infer(request(route, &name, &input, raw)).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            let (meta, resp) = (resp.metadata().clone(), resp.into_inner());
            assert_eq!((resp.model_name.as_str(), resp.id.as_str()), (route, format!("req-{route}").as_str()));
            assert_eq!(resp.model_version, model.replace("breast-cancer", "bc"));
            assert_eq!(header(&meta, "x-modelgate-variant"), resp.model_version);
            assert_eq!(resp.raw_output_contents.is_empty(), !raw, "{what}: raw inputs are answered with raw outputs");
            assert_eq!(resp.outputs.len(), expected.as_object().unwrap().len(), "{what}");
            for out in &resp.outputs {
                let want = &expected[&out.name];
                assert_eq!(out.datatype, want["datatype"].as_str().unwrap(), "{what}.{}", out.name);
                assert_eq!(out.shape, shape(&want["shape"]), "{what}.{}", out.name);
                let (got, want) = (output_values(&resp, &out.name), floats(&want["data"]));
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                        "{what}.{}: got {g}, onnxruntime gave {w}",
                        out.name
                    );
                }
            }
            // The gateway request id is the HTTP one: /v2/feedback takes it.
            let id = header(&meta, "x-modelgate-request-id");
            let fb = post_json(&gw.url("/v2/feedback"), &json!({"request_id": id, "conversion": true})).await;
            assert_eq!(fb.status, StatusCode::OK, "{what}: {:?}", fb.body);
            assert!(!header(&meta, "x-request-id").is_empty());
        }
    }
    // Selected outputs only.
    let (name, input, _) = recorded("breast-cancer-v1");
    let mut req = request("breast-cancer", &name, &input, true);
    req.outputs = vec![InferRequestedOutputTensor { name: "label".into(), parameters: Default::default() }];
    let resp = client.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["label"]);
    assert_eq!(resp.raw_output_contents.len(), 1);
}

#[tokio::test]
async fn metadata_and_health_rpcs() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    assert!(client.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let server = client.server_metadata(ServerMetadataRequest {}).await.unwrap().into_inner();
    let http = get(&gw.url("/v2")).await.json();
    assert_eq!(
        (server.name.as_str(), server.version.as_str()),
        (http["name"].as_str().unwrap(), http["version"].as_str().unwrap())
    );
    let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(client.model_ready(ready("diabetes", "")).await.unwrap().into_inner().ready);
    assert!(!client.model_ready(ready("nope", "")).await.unwrap().into_inner().ready);
    let mut pinned = Request::new(ready("canary", "no-such-variant"));
    pinned.metadata_mut().insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse().unwrap());
    assert!(!client.model_ready(pinned).await.unwrap().into_inner().ready);

    let meta =
        client.model_metadata(ModelMetadataRequest { name: "diabetes".into(), version: String::new() }).await.unwrap();
    assert_eq!(header(meta.metadata(), "x-modelgate-variant"), "diabetes-v1");
    let meta = meta.into_inner();
    let http = get(&gw.url("/v2/models/diabetes")).await.json();
    assert_eq!(meta.name, "diabetes");
    assert_eq!(meta.platform, http["platform"].as_str().unwrap());
    assert_eq!(meta.versions, ["diabetes-v1"]);
    let (input, output) = (&meta.inputs[0], &meta.outputs[0]);
    assert_eq!((input.name.as_str(), input.datatype.as_str()), (http["inputs"][0]["name"].as_str().unwrap(), "FP64"));
    assert_eq!(input.shape, shape(&http["inputs"][0]["shape"]));
    assert_eq!(output.name, http["outputs"][0]["name"].as_str().unwrap());
    let e = client.model_metadata(ModelMetadataRequest { name: "nope".into(), version: String::new() }).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn bad_inputs_are_refused_with_the_http_message_and_its_grpc_code() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    let (name, input, _) = recorded("breast-cancer-v1");
    let good = request("breast-cancer", &name, &input, false);
    let http_error = |body: Value| {
        let url = gw.url("/v2/models/breast-cancer/infer");
        async move { post_json(&url, &body).await.error() }
    };
    let one_row: Vec<f64> = floats(&input["data"])[..30].to_vec();

    let mut unknown = good.clone();
    unknown.model_name = "nope".into();
    let e = client.model_infer(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let http = post_json(&gw.url("/v2/models/nope/infer"), &json!({"inputs": []})).await.error();
    assert_eq!(e.message(), http);

    // (mistake, the gRPC request, the same mistake over HTTP)
    let mut cases: Vec<(&str, ModelInferRequest, Value)> = Vec::new();
    let mut r = good.clone();
    r.inputs[0].name = "features".into();
    cases.push((
        "wrong input name",
        r,
        json!({"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32", "data": one_row}]}),
    ));
    let mut r = good.clone();
    r.inputs[0].datatype = "FP64".into();
    cases.push((
        "wrong datatype",
        r,
        json!({"inputs": [{"name": name, "shape": [1, 30], "datatype": "FP64", "data": one_row}]}),
    ));
    let mut r = good.clone();
    r.inputs[0].shape = vec![5, 29];
    cases.push((
        "wrong shape",
        r,
        json!({"inputs": [{"name": name, "shape": [5, 29], "datatype": "FP32", "data": one_row}]}),
    ));
    let mut r = good.clone();
    r.inputs[0].shape = vec![1, 30];
    r.inputs[0].contents.as_mut().unwrap().fp32_contents.truncate(29);
    cases.push((
        "too few elements",
        r,
        json!({"inputs": [{"name": name, "shape": [1, 30], "datatype": "FP32", "data": &one_row[..29]}]}),
    ));
    // A shape of 2^40 rows with one row of data: refused by counting, nothing allocated for it.
    let mut r = good.clone();
    r.inputs[0].shape = vec![1 << 40, 30];
    r.inputs[0].contents.as_mut().unwrap().fp32_contents.truncate(30);
    cases.push((
        "huge shape",
        r,
        json!({"inputs": [{"name": name, "shape": [1u64 << 40, 30], "datatype": "FP32", "data": one_row}]}),
    ));
    for (what, req, body) in cases {
        let e = client.model_infer(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        assert_eq!(e.message(), http_error(body).await, "{what}: gRPC and HTTP give the same message");
        assert_eq!(header(e.metadata(), "x-modelgate-variant"), "bc-v1", "{what}");
    }

    // Raw contents whose length does not fit the shape and datatype.
    let mut r = request("breast-cancer", &name, &input, true);
    r.raw_input_contents[0].pop();
    let e = client.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("(600 bytes), its raw_input_contents has 599 bytes"), "{}", e.message());
    // Elements in the field of another datatype.
    let mut r = good.clone();
    let c = r.inputs[0].contents.as_mut().unwrap();
    c.fp64_contents = c.fp32_contents.drain(..).map(f64::from).collect();
    let e = client.model_infer(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("FP32 elements go in contents.fp32_contents"), "{}", e.message());

    // A message over max_body_bytes (64 KiB) is refused before it is read whole.
    let mut big = request("breast-cancer", &name, &input, true);
    big.inputs[0].shape = vec![1000, 30];
    big.raw_input_contents[0] = vec![0; 1000 * 30 * 4];
    let e = client.model_infer(big).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("max_body_bytes of 65536 bytes"), "{}", e.message());
    // The connection is still good.
    client.model_infer(good).await.unwrap();
}

#[tokio::test]
async fn grpc_and_http_share_sticky_variants_and_windows() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    let (name, input, _) = recorded("breast-cancer-v1");
    let http_body =
        json!({"inputs": [{"name": name, "shape": shape(&input["shape"]), "datatype": "FP32", "data": input["data"]}]});
    let mut seen = std::collections::HashSet::new();
    const USERS: usize = 24;
    for user in 0..USERS {
        let key = format!("user-{user}");
        let mut req = Request::new(request("canary", &name, &input, user % 2 == 0));
        req.metadata_mut().insert("x-user-id", key.parse().unwrap());
        let by_grpc = client.model_infer(req).await.unwrap();
        let grpc_variant = header(by_grpc.metadata(), "x-modelgate-variant");
        assert_eq!(grpc_variant, by_grpc.get_ref().model_version);
        let url = gw.url("/v2/models/canary/infer");
        let by_http = send(http::Method::POST, &url, http_body.to_string(), &[("x-user-id", &key)]).await;
        assert_eq!(by_http.status, StatusCode::OK);
        assert_eq!(
            by_http.headers["x-modelgate-variant"],
            grpc_variant.as_str(),
            "user {key}: the same variant both ways"
        );
        seen.insert(grpc_variant);
    }
    assert_eq!(seen.len(), 2, "a 50% canary gives both variants to {USERS} users");
    // Both kinds of traffic land in the same step windows.
    let stats = get(&gw.admin_url("/admin/stats")).await.json();
    let route = stats["routes"].as_array().unwrap().iter().find(|r| r["route"] == "canary").unwrap().clone();
    let (requests, units) = route["variants"].as_array().unwrap().iter().fold((0, 0), |(r, u), v| {
        (r + v["step"]["requests"].as_u64().unwrap(), u + v["step"]["units"].as_u64().unwrap())
    });
    assert_eq!(requests, 2 * USERS as u64, "{route}");
    assert_eq!(units, USERS as u64, "a user is one unit whichever protocol it used: {route}");
}

#[tokio::test]
async fn deadlines_shedding_and_upstream_routes() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    let (name, input, _) = recorded("breast-cancer-v1");

    // A client deadline shorter than the backend's injected 200ms delay.
    let mut req = Request::new(request("slow", &name, &input, true));
    req.set_timeout(Duration::from_millis(30));
    let e = client.model_infer(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("grpc-timeout"), "{}", e.message());
    let metrics = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    assert!(
        metrics.lines().any(|l| l.starts_with("modelgate_requests_total{")
            && l.contains(r#"route="slow""#)
            && l.contains(r#"code="504""#)),
        "the cut-off answer counts against the variant as a 504:\n{metrics}"
    );

    // The route takes one request at a time: others meanwhile are shed with UNAVAILABLE.
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (mut c, r) = (gw.grpc_client(), request("slow", &name, &input, true));
            tokio::spawn(async move { c.model_infer(r).await })
        })
        .collect();
    let mut shed = Vec::new();
    for call in calls {
        if let Err(e) = call.await.unwrap() {
            shed.push(e);
        }
    }
    assert!(!shed.is_empty() && shed.len() < 3, "one call runs, the others are shed: {shed:?}");
    for e in shed {
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("retry after 1s"), "{}", e.message());
        assert_eq!(header(e.metadata(), "grpc-retry-pushback-ms"), "1000");
    }

    // An upstream that cannot be reached: UNAVAILABLE, counted against the variant.
    let e = client.model_infer(request("remote", &name, &input, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test]
async fn calls_to_upstream_routes_are_forwarded_as_oip_json() {
    let upstream = Gateway::start(&format!(
        "backends:\n  - name: v2\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: breast-cancer\n    backend: v2\n",
        model("breast-cancer-v2.onnx")
    ))
    .await;
    let extra = "  - model: remote-bc\n    backend: up\n    upstream_model: breast-cancer\n";
    let yaml = routes(extra)
        .replace("routes:\n", &format!("  - name: up\n    upstream: {{url: \"{}\"}}\nroutes:\n", upstream.url("")));
    let gw = Gateway::start(&yaml).await;
    let mut client = gw.grpc_client();
    let (name, input, expected) = recorded("breast-cancer-v2");
    for raw in [false, true] {
        let resp = client.model_infer(request("remote-bc", &name, &input, raw)).await.unwrap();
        assert_eq!(header(resp.metadata(), "x-modelgate-variant"), "up", "the gateway's variant");
        let resp = resp.into_inner();
        assert_eq!(
            (resp.model_name.as_str(), resp.model_version.as_str(), resp.id.as_str()),
            ("remote-bc", "v2", "req-remote-bc")
        );
        assert_eq!(resp.raw_output_contents.is_empty(), !raw);
        for out in ["label", "probabilities"] {
            let (got, want) = (output_values(&resp, out), floats(&expected[out]["data"]));
            assert_eq!(got.len(), want.len(), "{out}");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{out}: got {g}, onnxruntime gave {w}");
            }
        }
    }
    // The upstream's refusal, under the client-facing name, with its gRPC code.
    let mut bad = request("remote-bc", &name, &input, false);
    bad.inputs[0].shape = vec![5, 29];
    bad.inputs[0].contents.as_mut().unwrap().fp32_contents.truncate(5 * 29);
    let e = client.model_infer(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("expected shape [-1, 30]"), "{}", e.message());
    // Metadata is relayed under the route's name.
    let meta = client.model_metadata(ModelMetadataRequest { name: "remote-bc".into(), version: String::new() }).await;
    let meta = meta.unwrap().into_inner();
    assert_eq!(meta.name, "remote-bc");
    assert_eq!(meta.inputs[0].shape, vec![-1, 30]);
    assert_eq!(meta.outputs.len(), 2);
    let windows = get(&gw.admin_url("/admin/stats")).await.json();
    let route = windows["routes"].as_array().unwrap().iter().find(|r| r["route"] == "remote-bc").unwrap().clone();
    assert_eq!(route["variants"][0]["step"]["requests"], 3, "{route}");
}

#[tokio::test]
async fn a_shadow_gets_a_copy_of_grpc_requests_and_agreement_is_recorded() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    let (name, input, _) = recorded("breast-cancer-v1");
    const CALLS: u64 = 6;
    for i in 0..CALLS {
        let resp = client.model_infer(request("shadowed", &name, &input, i % 2 == 0)).await.unwrap();
        assert_eq!(resp.get_ref().model_version, "bc-v1", "the client only sees the primary");
    }
    // Copies run after the answers; wait for them to settle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let routes = get(&gw.admin_url("/admin/routes")).await.json();
        let route = routes["routes"].as_array().unwrap().iter().find(|r| r["name"] == "shadowed").unwrap().clone();
        let s = route["shadow"]["stats"].clone();
        if s["sent"].as_u64() == Some(CALLS) && s["rows_compared"].as_u64() == Some(CALLS * 5) {
            assert_eq!(s["failed"], 0, "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stream_answers_each_request_in_turn_and_a_refusal_does_not_end_it() {
    let gw = Gateway::start(&routes("")).await;
    let mut client = gw.grpc_client();
    let (name, input, expected) = recorded("breast-cancer-v1");
    let mut bad = request("breast-cancer", &name, &input, false);
    bad.inputs[0].name = "nope".into();
    let first = request("breast-cancer", &name, &input, true);
    let mut last = request("canary", &name, &input, false);
    last.id = "third".into();
    let mut request = Request::new(tokio_stream::iter(vec![first, bad, last]));
    request.metadata_mut().insert("x-user-id", "streamer".parse().unwrap());
    let mut answers = client.model_stream_infer(request).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(answer) = answers.message().await.unwrap() {
        got.push(answer);
    }
    assert_eq!(got.len(), 3, "{got:?}");
    let ok = got[0].infer_response.as_ref().expect("the first is answered");
    assert!(got[0].error_message.is_empty());
    let probabilities: Vec<f64> =
        expected["probabilities"]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let answered = output_values(ok, "probabilities");
    assert!(answered.iter().zip(&probabilities).all(|(a, b)| (a - b).abs() < 1e-5), "{answered:?}");
    assert!(got[1].infer_response.is_none());
    assert!(got[1].error_message.contains("nope"), "{}", got[1].error_message);
    let third = got[2].infer_response.as_ref().expect("the stream went on after the refusal");
    assert_eq!((third.model_name.as_str(), third.id.as_str()), ("canary", "third"));
    // What ModelInfer carries in metadata is in each answer's parameters: variant and the
    // signed request id that feedback refers to.
    let param = |name: &str| match third.parameters.get(name).and_then(|p| p.parameter_choice.clone()) {
        Some(modelgate::protocol::grpc::pb::infer_parameter::ParameterChoice::StringParam(s)) => s,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(param("x-modelgate-variant"), third.model_version);
    let feedback = json!({"request_id": param("x-modelgate-request-id"), "conversion": true});
    assert_eq!(post_json(&gw.url("/v2/feedback"), &feedback).await.status, 200);
}
