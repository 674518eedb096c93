//! Triton's model configuration and statistics extensions (`GET /v2/models/{m}/config`,
//! `/v2/models/{m}/stats`, and the gRPC `ModelConfig` / `ModelStatistics` calls): enough for
//! Triton's tools (perf_analyzer, model analyzer, the clients' `get_model_config`) to discover a
//! route's inputs, outputs and batch dimension, and to read how many inferences each variant
//! answered. Built from the signature of the variant the request was assigned (as metadata is)
//! and from the per-variant windows; the HTTP (JSON) and gRPC (protobuf) forms are two
//! renderings of the same facts.

use crate::protocol::tensor::{DataType, TensorSpec};
use crate::routing::Route;
use serde_json::{json, Value};

/// The largest batch the configuration advertises when every tensor's first dimension is free:
/// the gateway runs whatever batch the model takes; this is what Triton's tools will try.
pub const MAX_BATCH_SIZE: i64 = 256;

/// Triton's name of a datatype (`TYPE_FP32`; BYTES is `TYPE_STRING`).
pub fn triton_type(d: DataType) -> String {
    match d.as_str() {
        "BYTES" => "TYPE_STRING".to_string(),
        other => format!("TYPE_{other}"),
    }
}

/// A tensor as Triton's configuration lists it.
pub struct ConfigTensor<'a> {
    /// Its name.
    pub name: &'a str,
    /// Triton's datatype name.
    pub data_type: String,
    /// Dimensions, without the batch dimension when the model is batched.
    pub dims: &'a [i64],
}

/// A route's model configuration: the batch size, its inputs and its outputs.
pub struct Config<'a> {
    /// `MAX_BATCH_SIZE` when every tensor's first dimension is free, else 0.
    pub max_batch_size: i64,
    /// Inputs.
    pub inputs: Vec<ConfigTensor<'a>>,
    /// Outputs.
    pub outputs: Vec<ConfigTensor<'a>>,
}

/// The configuration of a model with `inputs` and `outputs`. Triton's convention: with
/// `max_batch_size > 0` the first (batch) dimension is left out of `dims`.
pub fn config<'a>(inputs: &'a [TensorSpec], outputs: &'a [TensorSpec]) -> Config<'a> {
    let batched = inputs.iter().chain(outputs).all(|t| t.shape.first() == Some(&-1));
    let tensors = |specs: &'a [TensorSpec]| -> Vec<ConfigTensor<'a>> {
        specs
            .iter()
            .map(|t| ConfigTensor {
                name: &t.name,
                data_type: triton_type(t.datatype),
                dims: if batched { &t.shape[1..] } else { &t.shape[..] },
            })
            .collect()
    };
    Config {
        max_batch_size: if batched { MAX_BATCH_SIZE } else { 0 },
        inputs: tensors(inputs),
        outputs: tensors(outputs),
    }
}

/// The configuration as Triton's HTTP extension answers it.
pub fn config_json(route: &Route, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Value {
    let c = config(inputs, outputs);
    let tensors = |ts: &[ConfigTensor<'_>]| -> Vec<Value> {
        ts.iter().map(|t| json!({ "name": t.name, "data_type": t.data_type, "dims": t.dims })).collect()
    };
    json!({
        "name": route.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": c.max_batch_size,
        "input": tensors(&c.inputs),
        "output": tensors(&c.outputs),
        "version_policy": { "specific": { "versions": route.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>() } },
    })
}

/// One variant's counts since start: answered successfully and failed, each with its total time.
pub struct VariantCounts<'a> {
    /// The variant (the model version).
    pub version: &'a str,
    /// Successful answers.
    pub ok: u64,
    /// Their total time, ns.
    pub ok_ns: u64,
    /// Failed answers.
    pub failed: u64,
    /// Their total time, ns.
    pub failed_ns: u64,
}

/// Every variant's counts (or the pinned one's).
pub fn counts<'a>(route: &'a Route, version: Option<&str>) -> Vec<VariantCounts<'a>> {
    route
        .variants
        .iter()
        .filter(|v| version.is_none_or(|want| want == v.name))
        .map(|v| {
            let (ok, ok_ns, failed, failed_ns) = v.stats.lifetime_counts();
            VariantCounts { version: &v.name, ok, ok_ns, failed, failed_ns }
        })
        .collect()
}

/// Per-variant inference statistics as Triton's HTTP extension answers them.
pub fn stats_json(route: &Route, version: Option<&str>) -> Value {
    let models: Vec<Value> = counts(route, version)
        .iter()
        .map(|c| {
            json!({
                "name": route.name,
                "version": c.version,
                "inference_count": c.ok,
                "execution_count": c.ok,
                "inference_stats": {
                    "success": { "count": c.ok, "ns": c.ok_ns },
                    "fail": { "count": c.failed, "ns": c.failed_ns },
                },
            })
        })
        .collect();
    json!({ "model_stats": models })
}
