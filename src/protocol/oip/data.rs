//! An input's JSON `data`, read straight into typed elements while the body is parsed: no
//! `serde_json::Value` tree per request. Clients write `datatype` before `data` (tritonclient,
//! KServe's and the spec's examples do), so the element type is known when the numbers come;
//! when it is not (`data` first, or a datatype with no JSON form) the data is kept as a `Value`
//! and converted once the input is checked. Nested arrays are flattened row-major either way.

use super::super::tensor::{DataType, TensorData};
use half::f16;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// Runs `$body` with `$t` bound to the element type of `$datatype`; BF16, which has no JSON
/// form (it is refused before its data is looked at), gives `$bf16`.
macro_rules! with_element_type {
    ($datatype:expr, $t:ident, $body:block, $bf16:expr) => {
        with_element_type!(@arms $datatype, $t, $body, $bf16;
            Bool bool, Uint8 u8, Int8 i8, Int16 i16, Int32 i32, Int64 i64,
            Fp32 f32, Fp64 f64, Fp16 f16, Bytes Vec<u8>)
    };
    (@arms $datatype:expr, $t:ident, $body:block, $bf16:expr; $($variant:ident $element:ty),*) => {
        match $datatype {
            $(DataType::$variant => {
                type $t = $element;
                $body
            })*
            DataType::Bf16 => $bf16,
        }
    };
}

/// An input's `data`, as read.
#[derive(Debug)]
pub enum InputData {
    /// Read as the datatype named before it; a refusal (not an array, a bad element) is kept
    /// and reported after the input's name, datatype and shape are checked.
    Typed(Result<TensorData, DataError>),
    /// Kept as JSON (`data` came before `datatype`): converted by [`InputData::decode`].
    Json(Value),
}

/// Why an input's JSON data does not fit its datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum DataError {
    /// `data` is not a JSON array.
    NotArray,
    /// Element `index` (row-major) is not a value of the datatype; `found` is a short snippet.
    Element { index: usize, found: String },
}

impl InputData {
    /// The elements as `datatype` (already checked to be the input's declared one). JSON kept
    /// for later goes through the same reading as a body being parsed (a `&Value` is a
    /// deserializer too).
    pub fn decode(self, datatype: DataType) -> Result<TensorData, DataError> {
        match self {
            InputData::Typed(result) => result,
            InputData::Json(value) => match TypedSeed(datatype, 0).deserialize(&value) {
                Ok(Some(result)) => result,
                Ok(None) | Err(_) => Err(DataError::NotArray),
            },
        }
    }
}

/// One JSON scalar (or an object where a scalar should be), borrowed from the parser.
enum Leaf<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'a str),
    Null,
    Other(Value),
}

impl Leaf<'_> {
    #[inline]
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Leaf::Int(i) => Some(i),
            Leaf::Uint(u) => i64::try_from(u).ok(),
            _ => None,
        }
    }

    #[inline]
    fn as_f64(&self) -> Option<f64> {
        match *self {
            Leaf::Int(i) => Some(i as f64),
            Leaf::Uint(u) => Some(u as f64),
            Leaf::Float(f) => Some(f),
            _ => None,
        }
    }

    /// At most 40 characters of the leaf as JSON, for a refusal.
    #[cold]
    fn snippet(&self) -> String {
        short(match self {
            Leaf::Bool(b) => b.to_string(),
            Leaf::Int(i) => i.to_string(),
            Leaf::Uint(u) => u.to_string(),
            Leaf::Float(f) => serde_json::Number::from_f64(*f).map_or_else(|| f.to_string(), |n| n.to_string()),
            Leaf::Str(s) => Value::from(*s).to_string(),
            Leaf::Null => "null".to_string(),
            Leaf::Other(v) => v.to_string(),
        })
    }
}

/// `s` cut to at most 40 bytes (on a character boundary), with `…` when cut.
pub(super) fn short(mut s: String) -> String {
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

/// Element types that JSON data converts into.
trait Element: Sized {
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self>;
    fn wrap(elements: Vec<Self>) -> TensorData;
}

macro_rules! int_element {
    ($($t:ty => $variant:ident),*) => {$(
        impl Element for $t {
            #[inline]
            fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
                leaf.as_i64().and_then(|x| <$t>::try_from(x).ok())
            }
            fn wrap(elements: Vec<Self>) -> TensorData {
                TensorData::$variant(elements)
            }
        }
    )*};
}
int_element!(u8 => Uint8, i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64);

impl Element for bool {
    fn wrap(elements: Vec<Self>) -> TensorData {
        TensorData::Bool(elements)
    }
    #[inline]
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
        match leaf {
            Leaf::Bool(b) => Some(*b),
            _ => None,
        }
    }
}
impl Element for f32 {
    fn wrap(elements: Vec<Self>) -> TensorData {
        TensorData::Fp32(elements)
    }
    #[inline]
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
        leaf.as_f64().map(|x| x as f32)
    }
}
impl Element for f64 {
    fn wrap(elements: Vec<Self>) -> TensorData {
        TensorData::Fp64(elements)
    }
    #[inline]
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
        leaf.as_f64()
    }
}
impl Element for f16 {
    fn wrap(elements: Vec<Self>) -> TensorData {
        TensorData::Fp16(elements)
    }
    #[inline]
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
        leaf.as_f64().map(f16::from_f64)
    }
}
impl Element for Vec<u8> {
    fn wrap(elements: Vec<Self>) -> TensorData {
        TensorData::Bytes(elements)
    }
    #[inline]
    fn from_leaf(leaf: &Leaf<'_>) -> Option<Self> {
        match leaf {
            Leaf::Str(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}

/// Adds `leaf` to `out`, or keeps the first refusal (the rest of the data is still parsed, so a
/// syntax error later in the body is still reported as one).
#[inline]
fn push<T: Element>(leaf: Leaf<'_>, out: &mut Vec<T>, error: &mut Option<DataError>) {
    if error.is_some() {
        return;
    }
    match T::from_leaf(&leaf) {
        Some(x) => out.push(x),
        None => *error = Some(DataError::Element { index: out.len(), found: leaf.snippet() }),
    }
}

/// Reads `data` as `datatype`'s elements: `None` for JSON `null` (no data).
/// The second field is how many elements the input's `shape` (when it came first) announces:
/// the first allocation's size, capped at [`EXPECTED_CAP`] (a claim costs no more than that).
pub(super) struct TypedSeed(pub DataType, pub usize);

/// The most elements reserved up front on the word of a request's `shape`.
const EXPECTED_CAP: usize = 4096;

impl<'de> DeserializeSeed<'de> for TypedSeed {
    type Value = Option<Result<TensorData, DataError>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        with_element_type!(
            self.0,
            T,
            { Ok(d.deserialize_any(Top::<T>(self.1, std::marker::PhantomData))?.map(|r| r.map(T::wrap))) },
            {
                IgnoredAny::deserialize(d)?;
                Ok(Some(Err(DataError::NotArray)))
            }
        )
    }
}

/// The top of `data`: an array is flattened; anything else is not an array (`null`: no data).
struct Top<T>(usize, std::marker::PhantomData<T>);

impl<'de, T: Element> Visitor<'de> for Top<T> {
    type Value = Option<Result<Vec<T>, DataError>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(self.0).min(EXPECTED_CAP));
        let mut error = None;
        while seq.next_element_seed(Flat { out: &mut out, error: &mut error })?.is_some() {}
        Ok(Some(error.map_or(Ok(out), Err)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Some(Err(DataError::NotArray)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some(Err(DataError::NotArray)))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some(Err(DataError::NotArray)))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some(Err(DataError::NotArray)))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Some(Err(DataError::NotArray)))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some(Err(DataError::NotArray)))
    }
}

/// One element (or nested array) inside `data`, pushed into `out`.
struct Flat<'c, T> {
    out: &'c mut Vec<T>,
    error: &'c mut Option<DataError>,
}

impl<'de, T: Element> DeserializeSeed<'de> for Flat<'_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Flat<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor element or an array of them")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flat { out: &mut *self.out, error: &mut *self.error })?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        push(Leaf::Bool(b), self.out, self.error);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<(), E> {
        push(Leaf::Int(i), self.out, self.error);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<(), E> {
        let leaf = i64::try_from(u).map_or(Leaf::Uint(u), Leaf::Int);
        push(leaf, self.out, self.error);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        push(Leaf::Float(f), self.out, self.error);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        push(Leaf::Str(s), self.out, self.error);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        push(Leaf::Null, self.out, self.error);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let value = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        push(Leaf::Other(value), self.out, self.error);
        Ok(())
    }
}
