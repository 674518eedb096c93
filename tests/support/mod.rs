//! Test support: a gateway on 127.0.0.1:0 in this process, real upstream HTTP servers, and a
//! small HTTP client. Everything is real: sockets, ONNX Runtime, HTTP.
#![allow(dead_code)] // each test file uses a different part

pub mod browser;
pub mod etcd;
pub mod grpc;
pub mod process;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use modelgate::admin::AdminState;
use modelgate::backend::runtime;
use modelgate::config::Config;
use modelgate::protocol::request_id::IdCodec;
use modelgate::rollout::control::Options;
use modelgate::rollout::Controller;
use modelgate::server::{self, AppState, ListenerSettings};
use modelgate::telemetry::Telemetry;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The admin token of every test gateway.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The feedback key (MODELGATE_FEEDBACK_KEY) of every test gateway: request ids are signed.
pub const FEEDBACK_KEY: &[u8] = b"test-key";

/// The header that lets a test pin a variant under the default `overrides: admin_token`.
pub const PIN_AUTH: (&str, &str) = ("authorization", "Bearer test-admin-token");

/// An inference request body for the breast-cancer models: the five rows models/generate.py
/// recorded, under the input's name.
pub fn body() -> Value {
    let e = &expected_outputs()["models"]["breast-cancer-v1"];
    let mut input = e["inputs"]["input"].clone();
    input["name"] = serde_json::json!("input");
    serde_json::json!({ "inputs": [input] })
}

/// A one-row inference of `model` as raw HTTP/1.1, for tests that write on a connection of
/// their own.
pub fn raw_infer_post(model: &str) -> String {
    let body =
        serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": vec![0.5; 30]}]});
    let body = body.to_string();
    format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The checkout's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A gateway serving in this process until dropped: inference and admin listeners on
/// 127.0.0.1:0, its routes file in a temporary folder, watched and reloaded like `serve` does.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The gRPC listener, on 127.0.0.1:0 when the routes file sets `server.grpc_listen`.
    pub grpc: Option<SocketAddr>,
    pub controller: Arc<Controller>,
    /// The inference listeners' state (its feedback ledger, its fleet-wide claims).
    pub state: Arc<AppState>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    done: Vec<tokio::task::JoinHandle<()>>,
    _watch: Option<modelgate::config::watch::FileWatch>,
}

impl Gateway {
    /// Writes `yaml` to `<tmp>/routes.yaml`, loads its backends and serves it.
    pub async fn start(yaml: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let controller = Controller::start(
            config.clone(),
            Options {
                ort_library: runtime::locate(None, None),
                telemetry: Telemetry::new(),
                state_dir: Some(dir.path().join("state")),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let (watch, _reload) = controller.watch_file().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let grpc_listener = match config.server.grpc_listen {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
            None => None,
        };
        let grpc = grpc_listener.as_ref().map(|l| l.local_addr().unwrap());
        let ids = IdCodec::new(Some(FEEDBACK_KEY.to_vec()), config.server.feedback_max_age);
        let state = Arc::new(AppState::new(
            controller.table(),
            config.server.clone(),
            controller.telemetry().clone(),
            ids,
            Some(ADMIN_TOKEN.to_string()),
        ));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut s1 = stopped.clone();
        let mut s2 = stopped;
        let tls = |t: &Option<modelgate::config::TlsSettings>, listener: &'static str| {
            t.as_ref().map(|t| modelgate::tls::listener_config(t, listener).unwrap_or_else(|e| panic!("{e}")))
        };
        let settings = ListenerSettings {
            shutdown_grace: Duration::from_secs(10),
            ..ListenerSettings::admin(&config.server, tls(&config.server.admin_tls, "admin"))
        };
        let inference_tls = tls(&config.server.tls, "inference");
        controller.spawn_analysis(Duration::from_millis(50));
        controller.telemetry().spawn_upkeep(Duration::from_millis(100));
        if config.server.console {
            controller.telemetry().spawn_series();
        }
        let admin_state = Arc::new(AdminState { controller: controller.clone(), token: Some(ADMIN_TOKEN.to_string()) });
        let mut done = Vec::new();
        if let Some(g) = grpc_listener {
            let mut s3 = s1.clone();
            done.push(tokio::spawn(server::grpc::serve(g, state.clone(), inference_tls.clone(), async move {
                let _ = s3.changed().await;
            })));
        }
        done.extend([
            tokio::spawn(server::serve(listener, state.clone(), inference_tls, async move {
                let _ = s1.changed().await;
            })),
            tokio::spawn(server::serve_with(
                admin,
                settings,
                async move {
                    let _ = s2.changed().await;
                },
                move |req, _| modelgate::admin::handle(admin_state.clone(), req),
            )),
        ]);
        Gateway { addr, admin: admin_addr, grpc, controller, state, dir, stop: Some(stop), done, _watch: Some(watch) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// POSTs to the admin API with the admin token.
    pub async fn admin_post(&self, path: &str, body: impl Into<Bytes>) -> Answer {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        send(Method::POST, &self.admin_url(path), body, &[("authorization", &auth)]).await
    }

    /// The routes file being served.
    pub fn routes_file(&self) -> PathBuf {
        self.dir.path().join("routes.yaml")
    }

    /// Begins a graceful shutdown and returns once the servers have stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        for d in self.done.drain(..) {
            d.await.unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

/// What a test upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP upstream on 127.0.0.1:0. It answers `/slow/...` after `slow` has passed, `/status/N`
/// with status N, and everything else with 200 and a JSON echo of the request. It records what it saw.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(slow: Duration) -> Upstream {
        Self::start_with(slow, None).await
    }

    /// Like [`Upstream::start`], answering every request with `always` when given.
    pub async fn start_with(slow: Duration, always: Option<StatusCode>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen2, hits2, connections2) = (seen.clone(), hits.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                connections2.fetch_add(1, Ordering::SeqCst);
                let (seen, hits) = (seen2.clone(), hits2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, hits) = (seen.clone(), hits.clone());
                        async move {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                            let pq = parts.uri.path_and_query().map_or("/".into(), |p| p.to_string());
                            seen.lock().unwrap().push(Seen {
                                method: parts.method.clone(),
                                path_and_query: pq.clone(),
                                headers: parts.headers.clone(),
                                body: body.clone(),
                            });
                            if pq.starts_with("/slow") {
                                tokio::time::sleep(slow).await;
                            }
                            let status = always
                                .or_else(|| {
                                    pq.strip_prefix("/status/")
                                        .and_then(|s| s.parse::<u16>().ok())
                                        .and_then(|s| StatusCode::from_u16(s).ok())
                                })
                                .unwrap_or(StatusCode::OK);
                            if let Some(n) = pq.split_once("/big/").and_then(|(_, n)| n.parse::<usize>().ok()) {
                                // A large answer: `n` bytes, sent in chunks as the client reads.
                                let resp = hyper::Response::new(Full::new(Bytes::from(vec![b'x'; n])));
                                return Ok::<_, Infallible>(resp);
                            }
                            let echo = serde_json::json!({
                                "method": parts.method.as_str(),
                                "path": pq,
                                "body": String::from_utf8_lossy(&body),
                            });
                            let resp = hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .header("x-upstream", "yes")
                                .header("x-business-value", "1.5")
                                .header("connection", "keep-alive, x-hop")
                                .header("x-hop", "must not pass")
                                .body(Full::new(Bytes::from(echo.to_string())))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Upstream { addr, seen, hits, connections, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("upstream saw no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer as a test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {:?}", self.json())).to_string()
    }
}

impl Gateway {
    /// The upstream backend answering `route` (its first variant).
    pub fn upstream(&self, route: &str) -> modelgate::backend::UpstreamStats {
        let table = self.controller.table().load();
        let r = table.route(route).unwrap_or_else(|| panic!("no route {route}"));
        match r.variants[0].backend.as_ref() {
            modelgate::backend::Backend::Upstream(up) => up.stats(),
            _ => panic!("{route} is not an upstream route"),
        }
    }
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(method: Method, url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(body.into())).unwrap()).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

pub async fn get(url: &str) -> Answer {
    send(Method::GET, url, Bytes::new(), &[]).await
}

pub async fn post_json(url: &str, body: &Value) -> Answer {
    send(Method::POST, url, body.to_string(), &[("content-type", "application/json")]).await
}

/// The expected outputs that models/generate.py recorded from Python onnxruntime.
pub fn expected_outputs() -> Value {
    let text = std::fs::read_to_string(root().join("models/expected-outputs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A path under the checkout, as a string for YAML.
pub fn model(name: &str) -> String {
    root().join("models").join(name).display().to_string()
}

/// Asserts two JSON arrays of numbers are equal to FP32 precision through JSON (~7 significant
/// digits), naming the element that differs.
pub fn assert_close(got: &Value, want: &Value, what: &str) {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{what}: length");
    for (i, (g, w)) in g.iter().zip(w).enumerate() {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        // FP32 outputs through JSON: the same float to ~7 significant digits.
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{what}[{i}]: got {g}, Python onnxruntime gave {w}");
    }
}
