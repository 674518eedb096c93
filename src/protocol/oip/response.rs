//! Open Inference Protocol answers: which outputs go out in which form (JSON or binary tensor
//! data), the encoded response, and the metadata documents.

use super::*;

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

/// One output tensor in an answer: its data in JSON, or its size when the data follows the
/// JSON header in binary form.
#[derive(Debug, Serialize)]
pub struct ResponseOutput<'a> {
    /// Output name.
    pub name: &'a str,
    /// Protocol datatype.
    pub datatype: &'static str,
    /// Dimensions.
    pub shape: &'a [usize],
    /// `binary_data_size` for a binary output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<OutputParameters>,
    /// Row-major elements, for a JSON output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a TensorData>,
}

/// An output's parameters in an answer.
#[derive(Debug, Serialize)]
pub struct OutputParameters {
    /// Bytes of this output after the JSON header.
    pub binary_data_size: usize,
}

impl<'a> ResponseOutput<'a> {
    /// Borrows a tensor for encoding in JSON.
    pub fn from_tensor(t: &'a Tensor) -> Self {
        Self {
            name: &t.name,
            datatype: t.data.datatype().as_str(),
            shape: &t.shape,
            parameters: None,
            data: Some(&t.data),
        }
    }

    /// Borrows a tensor whose data is sent in binary form.
    pub fn binary(t: &'a Tensor) -> Self {
        Self {
            name: &t.name,
            datatype: t.data.datatype().as_str(),
            shape: &t.shape,
            parameters: Some(OutputParameters { binary_data_size: binary::encoded_len(&t.data) }),
            data: None,
        }
    }
}

impl Serialize for TensorData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        match self {
            TensorData::Bool(v) => v.serialize(s),
            TensorData::Uint8(v) => v.serialize(s),
            TensorData::Int8(v) => v.serialize(s),
            TensorData::Int16(v) => v.serialize(s),
            TensorData::Int32(v) => v.serialize(s),
            TensorData::Int64(v) => v.serialize(s),
            TensorData::Fp32(v) => v.serialize(s),
            TensorData::Fp64(v) => v.serialize(s),
            TensorData::Fp16(v) => s.collect_seq(v.iter().map(|x| x.to_f32())),
            TensorData::Bf16(_) => Err(S::Error::custom("BF16 has no JSON form; ask for it in binary form")),
            TensorData::Bytes(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for (i, e) in v.iter().enumerate() {
                    let text = std::str::from_utf8(e).map_err(|_| {
                        S::Error::custom(format!(
                            "BYTES element {i} is not UTF-8, which JSON cannot carry; ask for it in binary form"
                        ))
                    })?;
                    seq.serialize_element(text)?;
                }
                seq.end()
            }
        }
    }
}

/// Which outputs of an answer go in binary form, from the request's `binary_data_output` and
/// each output's `binary_data`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputForms {
    /// Outputs not named otherwise.
    default_binary: bool,
    /// Outputs the request named, with their own choice when they made one.
    named: Vec<(String, Option<bool>)>,
}

impl OutputForms {
    /// Whether output `name` is answered in binary form.
    pub fn is_binary(&self, name: &str) -> bool {
        self.named.iter().find(|(n, _)| n == name).and_then(|(_, b)| *b).unwrap_or(self.default_binary)
    }

    /// Whether any output can be answered in binary form.
    pub fn any_binary(&self) -> bool {
        self.default_binary || self.named.iter().any(|(_, b)| *b == Some(true))
    }
}

fn flag(params: Option<&serde_json::Map<String, Value>>, key: &str, whose: &str) -> Result<Option<bool>, ApiError> {
    match params.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => {
            Err(ApiError::bad_request(format!("{whose}parameters.{key} must be true or false, got {}", snippet(other))))
        }
    }
}

impl InferRequest {
    /// Reads how outputs are to be answered, and refuses what cannot be: the classification
    /// extension, and `BF16` outputs asked for in JSON (`sig` says which outputs are `BF16`).
    pub fn output_forms(&self, sig: &Signature) -> Result<OutputForms, ApiError> {
        let default_binary = flag(self.parameters.as_ref(), "binary_data_output", "")?.unwrap_or(false);
        let mut named = Vec::new();
        for o in self.outputs.iter().flatten() {
            let whose = format!("output {:?}: ", o.name);
            if o.parameters.as_ref().is_some_and(|p| p.contains_key("classification")) {
                return Err(ApiError::bad_request(format!(
                    "output {:?}: the classification extension is not supported; ask for the raw output \
                     (no parameters.classification)",
                    o.name
                )));
            }
            named.push((o.name.clone(), flag(o.parameters.as_ref(), "binary_data", &whose)?));
        }
        let forms = OutputForms { default_binary, named };
        let returned = |name: &str| self.outputs.as_ref().is_none_or(|os| os.iter().any(|o| o.name == name));
        if let Some(spec) =
            sig.outputs.iter().find(|s| s.datatype == DataType::Bf16 && returned(&s.name) && !forms.is_binary(&s.name))
        {
            return Err(ApiError::bad_request(format!(
                "output {:?} is BF16, which has no JSON form; ask for it in binary form (parameters.binary_data: \
                 true on the output, or binary_data_output: true on the request)",
                spec.name
            )));
        }
        Ok(forms)
    }

    /// Whether the request uses the binary tensor data extension at all (binary inputs or
    /// binary outputs asked for).
    pub fn uses_binary(&self) -> bool {
        self.has_binary_header
            || self.inputs.iter().any(|i| i.parameters.as_ref().is_some_and(|p| p.contains_key("binary_data_size")))
            || flag(self.parameters.as_ref(), "binary_data_output", "").ok().flatten() == Some(true)
            || self
                .outputs
                .iter()
                .flatten()
                .any(|o| flag(o.parameters.as_ref(), "binary_data", "").ok().flatten() == Some(true))
    }

    /// The same request as plain JSON with `inputs` (decoded from it): for a copy sent elsewhere
    /// (a shadow) that need not speak the binary extension. `None` when an input has no JSON
    /// form (`BF16`, or `BYTES` that are not UTF-8).
    pub fn to_plain_json(&self, inputs: &[Tensor]) -> Option<Vec<u8>> {
        let outputs = self.outputs.as_ref().map(|os| os.iter().map(|o| o.name.as_str()).collect());
        plain_request(inputs, outputs, self.id.as_deref()).ok()
    }
}

/// The Open Inference Protocol JSON request for decoded `inputs`, the outputs asked for and an
/// id: what a shadow or an HTTP upstream is sent, whatever form the client used (binary data,
/// gRPC). Fails when an input has no JSON form (`BF16`, or `BYTES` that are not UTF-8).
pub fn plain_request(inputs: &[Tensor], outputs: Option<Vec<&str>>, id: Option<&str>) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Input<'a> {
        name: &'a str,
        shape: &'a [usize],
        datatype: &'static str,
        data: &'a TensorData,
    }
    #[derive(Serialize)]
    struct Output<'a> {
        name: &'a str,
    }
    #[derive(Serialize)]
    struct Plain<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        inputs: Vec<Input<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        outputs: Option<Vec<Output<'a>>>,
    }
    let plain = Plain {
        id: id.filter(|i| !i.is_empty()),
        inputs: inputs
            .iter()
            .map(|t| Input { name: &t.name, shape: &t.shape, datatype: t.data.datatype().as_str(), data: &t.data })
            .collect(),
        outputs: outputs.map(|os| os.into_iter().map(|name| Output { name }).collect()),
    };
    serde_json::to_vec(&plain)
}

/// An encoded answer: the body, and the JSON header's length when binary data follows it (the
/// `Inference-Header-Content-Length` response header; the body is then
/// `application/octet-stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResponse {
    /// The whole body.
    pub body: Vec<u8>,
    /// The JSON header's length, when binary data follows it.
    pub header_length: Option<usize>,
}

/// Encodes an answer with each output in the form `forms` asks for.
pub fn encode_response(
    model_name: &str,
    model_version: Option<&str>,
    id: Option<&str>,
    outputs: &[Tensor],
    forms: &OutputForms,
) -> Result<EncodedResponse, ApiError> {
    let binary: Vec<bool> = outputs.iter().map(|t| forms.is_binary(&t.name)).collect();
    let answer = InferResponse {
        model_name,
        model_version,
        id,
        outputs: outputs
            .iter()
            .zip(&binary)
            .map(|(t, &b)| if b { ResponseOutput::binary(t) } else { ResponseOutput::from_tensor(t) })
            .collect(),
    };
    let mut body =
        serde_json::to_vec(&answer).map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))?;
    if !binary.contains(&true) {
        return Ok(EncodedResponse { body, header_length: None });
    }
    let header_length = body.len();
    for (t, _) in outputs.iter().zip(&binary).filter(|(_, &b)| b) {
        binary::encode(&t.data, &mut body)
            .map_err(|e| ApiError::internal(format!("cannot encode output {:?}: {e}", t.name)))?;
    }
    Ok(EncodedResponse { body, header_length: Some(header_length) })
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
        "extensions": ["binary_tensor_data"],
    })
}
