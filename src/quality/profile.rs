//! Reference profiles: what a model's inputs (and outputs) looked like on the data it was
//! trained or checked on — per feature a fixed-bin histogram on the reference deciles, range,
//! NaN share, and category counts for integer features with few values. Input validation and
//! drift detection judge live traffic against it.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` field every profile carries.
pub const FORMAT: &str = "modelgate-profile/1";

/// Interior histogram edges per feature: deciles (so every reference bin holds about 10%).
pub const QUANTILE_BINS: usize = 10;

/// Integer features with at most this many distinct values are profiled as categories.
pub const MAX_CATEGORIES: usize = 20;

/// Largest profile file read (a profile is a few kilobytes per feature).
pub const MAX_PROFILE_BYTES: u64 = 16 << 20;

/// Most features a profile may describe (bounds the memory of validation and drift windows).
pub const MAX_FEATURES: usize = 4096;

/// Most histogram bins over all features and outputs: a drift window holds 10 counters per bin,
/// so a variant's windows stay under about 5 MiB whatever the profile says.
pub const MAX_BINS: usize = 65_536;

/// A model's reference profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Always [`FORMAT`].
    pub format: String,
    /// The model file it was made with (for people; not checked).
    #[serde(default)]
    pub model: String,
    /// The model input whose columns are the features.
    pub input: String,
    /// Reference rows.
    pub rows: u64,
    /// One per column of the input, in column order.
    pub features: Vec<FeatureProfile>,
    /// One per column of each numeric output, when the model was run on the rows.
    #[serde(default)]
    pub outputs: Vec<FeatureProfile>,
    /// The model's accuracy on the rows, when they came with labels and it predicts a class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Reference>,
}

/// How the model did on the labelled reference rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Labelled rows.
    pub rows: u64,
    /// Share predicted right.
    pub accuracy: f64,
}

/// One column's reference distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    /// `f{column}` for inputs; `{output}` or `{output}[{column}]` for outputs.
    pub name: String,
    /// Values seen, NaN included.
    pub count: u64,
    /// NaN values seen.
    pub nan: u64,
    /// Smallest finite value (0 when none).
    pub min: f64,
    /// Largest finite value (0 when none).
    pub max: f64,
    /// Mean of the finite values.
    pub mean: f64,
    /// Standard deviation of the finite values (population).
    pub std: f64,
    /// Fixed bins: strictly increasing interior edges; bin `i` is `[edges[i-1], edges[i])`,
    /// the first and last bins are open. `counts` has one more entry than `edges`.
    pub edges: Vec<f64>,
    /// Reference values per bin (NaN excluded).
    pub counts: Vec<u64>,
    /// For integer columns with few distinct values: `(value, count)` in value order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<(i64, u64)>>,
}

impl FeatureProfile {
    /// The bin of `x` (not NaN): how many edges are at or below it.
    #[inline]
    pub fn bin(&self, x: f64) -> usize {
        self.edges.partition_point(|e| *e <= x)
    }

    /// Profiles one column of values.
    pub fn of(name: String, values: &[f64]) -> FeatureProfile {
        let mut finite: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        finite.sort_by(f64::total_cmp);
        let nan = (values.len() - finite.len()) as u64;
        let n = finite.len();
        let (min, max) = (finite.first().copied().unwrap_or(0.0), finite.last().copied().unwrap_or(0.0));
        let mean = if n == 0 { 0.0 } else { finite.iter().sum::<f64>() / n as f64 };
        let std = if n == 0 { 0.0 } else { (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt() };
        let integer = n > 0 && finite.iter().all(|v| v.fract() == 0.0 && v.abs() < 9.0e15);
        let mut distinct: Vec<f64> = finite.clone();
        distinct.dedup();
        let categories = (integer && distinct.len() <= MAX_CATEGORIES).then(|| {
            distinct.iter().map(|d| (*d as i64, finite.iter().filter(|v| *v == d).count() as u64)).collect::<Vec<_>>()
        });
        // Categories get one bin each (edges half-way between values); other columns get the
        // reference deciles, merged where they coincide.
        let mut edges: Vec<f64> = if categories.is_some() {
            distinct.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect()
        } else if n == 0 {
            Vec::new()
        } else {
            (1..QUANTILE_BINS).map(|q| finite[(q * n / QUANTILE_BINS).min(n - 1)]).collect()
        };
        edges.dedup();
        // An edge at the minimum would leave the first bin empty in the reference.
        edges.retain(|e| *e > min);
        let mut profile = FeatureProfile {
            name,
            count: values.len() as u64,
            nan,
            min,
            max,
            mean,
            std,
            counts: vec![0; edges.len() + 1],
            edges,
            categories,
        };
        for v in &finite {
            let b = profile.bin(*v);
            profile.counts[b] += 1;
        }
        profile
    }

    fn check(&self, place: &str) -> Result<(), String> {
        let finite = [self.min, self.max, self.mean, self.std].iter().all(|v| v.is_finite());
        if !finite || self.min > self.max {
            return Err(format!("{place}: min, max, mean and std must be finite numbers with min <= max"));
        }
        if self.edges.len() > 1024 || !self.edges.iter().all(|e| e.is_finite()) {
            return Err(format!("{place}.edges: at most 1024 finite numbers"));
        }
        if self.edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("{place}.edges: must be strictly increasing"));
        }
        if self.counts.len() != self.edges.len() + 1 {
            return Err(format!(
                "{place}.counts: {} bins, but {} edges make {}",
                self.counts.len(),
                self.edges.len(),
                self.edges.len() + 1
            ));
        }
        if self.nan > self.count || self.counts.iter().sum::<u64>() != self.count - self.nan {
            return Err(format!("{place}: counts must add up to count - nan"));
        }
        Ok(())
    }
}

impl Profile {
    /// Profiles `rows` (each `width` long) of `input`, and the model's numeric outputs on them.
    pub fn of(model: String, input: String, width: usize, rows: &[f64], outputs: Vec<FeatureProfile>) -> Profile {
        let n = rows.len().checked_div(width).unwrap_or(0);
        let features = (0..width)
            .map(|j| {
                let column: Vec<f64> = (0..n).map(|i| rows[i * width + j]).collect();
                FeatureProfile::of(format!("f{j}"), &column)
            })
            .collect();
        Profile { format: FORMAT.to_string(), model, input, rows: n as u64, features, outputs, reference: None }
    }

    /// Reads and checks a profile file.
    pub fn load(path: &Path) -> Result<Profile, String> {
        let size = std::fs::metadata(path).map_err(|e| format!("cannot read profile {}: {e}", path.display()))?.len();
        if size > MAX_PROFILE_BYTES {
            return Err(format!("profile {} is {size} bytes; at most {MAX_PROFILE_BYTES}", path.display()));
        }
        let text = std::fs::read(path).map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
        let profile: Profile =
            serde_json::from_slice(&text).map_err(|e| format!("profile {} is not valid: {e}", path.display()))?;
        profile.check().map_err(|e| format!("profile {} is not valid: {e}", path.display()))?;
        Ok(profile)
    }

    /// Checks what serde cannot: the format, bins that add up, a bounded number of features.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.features.is_empty() || self.features.len() > MAX_FEATURES {
            return Err(format!("features: between 1 and {MAX_FEATURES}, got {}", self.features.len()));
        }
        let bins: usize = self.features.iter().chain(&self.outputs).map(|f| f.counts.len()).sum();
        if bins > MAX_BINS {
            return Err(format!("{bins} histogram bins in all; at most {MAX_BINS}"));
        }
        for (i, f) in self.features.iter().enumerate() {
            f.check(&format!("features[{i}]"))?;
        }
        for (i, f) in self.outputs.iter().enumerate() {
            f.check(&format!("outputs[{i}]"))?;
        }
        if let Some(r) = &self.reference {
            if !(0.0..=1.0).contains(&r.accuracy) {
                return Err(format!("reference.accuracy must be between 0 and 1, got {}", r.accuracy));
            }
        }
        Ok(())
    }

    /// The column of the feature called `name`.
    pub fn feature(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

/// The `.npy` format (version 1 to 3): magic, version, header length, a Python dict literal
/// header, then the data. Written by hand: the format is a few lines and no crate is needed.
fn read_npy(bytes: &[u8]) -> Result<Rows, String> {
    let bad = |why: &str| format!("not a readable .npy file: {why}");
    let major = *bytes.get(6).ok_or_else(|| bad("too short"))?;
    let (len_size, start) = match major {
        1 => (2, 8),
        2 | 3 => (4, 8),
        v => return Err(bad(&format!("format version {v}"))),
    };
    let len_bytes = bytes.get(start..start + len_size).ok_or_else(|| bad("too short"))?;
    let header_len = len_bytes.iter().rev().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    let body = start + len_size;
    let header = bytes.get(body..body + header_len).ok_or_else(|| bad("header beyond the end"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").and_then(|d| d.strip_prefix('\'')?.split('\'').next()).ok_or_else(|| bad("no descr"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad("Fortran order; save a C-order array"));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .map(|s| s.split(',').filter_map(|d| d.trim().parse().ok()).collect())
        .ok_or_else(|| bad("no shape"))?;
    let (rows, width) = match shape.as_slice() {
        [r, w] => (*r, *w),
        [w] => (1, *w),
        _ => return Err(bad(&format!("shape {shape:?}: expected (rows, columns)"))),
    };
    let size = match descr {
        "<f4" | "<i4" => 4,
        "<f8" | "<i8" => 8,
        other => return Err(bad(&format!("dtype {other:?}: use little-endian float32/64 or int32/64"))),
    };
    let data = &bytes[body + header_len..];
    let count = rows.checked_mul(width).filter(|n| n.checked_mul(size) == Some(data.len()));
    let Some(count) = count.filter(|n| *n > 0) else {
        return Err(bad(&format!("{} data bytes do not hold {rows} × {width} values of {size} bytes", data.len())));
    };
    let values = data
        .chunks_exact(size)
        .map(|c| match (descr, c) {
            ("<f4", &[a, b, c, d]) => f64::from(f32::from_le_bytes([a, b, c, d])),
            ("<i4", &[a, b, c, d]) => f64::from(i32::from_le_bytes([a, b, c, d])),
            ("<f8", c) => f64::from_le_bytes(c.try_into().unwrap_or_default()),
            (_, c) => i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64,
        })
        .collect::<Vec<f64>>();
    debug_assert_eq!(values.len(), count);
    Ok(Rows { input: None, width, values, labels: None })
}

/// Each numeric output of a model run on rows: (name, columns, row-major values).
pub type Outputs = Vec<(String, usize, Vec<f64>)>;

/// Reference rows read from a data file, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// The input named by the file, if it names one.
    pub input: Option<String>,
    /// Columns per row.
    pub width: usize,
    /// `rows × width` values.
    pub values: Vec<f64>,
    /// One true label per row, when the file gives them (`samples[i].label`).
    pub labels: Option<Vec<f64>>,
}

/// Reads rows from a NumPy `.npy` file (a C-order `[rows, columns]` array of little-endian
/// `f4`, `f8`, `i4` or `i8`), or from JSON: `[[...], ...]`, the holdout form
/// `{"samples": [{"features": [...]}]}`, or an Open Inference Protocol request body (its first
/// input, `[rows, columns]`).
pub fn read_rows(text: &[u8]) -> Result<Rows, String> {
    if text.starts_with(b"\x93NUMPY") {
        return read_npy(text);
    }
    let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let number = |v: &serde_json::Value| -> Result<f64, String> {
        match v {
            serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
            serde_json::Value::Null => Ok(f64::NAN),
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("nan") => Ok(f64::NAN),
            serde_json::Value::Bool(b) => Ok(f64::from(u8::from(*b))),
            other => Err(format!("{other} is not a number")),
        }
    };
    let from_rows = |rows: Vec<&serde_json::Value>, input: Option<String>| -> Result<Rows, String> {
        let mut values = Vec::new();
        let mut width = None;
        for (i, row) in rows.iter().enumerate() {
            let row = row.as_array().ok_or_else(|| format!("row {i} is not a list of numbers"))?;
            if *width.get_or_insert(row.len()) != row.len() {
                return Err(format!("row {i} has {} values, the first row {}", row.len(), width.unwrap_or(0)));
            }
            for v in row {
                values.push(number(v).map_err(|e| format!("row {i}: {e}"))?);
            }
        }
        match width {
            Some(w) if w > 0 => Ok(Rows { input, width: w, values, labels: None }),
            _ => Err("no rows".to_string()),
        }
    };
    match &doc {
        serde_json::Value::Array(rows) => from_rows(rows.iter().collect(), None),
        serde_json::Value::Object(o) if o.contains_key("samples") => {
            let samples = o["samples"].as_array().ok_or("`samples` is not a list")?;
            let rows = samples
                .iter()
                .enumerate()
                .map(|(i, s)| s.get("features").ok_or_else(|| format!("samples[{i}] has no `features`")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut rows = from_rows(rows, o.get("input").and_then(|v| v.as_str()).map(str::to_string))?;
            let labels: Option<Vec<f64>> = samples.iter().map(|s| s.get("label").and_then(|l| l.as_f64())).collect();
            rows.labels = labels;
            Ok(rows)
        }
        serde_json::Value::Object(o) if o.contains_key("inputs") => {
            let first = o["inputs"].as_array().and_then(|a| a.first()).ok_or("`inputs` is an empty list")?;
            let name = first.get("name").and_then(|v| v.as_str()).map(str::to_string);
            let shape: Vec<u64> = first
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|s| s.iter().filter_map(|d| d.as_u64()).collect())
                .ok_or("inputs[0] has no `shape`")?;
            let mut flat = Vec::new();
            let mut stack = vec![first.get("data").ok_or("inputs[0] has no `data`")?];
            while let Some(v) = stack.pop() {
                match v.as_array() {
                    Some(items) => stack.extend(items.iter().rev()),
                    None => flat.push(number(v)?),
                }
            }
            let width = match shape.as_slice() {
                [_, w] => *w as usize,
                [w] => *w as usize,
                _ => return Err(format!("inputs[0].shape {shape:?}: expected [rows, columns]")),
            };
            if width == 0 || flat.len() % width != 0 {
                return Err(format!("inputs[0]: {} values do not make rows of {width}", flat.len()));
            }
            Ok(Rows { input: name, width, values: flat, labels: None })
        }
        _ => Err("expected a list of rows, {\"samples\": [...]} or an inference request {\"inputs\": [...]}".into()),
    }
}

/// Profiles of each column of a numeric output, `values` row-major with `width` columns:
/// named `{output}` when it has one column, `{output}[{column}]` otherwise.
pub fn output_columns(output: &str, width: usize, values: &[f64]) -> Vec<FeatureProfile> {
    let rows = values.len().checked_div(width).unwrap_or(0);
    (0..width)
        .map(|j| {
            let column: Vec<f64> = (0..rows).map(|i| values[i * width + j]).collect();
            let name = if width == 1 { output.to_string() } else { format!("{output}[{j}]") };
            FeatureProfile::of(name, &column)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_make_ten_even_bins_and_counts_add_up() {
        let values: Vec<f64> = (0..1000).map(f64::from).collect();
        let f = FeatureProfile::of("f0".into(), &values);
        assert_eq!(f.edges.len(), 9);
        assert_eq!(f.counts, vec![100; 10]);
        assert_eq!((f.min, f.max, f.nan), (0.0, 999.0, 0));
        assert!(f.categories.is_none());
        f.check("f").unwrap();
    }

    #[test]
    fn few_integers_are_categories_with_a_bin_each() {
        let values = [0.0, 1.0, 1.0, 2.0, 2.0, 2.0, f64::NAN];
        let f = FeatureProfile::of("c".into(), &values);
        assert_eq!(f.categories, Some(vec![(0, 1), (1, 2), (2, 3)]));
        assert_eq!(f.edges, vec![0.5, 1.5]);
        assert_eq!(f.counts, vec![1, 2, 3]);
        assert_eq!(f.nan, 1);
        assert_eq!(f.bin(2.0), 2);
    }

    #[test]
    fn rows_are_read_from_every_form() {
        let a = read_rows(b"[[1, 2], [3, null]]").unwrap();
        assert_eq!((a.width, a.values.len()), (2, 4));
        assert!(a.values[3].is_nan());
        let b = read_rows(br#"{"input": "x", "samples": [{"features": [1, 2, 3], "label": 1}]}"#).unwrap();
        assert_eq!((b.input.as_deref(), b.width), (Some("x"), 3));
        let c =
            read_rows(br#"{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}"#)
                .unwrap();
        assert_eq!(c.values, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(read_rows(b"[[1, 2], [3]]").unwrap_err().contains("row 1"));
        // numpy.save of np.array([[1.5, -2], [3, 4]], dtype=np.float32): version 1 header.
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        npy.extend((padded.len() as u16).to_le_bytes());
        npy.extend(padded.as_bytes());
        for v in [1.5f32, -2.0, 3.0, 4.0] {
            npy.extend(v.to_le_bytes());
        }
        let d = read_rows(&npy).unwrap();
        assert_eq!((d.width, d.values.clone()), (2, vec![1.5, -2.0, 3.0, 4.0]));
        npy.pop();
        assert!(read_rows(&npy).unwrap_err().contains("do not hold"));
        assert!(read_rows(b"{}").is_err());
    }

    #[test]
    fn a_profile_whose_bins_do_not_add_up_is_refused() {
        let mut p = Profile::of(String::new(), "x".into(), 1, &[1.0, 2.0, 3.0], Vec::new());
        p.check().unwrap();
        p.features[0].counts[0] += 1;
        assert!(p.check().unwrap_err().contains("add up"));
        let wide = FeatureProfile::of("w".into(), &(0..2000).map(f64::from).collect::<Vec<_>>());
        p.features = vec![wide; 7000];
        assert!(p.check().unwrap_err().contains("between 1 and 4096"));
        p.features.truncate(4096); // 4096 × 10 bins: fine
        p.check().unwrap();
        p.outputs = vec![
            FeatureProfile {
                edges: (0..1000).map(f64::from).collect(),
                counts: vec![0; 1001],
                count: 0,
                ..p.features[0].clone()
            };
            30
        ];
        assert!(p.check().unwrap_err().contains("histogram bins"));
    }
}
