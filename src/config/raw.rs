//! The shape of `routes.yaml` as written by an operator: plain serde structs, no invariants.
//! [`super::Config`] is what the rest of the gateway uses; it is made from these by validation.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    pub cluster: Option<RawCluster>,
}

/// `cluster:` — fleet mode through etcd.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub etcd: RawEtcd,
    pub replica_id: Option<String>,
    pub lease_ttl: Option<String>,
    pub publish_interval: Option<String>,
}

/// `cluster.etcd:` — where etcd is and the fleet's key prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub prefix: Option<String>,
}

/// One entry of `webhooks:` — where rollout decisions are POSTed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    pub secret_env: Option<String>,
    pub events: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub format: Option<String>,
    pub template: Option<String>,
    pub header_env: Option<std::collections::BTreeMap<String, String>>,
}

/// `server:` — listeners, limits and timeouts. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub grpc_listen: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_connections: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub shutdown_grace: Option<String>,
    pub drain_delay: Option<String>,
    pub feedback_max_age: Option<String>,
    pub state_dir: Option<String>,
    pub ort_library: Option<String>,
    pub tls: Option<RawTls>,
    pub admin_tls: Option<RawTls>,
    pub overrides: Option<String>,
    pub insecure_unsigned_feedback: Option<bool>,
    pub trusted_proxies: Option<Vec<String>>,
    pub console: Option<bool>,
}

/// `server.tls:` / `server.admin_tls:` — a listener's certificate, and optionally the CA its
/// clients' certificates must chain to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
    pub reload_interval: Option<String>,
}

/// One entry of `backends:`; exactly one of `onnx` and `upstream` must be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub onnx: Option<RawOnnx>,
    pub upstream: Option<RawUpstream>,
    pub fault: Option<RawFault>,
}

/// `backends[i].fault:` — injected delay and errors, for demos and tests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub delay: Option<String>,
    #[serde(default)]
    pub error_percent: f64,
}

/// `backends[i].onnx:` — a model file run in-process.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnnx {
    pub path: Option<String>,
    pub registry: Option<RawRegistry>,
    pub sessions: Option<i64>,
    pub intra_op_threads: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
    pub batching: Option<RawBatching>,
    pub profile: Option<String>,
}

/// `backends[i].onnx.registry:` — the model comes from a model registry's alias.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub mlflow: String,
    pub model: String,
    pub alias: String,
    pub poll: Option<String>,
    pub cache: Option<String>,
    pub max_bytes: Option<i64>,
}

/// `backends[i].onnx.batching:` — dynamic batching of concurrent requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBatching {
    pub max_batch_size: Option<i64>,
    pub max_queue_delay: Option<String>,
}

/// `backends[i].upstream:` — another HTTP server that requests are forwarded to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<String>,
    pub protocol: Option<String>,
    pub urls: Option<Vec<String>>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub business_header: Option<String>,
    pub ca: Option<String>,
    pub retries: Option<RawRetries>,
    pub outlier: Option<RawOutlier>,
}

/// `upstream.retries:` — retries of requests that never reached an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    pub attempts: Option<u32>,
    pub budget_percent: Option<f64>,
    pub min_per_second: Option<u32>,
}

/// `upstream.outlier:` — passive ejection of failing endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
}

/// One entry of `routes:`; exactly one of `model` and `path_prefix`, and exactly one of
/// `backend` and `strategy`, must be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub model: Option<String>,
    pub path_prefix: Option<String>,
    pub backend: Option<String>,
    pub strategy: Option<RawStrategy>,
    pub shadow: Option<RawShadow>,
    pub rewrite: Option<String>,
    pub upstream_model: Option<String>,
    pub max_concurrency: Option<i64>,
    pub overrides: Option<String>,
    pub validation: Option<RawValidation>,
    pub drift: Option<RawDrift>,
    pub performance: Option<RawPerformance>,
    pub capture: Option<RawCapture>,
    pub schedule: Option<RawSchedule>,
}

/// `routes[i].schedule:` — a periodic `retrain_due` event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub every: Option<String>,
    pub cron: Option<String>,
}

/// `routes[i].capture:` — a sampled log of answers and their feedback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    pub dir: String,
    pub sample_percent: Option<f64>,
    pub max_file_bytes: Option<u64>,
    pub max_file_age: Option<String>,
    pub queue: Option<i64>,
    pub ready_after: Option<u64>,
    pub post: Option<String>,
}

/// `routes[i].performance:` — accuracy from label feedback against a floor.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPerformance {
    pub window: Option<String>,
    pub min_samples: Option<u64>,
    pub floor: Option<f64>,
    pub max_drop: Option<f64>,
    pub confidence: Option<f64>,
}

/// `routes[i].validation:` — rows checked against the variant's reference profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidation {
    pub on_invalid: Option<String>,
    pub margin: Option<f64>,
    pub features: Option<Vec<String>>,
}

/// `routes[i].drift:` — live inputs against the variant's reference profile.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrift {
    pub window: Option<String>,
    pub min_samples: Option<u64>,
    pub psi: Option<f64>,
    pub p_value: Option<f64>,
    pub features: Option<Vec<String>>,
    pub outputs: Option<bool>,
}

/// `routes[i].strategy:` — exactly one of the deployment strategies must be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStrategy {
    pub recreate: Option<RawRecreate>,
    pub blue_green: Option<RawBlueGreen>,
    pub canary: Option<RawCanary>,
    pub ab_test: Option<RawAbTest>,
}

/// `strategy.recreate:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecreate {
    pub backend: String,
}

/// `strategy.blue_green:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBlueGreen {
    pub active: String,
    pub preview: String,
    pub scale_down_delay: Option<String>,
    pub analysis: Option<RawAnalysis>,
    pub auto_promote_after: Option<String>,
    pub post_switch_window: Option<String>,
}

/// `strategy.canary:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub stable: String,
    pub canary: String,
    #[serde(default)]
    pub weight: f64,
    pub sticky: Option<RawSticky>,
    pub steps: Option<Vec<RawStep>>,
    pub analysis: Option<RawAnalysis>,
}

/// `canary.steps[i]:` — a weight held for a pause (a duration, or `until_promoted`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub weight: f64,
    pub pause: String,
}

/// `canary.analysis:` — what each step is judged on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub interval: Option<String>,
    pub min_samples: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99_ratio: Option<f64>,
    pub alpha: Option<f64>,
    pub failure_limit: Option<u32>,
    pub inconclusive_deadline: Option<String>,
    pub on_inconclusive: Option<String>,
    pub business: Option<RawBusiness>,
    pub checks: Option<Vec<RawCheck>>,
}

/// `analysis.checks[i]:` — a PromQL query against a Prometheus, with bounds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub prometheus: String,
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// `analysis.business:` — a non-inferiority guard on a business metric.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusiness {
    pub metric: String,
    pub margin: f64,
    pub min_samples: Option<u64>,
}

/// `strategy.ab_test:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbTest {
    /// In file order: the order of the arms' bucket ranges, and the default control.
    #[serde(deserialize_with = "ordered_map")]
    pub variants: Vec<(String, f64)>,
    pub control: Option<String>,
    pub sticky: RawSticky,
    pub analysis: Option<RawAbAnalysis>,
}

/// `ab_test.analysis:` — how a winner is found.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAbAnalysis {
    pub metric: String,
    pub alpha: Option<f64>,
    pub min_samples: Option<u64>,
    pub effect: Option<f64>,
    pub interval: Option<String>,
    #[serde(default)]
    pub auto_promote: bool,
    pub guardrails: Option<RawAnalysis>,
    pub checks: Option<Vec<RawCheck>>,
}

/// Where a sticky key comes from; exactly one field must be set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

/// `routes[i].shadow:` — a copy of a share of requests goes to another backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub backend: String,
    pub percent: f64,
    pub max_in_flight: Option<i64>,
}

/// A YAML mapping read in file order (a `BTreeMap` would sort it by name). Duplicate keys are
/// refused by the YAML parser before this sees them.
fn ordered_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, f64)>, D::Error> {
    struct Ordered;
    impl<'de> serde::de::Visitor<'de> for Ordered {
        type Value = Vec<(String, f64)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a mapping of arm names to weights, like {a: 50, b: 50}")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
            while let Some(entry) = map.next_entry::<String, f64>()? {
                out.push(entry);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Ordered)
}
