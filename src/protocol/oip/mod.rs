//! Open Inference Protocol v2 (REST, JSON and Triton's binary tensor data extension): request
//! decoding against a model's signature (here) and the answers (`response`). Every refusal names
//! the input and what was expected against what came.

use super::binary::{self, RawError};
use super::check;
use super::error::ApiError;
use super::tensor::{DataType, Signature, Tensor, TensorData, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

mod data;
mod response;
pub use data::{DataError, InputData};
pub use response::*;

/// `POST /v2/models/{m}/infer` body.
#[derive(Debug, Default, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters: `binary_data_output` is read, the rest accepted and ignored.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs to return; all when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
    /// The bytes after the JSON header (binary tensor data extension); empty for plain JSON.
    #[serde(skip)]
    pub binary: bytes::Bytes,
    /// Whether the body came with `Inference-Header-Content-Length`.
    #[serde(skip)]
    pub has_binary_header: bool,
}

/// One input tensor as sent: data flat (row-major) or nested, read by [`data`] as it is parsed.
#[derive(Debug)]
pub struct RequestInput {
    /// Input name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Protocol datatype, such as `FP32`.
    pub datatype: String,
    /// Per-input parameters: `binary_data_size` is read, the rest accepted and ignored.
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Elements; absent when they come in binary form.
    pub data: Option<InputData>,
}

impl<'de> Deserialize<'de> for RequestInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("RequestInput", INPUT_FIELDS, InputVisitor)
    }
}

const INPUT_FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum InputField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// Reads an input's fields in any order; `data` straight into typed elements when `datatype`
/// came before it (the usual order), else as JSON converted later.
struct InputVisitor;

impl<'de> serde::de::Visitor<'de> for InputVisitor {
    type Value = RequestInput;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an input tensor object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RequestInput, A::Error> {
        use serde::de::Error;
        let (mut name, mut shape, mut datatype, mut parameters, mut data) = (None, None, None, None, None);
        while let Some(field) = map.next_key::<InputField>()? {
            match field {
                InputField::Name if name.is_some() => return Err(A::Error::duplicate_field("name")),
                InputField::Name => name = Some(map.next_value::<String>()?),
                InputField::Shape if shape.is_some() => return Err(A::Error::duplicate_field("shape")),
                InputField::Shape => shape = Some(map.next_value::<Vec<i64>>()?),
                InputField::Datatype if datatype.is_some() => return Err(A::Error::duplicate_field("datatype")),
                InputField::Datatype => datatype = Some(map.next_value::<String>()?),
                InputField::Parameters if parameters.is_some() => return Err(A::Error::duplicate_field("parameters")),
                InputField::Parameters => {
                    parameters = Some(map.next_value::<Option<serde_json::Map<String, Value>>>()?)
                }
                InputField::Data if data.is_some() => return Err(A::Error::duplicate_field("data")),
                InputField::Data => {
                    data = Some(match datatype.as_deref().and_then(DataType::parse) {
                        Some(dt) => {
                            let expected = shape.as_deref().map_or(0, |s: &[i64]| {
                                s.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?)).unwrap_or(0)
                            });
                            map.next_value_seed(data::TypedSeed(dt, expected))?.map(InputData::Typed)
                        }
                        None => map.next_value::<Option<Value>>()?.map(InputData::Json),
                    })
                }
                InputField::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(RequestInput {
            name: name.ok_or_else(|| A::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| A::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| A::Error::missing_field("datatype"))?,
            parameters: parameters.flatten(),
            data: data.flatten(),
        })
    }
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// Per-output parameters: `binary_data` and `classification` are read, the rest ignored.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

impl InferRequest {
    /// Parses a request body; a syntax error and a wrong structure are both 400s that say which.
    pub fn from_json(body: &[u8]) -> Result<InferRequest, ApiError> {
        serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                ApiError::bad_request(format!("invalid inference request: {e}"))
            } else {
                ApiError::bad_request(format!("malformed JSON: {e}"))
            }
        })
    }

    /// Parses a request body that may use the binary tensor data extension: with
    /// `header_length` (the `Inference-Header-Content-Length` header's value) the body is that
    /// many bytes of JSON followed by the inputs' binary data; without it, plain JSON.
    pub fn from_body(body: bytes::Bytes, header_length: Option<&[u8]>) -> Result<InferRequest, ApiError> {
        let Some(value) = header_length else {
            return InferRequest::from_json(&body);
        };
        let length = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "the Inference-Header-Content-Length header must be the JSON header's length in bytes, got {:?}",
                String::from_utf8_lossy(value)
            ))
        })?;
        if length > body.len() {
            return Err(ApiError::bad_request(format!(
                "the Inference-Header-Content-Length header says {length} bytes of JSON, but the body has only {} bytes",
                body.len()
            )));
        }
        let mut request = InferRequest::from_json(&body[..length])?;
        request.binary = body.slice(length..);
        request.has_binary_header = true;
        Ok(request)
    }

    /// Where each input's binary bytes lie in the binary part (in request order, `None` for JSON
    /// inputs), checked to consume it exactly.
    fn binary_parts(&self) -> Result<Vec<Option<std::ops::Range<usize>>>, ApiError> {
        let mut rest: &[u8] = &self.binary;
        let mut parts = Vec::with_capacity(self.inputs.len());
        let mut total = 0usize;
        for input in &self.inputs {
            let name = &input.name;
            let Some(size) = input.binary_data_size()? else {
                parts.push(None);
                continue;
            };
            if input.data.is_some() {
                return Err(ApiError::bad_request(format!(
                    "input {name:?} has both data and parameters.binary_data_size; send one of them"
                )));
            }
            let Some((raw, tail)) = rest.split_at_checked(size) else {
                let hint = if self.has_binary_header {
                    ""
                } else {
                    " (binary data needs the Inference-Header-Content-Length header)"
                };
                return Err(ApiError::bad_request(format!(
                    "input {name:?}: parameters.binary_data_size is {size} bytes, but only {} bytes of binary data \
                     remain after the JSON header and the inputs before it{hint}",
                    rest.len()
                )));
            };
            parts.push(Some(total..total + raw.len()));
            total += size;
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{} bytes of binary data follow the JSON header, but the inputs' parameters.binary_data_size \
                 add up to {total}; {} bytes are left over",
                self.binary.len(),
                rest.len()
            )));
        }
        Ok(parts)
    }

    /// Decodes and checks every input against `sig`; returns them in the model's input order.
    /// The inputs' JSON data is moved into the tensors (a second call finds none).
    pub fn decode_inputs(&mut self, sig: &Signature) -> Result<Vec<Tensor>, ApiError> {
        let given: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        check::input_names(&given, sig)?;
        let parts = self.binary_parts()?;
        let mut tensors = Vec::with_capacity(sig.inputs.len());
        for spec in &sig.inputs {
            let index =
                self.inputs.iter().position(|i| i.name == spec.name).ok_or_else(|| check::missing_input(spec, sig))?;
            let raw = parts[index].clone().map(|at| &self.binary[at]);
            tensors.push(decode_input(&mut self.inputs[index], spec, raw)?);
        }
        Ok(tensors)
    }

    /// The output names asked for, checked against `sig`; `None` means all.
    pub fn selected_outputs(&self, sig: &Signature) -> Result<Option<Vec<String>>, ApiError> {
        let Some(wanted) = &self.outputs else {
            return Ok(None);
        };
        check::output_names(wanted.iter().map(|o| o.name.as_str()), sig).map(Some)
    }
}

/// `[-1, 30]`
pub fn shape_text<T: std::fmt::Display>(shape: &[T]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl RequestInput {
    /// `parameters.binary_data_size`, checked to be a whole number of bytes.
    fn binary_data_size(&self) -> Result<Option<usize>, ApiError> {
        let Some(value) = self.parameters.as_ref().and_then(|p| p.get("binary_data_size")) else {
            return Ok(None);
        };
        value.as_u64().and_then(|n| usize::try_from(n).ok()).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {:?}: parameters.binary_data_size must be a whole number of bytes, got {}",
                self.name,
                snippet(value)
            ))
        })
    }
}

fn decode_input(input: &mut RequestInput, spec: &TensorSpec, raw: Option<&[u8]>) -> Result<Tensor, ApiError> {
    let name = &input.name;
    let checked = check::input(name, &input.datatype, &input.shape, spec)?;
    let (datatype, expected) = (checked.datatype, checked.elements);
    if let Some(raw) = raw {
        let data = binary::decode(raw, datatype, expected).map_err(|e| {
            ApiError::bad_request(match e {
                RawError::Size { .. } => format!("input {name:?}: shape {}: {e}", shape_text(&checked.shape)),
                _ => format!("input {name:?}: {e}"),
            })
        })?;
        return Ok(Tensor { name: name.clone(), shape: checked.shape, data });
    }
    let Some(json) = input.data.take() else {
        return Err(ApiError::bad_request(format!(
            "input {name:?} has no data: send data, or parameters.binary_data_size with the bytes after the \
             JSON header (binary tensor data extension)"
        )));
    };
    if datatype == DataType::Bf16 {
        return Err(ApiError::bad_request(format!(
            "input {name:?}: BF16 has no JSON form; send it as binary data (parameters.binary_data_size and the \
             Inference-Header-Content-Length header)"
        )));
    }
    let data = json.decode(datatype).map_err(|e| match e {
        DataError::NotArray => ApiError::bad_request(format!("input {name:?}: data must be a JSON array")),
        DataError::Element { index, found } => {
            ApiError::bad_request(format!("input {name:?}: element {index} is {found}, not a valid {datatype} value"))
        }
    })?;
    if data.len() != expected {
        let found = if data.len() > expected { format!("more than {expected}") } else { data.len().to_string() };
        return Err(check::count_mismatch(name, &checked, &found));
    }
    Ok(Tensor { name: name.clone(), shape: checked.shape, data })
}

fn snippet(v: &Value) -> String {
    data::short(v.to_string())
}
