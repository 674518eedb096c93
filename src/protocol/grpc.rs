//! Open Inference Protocol v2 over gRPC (KServe v2 `inference.GRPCInferenceService`): the
//! messages, server and client generated from `proto/grpc_service.proto`, and tensors ↔ their
//! protobuf forms — typed `contents`, or `raw_input_contents` / `raw_output_contents`
//! (little-endian, row-major). Every size is checked against the shape and datatype before
//! anything is built from it.

use super::check::{self, Checked};
use super::error::ApiError;
use super::tensor::{DataType, Signature, Tensor, TensorData, TensorSpec};
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use pb::model_infer_response::InferOutputTensor;
use pb::InferTensorContents;

/// The code generated from `proto/grpc_service.proto` (package `inference`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// The outputs asked for, checked against `sig`; `None` (all of them) when the list is empty.
pub fn selected_outputs(
    wanted: &[InferRequestedOutputTensor],
    sig: &Signature,
) -> Result<Option<Vec<String>>, ApiError> {
    if wanted.is_empty() {
        return Ok(None);
    }
    check::output_names(wanted.iter().map(|o| o.name.as_str()), sig).map(Some)
}

/// Decodes and checks a request's inputs against `sig`; returns them in the model's input
/// order. `raw` is the request's `raw_input_contents`: empty, or one entry per input, in the
/// order of `inputs`.
pub fn decode_inputs(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Vec<u8>>,
    sig: &Signature,
) -> Result<Vec<Tensor>, ApiError> {
    let given: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    check::input_names(&given, sig)?;
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ApiError::bad_request(format!(
            "raw_input_contents has {} entries for {} inputs: give one per input, in the order of inputs",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    let mut decoded: Vec<Option<Tensor>> = sig.inputs.iter().map(|_| None).collect();
    for input in inputs {
        let bytes = raw.next();
        let Some(at) = sig.inputs.iter().position(|s| s.name == input.name) else { continue };
        let tensor = decode_input(input, bytes, &sig.inputs[at])?;
        if let Some(slot) = decoded.get_mut(at) {
            *slot = Some(tensor);
        }
    }
    sig.inputs.iter().zip(decoded).map(|(spec, t)| t.ok_or_else(|| check::missing_input(spec, sig))).collect()
}

fn decode_input(
    input: InferInputTensor,
    raw: Option<Vec<u8>>,
    spec: &super::tensor::TensorSpec,
) -> Result<Tensor, ApiError> {
    let name = input.name;
    let checked = check::input(&name, &input.datatype, &input.shape, spec)?;
    let data = match (raw, input.contents) {
        (Some(_), Some(c)) if !contents_empty(&c) => {
            return Err(ApiError::bad_request(format!(
                "input {name:?} has both contents and raw_input_contents: send its elements in one of them"
            )))
        }
        (Some(bytes), _) => from_raw(&name, &checked, &bytes)?,
        (None, Some(contents)) => from_contents(&name, &checked, contents)?,
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "input {name:?} has no data: send its elements in {}raw_input_contents",
                field(checked.datatype).map(|f| format!("contents.{f} or in ")).unwrap_or_default()
            )))
        }
    };
    Ok(Tensor { name, shape: checked.shape, data })
}

fn contents_empty(c: &InferTensorContents) -> bool {
    populated(c).is_empty()
}

/// The `contents` fields that hold elements.
fn populated(c: &InferTensorContents) -> Vec<&'static str> {
    let lens = [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ];
    lens.into_iter().filter(|(_, n)| *n > 0).map(|(f, _)| f).collect()
}

/// The `contents` field that carries elements of `datatype`; `None` for FP16 and BF16, which
/// have no typed field and travel only as raw bytes.
pub fn field(datatype: DataType) -> Option<&'static str> {
    match datatype {
        DataType::Bool => Some("bool_contents"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => Some("int_contents"),
        DataType::Int64 => Some("int64_contents"),
        DataType::Uint8 => Some("uint_contents"),
        DataType::Fp32 => Some("fp32_contents"),
        DataType::Fp64 => Some("fp64_contents"),
        DataType::Bytes => Some("bytes_contents"),
        DataType::Fp16 | DataType::Bf16 => None,
    }
}

/// Raw elements (little-endian, row-major; BYTES length-prefixed), by the binary tensor codec
/// that HTTP's binary data extension uses too.
fn from_raw(name: &str, checked: &Checked, bytes: &[u8]) -> Result<TensorData, ApiError> {
    let shape = super::oip::shape_text(&checked.shape);
    super::binary::decode(bytes, checked.datatype, checked.elements).map_err(|e| {
        ApiError::bad_request(match e {
            super::binary::RawError::Size { datatype, elements, expected, got } => format!(
                "input {name:?}: shape {shape} needs {elements} elements of {datatype} ({expected} bytes), its \
                 raw_input_contents has {got} bytes"
            ),
            other => format!("input {name:?}: shape {shape}: raw_input_contents: {other}"),
        })
    })
}

fn from_contents(name: &str, checked: &Checked, c: InferTensorContents) -> Result<TensorData, ApiError> {
    let datatype = checked.datatype;
    let Some(wanted) = field(datatype) else {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: {datatype} has no typed contents field; send it in raw_input_contents"
        )));
    };
    let there = populated(&c);
    if let Some(other) = there.iter().find(|f| **f != wanted) {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: {datatype} elements go in contents.{wanted}, the request put them in contents.{other}"
        )));
    }
    let count = |found: usize| -> Result<(), ApiError> {
        if found == checked.elements {
            Ok(())
        } else {
            Err(check::count_mismatch(name, checked, &found.to_string()))
        }
    };
    /// Narrows each element, naming the first that does not fit like the JSON decoder does.
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        name: &str,
        datatype: DataType,
        items: Vec<S>,
    ) -> Result<Vec<T>, ApiError> {
        items
            .into_iter()
            .enumerate()
            .map(|(index, x)| {
                T::try_from(x).map_err(|_| {
                    ApiError::bad_request(format!(
                        "input {name:?}: element {index} is {x}, not a valid {datatype} value"
                    ))
                })
            })
            .collect()
    }
    Ok(match datatype {
        DataType::Bool => {
            count(c.bool_contents.len())?;
            TensorData::Bool(c.bool_contents)
        }
        DataType::Uint8 => {
            count(c.uint_contents.len())?;
            TensorData::Uint8(narrow(name, datatype, c.uint_contents)?)
        }
        DataType::Int8 => {
            count(c.int_contents.len())?;
            TensorData::Int8(narrow(name, datatype, c.int_contents)?)
        }
        DataType::Int16 => {
            count(c.int_contents.len())?;
            TensorData::Int16(narrow(name, datatype, c.int_contents)?)
        }
        DataType::Int32 => {
            count(c.int_contents.len())?;
            TensorData::Int32(c.int_contents)
        }
        DataType::Int64 => {
            count(c.int64_contents.len())?;
            TensorData::Int64(c.int64_contents)
        }
        DataType::Fp32 => {
            count(c.fp32_contents.len())?;
            TensorData::Fp32(c.fp32_contents)
        }
        DataType::Fp64 => {
            count(c.fp64_contents.len())?;
            TensorData::Fp64(c.fp64_contents)
        }
        DataType::Bytes => {
            count(c.bytes_contents.len())?;
            TensorData::Bytes(c.bytes_contents)
        }
        DataType::Fp16 | DataType::Bf16 => unreachable_typed(name, datatype)?,
    })
}

fn unreachable_typed(name: &str, datatype: DataType) -> Result<TensorData, ApiError> {
    Err(ApiError::bad_request(format!(
        "input {name:?}: {datatype} has no typed contents field; send it in raw_input_contents"
    )))
}

/// The signature a list of tensors declares for itself (for tensors bound for, or coming
/// from, an upstream whose model signature the gateway does not know).
pub fn declared<'a>(tensors: impl Iterator<Item = (&'a str, &'a str, &'a [i64])>) -> Result<Vec<TensorSpec>, ApiError> {
    tensors
        .map(|(name, datatype, shape)| {
            let datatype = DataType::parse(datatype).ok_or_else(|| {
                let known: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
                ApiError::bad_request(format!(
                    "input {name:?}: unsupported datatype {datatype:?}; modelgate carries {}",
                    known.join(", ")
                ))
            })?;
            Ok(TensorSpec { name: name.to_string(), datatype, shape: shape.to_vec() })
        })
        .collect()
}

/// Input tensors in protobuf form for an upstream: raw contents always (every datatype has
/// one, and the bytes go as they are).
pub fn encode_inputs(inputs: Vec<Tensor>) -> (Vec<InferInputTensor>, Vec<Vec<u8>>) {
    let (tensors, raw) = encode_outputs(inputs, true);
    (tensors.into_iter().map(as_input).collect(), raw)
}

/// An output tensor's fields as an input tensor (the two messages carry the same fields).
fn as_input(t: InferOutputTensor) -> InferInputTensor {
    InferInputTensor {
        name: t.name,
        datatype: t.datatype,
        shape: t.shape,
        parameters: t.parameters,
        contents: t.contents,
    }
}

/// An upstream's answer tensors, each checked against the shape and datatype it declares.
pub fn decode_outputs(outputs: Vec<InferOutputTensor>, raw: Vec<Vec<u8>>) -> Result<Vec<Tensor>, ApiError> {
    let specs = declared(outputs.iter().map(|o| (o.name.as_str(), o.datatype.as_str(), o.shape.as_slice())))?;
    let sig = Signature { inputs: specs, outputs: Vec::new() };
    decode_inputs(outputs.into_iter().map(as_input).collect(), raw, &sig)
}

/// Output tensors in protobuf form: with `raw`, their elements as `raw_output_contents` (as
/// Triton answers a request that sent raw inputs); otherwise in typed `contents`.
pub fn encode_outputs(outputs: Vec<Tensor>, raw: bool) -> (Vec<InferOutputTensor>, Vec<Vec<u8>>) {
    // FP16 and BF16 have no typed field: an answer holding one is raw throughout.
    let raw = raw || outputs.iter().any(|t| field(t.data.datatype()).is_none());
    let mut tensors = Vec::with_capacity(outputs.len());
    let mut bytes = Vec::with_capacity(if raw { outputs.len() } else { 0 });
    for t in outputs {
        let datatype = t.data.datatype().as_str().to_string();
        let shape = t.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect();
        let contents = if raw {
            bytes.push(to_raw(&t.data));
            None
        } else {
            Some(to_contents(t.data))
        };
        tensors.push(InferOutputTensor { name: t.name, datatype, shape, parameters: Default::default(), contents });
    }
    (tensors, bytes)
}

fn to_raw(data: &TensorData) -> Vec<u8> {
    let mut out = Vec::new();
    // Only a BYTES element over 4 GiB cannot be encoded; no answer holds one.
    let _ = super::binary::encode(data, &mut out);
    out
}

fn to_contents(data: TensorData) -> InferTensorContents {
    let mut c = InferTensorContents::default();
    match data {
        TensorData::Bool(v) => c.bool_contents = v,
        TensorData::Uint8(v) => c.uint_contents = v.into_iter().map(u32::from).collect(),
        TensorData::Int8(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::Int16(v) => c.int_contents = v.into_iter().map(i32::from).collect(),
        TensorData::Int32(v) => c.int_contents = v,
        TensorData::Int64(v) => c.int64_contents = v,
        TensorData::Fp32(v) => c.fp32_contents = v,
        TensorData::Fp64(v) => c.fp64_contents = v,
        TensorData::Bytes(v) => c.bytes_contents = v,
        // Never reached: encode_outputs answers raw when an output is FP16 or BF16.
        TensorData::Fp16(_) | TensorData::Bf16(_) => {}
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TensorSpec;

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorSpec { name: "x".into(), datatype: DataType::Fp32, shape: vec![-1, 2] }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: DataType::Int64, shape: vec![-1] }],
        }
    }

    fn input(shape: Vec<i64>, datatype: &str, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    fn fp32(v: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents { fp32_contents: v, ..Default::default() })
    }

    #[test]
    fn typed_and_raw_inputs_decode_alike() {
        let typed = decode_inputs(vec![input(vec![1, 2], "FP32", fp32(vec![1.5, -2.0]))], vec![], &sig()).unwrap();
        let raw_bytes: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let raw = decode_inputs(vec![input(vec![1, 2], "FP32", None)], vec![raw_bytes], &sig()).unwrap();
        assert_eq!(typed, raw);
        assert_eq!(typed[0].data, TensorData::Fp32(vec![1.5, -2.0]));
    }

    #[test]
    fn refusals_name_the_input_and_what_was_expected() {
        let err = |i, raw| decode_inputs(vec![i], raw, &sig()).unwrap_err().message;
        assert!(err(input(vec![1, 2], "FP64", fp32(vec![1.0, 2.0])), vec![]).contains("expected datatype FP32"));
        assert!(err(input(vec![1, 3], "FP32", fp32(vec![1.0, 2.0])), vec![]).contains("expected shape [-1, 2]"));
        assert!(err(input(vec![1, 2], "FP32", fp32(vec![1.0])), vec![]).contains("needs 2 elements, data has 1"));
        let wrong_field = Some(InferTensorContents { fp64_contents: vec![1.0, 2.0], ..Default::default() });
        assert!(err(input(vec![1, 2], "FP32", wrong_field), vec![]).contains("go in contents.fp32_contents"));
        assert!(
            err(input(vec![1, 2], "FP32", None), vec![vec![0; 7]]).contains("(8 bytes), its raw_input_contents has 7")
        );
        assert!(err(input(vec![1, 2], "FP32", None), vec![]).contains("has no data"));
        // A shape of 2^62 rows is refused by counting, before anything is allocated.
        assert!(err(input(vec![1 << 62, 2], "FP32", None), vec![vec![0; 8]]).contains("raw_input_contents has 8"));
        assert!(err(input(vec![1 << 62, 2], "FP32", fp32(vec![1.0])), vec![]).contains("data has 1"));
    }

    #[test]
    fn outputs_encode_raw_or_typed() {
        let t = Tensor { name: "y".into(), shape: vec![2], data: TensorData::Int64(vec![1, -1]) };
        let (typed, none) = encode_outputs(vec![t.clone()], false);
        assert!(none.is_empty());
        assert_eq!(typed[0].contents.as_ref().unwrap().int64_contents, vec![1, -1]);
        let (meta, raw) = encode_outputs(vec![t], true);
        assert!(meta[0].contents.is_none());
        assert_eq!(meta[0].shape, vec![2]);
        assert_eq!(raw[0], [1i64.to_le_bytes(), (-1i64).to_le_bytes()].concat());
    }
}
