//! Models from a model registry: backends with `onnx.registry: {mlflow: URL, model: NAME, alias:
//! NAME}` serve the version the alias names. A poller (a task off the request path; its file
//! and ONNX Runtime work on the blocking pool) looks at each alias every `poll`; a new version's
//! ONNX artifact is downloaded into the cache folder (size-bounded, written to a temporary file
//! and renamed), its SHA-256 recorded, and its signature checked against the route's other
//! variants, the version it replaces and the backend's profile. Only then is the pointer file
//! replaced and routes.yaml applied again through the same reload path as a file change: the
//! backend's model digest changed, so the route has a new revision and its rollout (a canary)
//! starts over. A registry that is down or answers garbage changes nothing; a
//! `registry_failed` event names the URL and the reason.

pub mod mlflow;

use crate::backend::onnx::read_signature;
use crate::backend::runtime;
use crate::config::{BackendKind, Config, Pointer, RegistrySpec};
use crate::protocol::Signature;
use crate::quality::profile::Profile;
use crate::rollout::store::{write_atomic, write_synced};
use crate::rollout::Controller;
pub use mlflow::{Mlflow, RegistryError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Downloaded versions kept per alias: the one served and the one before it.
const KEEP_VERSIONS: usize = 2;

/// One alias to follow, with what a new version must fit.
#[derive(Debug, Clone)]
pub struct Source {
    /// The registry, model and alias.
    pub spec: RegistrySpec,
    /// The backends that serve it.
    pub backends: Vec<String>,
    /// Models it must fit: (what, file) — the route's other ONNX variants.
    pub peers: Vec<(String, PathBuf)>,
    /// Profiles it must fit: (backend, profile).
    pub profiles: Vec<(String, Arc<Profile>)>,
}

/// What a look at an alias found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The alias names the version already fetched.
    Unchanged(String),
    /// A new version was downloaded, verified and recorded.
    Fetched(Pointer),
}

/// Every alias `config`'s backends follow, each once.
pub fn sources(config: &Config) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::new();
    for b in &config.backends {
        let BackendKind::Onnx(onnx) = &b.kind else { continue };
        let Some(reg) = &onnx.registry else { continue };
        let idx = match out.iter().position(|s| s.spec == reg.spec) {
            Some(i) => i,
            None => {
                out.push(Source { spec: reg.spec.clone(), backends: vec![], peers: vec![], profiles: vec![] });
                out.len() - 1
            }
        };
        let source = &mut out[idx];
        source.backends.push(b.name.clone());
        if let Some(p) = &onnx.profile {
            source.profiles.push((b.name.clone(), p.profile.clone()));
        }
        for r in config.routes.iter().filter(|r| r.backends().contains(&b.name.as_str())) {
            for other in r.backends().into_iter().filter(|o| *o != b.name) {
                let Some(spec) = config.backends.iter().find(|x| x.name == other) else { continue };
                let BackendKind::Onnx(o) = &spec.kind else { continue };
                // A peer following the same alias is this source itself.
                if o.path.as_os_str().is_empty() || o.registry.as_ref().is_some_and(|x| x.spec == reg.spec) {
                    continue;
                }
                let what = format!("route {:?} variant {other:?} ({})", r.name(), o.path.display());
                if !source.peers.iter().any(|(_, p)| p == &o.path) {
                    source.peers.push((what, o.path.clone()));
                }
            }
        }
    }
    out
}

/// Looks at `source`'s alias once; a new version is downloaded, verified and recorded.
pub async fn poll_once(client: &Mlflow, source: &Source, ort_library: &Path) -> Result<Outcome, RegistryError> {
    let spec = &source.spec;
    let pointer_err = |reason: String| RegistryError { url: spec.pointer_path().display().to_string(), reason };
    let reading = spec.clone();
    let current = tokio::task::spawn_blocking(move || reading.read_pointer())
        .await
        .map_err(|e| pointer_err(e.to_string()))?
        .map_err(pointer_err)?;
    let version = client.alias(spec).await?;
    if let Some(p) = current.as_ref().filter(|p| p.version == version.version && p.registry == spec.mlflow.to_string())
    {
        return Ok(Outcome::Unchanged(p.version.clone()));
    }
    let folder = client.artifacts_url(spec, &version.version).await?;
    let file = client.onnx_file(&folder).await?;
    let artifact = format!("{folder}/{file}");
    let bytes = client.get(&artifact, spec.max_bytes).await?;
    let (source, ort) = (source.clone(), ort_library.to_path_buf());
    let art = artifact.clone();
    let result = tokio::task::spawn_blocking(move || store(&source, current, version, &art, &bytes, &ort))
        .await
        .map_err(|e| RegistryError { url: artifact.clone(), reason: format!("verification failed: {e}") })?;
    result.map(Outcome::Fetched).map_err(|reason| RegistryError { url: artifact, reason })
}

/// Writes the artifact to a temporary file, verifies it and, when it fits, renames it into the
/// cache and replaces the pointer. Blocking.
fn store(
    source: &Source,
    current: Option<Pointer>,
    version: mlflow::ModelVersion,
    artifact: &str,
    bytes: &[u8],
    ort_library: &Path,
) -> Result<Pointer, String> {
    use sha2::Digest;
    let spec = &source.spec;
    std::fs::create_dir_all(&spec.cache).map_err(|e| format!("cannot create {}: {e}", spec.cache.display()))?;
    let sha256 = crate::protocol::secret::hex(&sha2::Sha256::digest(bytes));
    let key = spec.key();
    let clean_version: String = version.version.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let name = format!("{key}-v{clean_version}-{}.onnx", &sha256[..12]);
    let tmp = spec.cache.join(format!(".{name}.tmp"));
    let written = write_synced(&tmp, bytes)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))
        .and_then(|()| verify(source, current.as_ref(), &tmp, ort_library));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{e} (downloaded to {}, removed)", tmp.display()));
    }
    let target = spec.cache.join(&name);
    std::fs::rename(&tmp, &target)
        .map_err(|e| format!("cannot rename {} to {}: {e}", tmp.display(), target.display()))?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let pointer = Pointer {
        registry: spec.mlflow.to_string(),
        model: spec.model.clone(),
        alias: spec.alias.clone(),
        version: version.version,
        source: version.source,
        run_id: version.run_id,
        artifact: artifact.to_string(),
        file: name.clone(),
        sha256,
        fetched_at_ms: now_ms,
    };
    let text = serde_json::to_vec_pretty(&pointer).map_err(|e| e.to_string())?;
    let path = spec.pointer_path();
    let ptmp = spec.cache.join(format!(".{key}.json.tmp"));
    write_atomic(&ptmp, &path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    prune(&spec.cache, &key, &name, current.as_ref().map(|p| p.file.as_str()));
    Ok(pointer)
}

/// Removes this alias's older downloads, keeping the new one and the one it replaces.
fn prune(cache: &Path, key: &str, new: &str, previous: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    let prefix = format!("{key}-v");
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".onnx") && n != new && Some(n.as_str()) != previous
        })
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    old.sort();
    let keep_old = KEEP_VERSIONS.saturating_sub(if previous.is_some() { 2 } else { 1 });
    let remove = old.len().saturating_sub(keep_old);
    for (_, p) in old.into_iter().take(remove) {
        let _ = std::fs::remove_file(p);
    }
}

/// The downloaded model must load, and take and give what the route's other variants, the
/// version it replaces and the backend's profile expect.
fn verify(source: &Source, current: Option<&Pointer>, file: &Path, ort_library: &Path) -> Result<(), String> {
    let env = runtime::environment(ort_library).map_err(|e| e.to_string())?;
    let candidate = read_signature(file, &env).map_err(|e| format!("not a model ONNX Runtime loads: {e}"))?;
    let mut peers = source.peers.clone();
    if let Some(p) = current {
        peers.push((format!("the version it replaces (v{})", p.version), source.spec.cache.join(&p.file)));
    }
    for (what, path) in &peers {
        let Ok(theirs) = read_signature(path, &env) else { continue };
        fit(&candidate, &theirs).map_err(|e| format!("does not fit {what}: {e}"))?;
    }
    for (backend, profile) in &source.profiles {
        crate::backend::fits(profile, &candidate)
            .map_err(|e| format!("does not fit backend {backend:?}'s profile: {e}"))?;
    }
    Ok(())
}

/// `candidate` takes the same inputs as `theirs` (names, types, shapes) and gives every output
/// `theirs` gives, with the same type.
pub fn fit(candidate: &Signature, theirs: &Signature) -> Result<(), String> {
    let show = |s: &[crate::protocol::TensorSpec]| -> String {
        s.iter().map(|t| format!("{} {} {:?}", t.name, t.datatype.as_str(), t.shape)).collect::<Vec<_>>().join(", ")
    };
    if candidate.inputs != theirs.inputs {
        return Err(format!("its inputs are [{}], theirs [{}]", show(&candidate.inputs), show(&theirs.inputs)));
    }
    for o in &theirs.outputs {
        match candidate.outputs.iter().find(|c| c.name == o.name) {
            Some(c) if c.datatype == o.datatype => {}
            Some(c) => {
                return Err(format!("output {:?} is {}, theirs {}", o.name, c.datatype.as_str(), o.datatype.as_str()))
            }
            None => return Err(format!("it has no output {:?} (its outputs: [{}])", o.name, show(&candidate.outputs))),
        }
    }
    Ok(())
}

/// Looks at every alias of `config` once (before serving): fetched versions and the errors of
/// the ones that could not be looked at.
pub async fn prefetch(config: &Config, ort_library: &Path) -> Vec<Result<Outcome, RegistryError>> {
    let client = Mlflow::default();
    let mut out = Vec::new();
    for source in sources(config) {
        out.push(poll_once(&client, &source, ort_library).await);
    }
    out
}

/// Follows the aliases of the controller's routes.yaml until the controller is dropped: each
/// every its `poll`; a new version asks `reload` to apply routes.yaml again.
pub fn spawn(controller: &Arc<Controller>, ort_library: PathBuf, reload: tokio::sync::mpsc::Sender<()>) {
    let me = Arc::downgrade(controller);
    tokio::spawn(async move {
        let client = Mlflow::default();
        let mut due: HashMap<RegistrySpec, Instant> = HashMap::new();
        let mut last_error: HashMap<RegistrySpec, String> = HashMap::new();
        loop {
            let Some(controller) = me.upgrade() else { return };
            let config = controller.config().await;
            let now = Instant::now();
            let mut fetched = false;
            let mut next = now + Duration::from_secs(5);
            for source in sources(&config) {
                let at = *due.entry(source.spec.clone()).or_insert(now + source.spec.poll);
                if at > now {
                    next = next.min(at);
                    continue;
                }
                let outcome = poll_once(&client, &source, &ort_library).await;
                let after = Instant::now() + source.spec.poll;
                due.insert(source.spec.clone(), after);
                next = next.min(after);
                report(&controller, &source, outcome, &mut last_error, &mut fetched);
            }
            drop(controller);
            if fetched && reload.send(()).await.is_err() {
                return;
            }
            tokio::time::sleep_until(next.into()).await;
        }
    });
}

fn report(
    controller: &Controller,
    source: &Source,
    outcome: Result<Outcome, RegistryError>,
    last_error: &mut HashMap<RegistrySpec, String>,
    fetched: &mut bool,
) {
    let spec = &source.spec;
    match outcome {
        Ok(Outcome::Unchanged(_)) => {
            if last_error.remove(spec).is_some() {
                tracing::info!(registry = %spec.mlflow, model = %spec.model, alias = %spec.alias, "registry reachable again");
            }
        }
        Ok(Outcome::Fetched(p)) => {
            last_error.remove(spec);
            *fetched = true;
            let message = format!(
                "model {:?} alias {:?} is version {} (sha256 {}), fetched from {}",
                p.model, p.alias, p.version, p.sha256, p.artifact
            );
            tracing::info!(backends = ?source.backends, "{message}");
            let details = serde_json::json!({ "backends": source.backends, "pointer": p });
            controller.record_event("", "registry_fetched", message, details);
        }
        Err(e) => {
            let message = e.to_string();
            if last_error.get(spec) == Some(&message) {
                return;
            }
            tracing::error!(registry = %spec.mlflow, model = %spec.model, alias = %spec.alias, "{message}; the running table stays");
            let details = serde_json::json!({
                "backends": source.backends, "registry": spec.mlflow.to_string(), "model": spec.model,
                "alias": spec.alias, "url": e.url, "reason": e.reason,
            });
            controller.record_event("", "registry_failed", format!("{message}; the running table stays"), details);
            last_error.insert(spec.clone(), message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataType, TensorSpec};

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), datatype, shape: shape.to_vec() }
    }

    fn classifier(features: i64) -> Signature {
        Signature {
            inputs: vec![spec("input", DataType::Fp32, &[-1, features])],
            outputs: vec![spec("label", DataType::Int64, &[-1]), spec("probabilities", DataType::Fp32, &[-1, 2])],
        }
    }

    #[test]
    fn a_model_fits_when_it_takes_the_same_inputs_and_gives_every_output() {
        assert_eq!(fit(&classifier(30), &classifier(30)), Ok(()));
        let mut more = classifier(30);
        more.outputs.push(spec("extra", DataType::Fp32, &[-1]));
        assert_eq!(fit(&more, &classifier(30)), Ok(()));
        let e = fit(&classifier(10), &classifier(30)).unwrap_err();
        assert_eq!(e, "its inputs are [input FP32 [-1, 10]], theirs [input FP32 [-1, 30]]");
        let mut fewer = classifier(30);
        fewer.outputs.pop();
        assert!(fit(&fewer, &classifier(30)).unwrap_err().starts_with("it has no output \"probabilities\""));
        let mut retyped = classifier(30);
        retyped.outputs[0].datatype = DataType::Fp32;
        assert_eq!(fit(&retyped, &classifier(30)).unwrap_err(), "output \"label\" is FP32, theirs INT64");
    }

    #[test]
    fn older_downloads_are_pruned_but_the_served_one_and_the_one_before_stay() {
        let dir = tempfile::tempdir().unwrap();
        for (i, n) in
            ["m@a-v1-x.onnx", "m@a-v2-x.onnx", "m@a-v3-x.onnx", "m@a-v4-x.onnx", "other@a-v1-x.onnx"].iter().enumerate()
        {
            std::fs::write(dir.path().join(n), [i as u8]).unwrap();
        }
        prune(dir.path(), "m@a", "m@a-v4-x.onnx", Some("m@a-v3-x.onnx"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["m@a-v3-x.onnx", "m@a-v4-x.onnx", "other@a-v1-x.onnx"]);
    }
}
