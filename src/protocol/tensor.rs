//! Tensors as the gateway carries them between the protocol and the backends.

use half::{bf16, f16};
use std::fmt;

/// An Open Inference Protocol datatype that modelgate can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// `BOOL`
    Bool,
    /// `UINT8`
    Uint8,
    /// `INT8`
    Int8,
    /// `INT16`
    Int16,
    /// `INT32`
    Int32,
    /// `INT64`
    Int64,
    /// `FP32`
    Fp32,
    /// `FP64`
    Fp64,
    /// `FP16`: IEEE half precision.
    Fp16,
    /// `BF16`: bfloat16; carried only in binary form (the protocol has no JSON form for it).
    Bf16,
    /// `BYTES`: each element a byte string (ONNX `string` tensors).
    Bytes,
}

impl DataType {
    /// Every datatype, for messages that list them.
    pub const ALL: [DataType; 11] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The protocol's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element in binary form; `None` for `BYTES`, whose elements vary in length.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }

    /// Parses the protocol's spelling.
    pub fn parse(text: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == text)
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// `BOOL`
    Bool(Vec<bool>),
    /// `UINT8`
    Uint8(Vec<u8>),
    /// `INT8`
    Int8(Vec<i8>),
    /// `INT16`
    Int16(Vec<i16>),
    /// `INT32`
    Int32(Vec<i32>),
    /// `INT64`
    Int64(Vec<i64>),
    /// `FP32`
    Fp32(Vec<f32>),
    /// `FP64`
    Fp64(Vec<f64>),
    /// `FP16`
    Fp16(Vec<f16>),
    /// `BF16`
    Bf16(Vec<bf16>),
    /// `BYTES`: one byte string per element.
    Bytes(Vec<Vec<u8>>),
}

impl TensorData {
    /// The datatype of these elements.
    pub fn datatype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::Uint8(_) => DataType::Uint8,
            TensorData::Int8(_) => DataType::Int8,
            TensorData::Int16(_) => DataType::Int16,
            TensorData::Int32(_) => DataType::Int32,
            TensorData::Int64(_) => DataType::Int64,
            TensorData::Fp32(_) => DataType::Fp32,
            TensorData::Fp64(_) => DataType::Fp64,
            TensorData::Fp16(_) => DataType::Fp16,
            TensorData::Bf16(_) => DataType::Bf16,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bool(v) => v.len(),
            TensorData::Uint8(v) => v.len(),
            TensorData::Int8(v) => v.len(),
            TensorData::Int16(v) => v.len(),
            TensorData::Int32(v) => v.len(),
            TensorData::Int64(v) => v.len(),
            TensorData::Fp32(v) => v.len(),
            TensorData::Fp64(v) => v.len(),
            TensorData::Fp16(v) => v.len(),
            TensorData::Bf16(v) => v.len(),
            TensorData::Bytes(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the elements are integers (`BOOL` counts); `None` for `BYTES` (see [`Self::numbers`]).
    pub fn integer(&self) -> Option<bool> {
        match self {
            TensorData::Bool(_)
            | TensorData::Uint8(_)
            | TensorData::Int8(_)
            | TensorData::Int16(_)
            | TensorData::Int32(_)
            | TensorData::Int64(_) => Some(true),
            TensorData::Fp32(_) | TensorData::Fp64(_) | TensorData::Fp16(_) | TensorData::Bf16(_) => Some(false),
            TensorData::Bytes(_) => None,
        }
    }

    /// The elements as numbers, and whether they are integers (`BOOL` counts as 0/1); `None` for
    /// `BYTES`, which has no numeric reading. Shadow comparison and predictions use this.
    pub fn numbers(&self) -> Option<(bool, Vec<f64>)> {
        let values = match self {
            TensorData::Bool(v) => v.iter().map(|&b| f64::from(u8::from(b))).collect(),
            TensorData::Uint8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int8(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int16(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Int64(v) => v.iter().map(|&x| x as f64).collect(),
            TensorData::Fp32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            TensorData::Fp64(v) => v.clone(),
            TensorData::Fp16(v) => v.iter().map(|&x| x.to_f64()).collect(),
            TensorData::Bf16(v) => v.iter().map(|&x| x.to_f64()).collect(),
            TensorData::Bytes(_) => return None,
        };
        Some((self.integer()?, values))
    }

    /// `len` zeros (or `false`s, or empty strings) of `datatype`: the input of a warm-up run.
    pub fn zeros(datatype: DataType, len: usize) -> TensorData {
        match datatype {
            DataType::Bool => TensorData::Bool(vec![false; len]),
            DataType::Uint8 => TensorData::Uint8(vec![0; len]),
            DataType::Int8 => TensorData::Int8(vec![0; len]),
            DataType::Int16 => TensorData::Int16(vec![0; len]),
            DataType::Int32 => TensorData::Int32(vec![0; len]),
            DataType::Int64 => TensorData::Int64(vec![0; len]),
            DataType::Fp32 => TensorData::Fp32(vec![0.0; len]),
            DataType::Fp64 => TensorData::Fp64(vec![0.0; len]),
            DataType::Fp16 => TensorData::Fp16(vec![f16::ZERO; len]),
            DataType::Bf16 => TensorData::Bf16(vec![bf16::ZERO; len]),
            DataType::Bytes => TensorData::Bytes(vec![Vec::new(); len]),
        }
    }
}

/// A named tensor with a concrete shape; `data.len()` equals the product of `shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Input or output name.
    pub name: String,
    /// Concrete dimensions.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: TensorData,
}

/// The declared shape of a model input or output; `-1` marks a dynamic dimension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TensorSpec {
    /// Input or output name.
    pub name: String,
    /// Element type.
    #[serde(serialize_with = "ser_datatype")]
    pub datatype: DataType,
    /// Dimensions, `-1` where any size is accepted.
    pub shape: Vec<i64>,
}

fn ser_datatype<S: serde::Serializer>(d: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

/// What a model takes and gives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    /// Inputs, in model order.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in model order.
    pub outputs: Vec<TensorSpec>,
}
