//! One request pipeline for every way in: HTTP JSON, HTTP binary tensors (compressed or not),
//! gRPC and plain proxying are admitted, picked, counted and answered by the same steps in the
//! same order. Real sockets, real ONNX Runtime, a real upstream.

mod support;

use modelgate::protocol::grpc::pb::ModelInferRequest;
use serde_json::{json, Value};
use std::time::Duration;
use support::grpc::*;
use support::*;
use tonic::{Code, Request};

fn routes(upstream: &str) -> String {
    format!(
        r#"
server:
  grpc_listen: "127.0.0.1:0"
backends:
  - name: slow-model
    onnx: {{path: "{v1}"}}
    fault: {{delay: 2s}}
  - name: model
    onnx: {{path: "{v1}"}}
  - name: slow-web
    upstream: {{url: "{upstream}"}}
    fault: {{delay: 2s}}
routes:
  - model: busy
    backend: slow-model
    max_concurrency: 1
    overrides: deny
  - model: counted
    strategy:
      canary: {{stable: model, canary: slow-model, weight: 0, sticky: {{cookie: mg-user}}}}
  - path_prefix: /web/
    backend: slow-web
    max_concurrency: 1
    overrides: deny
"#,
        v1 = model("breast-cancer-v1.onnx"),
    )
}

fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let (labelled, bare) = (format!("{name}{{"), format!("{name} "));
    metrics
        .lines()
        .filter(|l| (l.starts_with(&labelled) || l.starts_with(&bare)) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(gw: &Gateway) -> String {
    String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string()
}

#[tokio::test]
async fn every_way_in_is_admitted_before_it_is_picked_and_counted_alike() {
    let upstream = Upstream::start(Duration::ZERO).await;
    let gw = Gateway::start(&routes(&upstream.url())).await;
    let (name, input, _) = recorded("breast-cancer-v1");
    let body = json!({"inputs": [{"name": name, "datatype": input["datatype"], "shape": input["shape"], "data": input["data"]}]});

    // Each limited route is taken by one slow request (its backend's injected 2 s delay).
    let busy = {
        let url = gw.url("/v2/models/busy/infer");
        let body = body.clone();
        tokio::spawn(async move { post_json(&url, &body).await })
    };
    let web = {
        let url = gw.url("/web/page");
        tokio::spawn(async move { get(&url).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Meanwhile every way in is shed (503 / UNAVAILABLE) before anything else is looked at: a
    // pin the route forbids, a body that is not even valid gzip, are never read.
    let pinned = send(
        http::Method::POST,
        &gw.url("/v2/models/busy/versions/slow-model/infer"),
        body.to_string(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(pinned.status, 503, "HTTP JSON, pinned: {}", pinned.error());
    let garbage = send(
        http::Method::POST,
        &gw.url("/v2/models/busy/infer"),
        &b"not gzip at all"[..],
        &[("content-encoding", "gzip"), ("inference-header-content-length", "7")],
    )
    .await;
    assert_eq!(garbage.status, 503, "HTTP binary + gzip: {}", garbage.error());
    let mut grpc = gw.grpc_client();
    let mut message: ModelInferRequest = request("busy", &name, &input, true);
    message.model_version = "slow-model".into();
    let e = grpc.model_infer(Request::new(message.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "gRPC, pinned: {e:?}");
    assert!(e.message().contains("retry after"), "{}", e.message());
    let proxied = send(http::Method::GET, &gw.url("/web/page"), "", &[("x-modelgate-variant", "slow-web")]).await;
    assert_eq!(proxied.status, 503, "plain proxy, pinned: {}", proxied.error());
    for shed in [&pinned, &garbage, &proxied] {
        assert!(shed.headers.get("retry-after").is_some(), "{:?}", shed.headers);
        assert!(shed.headers.get("x-modelgate-variant").is_none(), "a shed request has no variant");
    }
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "modelgate_shed_requests_total", &[r#"route="busy""#]), 3.0, "{m}");
    assert_eq!(metric(&m, "modelgate_shed_requests_total", &[r#"route="/web/""#]), 1.0, "{m}");

    // Once the routes are free, the same pins reach the pick, and the policy refuses them alike.
    assert_eq!(busy.await.unwrap().status, 200);
    assert_eq!(web.await.unwrap().status, 200);
    let pinned = send(
        http::Method::POST,
        &gw.url("/v2/models/busy/versions/slow-model/infer"),
        body.to_string(),
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(pinned.status, 403, "{}", pinned.error());
    let e = grpc.model_infer(Request::new(message)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(e.message(), pinned.error(), "the same refusal, word for word");
    let proxied = send(http::Method::GET, &gw.url("/web/page"), "", &[("x-modelgate-variant", "slow-web")]).await;
    assert_eq!(proxied.status, 403, "{}", proxied.error());
    let m = metrics(&gw).await;
    let shed_and_refused = metric(&m, "modelgate_requests_total", &[r#"route="busy""#]);
    assert_eq!(shed_and_refused, 1.0, "only the admitted request counts for the variant:\n{m}");

    // Answers and failures after the pick count for the variant whichever way they came in,
    // and carry the same gateway headers (variant, signed request id, sticky cookie).
    let mut wrong = body.clone();
    wrong["inputs"][0]["name"] = json!("nope");
    let http_bad = post_json(&gw.url("/v2/models/counted/infer"), &wrong).await;
    assert_eq!(http_bad.status, 400);
    let mut grpc_bad = request("counted", &name, &input, false);
    grpc_bad.inputs[0].name = "nope".into();
    let e = grpc.model_infer(Request::new(grpc_bad)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(e.message(), http_bad.error());
    assert_eq!(header(e.metadata(), "x-modelgate-variant"), "model");
    assert!(header(e.metadata(), "set-cookie").starts_with("mg-user="));
    assert!(http_bad.headers["set-cookie"].to_str().unwrap().starts_with("mg-user="));
    let ok = post_json(&gw.url("/v2/models/counted/infer"), &body).await;
    assert_eq!(ok.status, 200);
    let answer = grpc.model_infer(Request::new(request("counted", &name, &input, true))).await.unwrap();
    assert!(answer.metadata().get("x-modelgate-request-id").is_some());
    let m = metrics(&gw).await;
    let count = |code: &str| {
        metric(
            &m,
            "modelgate_requests_total",
            &[r#"route="counted""#, r#"variant="model""#, &format!(r#"code="{code}""#)],
        )
    };
    assert_eq!((count("200"), count("400")), (2.0, 2.0), "{m}");
    let _: Value = ok.json();
}

#[tokio::test]
async fn a_full_listener_closes_its_idlest_connection_and_refuses_only_when_none_is_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&format!(
        "server:\n  max_connections: 2\nbackends:\n  - name: m\n    onnx: {{path: \"{m}\"}}\n  - name: slow\n    onnx: {{path: \"{m}\"}}\n    fault: {{delay: 5s}}\nroutes:\n  - model: m\n    backend: m\n  - model: slow\n    backend: slow\n",
        m = model("breast-cancer-v1.onnx")
    ))
    .await;
    let request = b"GET /v2/health/live HTTP/1.1\r\nhost: gw\r\n\r\n";
    // Sends one request on `conn` and reads what comes back before the connection idles.
    async fn ask(conn: &mut tokio::net::TcpStream, request: &[u8]) -> String {
        if conn.write_all(request).await.is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
            _ => String::new(),
        }
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        assert!(ask(&mut conn, request).await.starts_with("HTTP/1.1 200"), "within the limit");
        held.push(conn);
    }
    // Full, both idle: a third connection takes the place of the one idle the longest, which is
    // closed (its reads end).
    let mut third = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert!(ask(&mut third, request).await.starts_with("HTTP/1.1 200"), "the idlest connection made room");
    let mut first = held.remove(0);
    let read = tokio::time::timeout(Duration::from_secs(5), first.read(&mut [0u8; 64])).await;
    assert!(matches!(read, Ok(Ok(0))), "the connection idle the longest was closed: {read:?}");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "modelgate_connections_idle_closed_total", &[r#"listener="http""#]), 1.0, "{m}");
    assert_eq!(metric(&m, "modelgate_connections_refused_total", &[r#"listener="http""#]), 0.0, "{m}");

    // Full, none idle (both wait for a slow answer): a new connection is closed unanswered.
    let slow = raw_infer_post("slow");
    for conn in [&mut held[0], &mut third] {
        conn.write_all(slow.as_bytes()).await.unwrap();
    }
    let mut busy = false;
    for _ in 0..250 {
        if metric(&metrics(&gw).await, "modelgate_requests_in_flight", &[]) == 2.0 {
            busy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(busy, "both connections wait for their answers");
    let mut fourth = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    assert_eq!(ask(&mut fourth, request).await, "", "with none idle, a new connection is closed unanswered");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "modelgate_connections_refused_total", &[r#"listener="http""#]), 1.0, "{m}");
    // The busy connections are not cut: their answers come.
    for conn in [&mut held[0], &mut third] {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    }
}
