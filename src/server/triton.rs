//! Triton's model configuration and statistics extensions (`GET /v2/models/{m}/config`,
//! `/v2/models/{m}/stats`): enough for Triton's tools (perf_analyzer, model analyzer, the
//! clients' `get_model_config`) to discover a route's inputs, outputs and batch dimension, and
//! to read how many inferences each variant answered. Built from the signature of the variant
//! the request was assigned (as metadata is) and from the per-variant windows.

use crate::protocol::tensor::{DataType, TensorSpec};
use crate::routing::Route;
use serde_json::{json, Value};

/// The largest batch the configuration advertises when every tensor's first dimension is free:
/// the gateway runs whatever batch the model takes; this is what Triton's tools will try.
pub const MAX_BATCH_SIZE: i64 = 256;

fn triton_type(d: DataType) -> String {
    match d.as_str() {
        "BYTES" => "TYPE_STRING".to_string(),
        other => format!("TYPE_{other}"),
    }
}

/// The model configuration of a route answered by a model with `inputs` and `outputs`.
pub fn config(route: &Route, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Value {
    // Triton's convention: with max_batch_size > 0 the first (batch) dimension is left out.
    let batched = inputs.iter().chain(outputs).all(|t| t.shape.first() == Some(&-1));
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|t| {
                let dims = if batched { &t.shape[1..] } else { &t.shape[..] };
                json!({ "name": t.name, "data_type": triton_type(t.datatype), "dims": dims })
            })
            .collect()
    };
    json!({
        "name": route.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": if batched { MAX_BATCH_SIZE } else { 0 },
        "input": tensors(inputs),
        "output": tensors(outputs),
        "version_policy": { "specific": { "versions": route.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>() } },
    })
}

/// Per-variant inference statistics of a route (every variant, or the pinned one).
pub fn stats(route: &Route, version: Option<&str>) -> Value {
    let models: Vec<Value> = route
        .variants
        .iter()
        .filter(|v| version.is_none_or(|want| want == v.name))
        .map(|v| {
            let (ok, ok_ns, failed, failed_ns) = v.stats.lifetime_counts();
            json!({
                "name": route.name,
                "version": v.name,
                "inference_count": ok,
                "execution_count": ok,
                "inference_stats": {
                    "success": { "count": ok, "ns": ok_ns },
                    "fail": { "count": failed, "ns": failed_ns },
                },
            })
        })
        .collect();
    json!({ "model_stats": models })
}
