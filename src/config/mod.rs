//! `routes.yaml`: raw serde structs, validated into domain types that cannot be invalid.
//!
//! [`Config::load`] reads a file and reports *every* problem with its place
//! (`routes[1].backend: unknown backend "risk-v3"`), so an operator fixes a file in one pass.

mod error;
mod raw;

use error::Issues;
pub use error::{ConfigErrors, ConfigIssue};
use raw::{RawBackend, RawConfig, RawRoute, RawServer};

use http::Uri;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ONNX Runtime library that `make ort` installs, relative to the working directory.
pub const DEFAULT_ORT_LIBRARY: &str = ".ort/libonnxruntime.so.1.31.1";

/// A validated `routes.yaml`.
#[derive(Debug, Clone)]
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
}

/// `server:` after validation, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ServerSettings {
    /// Address of the inference listener.
    pub listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a client may take to send the request head.
    pub header_read_timeout: Duration,
    /// Deadline for a whole request, inference or forwarding included.
    pub request_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// ONNX Runtime shared library, when the file names one.
    pub ort_library: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            ort_library: None,
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
    /// Number of ORT sessions, each on its own worker thread (1..=64).
    pub sessions: usize,
    /// ORT intra-op threads per session (1..=64).
    pub intra_op_threads: usize,
    /// Requests that may wait for a free session before new ones get 503 (1..=100 000).
    pub queue: usize,
}

/// An upstream HTTP server.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct UpstreamSpec {
    /// Base URL: `http://host:port` with an optional path prefix, no query.
    pub url: Uri,
    /// Deadline for the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline for the upstream's response head.
    pub request_timeout: Duration,
}

/// A route: what clients address, and the backend that answers.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteSpec {
    /// How requests are matched.
    pub kind: RouteKind,
    /// The backend's name; it exists in [`Config::backends`].
    pub backend: String,
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
}

impl Config {
    /// Reads and validates `path`. Every problem is reported, each with its place.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one(path, "file", format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| {
                let place = e.location().map_or_else(
                    || "file".to_string(),
                    |l| format!("line {} column {}", l.line(), l.column()),
                );
                ConfigErrors::one(path, place, yaml_message(&e))
            })?
        };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut issues = Issues::default();
        let server = server(&raw.server, &mut issues);
        let backends = backends(&raw.backends, &base, &mut issues);
        let routes = routes(&raw.routes, &raw.backends, &mut issues);
        if issues.0.is_empty() {
            Ok(Config {
                source: path.to_path_buf(),
                server,
                backends,
                routes,
            })
        } else {
            Err(ConfigErrors {
                file: path.to_path_buf(),
                issues: issues.0,
            })
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
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        issues.push(
            place,
            format!("invalid name {name:?}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        );
    }
    ok
}

fn duration(
    value: &Option<String>,
    default: Duration,
    place: &str,
    issues: &mut Issues,
) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            issues.push(place, "must be longer than zero");
            default
        }
        Ok(d) => d,
        Err(e) => {
            issues.push(
                place,
                format!(
                    "invalid duration {text:?} ({e}); write it like \"250ms\", \"10s\" or \"2m\""
                ),
            );
            default
        }
    }
}

fn count(
    value: Option<i64>,
    default: usize,
    max: usize,
    place: &str,
    issues: &mut Issues,
) -> usize {
    match value {
        None => default,
        Some(v) if v >= 1 && (v as u64) <= max as u64 => v as usize,
        Some(v) => {
            issues.push(place, format!("must be between 1 and {max}, got {v}"));
            default
        }
    }
}

fn server(raw: &RawServer, issues: &mut Issues) -> ServerSettings {
    let d = ServerSettings::default();
    let listen = match &raw.listen {
        None => d.listen,
        Some(text) => text.parse().unwrap_or_else(|e| {
            issues.push(
                "server.listen",
                format!("invalid address {text:?} ({e}); write it like \"127.0.0.1:8080\""),
            );
            d.listen
        }),
    };
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
        max_body_bytes,
        header_read_timeout: duration(
            &raw.header_read_timeout,
            d.header_read_timeout,
            "server.header_read_timeout",
            issues,
        ),
        request_timeout: duration(
            &raw.request_timeout,
            d.request_timeout,
            "server.request_timeout",
            issues,
        ),
        shutdown_grace: duration(
            &raw.shutdown_grace,
            d.shutdown_grace,
            "server.shutdown_grace",
            issues,
        ),
        ort_library: raw.ort_library.as_ref().map(PathBuf::from),
    }
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
                    format!(
                        "duplicate backend name {:?} (first at backends[{first}])",
                        b.name
                    ),
                );
            }
        }
        let kind = match (&b.onnx, &b.upstream) {
            (Some(onnx), None) => {
                onnx_spec(onnx, base, &format!("{place}.onnx"), issues).map(BackendKind::Onnx)
            }
            (None, Some(up)) => {
                upstream_spec(up, &format!("{place}.upstream"), issues).map(BackendKind::Upstream)
            }
            (Some(_), Some(_)) => {
                issues.push(&place, "set either `onnx` or `upstream`, not both");
                None
            }
            (None, None) => {
                issues.push(
                    &place,
                    "missing `onnx: {path: ...}` or `upstream: {url: ...}`",
                );
                None
            }
        };
        if let Some(kind) = kind {
            out.push(BackendSpec {
                name: b.name.clone(),
                kind,
            });
        }
    }
    out
}

fn onnx_spec(
    raw: &raw::RawOnnx,
    base: &Path,
    place: &str,
    issues: &mut Issues,
) -> Option<OnnxSpec> {
    let path = base.join(&raw.path);
    let readable = match std::fs::File::open(&path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => true,
            Ok(_) => {
                issues.push(
                    format!("{place}.path"),
                    format!("{} is not a file", path.display()),
                );
                false
            }
            Err(e) => {
                issues.push(
                    format!("{place}.path"),
                    format!("cannot read {}: {e}", path.display()),
                );
                false
            }
        },
        Err(e) => {
            issues.push(
                format!("{place}.path"),
                format!("cannot open model file {}: {e}", path.display()),
            );
            false
        }
    };
    let spec = OnnxSpec {
        path,
        sessions: count(raw.sessions, 1, 64, &format!("{place}.sessions"), issues),
        intra_op_threads: count(
            raw.intra_op_threads,
            1,
            64,
            &format!("{place}.intra_op_threads"),
            issues,
        ),
        queue: count(raw.queue, 128, 100_000, &format!("{place}.queue"), issues),
    };
    readable.then_some(spec)
}

fn upstream_spec(raw: &raw::RawUpstream, place: &str, issues: &mut Issues) -> Option<UpstreamSpec> {
    let url = match raw.url.parse::<Uri>() {
        Ok(u) => {
            let problem = if u.scheme_str() != Some("http") {
                Some("scheme must be http:// (https upstreams are not supported yet)")
            } else if u.authority().is_none_or(|a| a.host().is_empty()) {
                Some("has no host")
            } else if u.query().is_some() {
                Some("must not have a query")
            } else {
                None
            };
            match problem {
                Some(p) => {
                    issues.push(
                        format!("{place}.url"),
                        format!("invalid upstream URL {:?}: {p}", raw.url),
                    );
                    None
                }
                None => Some(u),
            }
        }
        Err(e) => {
            issues.push(
                format!("{place}.url"),
                format!("invalid upstream URL {:?}: {e}", raw.url),
            );
            None
        }
    };
    let d = Duration::from_secs(1);
    let connect_timeout = duration(
        &raw.connect_timeout,
        d,
        &format!("{place}.connect_timeout"),
        issues,
    );
    let request_timeout = duration(
        &raw.request_timeout,
        Duration::from_secs(30),
        &format!("{place}.request_timeout"),
        issues,
    );
    url.map(|url| UpstreamSpec {
        url,
        connect_timeout,
        request_timeout,
    })
}

/// A path prefix for proxying: starts and ends with `/`, and stays clear of the OIP paths.
fn check_prefix(text: &str, place: &str, issues: &mut Issues) -> Option<String> {
    if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
        issues.push(
            place,
            format!("invalid path {text:?}: must start with '/' and hold no '?', '#' or spaces"),
        );
        return None;
    }
    let normal = if text.ends_with('/') {
        text.to_string()
    } else {
        format!("{text}/")
    };
    Some(normal)
}

fn routes(raw: &[RawRoute], raw_backends: &[RawBackend], issues: &mut Issues) -> Vec<RouteSpec> {
    let backend_kinds: HashMap<&str, bool> = raw_backends
        .iter()
        .map(|b| (b.name.as_str(), b.upstream.is_some() && b.onnx.is_none()))
        .collect();
    let mut models: HashMap<String, usize> = HashMap::new();
    let mut prefixes: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let place = format!("routes[{i}]");
        let is_upstream = backend_kinds.get(r.backend.as_str()).copied();
        if is_upstream.is_none() {
            let known: Vec<&str> = raw_backends.iter().map(|b| b.name.as_str()).collect();
            issues.push(
                format!("{place}.backend"),
                format!(
                    "unknown backend {:?} (backends: {})",
                    r.backend,
                    known.join(", ")
                ),
            );
        }
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
                    issues.push(
                        format!("{place}.rewrite"),
                        "only path_prefix routes can rewrite paths",
                    );
                }
                if let Some(up) = &r.upstream_model {
                    if is_upstream == Some(false) {
                        issues.push(
                            format!("{place}.upstream_model"),
                            format!("backend {:?} runs in-process; upstream_model applies to upstream backends", r.backend),
                        );
                    }
                    ok &= check_name(up, &format!("{place}.upstream_model"), issues);
                }
                ok.then(|| RouteKind::Model {
                    name: name.clone(),
                    upstream_model: r.upstream_model.clone(),
                })
            }
            (None, Some(prefix)) => {
                let place_p = format!("{place}.path_prefix");
                let prefix = check_prefix(prefix, &place_p, issues);
                if let Some(p) = &prefix {
                    if p == "/v2/" || p.starts_with("/v2/") {
                        issues.push(&place_p, format!("{p:?} overlaps the Open Inference Protocol paths under /v2/; route models with `model:`"));
                    } else if let Some(first) = prefixes.insert(p.clone(), i) {
                        issues.push(
                            &place_p,
                            format!("duplicate path_prefix {p:?} (first at routes[{first}])"),
                        );
                    }
                }
                if is_upstream == Some(false) {
                    issues.push(
                        format!("{place}.backend"),
                        format!("backend {:?} is an ONNX model; path_prefix routes need an upstream backend", r.backend),
                    );
                }
                if r.upstream_model.is_some() {
                    issues.push(
                        format!("{place}.upstream_model"),
                        "only model routes name an upstream model",
                    );
                }
                let rewrite = r
                    .rewrite
                    .as_ref()
                    .and_then(|w| check_prefix(w, &format!("{place}.rewrite"), issues));
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
        if let (Some(kind), Some(_)) = (kind, is_upstream) {
            out.push(RouteSpec {
                kind,
                backend: r.backend.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
