//! What crosses into and out of ONNX Runtime: a session's signature, request tensors as ORT
//! values, ORT's outputs as tensors, and one run.

use super::onnx::InferError;
use crate::protocol::{DataType, Signature, Tensor, TensorData, TensorSpec};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, ValueType};
use std::borrow::Cow;

fn datatype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec_of(kind: &str, name: &str, ty: &ValueType) -> Result<TensorSpec, String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let datatype = datatype(*ty).ok_or_else(|| {
                format!(
                    "{kind} {name:?} has element type {ty:?}, which the Open Inference Protocol gateway cannot carry"
                )
            })?;
            Ok(TensorSpec { name: name.to_string(), datatype, shape: shape.to_vec() })
        }
        other => Err(format!(
            "{kind} {name:?} is a {other:?}, not a tensor; for scikit-learn classifiers convert with \
             options={{id(clf): {{'zipmap': False}}}}"
        )),
    }
}

pub(super) fn signature(session: &Session) -> Result<Signature, String> {
    let inputs = session.inputs().iter().map(|o| spec_of("input", o.name(), o.dtype())).collect::<Result<_, _>>()?;
    let outputs = session.outputs().iter().map(|o| spec_of("output", o.name(), o.dtype())).collect::<Result<_, _>>()?;
    Ok(Signature { inputs, outputs })
}

/// Why an input could not become an ORT value: the caller's data, or ORT itself.
enum ValueError {
    Input(String),
    Ort(ort::Error),
}

impl From<ort::Error> for ValueError {
    fn from(e: ort::Error) -> Self {
        ValueError::Ort(e)
    }
}

/// ONNX string tensors hold text: each element must be UTF-8 without NUL bytes.
fn string_tensor(name: &str, shape: Vec<usize>, elements: Vec<Vec<u8>>) -> Result<DynValue, ValueError> {
    let mut text = Vec::with_capacity(elements.len());
    for (i, e) in elements.into_iter().enumerate() {
        match String::from_utf8(e) {
            Ok(s) if !s.contains('\0') => text.push(s),
            _ => {
                return Err(ValueError::Input(format!(
                    "input {name:?}: BYTES element {i} is not UTF-8 text without NUL bytes, which this model's \
                     string input needs"
                )))
            }
        }
    }
    Ok(ort::value::Tensor::from_string_array((shape, text.as_slice()))?.into_dyn())
}

fn ort_value(name: &str, shape: Vec<usize>, data: TensorData) -> Result<DynValue, ValueError> {
    use ort::value::Tensor as OrtTensor;
    Ok(match data {
        TensorData::Fp16(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bf16(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Bytes(v) => string_tensor(name, shape, v)?,
        TensorData::Bool(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Uint8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int8(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int16(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Int64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp32(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
        TensorData::Fp64(v) => OrtTensor::from_array((shape, v))?.into_dyn(),
    })
}

fn tensor_of(name: &str, value: &DynValue) -> ort::Result<Tensor> {
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.iter().map(|&d| d.max(0) as usize).collect(), TensorData::$variant(data.to_vec()))
        }};
    }
    let ty = value.dtype().tensor_type();
    let (shape, data) = match ty.and_then(datatype) {
        Some(DataType::Bool) => extract!(bool, Bool),
        Some(DataType::Uint8) => extract!(u8, Uint8),
        Some(DataType::Int8) => extract!(i8, Int8),
        Some(DataType::Int16) => extract!(i16, Int16),
        Some(DataType::Int32) => extract!(i32, Int32),
        Some(DataType::Int64) => extract!(i64, Int64),
        Some(DataType::Fp32) => extract!(f32, Fp32),
        Some(DataType::Fp64) => extract!(f64, Fp64),
        Some(DataType::Fp16) => extract!(half::f16, Fp16),
        Some(DataType::Bf16) => extract!(half::bf16, Bf16),
        Some(DataType::Bytes) => {
            let (shape, data) = value.try_extract_strings()?;
            (
                shape.iter().map(|&d| d.max(0) as usize).collect(),
                TensorData::Bytes(data.into_iter().map(String::into_bytes).collect()),
            )
        }
        None => {
            return Err(ort::Error::new(format!(
                "output {name:?} has a type the gateway cannot carry: {:?}",
                value.dtype()
            )))
        }
    };
    Ok(Tensor { name: name.to_string(), shape, data })
}

pub(super) fn run(
    session: &mut Session,
    model: &str,
    inputs: Vec<Tensor>,
    outputs: Option<&[String]>,
) -> Result<Vec<Tensor>, InferError> {
    let failed = |e: ort::Error| {
        let message = e.message().to_string();
        if e.code() == ort::ErrorCode::InvalidArgument {
            InferError::Invalid { model: model.to_string(), message }
        } else {
            InferError::Failed { model: model.to_string(), message }
        }
    };
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for Tensor { name, shape, data } in inputs {
        let value = ort_value(&name, shape, data).map_err(|e| match e {
            ValueError::Input(message) => InferError::Invalid { model: model.to_string(), message },
            ValueError::Ort(e) => failed(e),
        })?;
        values.push((Cow::Owned(name), value.into()));
    }
    let result = session.run(values).map_err(failed)?;
    let mut out = Vec::new();
    for (name, value) in result.iter() {
        if outputs.is_some_and(|wanted| !wanted.iter().any(|w| w == name)) {
            continue;
        }
        out.push(tensor_of(name, &value).map_err(failed)?);
    }
    if let Some(wanted) = outputs {
        out.sort_by_key(|t| wanted.iter().position(|w| *w == t.name));
    }
    Ok(out)
}
