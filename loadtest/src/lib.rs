//! Load generator for modelgate: the workload, shared by the `loadtest` command and the
//! `scenario` runner.
//!
//! - closed loop (`-c N`): N connections, each sending as soon as the last answer came;
//! - open loop (`--rate R`): requests sent on a fixed schedule, latency measured from the
//!   *intended* send time, so a slow server cannot hide its stalls (no coordinated omission);
//! - HDR histograms overall and per variant (`x-modelgate-variant`), a live progress bar, a JSON
//!   report;
//! - payloads from the held-out samples in `models/`, simulated users with sticky keys, and
//!   feedback (true labels, or conversions with a chosen rate per variant) so A/B tests have
//!   real outcomes to judge.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use modelgate::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use modelgate::protocol::grpc::pb::model_infer_request::InferInputTensor;
use modelgate::protocol::grpc::pb::ModelInferRequest;
use rand::Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to send, how fast, for how long. Also read from scenario files.
#[derive(Parser, Debug, Clone, serde::Deserialize)]
#[command(name = "loadtest", about = "Load generator for modelgate (loopback targets only)")]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// Base URL of the gateway (or of any HTTP server, with --path).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// OIP model route to infer on: POST /v2/models/{model}/infer with holdout samples.
    #[arg(long)]
    pub model: Option<String>,
    /// Plain GET of this path instead of inference (proxy benchmarks).
    #[arg(long)]
    pub path: Option<String>,
    /// Closed loop: this many connections.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub connections: usize,
    /// Open loop: requests per second on a fixed schedule (overrides -c).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: at most this many requests in flight, like a client with a bounded connection
    /// pool; a request waiting for a slot still counts its wait (from its intended send time).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(deserialize_with = "de_duration")]
    pub duration: Duration,
    /// Stop after this many requests (whichever comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Simulated users; each request carries one user's sticky key in --user-header.
    #[arg(long, default_value_t = 0)]
    pub users: u64,
    /// Header that carries the user key.
    #[arg(long, default_value = "x-user-id")]
    pub user_header: String,
    /// Post feedback for each answer: `label` (the sample's true label) or `conversion`.
    #[arg(long)]
    pub feedback: Option<String>,
    /// Conversion probability per variant, like `bc-v1=0.10,bc-v2=0.15` (default 0.1).
    #[arg(long, default_value = "")]
    pub conversion: String,
    /// Rows per inference request: this many consecutive samples as one batch.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    /// Send inputs and ask for outputs in Triton's binary tensor form (what tritonclient does
    /// by default) instead of JSON.
    #[arg(long)]
    pub binary: bool,
    /// Call ModelInfer on the gRPC listener at --url (raw input contents, as tritonclient.grpc
    /// sends by default) instead of HTTP.
    #[arg(long)]
    pub grpc: bool,
    /// Samples to send: `{"input": NAME, "samples": [{"features": [...], "label": 0}, ...]}`
    /// (`input` defaults to `input`).
    #[arg(long, default_value = "models/breast-cancer-holdout.json")]
    pub samples: PathBuf,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse_from(["loadtest"])
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// `250ms`, `10s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// What every worker records into.
struct Stats {
    all: Histogram<u64>,
    /// Answers with a 2xx status only.
    accepted: Histogram<u64>,
    variants: BTreeMap<String, (Histogram<u64>, u64, u64)>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    feedback_sent: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds")
}

impl Stats {
    fn record(&mut self, variant: &str, status: Option<u16>, micros: u64) {
        let micros = micros.clamp(1, 60_000_000);
        let _ = self.all.record(micros);
        if status.is_some_and(|s| (200..300).contains(&s)) {
            let _ = self.accepted.record(micros);
        }
        match status {
            Some(s) => *self.statuses.entry(s).or_default() += 1,
            None => self.transport_errors += 1,
        }
        let v = self.variants.entry(variant.to_string()).or_insert_with(|| (histogram(), 0, 0));
        let _ = v.0.record(micros);
        v.1 += 1;
        if status.is_none_or(|s| s >= 500) {
            v.2 += 1;
        }
    }
}

struct Workload {
    args: Args,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Request bodies and their labels, one per starting sample, built once: the generator
    /// must not spend its CPU on JSON while it measures the server.
    bodies: Vec<(Bytes, Value, Option<usize>)>,
    /// With `--grpc`: the same batches as ModelInfer requests, and the client.
    grpc: Option<(GrpcClient, Vec<ModelInferRequest>)>,
    pub conversion: BTreeMap<String, f64>,
    stats: Mutex<Stats>,
    sent: AtomicU64,
    p99_us: AtomicU64,
}

/// The generated gRPC client over an h2c connection pool.
type GrpcClient = GrpcInferenceServiceClient<Client<HttpConnector, tonic::body::Body>>;

/// The batches of `samples` as ModelInfer requests with raw FP32 inputs.
fn grpc_requests(model: &str, input: &str, samples: &[(Value, i64)], rows: usize) -> Vec<ModelInferRequest> {
    (0..samples.len())
        .map(|first| {
            let batch: Vec<&(Value, i64)> = (0..rows).map(|r| &samples[(first + r) % samples.len()]).collect();
            let width = batch[0].0.as_array().map_or(0, Vec::len);
            let raw: Vec<u8> = batch
                .iter()
                .flat_map(|(f, _)| f.as_array().into_iter().flatten())
                .flat_map(|v| (v.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                .collect();
            ModelInferRequest {
                model_name: model.to_string(),
                inputs: vec![InferInputTensor {
                    name: input.into(),
                    datatype: "FP32".into(),
                    shape: vec![rows as i64, width as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![raw],
                ..Default::default()
            }
        })
        .collect()
}

impl Workload {
    /// One gRPC ModelInfer call: its HTTP-equivalent status and the variant that answered.
    async fn one_grpc(&self, client: &GrpcClient, request: ModelInferRequest) -> (Option<u16>, String) {
        let mut req = tonic::Request::new(request);
        if self.args.users > 0 {
            let user = format!("user-{}", rand::rng().random_range(0..self.args.users));
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(self.args.user_header.as_bytes()),
                user.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
            ) {
                req.metadata_mut().insert(name, value);
            }
        }
        let variant = |m: &tonic::metadata::MetadataMap| {
            m.get("x-modelgate-variant").and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
        };
        match client.clone().model_infer(req).await {
            Ok(resp) => (Some(200), variant(resp.metadata())),
            Err(status) => {
                let code = match status.code() {
                    tonic::Code::InvalidArgument => 400,
                    tonic::Code::NotFound => 404,
                    tonic::Code::ResourceExhausted => 413,
                    tonic::Code::Unavailable => 503,
                    tonic::Code::DeadlineExceeded => 504,
                    _ => 500,
                };
                (Some(code), variant(status.metadata()))
            }
        }
    }

    /// Sends request number `i`, scheduled for `intended`, and records it.
    async fn one(&self, i: u64, intended: Instant) {
        let args = &self.args;
        if let Some((client, requests)) = &self.grpc {
            let request = requests[(i as usize * args.rows.max(1)) % requests.len()].clone();
            let (status, variant) = self.one_grpc(client, request).await;
            let micros = intended.elapsed().as_micros() as u64;
            let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.record(&variant, status, micros);
            if i.is_multiple_of(100) {
                self.p99_us.store(s.all.value_at_quantile(0.99), Ordering::Relaxed);
            }
            return;
        }
        let (req, label) = match (&args.model, &args.path) {
            (Some(model), _) => {
                let (body, label, header) = &self.bodies[(i as usize * args.rows.max(1)) % self.bodies.len()];
                let mut req =
                    Request::builder().method(Method::POST).uri(format!("{}/v2/models/{model}/infer", args.url));
                req = match header {
                    Some(n) => req
                        .header("content-type", "application/octet-stream")
                        .header("inference-header-content-length", n.to_string()),
                    None => req.header("content-type", "application/json"),
                };
                (req.body(Full::new(body.clone())), Some(label.clone()))
            }
            (None, Some(path)) => (Request::get(format!("{}{path}", args.url)).body(Full::new(Bytes::new())), None),
            (None, None) => unreachable_config(),
        };
        let Ok(mut req) = req else { return };
        if args.users > 0 {
            let user = format!("user-{}", rand::rng().random_range(0..args.users));
            if let (Ok(name), Ok(value)) =
                (http::HeaderName::from_bytes(args.user_header.as_bytes()), http::HeaderValue::from_str(&user))
            {
                req.headers_mut().insert(name, value);
            }
        }
        let answer = self.client.request(req).await;
        let (status, variant, id) = match answer {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let (variant, id) = (header("x-modelgate-variant"), header("x-modelgate-request-id"));
                let _ = resp.into_body().collect().await;
                (Some(status), variant, id)
            }
            Err(_) => (None, String::new(), String::new()),
        };
        let micros = intended.elapsed().as_micros() as u64;
        {
            let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            s.record(&variant, status, micros);
            if i.is_multiple_of(100) {
                self.p99_us.store(s.all.value_at_quantile(0.99), Ordering::Relaxed);
            }
        }
        if let (Some(kind), true, Some(200)) = (&args.feedback, !id.is_empty(), status) {
            let fb = match kind.as_str() {
                "label" => json!({"request_id": id, "label": label}),
                _ => {
                    let p = self.conversion.get(&variant).copied().unwrap_or(0.1);
                    json!({"request_id": id, "conversion": rand::rng().random_bool(p.clamp(0.0, 1.0))})
                }
            };
            let req = Request::post(format!("{}/v2/feedback", args.url)).body(Full::new(Bytes::from(fb.to_string())));
            if let Ok(req) = req {
                if let Ok(resp) = self.client.request(req).await {
                    let _ = resp.into_body().collect().await;
                    self.stats.lock().unwrap_or_else(|p| p.into_inner()).feedback_sent += 1;
                }
            }
        }
    }
}

/// One inference body per starting sample: `rows` consecutive samples as a batch, with their
/// labels, and (binary form) the length of the JSON header.
fn bodies(input: &str, samples: &[(Value, i64)], rows: usize, binary: bool) -> Vec<(Bytes, Value, Option<usize>)> {
    (0..samples.len())
        .map(|first| {
            let batch: Vec<&(Value, i64)> = (0..rows).map(|r| &samples[(first + r) % samples.len()]).collect();
            let width = batch[0].0.as_array().map_or(0, Vec::len);
            let data: Vec<&Value> = batch.iter().flat_map(|(f, _)| f.as_array().into_iter().flatten()).collect();
            let labels: Vec<i64> = batch.iter().map(|(_, l)| *l).collect();
            let label = if rows == 1 { json!(labels[0]) } else { json!(labels) };
            if !binary {
                // Fields in the order tritonclient and KServe's SDK write them (json! would sort
                // the keys and put `data` before `datatype`).
                let body = format!(
                    r#"{{"inputs":[{{"name":{},"shape":[{rows},{width}],"datatype":"FP32","data":{}}}]}}"#,
                    Value::from(input),
                    Value::from(data.into_iter().cloned().collect::<Vec<Value>>())
                );
                return (Bytes::from(body), label, None);
            }
            let raw: Vec<u8> = data.iter().flat_map(|v| (v.as_f64().unwrap_or(0.0) as f32).to_le_bytes()).collect();
            let header = json!({
                "inputs": [{"name": input, "datatype": "FP32", "shape": [rows, width],
                            "parameters": {"binary_data_size": raw.len()}}],
                "parameters": {"binary_data_output": true},
            })
            .to_string();
            let n = header.len();
            (Bytes::from([header.into_bytes(), raw].concat()), label, Some(n))
        })
        .collect()
}

fn unreachable_config() -> ! {
    eprintln!("loadtest: give --model or --path");
    std::process::exit(2)
}

/// The model input the samples are for (the file's `input`, default `input`) and the samples.
fn load_samples(path: &PathBuf) -> anyhow::Result<(String, Vec<(Value, i64)>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read samples {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let samples: Vec<(Value, i64)> = v["samples"]
        .as_array()
        .map(|a| a.iter().map(|s| (s["features"].clone(), s["label"].as_i64().unwrap_or(0))).collect())
        .unwrap_or_default();
    if samples.is_empty() {
        bail!(
            "{} holds no samples (expected {{\"samples\": [{{\"features\": [...], \"label\": 0}}]}})",
            path.display()
        );
    }
    Ok((v["input"].as_str().unwrap_or("input").to_string(), samples))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Runs the workload and returns the report (also written to `args.report`).
pub async fn run(args: Args) -> anyhow::Result<Value> {
    run_until(args, Arc::new(AtomicBool::new(false))).await
}

/// Like [`run`], ending early once `stop` is set.
pub async fn run_until(args: Args, stop: Arc<AtomicBool>) -> anyhow::Result<Value> {
    if args.model.is_none() && args.path.is_none() {
        bail!("give --model NAME (inference) or --path /p (plain GET)");
    }
    let host = args.url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
        bail!("loadtest only targets loopback addresses (127.0.0.0/8, localhost, [::1]); got {host:?}");
    }
    let (input, samples) =
        if args.model.is_some() { load_samples(&args.samples)? } else { (String::new(), vec![(Value::Null, 0)]) };
    let conversion = args
        .conversion
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("--conversion takes variant=probability pairs")?;
            Ok((k.to_string(), v.parse::<f64>().context("conversion probability")?))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build_http();
    let bodies = bodies(&input, &samples, args.rows.max(1), args.binary);
    let grpc = match (&args.model, args.grpc) {
        (Some(model), true) => {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            let pool = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
            let origin = args.url.parse().context("--url must be http://host:port of the gRPC listener")?;
            Some((GrpcClient::with_origin(pool, origin), grpc_requests(model, &input, &samples, args.rows.max(1))))
        }
        (None, true) => bail!("--grpc needs --model"),
        _ => None,
    };
    let work = Arc::new(Workload {
        bodies,
        grpc,
        client,
        conversion,
        stats: Mutex::new(Stats {
            all: histogram(),
            accepted: histogram(),
            variants: BTreeMap::new(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            feedback_sent: 0,
        }),
        sent: AtomicU64::new(0),
        p99_us: AtomicU64::new(0),
        args: args.clone(),
    });
    let limit = args.requests.unwrap_or(u64::MAX);
    let started = Instant::now();
    let deadline = started + args.duration;
    let done = Arc::new(AtomicBool::new(false));
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration.as_secs().max(1))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = {
        let (work, done, bar) = (work.clone(), done.clone(), bar.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let sent = work.sent.load(Ordering::Relaxed);
                let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let p99 = work.p99_us.load(Ordering::Relaxed) as f64 / 1000.0;
                bar.set_position(started.elapsed().as_secs());
                bar.set_message(format!("{sent} sent, {rate:.0} req/s, p99 {p99:.2} ms"));
            }
        })
    };
    let mut tasks = Vec::new();
    match args.rate {
        Some(rate) if rate > 0.0 => {
            // Open loop: request i is due at started + i/rate, whatever the answers do.
            let interval = Duration::from_secs_f64(1.0 / rate);
            let slots = args.max_in_flight.map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
            let mut running = tokio::task::JoinSet::new();
            let mut i = 0u64;
            loop {
                let due = started + interval.mul_f64(i as f64);
                if due >= deadline || i >= limit || stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let (work, slots) = (work.clone(), slots.clone());
                work.sent.fetch_add(1, Ordering::Relaxed);
                running.spawn(async move {
                    let _slot = match slots {
                        Some(s) => s.acquire_owned().await.ok(),
                        None => None,
                    };
                    work.one(i, due).await
                });
                while running.try_join_next().is_some() {}
                i += 1;
            }
            while running.join_next().await.is_some() {}
        }
        _ => {
            for _ in 0..args.connections.max(1) {
                let (work, stop) = (work.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = work.sent.fetch_add(1, Ordering::Relaxed);
                        if Instant::now() >= deadline || i >= limit || stop.load(Ordering::Relaxed) {
                            return;
                        }
                        work.one(i, Instant::now()).await;
                    }
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let s = work.stats.lock().unwrap_or_else(|p| p.into_inner());
    let answered = s.all.len();
    let per_variant: BTreeMap<&str, Value> = s
        .variants
        .iter()
        .map(|(v, (h, n, e))| {
            (v.as_str(), json!({"requests": n, "errors": e, "share": *n as f64 / answered.max(1) as f64, "p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99)}))
        })
        .collect();
    let report = json!({
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "target": args.model.clone().map(|m| format!("model {m}")).or(args.path.clone()),
        "connections": if args.rate.is_some() { Value::Null } else { json!(args.connections) },
        "rate_target": args.rate,
        "seconds": elapsed,
        "requests": answered,
        "requests_per_second": answered as f64 / elapsed,
        "statuses": s.statuses,
        "transport_errors": s.transport_errors,
        "latency_ms": {"p50": ms(&s.all, 0.5), "p90": ms(&s.all, 0.9), "p99": ms(&s.all, 0.99), "p999": ms(&s.all, 0.999), "max": s.all.max() as f64 / 1000.0},
        "accepted": s.accepted.len(),
        "accepted_latency_ms": {"p50": ms(&s.accepted, 0.5), "p99": ms(&s.accepted, 0.99), "max": s.accepted.max() as f64 / 1000.0},
        "variants": per_variant,
        "feedback_sent": s.feedback_sent,
    });
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}
