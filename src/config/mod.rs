//! `routes.yaml`: raw serde structs, validated into domain types that cannot be invalid.
//!
//! [`Config::load`] reads a file and reports *every* problem with its place
//! (`routes[1].backend: unknown backend "risk-v3"`), so an operator fixes a file in one pass.

mod error;
mod raw;
pub mod watch;

pub mod plan;
use error::Issues;
pub use error::{ConfigErrors, ConfigIssue};
use plan::{
    AbCriteria, AbPlan, BlueGreenPlan, BusinessGuard, CanaryCriteria, CanaryPlan, Metric, OnInconclusive, Step,
};
use raw::{RawAbAnalysis, RawAnalysis, RawBackend, RawConfig, RawRoute, RawServer, RawStep, RawSticky};

use http::Uri;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ONNX Runtime library that `make ort` installs, relative to the working directory.
pub const DEFAULT_ORT_LIBRARY: &str = ".ort/libonnxruntime.so.1.31.1";

/// A validated `routes.yaml`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The file this was read from; relative model paths are resolved against its folder.
    pub source: PathBuf,
    /// Listener, limits and timeouts.
    pub server: ServerSettings,
    /// Every backend, in file order, names unique.
    pub backends: Vec<BackendSpec>,
    /// Every route, in file order; each names a backend that exists.
    pub routes: Vec<RouteSpec>,
    /// Where rollout decisions are sent.
    pub webhooks: Vec<WebhookSpec>,
}

/// A webhook: rollout events POSTed as JSON, signed, retried with backoff.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct WebhookSpec {
    /// Where to POST (http).
    pub url: Uri,
    /// HMAC-SHA256 key for `x-modelgate-signature` (from the environment variable named).
    pub secret: Option<Vec<u8>>,
    /// Event kinds to send; all when `None`.
    pub events: Option<Vec<String>>,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Attempts after the first.
    pub retries: u32,
}

impl std::fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("WebhookSpec")
            .field("url", &self.url)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// `server:` after validation, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Address of the inference listener.
    pub listen: SocketAddr,
    /// Address of the admin listener (loopback by default).
    pub admin_listen: SocketAddr,
    /// Address of the Open Inference Protocol gRPC listener; none when unset.
    pub grpc_listen: Option<SocketAddr>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a client may take to send the request head.
    pub header_read_timeout: Duration,
    /// Deadline for a whole request, inference or forwarding included.
    pub request_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// How long after an answer feedback on it is accepted.
    pub feedback_max_age: Duration,
    /// Where rollout status is persisted (relative paths: against the config file's folder).
    pub state_dir: PathBuf,
    /// ONNX Runtime shared library, when the file names one.
    pub ort_library: Option<PathBuf>,
    /// TLS on the inference listener.
    pub tls: Option<TlsSettings>,
    /// TLS on the admin listener (with `client_ca`: mutual TLS).
    pub admin_tls: Option<TlsSettings>,
    /// Who may pin a variant (version path, override header) on routes that do not say.
    pub overrides: OverridePolicy,
    /// Serve without `MODELGATE_FEEDBACK_KEY`: request ids unsigned, so anyone can forge
    /// feedback. For demos only.
    pub insecure_unsigned_feedback: bool,
    /// Clients whose `X-Forwarded-*` and `Forwarded` headers are believed (load balancers in
    /// front of the gateway); from anyone else those headers are dropped and made afresh.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Who may pin a request to a variant (a version path, or the `x-modelgate-variant` header).
/// Pinned requests are counted apart and never judge an experiment, but they reach variants
/// that have no share of traffic (a blue-green preview, a rolled-back canary, a stopped arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverridePolicy {
    /// Any client.
    Allow,
    /// Nobody: pins are refused with 403.
    Deny,
    /// Only callers that carry the admin token (`Authorization: Bearer <token>`, or any caller
    /// when the gateway runs without one). The default: smoke tests and QA can reach a preview,
    /// while ordinary clients cannot route themselves onto an unreleased model.
    #[default]
    AdminToken,
}

/// A listener's TLS files (relative paths: against the config file's folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to a CA in this PEM file.
    pub client_ca: Option<PathBuf>,
    /// How often the files are checked for a new certificate.
    pub reload_interval: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            grpc_listen: None,
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            feedback_max_age: Duration::from_secs(24 * 3600),
            state_dir: PathBuf::from("state"),
            ort_library: None,
            tls: None,
            admin_tls: None,
            overrides: OverridePolicy::default(),
            insecure_unsigned_feedback: false,
            trusted_proxies: Vec::new(),
        }
    }
}

/// A named backend: something that can answer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackendSpec {
    /// Unique name, safe in URLs.
    pub name: String,
    /// In-process model or upstream server.
    pub kind: BackendKind,
    /// Injected delay and errors, if any.
    pub fault: Option<FaultSpec>,
}

/// Faults injected into every answer of a backend, like Istio's fault injection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultSpec {
    /// Added before the backend is asked.
    pub delay: Duration,
    /// Percent of requests answered 500 instead (0..=100).
    pub error_percent: f64,
}

/// What a backend is.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendKind {
    /// An ONNX model file run in-process.
    Onnx(OnnxSpec),
    /// An HTTP server that requests are forwarded to.
    Upstream(UpstreamSpec),
}

/// An in-process ONNX model.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OnnxSpec {
    /// Model file, resolved against the config file's folder; it existed and was readable.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes when the config was read: the model's identity.
    pub sha256: String,
    /// Number of ORT sessions, each on its own worker thread (1..=64).
    pub sessions: usize,
    /// ORT intra-op threads per session (1..=64).
    pub intra_op_threads: usize,
    /// Requests that may wait for a free session before new ones get 503 (1..=100 000).
    pub queue: usize,
    /// Longest a request may wait for a session; later it is answered 503 instead of run.
    pub queue_timeout: Duration,
}

/// An upstream HTTP server.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UpstreamSpec {
    /// Endpoints (at least one), each a base URL: `http://host:port` with an optional path
    /// prefix, no query. Requests are balanced over them (power of two choices).
    pub urls: Vec<Uri>,
    /// Retries of requests that never reached an endpoint.
    pub retries: RetryPolicy,
    /// Passive ejection of failing endpoints.
    pub outlier: OutlierPolicy,
    /// Deadline for the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response head.
    pub request_timeout: Duration,
    /// A response header in which the upstream reports a business value (recorded as a reward).
    pub business_header: Option<String>,
    /// CAs trusted for `https://` endpoints (PEM); the system's roots when unset.
    pub ca: Option<PathBuf>,
}

/// Retries of bodiless idempotent requests whose connection failed, within a budget so that
/// retries cannot multiply the load on a struggling upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Retries per request (0 turns them off).
    pub attempts: u32,
    /// Retries allowed as a share of requests over the last 10 s.
    pub budget_ratio: f64,
    /// Retries always allowed per second, whatever the share.
    pub min_per_second: u32,
}

/// Ejects an endpoint after consecutive failures (connection errors, 5xx) for a while;
/// it is re-admitted when the time is up. When every endpoint is ejected, all are used.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    /// Failures in a row that eject (0 turns ejection off).
    pub consecutive_failures: u32,
    /// How long an ejection lasts (growing with repeated ejections, up to 10×).
    pub ejection_time: Duration,
}

/// A route: what clients address, and how its variants share the traffic.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteSpec {
    /// How requests are matched.
    pub kind: RouteKind,
    /// Which backends answer, and in what shares. Every backend named exists.
    pub strategy: Strategy,
    /// A copy of a share of requests for another backend (model routes only).
    pub shadow: Option<ShadowSpec>,
    /// Requests answered at once; more are shed with 503 + `Retry-After` before they queue.
    pub max_concurrency: Option<usize>,
    /// Who may pin a variant on this route; the server's policy when `None`.
    pub overrides: Option<OverridePolicy>,
}

/// A deployment strategy. Variants are named after their backends.
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// `backend: x` — one backend, nothing to roll out.
    Single {
        /// The backend.
        backend: String,
    },
    /// One copy in memory: a new backend replaces the old after it is unloaded; requests in the
    /// gap get 503 with `Retry-After`.
    Recreate {
        /// The backend.
        backend: String,
    },
    /// Both colours warm; all traffic on `active`, `preview` reachable only when pinned.
    BlueGreen {
        /// Serves the traffic.
        active: String,
        /// Warm, reachable through the override header or the version path.
        preview: String,
        /// How long the old colour stays warm after a switch.
        scale_down_delay: Duration,
        /// Analysis of the preview before a switch and of the new colour after it.
        plan: Option<BlueGreenPlan>,
    },
    /// A weighted split between `stable` and `canary`.
    Canary {
        /// The current version.
        stable: String,
        /// The candidate.
        canary: String,
        /// Percent of traffic for the canary, 0..=100.
        weight: f64,
        /// Keeps a user on one side when a key is present.
        sticky: Option<Sticky>,
        /// Steps with automatic analysis; without them the weight only changes by hand.
        plan: Option<CanaryPlan>,
    },
    /// Two or more arms, sticky per user.
    AbTest {
        /// Arms with relative weights, in file order (the order of their bucket ranges).
        arms: Vec<(String, f64)>,
        /// The arm the others are compared with (`control:`, default the first arm written).
        control: String,
        /// Where the user key comes from.
        sticky: Sticky,
        /// How a winner is found, if automatically.
        plan: Option<AbPlan>,
    },
}

/// Where a sticky user key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A request header (name lower-cased).
    Header(String),
    /// A cookie; with none, the gateway draws a key and sets the cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// A share of requests copied to another backend, off the client's path.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ShadowSpec {
    /// The backend that gets the copies.
    pub backend: String,
    /// Percent of requests copied, 0..=100.
    pub percent: f64,
    /// Copies in flight at most; more are skipped (counted), never queued.
    pub max_in_flight: usize,
}

impl Strategy {
    /// The strategy's name as written in routes.yaml.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Single { .. } => "single",
            Strategy::Recreate { .. } => "recreate",
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
            Strategy::AbTest { .. } => "ab_test",
        }
    }

    /// Every backend that answers, in bucket order (stable / active first).
    pub fn backends(&self) -> Vec<&str> {
        match self {
            Strategy::Single { backend } | Strategy::Recreate { backend } => vec![backend],
            Strategy::BlueGreen { active, preview, .. } => vec![active, preview],
            Strategy::Canary { stable, canary, .. } => vec![stable, canary],
            Strategy::AbTest { arms, .. } => arms.iter().map(|(a, _)| a.as_str()).collect(),
        }
    }
}

/// How a route is addressed.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteKind {
    /// An Open Inference Protocol model name: `/v2/models/{name}/...`.
    Model {
        /// The name clients use.
        name: String,
        /// For upstream backends: the model name the upstream knows (default: `name`).
        upstream_model: Option<String>,
    },
    /// Plain HTTP proxying of every path under `prefix`.
    Prefix {
        /// Starts and ends with `/`.
        prefix: String,
        /// Replaces `prefix` in the forwarded path (default: keep it). Starts and ends with `/`.
        rewrite: Option<String>,
    },
}

impl RouteSpec {
    /// The route's name as shown in logs and admin output: the model name or the prefix.
    pub fn name(&self) -> &str {
        match &self.kind {
            RouteKind::Model { name, .. } => name,
            RouteKind::Prefix { prefix, .. } => prefix,
        }
    }

    /// Every backend the route needs loaded: its variants, then its shadow.
    pub fn backends(&self) -> Vec<&str> {
        let mut all = self.strategy.backends();
        if let Some(shadow) = &self.shadow {
            all.push(&shadow.backend);
        }
        all
    }
}

impl Config {
    /// Reads and validates `path`. Every problem is reported, each with its place.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigErrors::one(path, "file", format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let place = e
                    .location()
                    .map_or_else(|| "file".to_string(), |l| format!("line {} column {}", l.line(), l.column()));
                ConfigErrors::one(path, place, yaml_message(&e))
            })?
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut issues = Issues::default();
        let server = server(&raw.server, &base, &mut issues);
        let backends = backends(&raw.backends, &base, &mut issues);
        let routes = routes(&raw.routes, &raw.backends, &mut issues);
        let webhooks = webhooks(&raw.webhooks, &mut issues);
        if issues.0.is_empty() {
            Ok(Config { source: path.to_path_buf(), server, backends, routes, webhooks })
        } else {
            Err(ConfigErrors { file: path.to_path_buf(), issues: issues.0 })
        }
    }
}

/// serde_yaml_ng appends "at line L column C" to messages; the place already says it.
fn yaml_message(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Names appear in URLs, metric labels and logs.
fn check_name(name: &str, place: &str, issues: &mut Issues) -> bool {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        issues.push(
            place,
            format!(
                "invalid name {name:?}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        );
    }
    ok
}

fn duration(value: &Option<String>, default: Duration, place: &str, issues: &mut Issues) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            issues.push(place, "must be longer than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            issues.push(place, format!("invalid duration {text:?} ({e}); write it like \"250ms\", \"10s\" or \"2m\""));
            default
        }
    }
}

fn count(value: Option<i64>, default: usize, max: usize, place: &str, issues: &mut Issues) -> usize {
    match value {
        None => default,
        Some(v) if v >= 1 && (v as u64) <= max as u64 => v as usize,
        Some(v) => {
            issues.push(place, format!("must be between 1 and {max}, got {v}"));
            default
        }
    }
}

fn server(raw: &RawServer, base: &Path, issues: &mut Issues) -> ServerSettings {
    let d = ServerSettings::default();
    let parsed = |text: &str, place: &str, issues: &mut Issues| {
        text.parse::<SocketAddr>()
            .inspect_err(|e| {
                issues.push(place, format!("invalid address {text:?} ({e}); write it like \"127.0.0.1:8080\""))
            })
            .ok()
    };
    let address = |value: &Option<String>, default: SocketAddr, place: &str, issues: &mut Issues| match value {
        None => default,
        Some(text) => parsed(text, place, issues).unwrap_or(default),
    };
    let listen = address(&raw.listen, d.listen, "server.listen", issues);
    let admin_listen = address(&raw.admin_listen, d.admin_listen, "server.admin_listen", issues);
    let grpc_listen = raw.grpc_listen.as_deref().and_then(|text| parsed(text, "server.grpc_listen", issues));
    for (other, place) in [(listen, "server.listen"), (admin_listen, "server.admin_listen")] {
        if grpc_listen.is_some_and(|g| g == other && g.port() != 0) {
            issues.push(
                "server.grpc_listen",
                format!("{other} is also {place}: give the gRPC listener a port of its own"),
            );
        }
    }
    let max_body_bytes = match raw.max_body_bytes {
        None => d.max_body_bytes,
        Some(0) => {
            issues.push("server.max_body_bytes", "must be at least 1");
            d.max_body_bytes
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };
    ServerSettings {
        listen,
        admin_listen,
        grpc_listen,
        max_body_bytes,
        header_read_timeout: duration(
            &raw.header_read_timeout,
            d.header_read_timeout,
            "server.header_read_timeout",
            issues,
        ),
        request_timeout: duration(&raw.request_timeout, d.request_timeout, "server.request_timeout", issues),
        shutdown_grace: duration(&raw.shutdown_grace, d.shutdown_grace, "server.shutdown_grace", issues),
        feedback_max_age: duration(&raw.feedback_max_age, d.feedback_max_age, "server.feedback_max_age", issues),
        state_dir: base.join(raw.state_dir.as_deref().map_or(d.state_dir.as_path(), Path::new)),
        ort_library: raw.ort_library.as_ref().map(PathBuf::from),
        tls: raw.tls.as_ref().and_then(|t| tls(t, base, "server.tls", issues)),
        admin_tls: raw.admin_tls.as_ref().and_then(|t| tls(t, base, "server.admin_tls", issues)),
        overrides: raw.overrides.as_deref().and_then(|o| overrides(o, "server.overrides", issues)).unwrap_or_default(),
        insecure_unsigned_feedback: raw.insecure_unsigned_feedback.unwrap_or(false),
        trusted_proxies: trusted_proxies(raw.trusted_proxies.as_deref().unwrap_or_default(), issues),
    }
}

fn trusted_proxies(raw: &[String], issues: &mut Issues) -> Vec<ipnet::IpNet> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            let parsed =
                text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            parsed
                .map_err(|_| {
                    issues.push(
                        format!("server.trusted_proxies[{i}]"),
                        format!(
                            "{text:?} is not an address or a network; write it like \"10.0.0.0/8\" or \"127.0.0.1\""
                        ),
                    )
                })
                .ok()
        })
        .collect()
}

fn overrides(text: &str, place: &str, issues: &mut Issues) -> Option<OverridePolicy> {
    match text {
        "allow" => Some(OverridePolicy::Allow),
        "deny" => Some(OverridePolicy::Deny),
        "admin_token" => Some(OverridePolicy::AdminToken),
        other => {
            issues.push(place, format!("{other:?} is not a policy: allow, deny or admin_token"));
            None
        }
    }
}

fn tls(raw: &raw::RawTls, base: &Path, place: &str, issues: &mut Issues) -> Option<TlsSettings> {
    let cert = readable_file(base, &raw.cert, &format!("{place}.cert"), "certificate file", issues);
    let key = readable_file(base, &raw.key, &format!("{place}.key"), "key file", issues);
    let client_ca = match &raw.client_ca {
        None => Some(None),
        Some(ca) => readable_file(base, ca, &format!("{place}.client_ca"), "CA file", issues).map(Some),
    };
    let reload_interval =
        duration(&raw.reload_interval, Duration::from_secs(10), &format!("{place}.reload_interval"), issues);
    Some(TlsSettings { cert: cert?, key: key?, client_ca: client_ca?, reload_interval })
}

/// `base`/`path`, when it is a file that can be opened; otherwise an issue at `place`.
fn readable_file(base: &Path, path: &str, place: &str, what: &str, issues: &mut Issues) -> Option<PathBuf> {
    let path = base.join(path);
    let problem = match std::fs::File::open(&path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => return Some(path),
        Ok(_) => format!("{} is not a file", path.display()),
        Err(e) => format!("cannot open {what} {}: {e}", path.display()),
    };
    issues.push(place, problem);
    None
}

fn backends(raw: &[RawBackend], base: &Path, issues: &mut Issues) -> Vec<BackendSpec> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, b) in raw.iter().enumerate() {
        let place = format!("backends[{i}]");
        if check_name(&b.name, &format!("{place}.name"), issues) {
            if let Some(first) = seen.insert(&b.name, i) {
                issues.push(
                    format!("{place}.name"),
                    format!("duplicate backend name {:?} (first at backends[{first}])", b.name),
                );
            }
        }
        let kind = match (&b.onnx, &b.upstream) {
            (Some(onnx), None) => onnx_spec(onnx, base, &format!("{place}.onnx"), issues).map(BackendKind::Onnx),
            (None, Some(up)) => {
                upstream_spec(up, base, &format!("{place}.upstream"), issues).map(BackendKind::Upstream)
            }
            (Some(_), Some(_)) => {
                issues.push(&place, "set either `onnx` or `upstream`, not both");
                None
            }
            (None, None) => {
                issues.push(&place, "missing `onnx: {path: ...}` or `upstream: {url: ...}`");
                None
            }
        };
        if let Some(kind) = kind {
            let fault = b.fault.as_ref().map(|f| {
                let fplace = format!("{place}.fault");
                percent(f.error_percent, &format!("{fplace}.error_percent"), issues);
                let delay = match &f.delay {
                    Some(_) => duration(&f.delay, Duration::ZERO, &format!("{fplace}.delay"), issues),
                    None => Duration::ZERO,
                };
                FaultSpec { delay, error_percent: f.error_percent }
            });
            out.push(BackendSpec { name: b.name.clone(), kind, fault });
        }
    }
    out
}

/// The SHA-256 of a file, read in chunks (a model file is never held whole for this).
fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(crate::protocol::secret::hex(&hasher.finalize()))
}

fn onnx_spec(raw: &raw::RawOnnx, base: &Path, place: &str, issues: &mut Issues) -> Option<OnnxSpec> {
    let path = readable_file(base, &raw.path, &format!("{place}.path"), "model file", issues);
    let sha256 = match path.as_deref().map(file_sha256) {
        Some(Ok(digest)) => digest,
        Some(Err(e)) => {
            issues.push(format!("{place}.path"), format!("cannot read model file: {e}"));
            return None;
        }
        None => String::new(),
    };
    let spec = OnnxSpec {
        path: path.clone().unwrap_or_default(),
        sha256,
        sessions: count(raw.sessions, 1, 64, &format!("{place}.sessions"), issues),
        intra_op_threads: count(raw.intra_op_threads, 1, 64, &format!("{place}.intra_op_threads"), issues),
        queue: count(raw.queue, 128, 100_000, &format!("{place}.queue"), issues),
        queue_timeout: duration(&raw.queue_timeout, Duration::from_secs(1), &format!("{place}.queue_timeout"), issues),
    };
    path.map(|_| spec)
}

fn upstream_url(text: &str, place: &str, issues: &mut Issues) -> Option<Uri> {
    match text.parse::<Uri>() {
        Ok(u) => {
            let problem = if !matches!(u.scheme_str(), Some("http" | "https")) {
                Some("scheme must be http:// or https://")
            } else if u.authority().is_none_or(|a| a.host().is_empty()) {
                Some("has no host")
            } else if u.query().is_some() {
                Some("must not have a query")
            } else {
                None
            };
            match problem {
                Some(p) => {
                    issues.push(place, format!("invalid upstream URL {text:?}: {p}"));
                    None
                }
                None => Some(u),
            }
        }
        Err(e) => {
            issues.push(place, format!("invalid upstream URL {text:?}: {e}"));
            None
        }
    }
}

fn upstream_spec(raw: &raw::RawUpstream, base: &Path, place: &str, issues: &mut Issues) -> Option<UpstreamSpec> {
    let urls: Option<Vec<Uri>> = match (&raw.url, &raw.urls) {
        (Some(u), None) => upstream_url(u, &format!("{place}.url"), issues).map(|u| vec![u]),
        (None, Some(list)) if !list.is_empty() => {
            let parsed: Vec<Option<Uri>> =
                list.iter().enumerate().map(|(i, u)| upstream_url(u, &format!("{place}.urls[{i}]"), issues)).collect();
            parsed.into_iter().collect()
        }
        (None, Some(_)) => {
            issues.push(format!("{place}.urls"), "list at least one endpoint");
            None
        }
        (Some(_), Some(_)) => {
            issues.push(place, "set either `url` or `urls`, not both");
            None
        }
        (None, None) => {
            issues.push(place, "missing `url: http://host:port` (or `urls: [...]`)");
            None
        }
    };
    let retries = match &raw.retries {
        None => RetryPolicy { attempts: 1, budget_ratio: 0.2, min_per_second: 10 },
        Some(r) => {
            let pct = r.budget_percent.unwrap_or(20.0);
            percent(pct, &format!("{place}.retries.budget_percent"), issues);
            RetryPolicy {
                attempts: r.attempts.unwrap_or(1).min(5),
                budget_ratio: pct / 100.0,
                min_per_second: r.min_per_second.unwrap_or(10),
            }
        }
    };
    let outlier = match &raw.outlier {
        None => OutlierPolicy { consecutive_failures: 5, ejection_time: Duration::from_secs(30) },
        Some(o) => OutlierPolicy {
            consecutive_failures: o.consecutive_failures.unwrap_or(5),
            ejection_time: duration(
                &o.ejection_time,
                Duration::from_secs(30),
                &format!("{place}.outlier.ejection_time"),
                issues,
            ),
        },
    };
    let d = Duration::from_secs(1);
    let connect_timeout = duration(&raw.connect_timeout, d, &format!("{place}.connect_timeout"), issues);
    let request_timeout =
        duration(&raw.request_timeout, Duration::from_secs(30), &format!("{place}.request_timeout"), issues);
    let business_header = raw.business_header.as_ref().and_then(|h| match http::HeaderName::from_bytes(h.as_bytes()) {
        Ok(name) => Some(name.as_str().to_string()),
        Err(_) => {
            issues.push(format!("{place}.business_header"), format!("{h:?} is not a valid header name"));
            None
        }
    });
    let ca = match &raw.ca {
        None => Some(None),
        Some(ca) => readable_file(base, ca, &format!("{place}.ca"), "CA file", issues).map(Some),
    };
    let ca = ca?;
    urls.map(|urls| UpstreamSpec { urls, retries, outlier, connect_timeout, request_timeout, business_header, ca })
}

/// A path prefix for proxying: starts and ends with `/`, and stays clear of the OIP paths.
fn check_prefix(text: &str, place: &str, issues: &mut Issues) -> Option<String> {
    if !text.starts_with('/') || text.contains(['?', '#', ' ', '~', '%']) {
        issues.push(
            place,
            format!("invalid path {text:?}: must start with '/' and hold no '?', '#', '~', '%' or spaces"),
        );
        return None;
    }
    let normal = if text.ends_with('/') { text.to_string() } else { format!("{text}/") };
    Some(normal)
}

fn sticky(raw: &RawSticky, place: &str, issues: &mut Issues) -> Option<Sticky> {
    let valid = |name: &str| !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let sticky = match (&raw.header, &raw.cookie, &raw.query) {
        (Some(h), None, None) => Sticky::Header(h.to_ascii_lowercase()),
        (None, Some(c), None) => Sticky::Cookie(c.clone()),
        (None, None, Some(q)) => Sticky::Query(q.clone()),
        _ => {
            issues.push(place, "set exactly one of `header`, `cookie` or `query`");
            return None;
        }
    };
    let (Sticky::Header(name) | Sticky::Cookie(name) | Sticky::Query(name)) = &sticky;
    if !valid(name) {
        issues.push(place, format!("invalid key name {name:?}: use letters, digits, '-', '_' or '.'"));
        return None;
    }
    Some(sticky)
}

fn percent(value: f64, place: &str, issues: &mut Issues) -> bool {
    let ok = value.is_finite() && (0.0..=100.0).contains(&value);
    if !ok {
        issues.push(place, format!("must be a percentage between 0 and 100, got {value}"));
    }
    ok
}

fn strategy(r: &RawRoute, place: &str, issues: &mut Issues) -> Option<Strategy> {
    let s = match (&r.backend, &r.strategy) {
        (Some(b), None) => return Some(Strategy::Single { backend: b.clone() }),
        (Some(_), Some(_)) => {
            issues.push(place, "set either `backend` or `strategy`, not both");
            return None;
        }
        (None, None) => {
            issues.push(
                place,
                "missing `backend: <name>` or `strategy: {recreate | blue_green | canary | ab_test: ...}`",
            );
            return None;
        }
        (None, Some(s)) => s,
    };
    let place = format!("{place}.strategy");
    let set = [s.recreate.is_some(), s.blue_green.is_some(), s.canary.is_some(), s.ab_test.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        issues.push(&place, "set exactly one of `recreate`, `blue_green`, `canary` or `ab_test`");
        return None;
    }
    if let Some(r) = &s.recreate {
        return Some(Strategy::Recreate { backend: r.backend.clone() });
    }
    if let Some(bg) = &s.blue_green {
        let place = format!("{place}.blue_green");
        if bg.active == bg.preview {
            issues.push(format!("{place}.preview"), format!("preview must differ from active ({:?})", bg.active));
        }
        let delay =
            duration(&bg.scale_down_delay, Duration::from_secs(30), &format!("{place}.scale_down_delay"), issues);
        let plan = bg.analysis.as_ref().map(|a| {
            let ap = format!("{place}.analysis");
            BlueGreenPlan {
                criteria: criteria(a, &ap, issues),
                interval: duration(&a.interval, Duration::from_secs(10), &format!("{ap}.interval"), issues),
                auto_promote_after: bg.auto_promote_after.as_ref().map(|_| {
                    duration(
                        &bg.auto_promote_after,
                        Duration::from_secs(300),
                        &format!("{place}.auto_promote_after"),
                        issues,
                    )
                }),
                post_switch_window: duration(
                    &bg.post_switch_window,
                    Duration::from_secs(120),
                    &format!("{place}.post_switch_window"),
                    issues,
                ),
            }
        });
        if plan.is_none() && (bg.auto_promote_after.is_some() || bg.post_switch_window.is_some()) {
            issues.push(format!("{place}.analysis"), "auto_promote_after and post_switch_window need an `analysis`");
        }
        return Some(Strategy::BlueGreen {
            active: bg.active.clone(),
            preview: bg.preview.clone(),
            scale_down_delay: delay,
            plan,
        });
    }
    if let Some(c) = &s.canary {
        let place = format!("{place}.canary");
        if c.stable == c.canary {
            issues.push(format!("{place}.canary"), format!("canary must differ from stable ({:?})", c.stable));
        }
        percent(c.weight, &format!("{place}.weight"), issues);
        let st = c.sticky.as_ref().and_then(|st| sticky(st, &format!("{place}.sticky"), issues));
        let plan = c.steps.as_ref().map(|steps| canary_plan(steps, c.analysis.as_ref(), &place, issues));
        if c.analysis.is_some() && c.steps.is_none() {
            issues.push(format!("{place}.analysis"), "analysis runs between steps: add `steps`");
        }
        return Some(Strategy::Canary {
            stable: c.stable.clone(),
            canary: c.canary.clone(),
            weight: c.weight,
            sticky: st,
            plan,
        });
    }
    let ab = s.ab_test.as_ref()?;
    let place = format!("{place}.ab_test");
    if ab.variants.len() < 2 {
        issues.push(
            format!("{place}.variants"),
            format!("an A/B test needs at least two variants, got {}", ab.variants.len()),
        );
    }
    for (i, (name, w)) in ab.variants.iter().enumerate() {
        if !(w.is_finite() && *w >= 0.0) {
            issues.push(format!("{place}.variants.{name}"), format!("weight must be zero or more, got {w}"));
        }
        if ab.variants[..i].iter().any(|(n, _)| n == name) {
            issues.push(format!("{place}.variants.{name}"), "named twice");
        }
    }
    if ab.variants.iter().all(|(_, w)| *w <= 0.0) {
        issues.push(format!("{place}.variants"), "at least one weight must be above zero");
    }
    let control = match &ab.control {
        Some(c) if !ab.variants.iter().any(|(n, _)| n == c) => {
            let names: Vec<&str> = ab.variants.iter().map(|(n, _)| n.as_str()).collect();
            issues.push(format!("{place}.control"), format!("{c:?} is not one of the arms ({})", names.join(", ")));
            return None;
        }
        Some(c) => c.clone(),
        None => ab.variants.first()?.0.clone(),
    };
    let st = sticky(&ab.sticky, &format!("{place}.sticky"), issues)?;
    let plan = ab.analysis.as_ref().and_then(|a| ab_plan(a, &format!("{place}.analysis"), issues));
    Some(Strategy::AbTest { arms: ab.variants.clone(), control, sticky: st, plan })
}

fn webhooks(raw: &[raw::RawWebhook], issues: &mut Issues) -> Vec<WebhookSpec> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, w)| {
            let place = format!("webhooks[{i}]");
            let url = match w.url.parse::<Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => Some(u),
                _ => {
                    issues.push(
                        format!("{place}.url"),
                        format!("invalid webhook URL {:?}: write it like \"http://host:port/path\"", w.url),
                    );
                    None
                }
            };
            let secret = w.secret_env.as_ref().and_then(|var| match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                _ => {
                    issues.push(format!("{place}.secret_env"), format!("environment variable {var} is not set"));
                    None
                }
            });
            let timeout = duration(&w.timeout, Duration::from_secs(5), &format!("{place}.timeout"), issues);
            url.map(|url| WebhookSpec {
                url,
                secret,
                events: w.events.clone(),
                timeout,
                retries: w.retries.unwrap_or(5).min(20),
            })
        })
        .collect()
}

/// The checks of one analysis (`analysis:`, or an A/B test's `guardrails:`).
fn criteria(a: &RawAnalysis, ap: &str, issues: &mut Issues) -> CanaryCriteria {
    let fraction = |v: Option<f64>, name: &str, issues: &mut Issues| {
        if let Some(x) = v {
            if !(x.is_finite() && (0.0..=1.0).contains(&x)) {
                issues.push(format!("{ap}.{name}"), format!("must be a fraction between 0 and 1, got {x}"));
            }
        }
        v
    };
    let max_error_rate = fraction(a.max_error_rate.or(Some(0.01)), "max_error_rate", issues);
    let max_error_rate_increase = fraction(a.max_error_rate_increase, "max_error_rate_increase", issues);
    let alpha = a.alpha.unwrap_or(0.01);
    if !(alpha > 0.0 && alpha < 0.5) {
        issues.push(format!("{ap}.alpha"), format!("must be between 0 and 0.5, got {alpha}"));
    }
    if let Some(r) = a.max_p99_ratio {
        if !(r.is_finite() && r >= 1.0) {
            issues.push(format!("{ap}.max_p99_ratio"), format!("must be 1 or more, got {r}"));
        }
    }
    let business = a.business.as_ref().and_then(|b| {
        let metric = metric(&b.metric, &format!("{ap}.business.metric"), issues)?;
        Some(BusinessGuard { metric, margin: b.margin, min_samples: b.min_samples.unwrap_or(200) })
    });
    CanaryCriteria {
        min_samples: a.min_samples.unwrap_or(100),
        max_error_rate,
        max_error_rate_increase,
        max_p99_ratio: a.max_p99_ratio,
        business,
        alpha,
    }
}

fn metric(name: &str, place: &str, issues: &mut Issues) -> Option<Metric> {
    match name {
        "conversion" => Some(Metric::Conversion),
        "accuracy" => Some(Metric::Accuracy),
        "reward" => Some(Metric::Reward),
        other => {
            issues.push(place, format!("unknown metric {other:?}: conversion, accuracy or reward"));
            None
        }
    }
}

fn ab_plan(a: &RawAbAnalysis, place: &str, issues: &mut Issues) -> Option<AbPlan> {
    let metric = metric(&a.metric, &format!("{place}.metric"), issues)?;
    let alpha = a.alpha.unwrap_or(0.05);
    if !(alpha > 0.0 && alpha < 0.5) {
        issues.push(format!("{place}.alpha"), format!("must be between 0 and 0.5, got {alpha}"));
    }
    let effect = a.effect.unwrap_or(0.05);
    if !(effect.is_finite() && effect > 0.0) {
        issues.push(
            format!("{place}.effect"),
            format!("must be above 0 (the smallest difference worth finding), got {effect}"),
        );
    }
    let guardrails = a.guardrails.as_ref().map(|g| criteria(g, &format!("{place}.guardrails"), issues));
    Some(AbPlan {
        criteria: AbCriteria {
            metric,
            alpha,
            tau2: effect * effect,
            min_samples: a.min_samples.unwrap_or(100),
            guardrails,
        },
        interval: duration(&a.interval, Duration::from_secs(10), &format!("{place}.interval"), issues),
        auto_promote: a.auto_promote,
    })
}

fn canary_plan(steps: &[RawStep], analysis: Option<&RawAnalysis>, place: &str, issues: &mut Issues) -> CanaryPlan {
    if steps.is_empty() {
        issues.push(format!("{place}.steps"), "give at least one step, or leave `steps` out");
    }
    let steps = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let sp = format!("{place}.steps[{i}]");
            percent(s.weight, &format!("{sp}.weight"), issues);
            let pause = if s.pause == "until_promoted" {
                None
            } else {
                Some(duration(&Some(s.pause.clone()), Duration::from_secs(60), &format!("{sp}.pause"), issues))
            };
            Step { weight: s.weight, pause }
        })
        .collect();
    let default = RawAnalysis::default();
    let a = analysis.unwrap_or(&default);
    let ap = format!("{place}.analysis");
    let criteria = criteria(a, &ap, issues);
    let on_inconclusive = match a.on_inconclusive.as_deref() {
        None | Some("hold") => OnInconclusive::Hold,
        Some("rollback") => OnInconclusive::Rollback,
        Some(other) => {
            issues.push(format!("{ap}.on_inconclusive"), format!("{other:?} is neither `hold` nor `rollback`"));
            OnInconclusive::Hold
        }
    };
    let failure_limit = a.failure_limit.unwrap_or(2);
    if failure_limit == 0 {
        issues.push(format!("{ap}.failure_limit"), "must be at least 1");
    }
    CanaryPlan {
        steps,
        criteria,
        interval: duration(&a.interval, Duration::from_secs(10), &format!("{ap}.interval"), issues),
        failure_limit: failure_limit.max(1),
        inconclusive_deadline: duration(
            &a.inconclusive_deadline,
            Duration::from_secs(600),
            &format!("{ap}.inconclusive_deadline"),
            issues,
        ),
        on_inconclusive,
    }
}

fn routes(raw: &[RawRoute], raw_backends: &[RawBackend], issues: &mut Issues) -> Vec<RouteSpec> {
    let is_upstream: HashMap<&str, bool> =
        raw_backends.iter().map(|b| (b.name.as_str(), b.upstream.is_some() && b.onnx.is_none())).collect();
    let known: Vec<&str> = raw_backends.iter().map(|b| b.name.as_str()).collect();
    let mut models: HashMap<String, usize> = HashMap::new();
    let mut prefixes: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let place = format!("routes[{i}]");
        let strategy = strategy(r, &place, issues);
        let backend_place = if r.strategy.is_some() { format!("{place}.strategy") } else { format!("{place}.backend") };
        let mut all_known = true;
        let named: Vec<&str> = strategy.as_ref().map(Strategy::backends).unwrap_or_default();
        for b in &named {
            if !is_upstream.contains_key(b) {
                all_known = false;
                issues.push(&backend_place, format!("unknown backend {b:?} (backends: {})", known.join(", ")));
            }
        }
        let shadow = r.shadow.as_ref().and_then(|sh| {
            let ok_backend = is_upstream.contains_key(sh.backend.as_str());
            if !ok_backend {
                issues.push(
                    format!("{place}.shadow.backend"),
                    format!("unknown backend {:?} (backends: {})", sh.backend, known.join(", ")),
                );
            }
            if named.contains(&sh.backend.as_str()) {
                issues.push(
                    format!("{place}.shadow.backend"),
                    format!("{:?} already answers this route; shadow another backend", sh.backend),
                );
            }
            let ok_percent = percent(sh.percent, &format!("{place}.shadow.percent"), issues);
            let max_in_flight = count(sh.max_in_flight, 64, 100_000, &format!("{place}.shadow.max_in_flight"), issues);
            (ok_backend && ok_percent).then(|| ShadowSpec {
                backend: sh.backend.clone(),
                percent: sh.percent,
                max_in_flight,
            })
        });
        let kind = match (&r.model, &r.path_prefix) {
            (Some(name), None) => {
                let mut ok = check_name(name, &format!("{place}.model"), issues);
                if ok {
                    if let Some(first) = models.insert(name.clone(), i) {
                        issues.push(
                            format!("{place}.model"),
                            format!("duplicate model {name:?} (first at routes[{first}])"),
                        );
                        ok = false;
                    }
                }
                if r.rewrite.is_some() {
                    issues.push(format!("{place}.rewrite"), "only path_prefix routes can rewrite paths");
                }
                if let Some(up) = &r.upstream_model {
                    if all_known && !named.iter().any(|b| is_upstream.get(b) == Some(&true)) {
                        issues.push(
                            format!("{place}.upstream_model"),
                            "every backend of this route runs in-process; upstream_model applies to upstream backends",
                        );
                    }
                    ok &= check_name(up, &format!("{place}.upstream_model"), issues);
                }
                ok.then(|| RouteKind::Model { name: name.clone(), upstream_model: r.upstream_model.clone() })
            }
            (None, Some(prefix)) => {
                let place_p = format!("{place}.path_prefix");
                let prefix = check_prefix(prefix, &place_p, issues);
                if let Some(p) = &prefix {
                    if p == "/v2/" || p.starts_with("/v2/") {
                        issues.push(&place_p, format!("{p:?} overlaps the Open Inference Protocol paths under /v2/; route models with `model:`"));
                    } else if let Some(first) = prefixes.insert(p.clone(), i) {
                        issues.push(&place_p, format!("duplicate path_prefix {p:?} (first at routes[{first}])"));
                    }
                }
                for b in &named {
                    if is_upstream.get(b) == Some(&false) {
                        issues.push(
                            &backend_place,
                            format!("backend {b:?} is an ONNX model; path_prefix routes need upstream backends"),
                        );
                    }
                }
                if r.upstream_model.is_some() {
                    issues.push(format!("{place}.upstream_model"), "only model routes name an upstream model");
                }
                if r.shadow.is_some() {
                    issues.push(
                        format!("{place}.shadow"),
                        "shadow traffic applies to model routes, not path_prefix routes",
                    );
                }
                let rewrite = r.rewrite.as_ref().and_then(|w| check_prefix(w, &format!("{place}.rewrite"), issues));
                prefix.map(|prefix| RouteKind::Prefix { prefix, rewrite })
            }
            (Some(_), Some(_)) => {
                issues.push(&place, "set either `model` or `path_prefix`, not both");
                None
            }
            (None, None) => {
                issues.push(&place, "missing `model: <name>` or `path_prefix: /<path>/`");
                None
            }
        };
        if let (Some(kind), Some(strategy), true) = (kind, strategy, all_known) {
            let max_concurrency =
                r.max_concurrency.map(|n| count(Some(n), 1, 1_000_000, &format!("{place}.max_concurrency"), issues));
            let overrides = r.overrides.as_deref().and_then(|o| overrides(o, &format!("{place}.overrides"), issues));
            out.push(RouteSpec { kind, strategy, shadow, max_concurrency, overrides });
        }
    }
    out
}

#[cfg(test)]
mod tests;
