//! `onnx.registry:` — a backend whose model is the version a model registry's alias names
//! (MLflow's Model Registry). The registry poller downloads and verifies each new version into
//! a cache folder and records it in a pointer file; routes.yaml is then read again and the
//! backend's model is the file the pointer names, so a new version is a new spec revision.

use super::*;
use serde::{Deserialize, Serialize};

/// Default time between two looks at the alias.
pub const DEFAULT_POLL: Duration = Duration::from_secs(30);
/// Default largest artifact that is downloaded (bytes).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;
/// Largest `max_bytes` accepted (bytes).
pub const MAX_MAX_BYTES: u64 = 4 << 30;

/// Where a registry backend's model comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RegistrySpec {
    /// The MLflow tracking server's base URL (`http://host:port`, an optional path prefix).
    pub mlflow: Uri,
    /// The registered model's name.
    pub model: String,
    /// The alias whose version is served (`production`, `challenger`, ...).
    pub alias: String,
    /// Time between two looks at the alias.
    pub poll: Duration,
    /// The folder downloaded versions and the pointer file are kept in.
    pub cache: PathBuf,
    /// Largest artifact downloaded; a larger one is refused before it is read.
    pub max_bytes: u64,
}

impl RegistrySpec {
    /// The pointer file: which downloaded version this alias stands for now.
    pub fn pointer_path(&self) -> PathBuf {
        self.cache.join(format!("{}.json", self.key()))
    }

    /// `<model>@<alias>` with every character but letters, digits, '.', '_' and '-' as '_':
    /// the stem of this source's files in the cache.
    pub fn key(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
        };
        format!("{}@{}", clean(&self.model), clean(&self.alias))
    }

    /// The registry's URL joined with an API path (`/api/2.0/...`).
    pub fn url(&self, api_path: &str) -> String {
        format!("{}{}", self.mlflow.to_string().trim_end_matches('/'), api_path)
    }

    /// Reads the pointer file; `Ok(None)` when nothing was fetched yet.
    pub fn read_pointer(&self) -> Result<Option<Pointer>, String> {
        let path = self.pointer_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| format!("{} is not a registry pointer: {e}", path.display()))
    }
}

/// The record of the version an alias stands for, written by the poller after the artifact was
/// downloaded and verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The registry's URL.
    pub registry: String,
    /// The registered model.
    pub model: String,
    /// The alias.
    pub alias: String,
    /// The model version the alias named.
    pub version: String,
    /// The version's `source` (`models:/m-...` or a run's artifact path).
    pub source: String,
    /// The run that logged it, when the registry says.
    #[serde(default)]
    pub run_id: String,
    /// The artifact's URL it was downloaded from.
    pub artifact: String,
    /// The downloaded file's name in the cache folder.
    pub file: String,
    /// SHA-256 of the downloaded bytes.
    pub sha256: String,
    /// When it was fetched (ms since the epoch).
    pub fetched_at_ms: u64,
}

/// The registry version a backend serves, once fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryVersion {
    /// Where it comes from.
    pub spec: RegistrySpec,
    /// What was fetched, when something was: `None` until the poller has fetched a version.
    pub fetched: Option<Pointer>,
}

pub(super) fn registry(raw: &raw::RawRegistry, base: &Path, place: &str, issues: &mut Issues) -> Option<RegistrySpec> {
    let mlflow = upstream_url(&raw.mlflow, &format!("{place}.mlflow"), issues);
    if mlflow.as_ref().is_some_and(|u| u.scheme_str() != Some("http")) {
        issues.push(
            format!("{place}.mlflow"),
            "only http:// registries are supported (keep it on loopback or a private network)",
        );
    }
    if raw.model.is_empty() || raw.model.len() > 256 {
        issues.push(format!("{place}.model"), "must be a registered model's name (1-256 characters)");
    }
    if raw.alias.is_empty() || raw.alias.len() > 256 {
        issues.push(format!("{place}.alias"), "must be an alias of the model (1-256 characters)");
    }
    let poll = duration(&raw.poll, DEFAULT_POLL, &format!("{place}.poll"), issues);
    let cache = base.join(raw.cache.as_deref().unwrap_or("registry-cache"));
    let max_bytes = match raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(v) if v >= 1 && (v as u64) <= MAX_MAX_BYTES => v as u64,
        Some(v) => {
            issues.push(format!("{place}.max_bytes"), format!("must be between 1 and {MAX_MAX_BYTES}, got {v}"));
            DEFAULT_MAX_BYTES
        }
    };
    Some(RegistrySpec { mlflow: mlflow?, model: raw.model.clone(), alias: raw.alias.clone(), poll, cache, max_bytes })
}

/// The model file and digest a registry backend serves now: the pointer's file, whose bytes must
/// still have the recorded digest. `None` (no issue) when nothing was fetched yet.
pub(super) fn resolve(spec: &RegistrySpec, place: &str, issues: &mut Issues) -> Option<(Pointer, PathBuf, String)> {
    let pointer = match spec.read_pointer() {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(e) => {
            issues.push(place, e);
            return None;
        }
    };
    let file = spec.cache.join(&pointer.file);
    if pointer.file.contains('/') || pointer.file.starts_with('.') {
        issues.push(
            place,
            format!("{}: file {:?} is not a name in the cache folder", spec.pointer_path().display(), pointer.file),
        );
        return None;
    }
    match file_sha256(&file) {
        Ok(digest) if digest == pointer.sha256 => Some((pointer, file, digest)),
        Ok(digest) => {
            issues.push(
                place,
                format!(
                    "{} has SHA-256 {digest}, but {} recorded {} (changed on disk?)",
                    file.display(),
                    spec.pointer_path().display(),
                    pointer.sha256
                ),
            );
            None
        }
        Err(e) => {
            issues.push(place, format!("cannot read the cached model {}: {e}", file.display()));
            None
        }
    }
}
