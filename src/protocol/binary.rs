//! Triton's binary tensor data extension: a body is a JSON header of
//! `Inference-Header-Content-Length` bytes followed by raw tensor bytes, little-endian and
//! row-major; a `BYTES` element is a 4-byte little-endian length and then its bytes.
//!
//! Written here rather than taken from a crate: no maintained crate implements this extension,
//! and the codec is a few slice walks.

use super::tensor::{DataType, TensorData};
use half::{bf16, f16};
use std::fmt;

/// The header (request and response) that gives the JSON header's length in bytes.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Why raw bytes do not hold the tensor they were declared to hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    /// A fixed-size datatype: the byte count is not elements × element size.
    #[error("{elements} {datatype} elements need {expected} bytes, binary_data_size is {got}")]
    Size {
        /// The datatype.
        datatype: DataType,
        /// Elements the shape asks for.
        elements: usize,
        /// `elements × element size`, or `None` when that overflows.
        expected: ByteCount,
        /// The declared size.
        got: usize,
    },
    /// A `BOOL` byte that is neither 0 nor 1.
    #[error("BOOL element {index} is the byte {byte}, not 0 or 1")]
    Bool {
        /// Element index.
        index: usize,
        /// The byte found.
        byte: u8,
    },
    /// A `BYTES` element's length prefix or contents run past the declared size.
    #[error("BYTES element {index} runs past the end of its {size} bytes (each element is a 4-byte little-endian length, then that many bytes)")]
    Truncated {
        /// Element index.
        index: usize,
        /// The declared size.
        size: usize,
    },
    /// `BYTES`: the length-prefixed elements fill the size but their count is not the shape's.
    #[error("the shape needs {expected} BYTES elements, the binary data holds {found}")]
    Count {
        /// Elements the shape asks for.
        expected: usize,
        /// Elements found (a lower bound when more than expected).
        found: String,
    },
}

/// A byte count that may have overflowed `usize`; shown as a number or "more than usize".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteCount(pub Option<usize>);

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("more than usize::MAX"),
        }
    }
}

/// Decodes `raw` as exactly `expected` elements of `datatype`. The byte count is checked against
/// the element count before anything is allocated, so a huge shape with few bytes costs nothing.
pub fn decode(raw: &[u8], datatype: DataType, expected: usize) -> Result<TensorData, RawError> {
    let Some(size) = datatype.element_size() else {
        return decode_bytes(raw, expected).map(TensorData::Bytes);
    };
    let need = expected.checked_mul(size);
    if need != Some(raw.len()) {
        return Err(RawError::Size { datatype, elements: expected, expected: ByteCount(need), got: raw.len() });
    }
    Ok(match datatype {
        DataType::Bool => TensorData::Bool(
            raw.iter()
                .enumerate()
                .map(|(index, &byte)| match byte {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(RawError::Bool { index, byte }),
                })
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => TensorData::Uint8(raw.to_vec()),
        DataType::Int8 => TensorData::Int8(raw.iter().map(|&b| i8::from_le_bytes([b])).collect()),
        DataType::Int16 => TensorData::Int16(le(raw, i16::from_le_bytes)),
        DataType::Int32 => TensorData::Int32(le(raw, i32::from_le_bytes)),
        DataType::Int64 => TensorData::Int64(le(raw, i64::from_le_bytes)),
        DataType::Fp16 => TensorData::Fp16(le(raw, f16::from_le_bytes)),
        DataType::Bf16 => TensorData::Bf16(le(raw, bf16::from_le_bytes)),
        DataType::Fp32 => TensorData::Fp32(le(raw, f32::from_le_bytes)),
        DataType::Fp64 => TensorData::Fp64(le(raw, f64::from_le_bytes)),
        DataType::Bytes => return decode_bytes(raw, expected).map(TensorData::Bytes),
    })
}

/// Reads `raw` as consecutive `N`-byte little-endian values (the caller checked the length).
fn le<const N: usize, T>(raw: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    let (chunks, _) = raw.as_chunks::<N>();
    chunks.iter().map(|c| from(*c)).collect()
}

fn decode_bytes(raw: &[u8], expected: usize) -> Result<Vec<Vec<u8>>, RawError> {
    // Every element takes at least its 4-byte prefix, so the bytes bound the count.
    let mut out = Vec::with_capacity(expected.min(raw.len() / 4));
    let mut rest = raw;
    while !rest.is_empty() {
        let index = out.len();
        if index == expected {
            return Err(RawError::Count { expected, found: format!("more than {expected}") });
        }
        let truncated = RawError::Truncated { index, size: raw.len() };
        let (prefix, tail) = rest.split_first_chunk::<4>().ok_or(truncated.clone())?;
        let len = usize::try_from(u32::from_le_bytes(*prefix)).map_err(|_| truncated.clone())?;
        let (element, tail) = tail.split_at_checked(len).ok_or(truncated)?;
        out.push(element.to_vec());
        rest = tail;
    }
    if out.len() != expected {
        return Err(RawError::Count { expected, found: out.len().to_string() });
    }
    Ok(out)
}

/// How many bytes [`encode`] writes for `data`.
pub fn encoded_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        other => other.len() * other.datatype().element_size().unwrap_or(0),
    }
}

/// A `BYTES` element of 4 GiB or more has no length prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("BYTES element {index} is {len} bytes, more than a 4-byte length prefix can say")]
pub struct TooLong {
    /// Element index.
    pub index: usize,
    /// Its length.
    pub len: usize,
}

/// Appends `data` in binary form to `out`.
pub fn encode(data: &TensorData, out: &mut Vec<u8>) -> Result<(), TooLong> {
    out.reserve(encoded_len(data));
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Int8(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Int16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Int32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Int64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Fp16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Bf16(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Fp32(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Fp64(v) => out.extend(v.iter().flat_map(|x| x.to_le_bytes())),
        TensorData::Bytes(v) => {
            for (index, e) in v.iter().enumerate() {
                let len = u32::try_from(e.len()).map_err(|_| TooLong { index, len: e.len() })?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(e);
            }
        }
    }
    Ok(())
}
