//! Forwarding to real upstream HTTP servers started by the test.

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

fn routes(upstream: &str, extra: &str) -> String {
    format!(
        r#"
server:
  max_body_bytes: 100000
backends:
  - name: up
    upstream: {{url: "{upstream}/base", connect_timeout: 500ms, request_timeout: 300ms}}
  - name: up-root
    upstream: {{url: "{upstream}"}}
{extra}
routes:
  - path_prefix: /api/
    backend: up
    rewrite: /v1/
  - path_prefix: /keep
    backend: up-root
"#
    )
}

#[tokio::test]
async fn plain_proxy_forwards_method_path_query_headers_and_body() {
    let up = Upstream::start(Duration::from_millis(0)).await;
    let gw = Gateway::start(&routes(&up.url(), "")).await;
    let a = send(
        Method::PUT,
        &gw.url("/api/items/7?x=1&y=two"),
        "payload-bytes",
        &[("x-custom", "kept"), ("connection", "keep-alive, x-drop"), ("x-drop", "gone"), ("te", "trailers")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-upstream"], "yes");
    assert!(!a.headers.contains_key("x-hop"), "hop-by-hop header named in the upstream's Connection leaked");
    let seen = up.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.path_and_query, "/base/v1/items/7?x=1&y=two");
    assert_eq!(seen.body, "payload-bytes");
    assert_eq!(seen.headers["x-custom"], "kept");
    assert!(!seen.headers.contains_key("x-drop"));
    assert!(!seen.headers.contains_key("te"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["host"], up.addr.to_string());

    // Without a rewrite the prefix is kept; the bare prefix matches too.
    send(Method::GET, &gw.url("/keep"), "", &[]).await;
    assert_eq!(up.last().path_and_query, "/keep/");
    send(Method::DELETE, &gw.url("/keep/a/b"), "", &[]).await;
    assert_eq!(up.last().path_and_query, "/keep/a/b");
    assert_eq!(up.last().method, Method::DELETE);

    // Upstream statuses pass through untouched.
    // Dot segments cannot climb out of a prefix; encoded ones are refused.
    let a = send(Method::GET, &gw.url("/keep/../status/418"), "", &[]).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "a path outside every prefix is not forwarded: {:?}", a.body);
    assert_eq!(a.error(), "no route for path \"/status/418\"");
    let a = send(Method::GET, &gw.url("/keep/%2e%2e/status/418"), "", &[]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    send(Method::GET, &gw.url("/keep/x/../y"), "", &[]).await;
    assert_eq!(up.last().path_and_query, "/keep/y");
    let a = send(Method::GET, &gw.url("/api/status/418"), "", &[]).await;
    assert_eq!(up.last().path_and_query, "/base/v1/status/418");
    assert_eq!(a.status, StatusCode::OK); // the echo upstream only reads /status/ at its root
}

#[tokio::test]
async fn a_large_body_is_streamed_and_the_limit_applies() {
    let up = Upstream::start(Duration::from_millis(0)).await;
    let gw = Gateway::start(&routes(&up.url(), "")).await;
    let body = "x".repeat(90_000);
    let a = send(Method::POST, &gw.url("/keep/upload"), body.clone(), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().body.len(), 90_000);
    let hits = up.hits.load(std::sync::atomic::Ordering::SeqCst);
    let a = send(Method::POST, &gw.url("/keep/upload"), "x".repeat(100_001), &[]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.error(), "request body is larger than the limit of 100000 bytes");
    assert_eq!(
        up.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "a declared oversized body is refused before forwarding"
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_too_slow_is_504() {
    let up = Upstream::start(Duration::from_secs(5)).await;
    // A port that was just free: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let extra = format!("  - name: dead\n    upstream: {{url: \"http://{dead}\"}}\n");
    let yaml = routes(&up.url(), &extra).replace("routes:\n", "routes:\n  - path_prefix: /dead/\n    backend: dead\n");
    let gw = Gateway::start(&yaml).await;

    let a = get(&gw.url("/dead/anything")).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let e = a.error();
    assert!(e.starts_with(&format!("upstream \"dead\" at http://{dead}/ refused the connection")), "{e}");

    let started = Instant::now();
    drop(gw);
    let yaml = format!(
        "backends:\n  - name: slow\n    upstream: {{url: \"{}\", request_timeout: 200ms}}\nroutes:\n  - path_prefix: /slow/\n    backend: slow\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    let a = get(&gw.url("/slow/x")).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.error(), "upstream \"slow\" did not answer within 200ms");
    assert!(started.elapsed() < Duration::from_secs(5), "the gateway gave up before the upstream answered");
    // The gateway still serves afterwards.
    assert_eq!(get(&gw.url("/v2/health/live")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn oip_routes_forward_to_another_model_server() {
    // The upstream is a second gateway serving the real model: a real OIP model server.
    let model_server = Gateway::start(&format!(
        "backends:\n  - name: v2\n    onnx: {{path: \"{}\"}}\nroutes:\n  - model: breast-cancer\n    backend: v2\n",
        model("breast-cancer-v2.onnx")
    ))
    .await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: remote\n    upstream: {{url: \"{}\"}}\nroutes:\n  - model: remote-risk\n    backend: remote\n    upstream_model: breast-cancer\n",
        model_server.url("")
    ))
    .await;
    let e = &expected_outputs()["models"]["breast-cancer-v2"];
    let mut input = e["inputs"]["input"].clone();
    input["name"] = json!("input");
    let a = post_json(&gw.url("/v2/models/remote-risk/infer"), &json!({"id": "r1", "inputs": [input]})).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.headers["x-modelgate-variant"], "remote");
    let body = a.json();
    assert_eq!(body["id"], "r1");
    assert_eq!(body["model_name"], "remote-risk", "the client-facing name, not the upstream's");
    assert_eq!(body["outputs"][0]["data"], e["outputs"]["label"]["data"]);
    let meta = get(&gw.url("/v2/models/remote-risk")).await;
    assert_eq!(meta.json()["inputs"][0]["shape"], json!([-1, 30]));
    assert_eq!(meta.json()["name"], "remote-risk", "{:?}", meta.json());
    // Pinning the forwarded route's variant reaches the upstream without the gateway's header.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let mut pin_input = e["inputs"]["input"].clone();
    pin_input["name"] = json!("input");
    let pinned = send(
        Method::POST,
        &gw.url("/v2/models/remote-risk/infer"),
        json!({"inputs": [pin_input]}).to_string(),
        &[("x-modelgate-variant", "remote"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(pinned.status, StatusCode::OK, "{:?}", pinned.body);
    assert_eq!(get(&gw.url("/v2/models/remote-risk/ready")).await.status, StatusCode::OK);
    // An upstream's own errors come through as they are.
    let a = post_json(&gw.url("/v2/models/remote-risk/infer"), &json!({"inputs": []})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.error().starts_with("missing input \"input\""), "{}", a.error());
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let up = Upstream::start(Duration::from_millis(400)).await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: up\n    upstream: {{url: \"{}\"}}\nroutes:\n  - path_prefix: /slow/\n    backend: up\n",
        up.url()
    ))
    .await;
    let url = gw.url("/slow/work");
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(&url).await });
    // Wait until the upstream holds the request, then shut down.
    while up.hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.shutdown().await;
    let a = in_flight.await.unwrap();
    assert_eq!(a.status, StatusCode::OK, "the in-flight request finished");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no new connections after shutdown");
}

#[tokio::test]
async fn a_route_at_its_concurrency_limit_sheds_with_503_at_once() {
    let up = Upstream::start(Duration::from_secs(2)).await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: up\n    upstream: {{url: \"{}\"}}\nroutes:\n  - path_prefix: /slow/\n    backend: up\n    max_concurrency: 2\n",
        up.url()
    ))
    .await;
    let url = gw.url("/slow/work");
    let held: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url).await }
            })
        })
        .collect();
    while up.hits.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let shed = get(&url).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers["retry-after"], "1");
    assert_eq!(shed.error(), "route \"/slow/\" is at its limit of 2 concurrent requests; retry shortly");
    assert!(held.iter().all(|h| !h.is_finished()), "shed at once, not queued behind the slow requests");
    // A shed request's body is read and dropped, so its connection stays usable.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut conn, driver) = hyper::client::conn::http1::handshake::<_, http_body_util::Full<bytes::Bytes>>(
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(driver);
    let big = http::Request::post("/slow/upload")
        .header("host", "gw")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; 40_000])))
        .unwrap();
    assert_eq!(conn.send_request(big).await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    let live = http::Request::get("/v2/health/live").header("host", "gw").body(Default::default()).unwrap();
    let again = conn.send_request(live).await.expect("the connection was kept after the 503");
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(up.hits.load(std::sync::atomic::Ordering::SeqCst), 2, "the shed request never reached the upstream");
    for h in held {
        assert_eq!(h.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(get(&url).await.status, StatusCode::OK, "room again once they finished");
    let metrics = String::from_utf8(get(&gw.admin_url("/metrics")).await.body.to_vec()).unwrap();
    assert!(metrics.contains("modelgate_shed_requests_total{route=\"/slow/\"} 2"), "{metrics}");
}

fn dead_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_gets_no_traffic_then_is_readmitted() {
    let good = Upstream::start(Duration::ZERO).await;
    let bad = Upstream::start_with(Duration::ZERO, Some(StatusCode::INTERNAL_SERVER_ERROR)).await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: pool\n    upstream:\n      urls: [\"{}\", \"{}\"]\n      outlier: {{consecutive_failures: 3, ejection_time: 1s}}\nroutes:\n  - path_prefix: /svc/\n    backend: pool\n",
        good.url(),
        bad.url()
    ))
    .await;
    let hits = |u: &Upstream| u.hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut statuses = Vec::new();
    while gw.upstream("/svc/").ejected.is_empty() {
        statuses.push(get(&gw.url("/svc/x")).await.status);
        assert!(statuses.len() < 500, "never ejected");
    }
    assert_eq!(hits(&bad), 3, "ejected after 3 failures in a row");
    assert!(statuses.contains(&StatusCode::INTERNAL_SERVER_ERROR), "its failures were answered as they were");
    // Ejected: no traffic at all.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/svc/x")).await.status, StatusCode::OK);
    }
    assert_eq!(hits(&bad), 3, "an ejected endpoint gets no traffic");
    // Re-admitted when the ejection time is up.
    let started = Instant::now();
    while !gw.upstream("/svc/").ejected.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        get(&gw.url("/svc/x")).await;
    }
    assert!(hits(&bad) > 3, "re-admitted");
    assert!(gw.upstream("/svc/").ejections >= 1);
}

#[tokio::test]
async fn retries_go_to_another_endpoint_and_never_exceed_the_budget() {
    let good = Upstream::start(Duration::ZERO).await;
    let gw = Gateway::start(&format!(
        "backends:\n  - name: pool\n    upstream:\n      urls: [\"http://{}\", \"{}\"]\n      outlier: {{consecutive_failures: 0}}\n  - name: dead\n    upstream:\n      urls: [\"http://{}\", \"http://{}\"]\n      outlier: {{consecutive_failures: 0}}\n      retries: {{attempts: 2, budget_percent: 20, min_per_second: 1}}\nroutes:\n  - path_prefix: /svc/\n    backend: pool\n  - path_prefix: /dead/\n    backend: dead\n",
        dead_port(),
        good.url(),
        dead_port(),
        dead_port()
    ))
    .await;
    // One endpoint refuses connections: a bodiless GET is retried on the other, unseen by clients.
    for _ in 0..30 {
        assert_eq!(get(&gw.url("/svc/x")).await.status, StatusCode::OK);
    }
    assert!(gw.upstream("/svc/").retries > 0);
    // A POST with a body is never retried: it may have been half sent.
    let before = gw.upstream("/svc/").retries;
    for _ in 0..30 {
        send(Method::POST, &gw.url("/svc/x"), "payload", &[]).await;
    }
    assert_eq!(gw.upstream("/svc/").retries, before, "bodies are not retried");
    // Everything refuses: retries stop at the budget (20% of the last 10 s of requests, plus a
    // reserve of min_per_second × 10 s).
    for _ in 0..200 {
        assert_eq!(get(&gw.url("/dead/x")).await.status, StatusCode::BAD_GATEWAY);
    }
    let s = gw.upstream("/dead/");
    assert!(s.retries <= 40 + 10, "{s:?}: at most 20% of 200 requests plus the reserve of 10");
    assert!(s.retries_refused > 0, "{s:?}");
    println!("retry budget: {} retries, {} refused over 200 failing requests", s.retries, s.retries_refused);
}

#[tokio::test]
async fn a_request_cut_off_by_the_gateway_deadline_counts_against_its_variant() {
    let up = Upstream::start(Duration::from_secs(3)).await;
    let yaml = format!(
        "server:\n  request_timeout: 200ms\nbackends:\n  - name: slow\n    upstream: {{url: \"{}\", request_timeout: 10s, outlier: {{consecutive_failures: 3, ejection_time: 60s}}}}\nroutes:\n  - path_prefix: /slow/\n    backend: slow\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..3 {
        let a = get(&gw.url("/slow/x")).await;
        assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(a.error().contains("request_timeout of 200ms"), "{}", a.error());
    }
    let metrics = get(&gw.admin_url("/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("modelgate_requests_total{") && l.contains(r#"code="504""#))
        .unwrap_or_else(|| panic!("no 504 counted for the variant:\n{text}"));
    assert!(line.contains(r#"variant="slow""#) && line.ends_with(" 3"), "{line}");
    // The gateway's deadline was the only timer; each attempt it cut off failed the endpoint.
    assert_eq!(gw.upstream("/slow/").ejections, 1, "3 cut-off attempts in a row eject the endpoint");
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let up = Upstream::start(Duration::ZERO).await;
    let routes = |trusted: &str| {
        format!(
            "server: {{trusted_proxies: [{trusted}]}}\nbackends:\n  - name: up\n    upstream: {{url: \"{}\"}}\nroutes:\n  - path_prefix: /p/\n    backend: up\n",
            up.url()
        )
    };
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=6.6.6.6;proto=https"),
        ("x-request-id", "client-correlation-1"),
    ];
    // Nobody trusted: the client's claims are dropped and made afresh.
    let gw = Gateway::start(&routes("10.0.0.0/8")).await;
    assert_eq!(send(Method::GET, &gw.url("/p/x"), "", &spoofed).await.status, StatusCode::OK);
    let seen = up.last().headers;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_ne!(seen["x-forwarded-host"], "evil.example");
    assert!(!seen.contains_key("forwarded"));
    assert_eq!(seen["x-request-id"], "client-correlation-1", "the client's correlation id goes on");
    assert!(!seen.contains_key("x-modelgate-variant"));
    drop(gw);
    // Loopback trusted (a load balancer in front): its chain is extended, its scheme kept.
    let gw = Gateway::start(&routes("\"127.0.0.1\"")).await;
    assert_eq!(send(Method::GET, &gw.url("/p/x"), "", &spoofed).await.status, StatusCode::OK);
    let seen = up.last().headers;
    assert_eq!(seen["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-host"], "evil.example");
    // A request without an id gets the gateway's, the same one the client is answered with.
    let a = send(Method::GET, &gw.url("/p/x"), "", &[]).await;
    assert_eq!(up.last().headers["x-request-id"], a.headers["x-request-id"]);
    // A route's own sticky cookie and the gateway's headers stay at the gateway.
    let gw2 = Gateway::start(&format!(
        "backends:\n  - name: a\n    upstream: {{url: \"{u}\"}}\n  - name: b\n    upstream: {{url: \"{u}\"}}\nroutes:\n  - path_prefix: /c/\n    strategy:\n      canary: {{stable: a, canary: b, weight: 50, sticky: {{cookie: mg_user}}}}\n",
        u = up.url()
    ))
    .await;
    let cookies = [("cookie", "a=1; mg_user=bob; c=3"), ("x-modelgate-request-id", "forged")];
    assert_eq!(send(Method::GET, &gw2.url("/c/x"), "", &cookies).await.status, StatusCode::OK);
    let seen = up.last().headers;
    assert_eq!(seen["cookie"], "a=1; c=3");
    assert!(!seen.contains_key("x-modelgate-request-id"));
    // A bad entry is refused with its place.
    let e = modelgate::config::Config::parse(&routes("\"not-an-ip\""), std::path::Path::new("r.yaml")).unwrap_err();
    assert!(e.to_string().contains("server.trusted_proxies[0]"), "{e}");
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection_and_large_answers_stream() {
    let up = Upstream::start(Duration::from_millis(0)).await;
    let gw = Gateway::start(&routes(&up.url(), "")).await;
    for i in 0..20 {
        let a = send(Method::GET, &gw.url(&format!("/keep/n{i}")), "", &[]).await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(up.last().path_and_query, format!("/keep/n{i}"));
    }
    // A body larger than any buffer streams through and leaves the connection reusable.
    let a = send(Method::GET, &gw.url("/keep/big/3000000"), "", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), 3_000_000);
    assert!(a.body.iter().all(|&b| b == b'x'));
    let a = send(Method::POST, &gw.url("/keep/after"), "x".repeat(50_000), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(up.last().body.len(), 50_000);
    let connections = up.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 1, "one request at a time needs one upstream connection");
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers one request per connection (keep-alive implied) and then closes it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            drop(s);
            let _ = closed_tx.send(());
        }
    });
    let yaml = format!(
        "backends:\n  - name: once\n    upstream: {{url: \"http://{addr}\"}}\nroutes:\n  - path_prefix: /once/\n    backend: once\n"
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..3 {
        let a = get(&gw.url("/once/x")).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", String::from_utf8_lossy(&a.body));
        assert_eq!(&a.body[..], b"ok");
        // The server has closed its side before the next request goes out.
        closed.recv().await.unwrap();
    }
    server.abort();
}

#[tokio::test]
async fn a_client_that_breaks_off_its_upload_does_not_count_against_the_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start(Duration::ZERO).await;
    let yaml = format!(
        "backends:\n  - name: pool\n    upstream: {{url: \"{}\", outlier: {{consecutive_failures: 1, ejection_time: 60s}}}}\nroutes:\n  - path_prefix: /svc/\n    backend: pool\n",
        up.url()
    );
    let gw = Gateway::start(&yaml).await;
    // Declares 100 bytes, sends 10, and stops sending (its side of the connection closed).
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /svc/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n0123456789").await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await.expect("no answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("could not be forwarded"), "{answer}");
    // The endpoint did nothing wrong: one failure would have ejected it.
    let stats = gw.upstream("/svc/");
    assert_eq!((stats.ejections, stats.ejected.len()), (0, 0));
    assert_eq!(get(&gw.url("/svc/x")).await.status, StatusCode::OK);
}
