//! `backends:` of routes.yaml: in-process ONNX models (identified by their file's SHA-256) and
//! upstream servers (endpoints, retries, ejection, TLS roots).

use super::*;

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
    /// Dynamic batching: concurrent requests concatenated along the batch dimension into one
    /// run. Off when unset.
    pub batching: Option<Batching>,
    /// The model's reference profile (`onnx.profile`), for input validation and drift.
    pub profile: Option<ProfileRef>,
    /// `onnx.registry`: the model is the version a registry alias names (then `path` is the
    /// downloaded file, empty until a version was fetched).
    pub registry: Option<Box<RegistryVersion>>,
}

/// `onnx.batching:` — like Triton's dynamic batcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows (first-dimension entries) one run may take, summed over its requests (1..=65 536).
    pub max_batch_size: usize,
    /// Longest the first request of a batch waits for others to join it (only a model with a
    /// single session waits; with more, a free session runs what is queued).
    pub max_queue_delay: Duration,
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
    /// What the upstream speaks: HTTP (the Open Inference Protocol's REST form, or anything
    /// for plain proxying), or the Open Inference Protocol's gRPC service.
    pub protocol: UpstreamProtocol,
}

/// `upstream.protocol:` — how the gateway talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (or h2 by ALPN over TLS): OIP REST, or plain proxying.
    #[default]
    Http,
    /// `inference.GRPCInferenceService` over HTTP/2: h2c for `http://`, TLS for `https://`.
    Grpc,
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

pub(super) fn backends(raw: &[RawBackend], base: &Path, issues: &mut Issues) -> Vec<BackendSpec> {
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
pub(super) fn file_sha256(path: &Path) -> std::io::Result<String> {
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

pub(super) fn onnx_spec(raw: &raw::RawOnnx, base: &Path, place: &str, issues: &mut Issues) -> Option<OnnxSpec> {
    let mut registry_version = None;
    let (path, sha256) = match (&raw.path, &raw.registry) {
        (Some(p), None) => {
            let path = readable_file(base, p, &format!("{place}.path"), "model file", issues);
            let sha256 = match path.as_deref().map(file_sha256) {
                Some(Ok(digest)) => digest,
                Some(Err(e)) => {
                    issues.push(format!("{place}.path"), format!("cannot read model file: {e}"));
                    return None;
                }
                None => String::new(),
            };
            (path, sha256)
        }
        (None, Some(r)) => {
            let rplace = format!("{place}.registry");
            let spec = registry::registry(r, base, &rplace, issues)?;
            let fetched = registry::resolve(&spec, &rplace, issues);
            let (path, sha256) = match &fetched {
                Some((_, file, digest)) => (file.clone(), digest.clone()),
                None => (PathBuf::new(), String::new()),
            };
            registry_version = Some(Box::new(RegistryVersion { spec, fetched: fetched.map(|(p, _, _)| p) }));
            (Some(path), sha256)
        }
        (Some(_), Some(_)) => {
            issues.push(place, "set either `path` or `registry`, not both");
            return None;
        }
        (None, None) => {
            issues.push(place, "missing `path: model.onnx` (or `registry: {mlflow: URL, model: NAME, alias: NAME}`)");
            return None;
        }
    };
    let spec = OnnxSpec {
        path: path.clone().unwrap_or_default(),
        sha256,
        sessions: count(raw.sessions, 1, 64, &format!("{place}.sessions"), issues),
        intra_op_threads: count(raw.intra_op_threads, 1, 64, &format!("{place}.intra_op_threads"), issues),
        queue: count(raw.queue, 128, 100_000, &format!("{place}.queue"), issues),
        queue_timeout: duration(&raw.queue_timeout, Duration::from_secs(1), &format!("{place}.queue_timeout"), issues),
        batching: raw.batching.as_ref().map(|b| {
            let delay_place = format!("{place}.batching.max_queue_delay");
            let max_queue_delay = duration(&b.max_queue_delay, Duration::from_millis(2), &delay_place, issues);
            if max_queue_delay > Duration::from_secs(1) {
                issues.push(
                    delay_place,
                    format!(
                        "must be at most 1s, got {max_queue_delay:?}: every request of a batch may wait that long \
                         (Triton's dynamic batcher uses microseconds to a few milliseconds)"
                    ),
                );
            }
            Batching {
                max_batch_size: count(
                    b.max_batch_size,
                    64,
                    65_536,
                    &format!("{place}.batching.max_batch_size"),
                    issues,
                ),
                max_queue_delay,
            }
        }),
        profile: raw.profile.as_ref().and_then(|p| quality::profile(base, p, &format!("{place}.profile"), issues)),
        registry: registry_version,
    };
    path.map(|_| spec)
}

pub(super) fn upstream_url(text: &str, place: &str, issues: &mut Issues) -> Option<Uri> {
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

pub(super) fn upstream_spec(
    raw: &raw::RawUpstream,
    base: &Path,
    place: &str,
    issues: &mut Issues,
) -> Option<UpstreamSpec> {
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
    let protocol = match raw.protocol.as_deref() {
        None | Some("http") => UpstreamProtocol::Http,
        Some("grpc") => UpstreamProtocol::Grpc,
        Some(other) => {
            issues.push(
                format!("{place}.protocol"),
                format!("unknown protocol {other:?}: use `http` (the default) or `grpc`"),
            );
            UpstreamProtocol::Http
        }
    };
    if protocol == UpstreamProtocol::Grpc {
        for (i, url) in urls.iter().flatten().enumerate() {
            if !matches!(url.path(), "" | "/") {
                issues.push(
                    format!("{place}.urls[{i}]"),
                    format!("a gRPC upstream is a host and port ({url} has a path): gRPC calls have fixed paths"),
                );
            }
        }
    }
    urls.map(|urls| UpstreamSpec {
        urls,
        retries,
        outlier,
        connect_timeout,
        request_timeout,
        business_header,
        ca,
        protocol,
    })
}
