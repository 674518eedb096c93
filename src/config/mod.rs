//! `routes.yaml`: raw serde structs, validated into domain types that cannot be invalid.
//!
//! [`Config::load`] reads a file and reports *every* problem with its place
//! (`routes[1].backend: unknown backend "risk-v3"`), so an operator fixes a file in one pass.

mod analysis;
mod backend;
mod cluster;
mod error;
pub mod plan;
mod quality;
mod raw;
mod registry;
mod route;
mod server;
pub mod watch;

use analysis::{ab_plan, canary_plan, criteria};
pub use backend::*;
pub use cluster::{ClusterSettings, REPLICA_ID_ENV};
use error::Issues;
pub use error::{ConfigErrors, ConfigIssue};
use plan::{
    AbCriteria, AbPlan, BlueGreenPlan, BusinessGuard, CanaryCriteria, CanaryPlan, Metric, MetricCheck, OnInconclusive,
    Step,
};
pub use quality::{
    CaptureSpec, DriftSpec, OnInvalid, PerformanceSpec, ProfileRef, ValidationSpec, MAX_LABELLED_FEATURES,
};
use raw::{RawAbAnalysis, RawAnalysis, RawBackend, RawCheck, RawConfig, RawRoute, RawServer, RawStep, RawSticky};
pub use registry::{Pointer, RegistrySpec, RegistryVersion, DEFAULT_MAX_BYTES, DEFAULT_POLL};
pub use route::*;
pub use server::*;

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
    /// Fleet mode (status, leader and windows in etcd); `None`: this process decides alone.
    pub cluster: Option<ClusterSettings>,
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
        for (i, r) in routes.iter().enumerate() {
            quality::check_route(r, &backends, &format!("routes[{i}]"), &mut issues);
        }
        let webhooks = webhooks(&raw.webhooks, &mut issues);
        let cluster = cluster::cluster(&raw.cluster, &mut issues);
        if issues.0.is_empty() {
            Ok(Config { source: path.to_path_buf(), server, backends, routes, webhooks, cluster })
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

fn percent(value: f64, place: &str, issues: &mut Issues) -> bool {
    let ok = value.is_finite() && (0.0..=100.0).contains(&value);
    if !ok {
        issues.push(place, format!("must be a percentage between 0 and 100, got {value}"));
    }
    ok
}

#[cfg(test)]
mod tests;
