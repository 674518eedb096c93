//! Open Inference Protocol v2 (REST, JSON): request decoding against a model's signature, and
//! response encoding. Every refusal names the input and what was expected against what came.

use super::check;
use super::error::ApiError;
use super::tensor::{DataType, Signature, Tensor, TensorData, TensorSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v2/models/{m}/infer` body.
#[derive(Debug, Deserialize)]
pub struct InferRequest {
    /// Echoed in the response.
    #[serde(default)]
    pub id: Option<String>,
    /// Request parameters; accepted and ignored.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Input tensors.
    pub inputs: Vec<RequestInput>,
    /// Outputs to return; all when absent.
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// One input tensor as sent: data flat (row-major) or nested.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    /// Input name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// Protocol datatype, such as `FP32`.
    pub datatype: String,
    /// Per-input parameters; accepted and ignored.
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Elements.
    pub data: Value,
}

/// One requested output.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// Output name.
    pub name: String,
    /// Per-output parameters; accepted and ignored.
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

    /// Decodes and checks every input against `sig`; returns them in the model's input order.
    pub fn decode_inputs(&self, sig: &Signature) -> Result<Vec<Tensor>, ApiError> {
        let given: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        check::input_names(&given, sig)?;
        sig.inputs
            .iter()
            .map(|spec| {
                let input =
                    self.inputs.iter().find(|i| i.name == spec.name).ok_or_else(|| check::missing_input(spec, sig))?;
                decode_input(input, spec)
            })
            .collect()
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

fn decode_input(input: &RequestInput, spec: &TensorSpec) -> Result<Tensor, ApiError> {
    let name = &input.name;
    let checked = check::input(name, &input.datatype, &input.shape, spec)?;
    let (datatype, expected) = (checked.datatype, checked.elements);
    let data = decode_data(&input.data, datatype, expected).map_err(|e| match e {
        DataError::NotArray => ApiError::bad_request(format!("input {name:?}: data must be a JSON array")),
        DataError::Element { index, found } => {
            ApiError::bad_request(format!("input {name:?}: element {index} is {found}, not a valid {datatype} value"))
        }
        DataError::Count { found } => check::count_mismatch(name, &checked, &found),
    })?;
    Ok(Tensor { name: name.clone(), shape: checked.shape, data })
}

enum DataError {
    NotArray,
    Element {
        index: usize,
        found: String,
    },
    /// `found` is a lower bound when the data holds more than expected.
    Count {
        found: String,
    },
}

/// Element types that JSON data converts into.
trait Element: Sized {
    fn from_json(v: &Value) -> Option<Self>;
}

macro_rules! int_element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn from_json(v: &Value) -> Option<Self> {
                v.as_i64().and_then(|x| <$t>::try_from(x).ok())
            }
        }
    )*};
}
int_element!(u8, i8, i16, i32, i64);

impl Element for bool {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_bool()
    }
}
impl Element for f32 {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64().map(|x| x as f32)
    }
}
impl Element for f64 {
    fn from_json(v: &Value) -> Option<Self> {
        v.as_f64()
    }
}

fn decode_data(data: &Value, datatype: DataType, expected: usize) -> Result<TensorData, DataError> {
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(collect(data, expected)?),
        DataType::Uint8 => TensorData::Uint8(collect(data, expected)?),
        DataType::Int8 => TensorData::Int8(collect(data, expected)?),
        DataType::Int16 => TensorData::Int16(collect(data, expected)?),
        DataType::Int32 => TensorData::Int32(collect(data, expected)?),
        DataType::Int64 => TensorData::Int64(collect(data, expected)?),
        DataType::Fp32 => TensorData::Fp32(collect(data, expected)?),
        DataType::Fp64 => TensorData::Fp64(collect(data, expected)?),
    })
}

/// Flattens nested arrays row-major into exactly `expected` elements.
fn collect<T: Element>(data: &Value, expected: usize) -> Result<Vec<T>, DataError> {
    let Value::Array(_) = data else {
        return Err(DataError::NotArray);
    };
    // The capacity is capped: a shape alone must not make the gateway allocate.
    let mut out = Vec::with_capacity(expected.min(1 << 16));
    push_all(data, &mut out, expected)?;
    if out.len() != expected {
        return Err(DataError::Count { found: out.len().to_string() });
    }
    Ok(out)
}

fn push_all<T: Element>(v: &Value, out: &mut Vec<T>, expected: usize) -> Result<(), DataError> {
    match v {
        Value::Array(items) => items.iter().try_for_each(|item| push_all(item, out, expected)),
        leaf => {
            if out.len() == expected {
                return Err(DataError::Count { found: format!("more than {expected}") });
            }
            let x = T::from_json(leaf).ok_or_else(|| DataError::Element { index: out.len(), found: snippet(leaf) })?;
            out.push(x);
            Ok(())
        }
    }
}

fn snippet(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// `POST .../infer` answer.
#[derive(Debug, Serialize)]
pub struct InferResponse<'a> {
    /// The route's model name.
    pub model_name: &'a str,
    /// The variant that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<&'a str>,
    /// The request's `id`, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// Output tensors.
    pub outputs: Vec<ResponseOutput<'a>>,
}

/// One output tensor in an answer.
#[derive(Debug, Serialize)]
pub struct ResponseOutput<'a> {
    /// Output name.
    pub name: &'a str,
    /// Protocol datatype.
    pub datatype: &'static str,
    /// Dimensions.
    pub shape: &'a [usize],
    /// Row-major elements.
    pub data: &'a TensorData,
}

impl<'a> ResponseOutput<'a> {
    /// Borrows a tensor for encoding.
    pub fn from_tensor(t: &'a Tensor) -> Self {
        Self { name: &t.name, datatype: t.data.datatype().as_str(), shape: &t.shape, data: &t.data }
    }
}

impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Int16(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int64(v) => v.serialize(s),
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
        }
    }
}

/// `GET /v2/models/{m}` answer for in-process models.
#[derive(Debug, Serialize)]
pub struct ModelMetadata<'a> {
    /// The route's model name.
    pub name: &'a str,
    /// Variants that can be addressed with `/versions/{v}`.
    pub versions: Vec<&'a str>,
    /// Always `onnxruntime_onnx` for in-process models.
    pub platform: &'static str,
    /// Inputs.
    pub inputs: &'a [TensorSpec],
    /// Outputs.
    pub outputs: &'a [TensorSpec],
}

/// `GET /v2` answer.
pub fn server_metadata() -> Value {
    serde_json::json!({
        "name": "modelgate",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    })
}
