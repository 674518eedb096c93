//! Running a model over reference rows through the same ONNX backend code that serves it: for
//! its profile (so the profile of its outputs is what the gateway will see) and for `evaluate`.

use super::onnx::OnnxBackend;
use crate::config::OnnxSpec;
use crate::protocol::{DataType, Tensor, TensorData};
use crate::quality::evaluate::{evaluate, Evaluation, Gate, Predictions};
use crate::quality::profile::{output_columns, Outputs, Profile, Reference, Rows};
use std::path::Path;
use std::time::Duration;

/// Rows per model run while profiling.
const CHUNK: usize = 256;

/// The reference profile of `model` on `rows`: each input column, and each column of each
/// numeric output of the model run on the rows.
pub async fn profile_model(model: &Path, ort_library: &Path, rows: Rows) -> Result<Profile, String> {
    let (input, raw) = run_model(model, ort_library, &rows).await?;
    let outputs = raw.iter().flat_map(|(name, width, values)| output_columns(name, *width, values)).collect();
    let name = model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut profile = Profile::of(name, input, rows.width, &rows.values, outputs);
    if let Some(labels) = &rows.labels {
        let predicted = Predictions::from_outputs(&raw, labels.len()).class;
        profile.reference = predicted.map(|p| {
            let right = p.iter().zip(labels).filter(|(p, l)| p == l).count();
            Reference { rows: labels.len() as u64, accuracy: right as f64 / labels.len().max(1) as f64 }
        });
    }
    profile.check()?;
    Ok(profile)
}

/// The CI gate: both models on the labelled `rows`, compared as `gate` says.
pub async fn evaluate_models(
    baseline: &Path,
    candidate: &Path,
    rows: &Rows,
    gate: Gate,
    ort_library: &Path,
) -> Result<Evaluation, String> {
    let labels = rows.labels.as_deref().ok_or("every sample needs a numeric `label`")?;
    let mut predictions = Vec::with_capacity(2);
    for model in [baseline, candidate] {
        let (_, outputs) = run_model(model, ort_library, rows).await?;
        predictions.push(Predictions::from_outputs(&outputs, labels.len()));
    }
    evaluate(gate, labels, &predictions[0], &predictions[1])
}

/// Runs `model` on `rows` (in chunks) through the ONNX backend code: its input's name and its
/// numeric outputs.
pub async fn run_model(model: &Path, ort_library: &Path, rows: &Rows) -> Result<(String, Outputs), String> {
    let spec = OnnxSpec {
        path: model.to_path_buf(),
        sha256: String::new(),
        sessions: 1,
        intra_op_threads: 1,
        queue: 4,
        queue_timeout: Duration::from_secs(60),
        batching: None,
        profile: None,
        registry: None,
    };
    let lib = ort_library.to_path_buf();
    let backend = tokio::task::spawn_blocking(move || {
        let env = super::runtime::environment(&lib).map_err(|e| e.to_string())?;
        OnnxBackend::load("profile", &spec, &env)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("{}: {e}", model.display()))?;
    let result = run(&backend, model, rows).await;
    backend.shutdown();
    result
}

async fn run(backend: &OnnxBackend, model: &Path, rows: &Rows) -> Result<(String, Outputs), String> {
    let sig = backend.signature();
    if sig.inputs.len() != 1 {
        return Err(format!("{} takes {} inputs; profiles are of one-input models", model.display(), sig.inputs.len()));
    }
    let input = &sig.inputs[0];
    if let Some(named) = rows.input.as_deref().filter(|n| *n != input.name) {
        return Err(format!("the data is for input {named:?}, the model's input is {:?}", input.name));
    }
    match input.shape.as_slice() {
        [_, w] if *w < 0 || *w as usize == rows.width => {}
        shape => {
            return Err(format!(
                "the data has {} columns, the model's input {:?} has shape {shape:?}",
                rows.width, input.name
            ))
        }
    }
    let mut outputs: Vec<(String, usize, Vec<f64>)> = Vec::new();
    for chunk in rows.values.chunks(CHUNK * rows.width) {
        let n = chunk.len() / rows.width;
        let data = match input.datatype {
            DataType::Fp32 => TensorData::Fp32(chunk.iter().map(|v| *v as f32).collect()),
            DataType::Fp64 => TensorData::Fp64(chunk.to_vec()),
            DataType::Int64 => TensorData::Int64(chunk.iter().map(|v| *v as i64).collect()),
            DataType::Int32 => TensorData::Int32(chunk.iter().map(|v| *v as i32).collect()),
            other => return Err(format!("input {:?} is {other}; profiles read FP32, FP64, INT64, INT32", input.name)),
        };
        let tensor = Tensor { name: input.name.clone(), shape: vec![n, rows.width], data };
        let (answer, _) = backend.infer(vec![tensor], None).await.map_err(|e| e.to_string())?;
        for t in answer {
            let Some((_, values)) = t.data.numbers() else { continue };
            let width = values.len().checked_div(n).unwrap_or(0);
            match outputs.iter_mut().find(|(name, _, _)| *name == t.name) {
                Some((_, _, all)) => all.extend(values),
                None => outputs.push((t.name, width, values)),
            }
        }
    }
    Ok((input.name.clone(), outputs))
}
