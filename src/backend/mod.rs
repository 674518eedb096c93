//! Backends: things that can answer a request — an ONNX model run in-process, or an upstream server.

mod batch;
mod h1;
mod inline;
pub mod onnx;
mod ort_io;
mod pool;
pub mod profile;
pub mod runtime;
pub mod upstream;

pub use onnx::{InferError, OnnxBackend};
pub use upstream::{full, Body, BodyError, UpstreamBackend, UpstreamStats};

use crate::config::{BackendKind, Config, ConfigErrors, ConfigIssue};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One loaded backend.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per backend, always behind an Arc
pub enum Backend {
    /// In-process ONNX model with its worker pool.
    Onnx(OnnxBackend),
    /// Upstream HTTP server.
    Upstream(UpstreamBackend),
}

/// Loaded backends by name.
pub type BackendSet = HashMap<String, Arc<Backend>>;

/// Loads every backend of `config`. See [`load`].
pub fn load_all(config: &Config, ort_library: &Path) -> Result<BackendSet, ConfigErrors> {
    let all: Vec<&str> = config.backends.iter().map(|b| b.name.as_str()).collect();
    load(config, &all, ort_library)
}

/// Loads the backends of `config` named in `names`: ONNX models are loaded and warmed up (ONNX
/// Runtime comes from `ort_library` the first time it is needed). Every failure is reported
/// with its place. Blocking: call it off the async threads.
pub fn load(config: &Config, names: &[&str], ort_library: &Path) -> Result<BackendSet, ConfigErrors> {
    let mut set = BackendSet::new();
    let mut issues = Vec::new();
    for (i, spec) in config.backends.iter().enumerate().filter(|(_, b)| names.contains(&b.name.as_str())) {
        let backend = match &spec.kind {
            BackendKind::Upstream(up) => match UpstreamBackend::new(&spec.name, up) {
                Ok(b) => Backend::Upstream(b),
                Err(e) => {
                    issues.push(ConfigIssue { place: format!("backends[{i}].upstream.ca"), message: e.to_string() });
                    continue;
                }
            },
            BackendKind::Onnx(onnx) if onnx.registry.as_ref().is_some_and(|r| r.fetched.is_none()) => {
                let r = onnx.registry.as_ref().map(|r| &r.spec);
                let (url, model, alias) =
                    r.map(|r| (r.mlflow.to_string(), r.model.as_str(), r.alias.as_str())).unwrap_or_default();
                issues.push(ConfigIssue {
                    place: format!("backends[{i}].onnx.registry"),
                    message: format!(
                        "no version of model {model:?} alias {alias:?} has been fetched from {url} yet (the registry \
                         poller fetches it when `serve` starts and every poll interval; see its events)"
                    ),
                });
                continue;
            }
            BackendKind::Onnx(onnx) => {
                let loaded = runtime::environment(ort_library)
                    .map_err(|e| ("server.ort_library".to_string(), e.to_string()))
                    .and_then(|env| {
                        OnnxBackend::load(&spec.name, onnx, &env).map_err(|e| (format!("backends[{i}].onnx.path"), e))
                    });
                let loaded = loaded.and_then(|b| match &onnx.profile {
                    Some(p) => fits(&p.profile, b.signature())
                        .map(|()| b)
                        .map_err(|e| (format!("backends[{i}].onnx.profile"), format!("{}: {e}", p.path.display()))),
                    None => Ok(b),
                });
                match loaded {
                    Ok(b) => Backend::Onnx(b),
                    Err((place, message)) => {
                        let issue = ConfigIssue { place, message };
                        if !issues.contains(&issue) {
                            issues.push(issue);
                        }
                        continue;
                    }
                }
            }
        };
        set.insert(spec.name.clone(), Arc::new(backend));
    }
    if issues.is_empty() {
        Ok(set)
    } else {
        Err(ConfigErrors { file: config.source.clone(), issues })
    }
}

/// A profile fits a model when it describes one of its inputs, numeric and `[rows, features]`
/// with as many features as the profile has.
pub fn fits(profile: &crate::quality::profile::Profile, sig: &crate::protocol::Signature) -> Result<(), String> {
    let names: Vec<&str> = sig.inputs.iter().map(|i| i.name.as_str()).collect();
    let Some(input) = sig.inputs.iter().find(|i| i.name == profile.input) else {
        return Err(format!("profiles input {:?}, but the model's inputs are {}", profile.input, names.join(", ")));
    };
    if input.datatype == crate::protocol::DataType::Bytes {
        return Err(format!("input {:?} is BYTES; profiles describe numeric inputs", input.name));
    }
    let width = match input.shape.as_slice() {
        [_, w] => *w,
        _ => {
            return Err(format!(
                "input {:?} has shape {:?}; profiles describe [rows, features]",
                input.name, input.shape
            ))
        }
    };
    if width >= 0 && width as usize != profile.features.len() {
        return Err(format!(
            "profiles {} features, but input {:?} of the model has {width}",
            profile.features.len(),
            input.name
        ));
    }
    Ok(())
}
