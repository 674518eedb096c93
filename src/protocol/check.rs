//! Checks of a request's inputs and outputs against a model's signature, shared by every wire
//! form (JSON over HTTP, protobuf over gRPC), so that each refuses the same mistake with the
//! same words: the input, what was expected, and what came.

use super::error::ApiError;
use super::oip::shape_text;
use super::tensor::{DataType, Signature, TensorSpec};

/// What an input's declared datatype and shape come to once they fit the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The input's datatype (the model's).
    pub datatype: DataType,
    /// Concrete dimensions.
    pub shape: Vec<usize>,
    /// Number of elements the shape holds.
    pub elements: usize,
}

/// Refuses inputs the model does not have, and inputs given twice; `given` in request order.
pub fn input_names(given: &[&str], sig: &Signature) -> Result<(), ApiError> {
    for (i, name) in given.iter().enumerate() {
        if !sig.inputs.iter().any(|s| s.name == *name) {
            return Err(ApiError::bad_request(format!(
                "unknown input {name:?}; the model's inputs are: {}",
                names(&sig.inputs)
            )));
        }
        if given[..i].contains(name) {
            return Err(ApiError::bad_request(format!("input {name:?} is given twice")));
        }
    }
    Ok(())
}

/// The refusal of a request that lacks the model's input `spec`.
pub fn missing_input(spec: &TensorSpec, sig: &Signature) -> ApiError {
    ApiError::bad_request(format!(
        "missing input {:?} ({} {}); the model's inputs are: {}",
        spec.name,
        spec.datatype,
        shape_text(&spec.shape),
        names(&sig.inputs)
    ))
}

/// Checks an input's declared datatype (the protocol's spelling) and shape against `spec`,
/// and counts its elements without allocating anything sized by the shape.
pub fn input(name: &str, datatype: &str, shape: &[i64], spec: &TensorSpec) -> Result<Checked, ApiError> {
    let parsed = DataType::parse(datatype).ok_or_else(|| {
        ApiError::bad_request(format!("input {name:?}: unsupported datatype {datatype:?}; expected {}", spec.datatype))
    })?;
    if parsed != spec.datatype {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: expected datatype {}, got {parsed}",
            spec.datatype
        )));
    }
    let fits = shape.len() == spec.shape.len()
        && shape.iter().zip(&spec.shape).all(|(&got, &want)| got >= 0 && (want < 0 || got == want));
    if !fits {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: expected shape {} (-1: any size), got {}",
            shape_text(&spec.shape),
            shape_text(shape)
        )));
    }
    let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let elements = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| {
        ApiError::bad_request(format!("input {name:?}: shape {} has too many elements", shape_text(&dims)))
    })?;
    Ok(Checked { datatype: parsed, shape: dims, elements })
}

/// The refusal of an input whose data holds `found` elements where its shape needs another
/// number (`found` may be a bound, such as "more than 30").
pub fn count_mismatch(name: &str, checked: &Checked, found: &str) -> ApiError {
    ApiError::bad_request(format!(
        "input {name:?}: shape {} needs {} elements, data has {found}",
        shape_text(&checked.shape),
        checked.elements
    ))
}

/// The output names asked for, checked against `sig`.
pub fn output_names<'a>(wanted: impl IntoIterator<Item = &'a str>, sig: &Signature) -> Result<Vec<String>, ApiError> {
    wanted
        .into_iter()
        .map(|name| {
            if sig.outputs.iter().any(|s| s.name == name) {
                Ok(name.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "unknown output {name:?}; the model's outputs are: {}",
                    names(&sig.outputs)
                )))
            }
        })
        .collect()
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}
