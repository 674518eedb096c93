//! Shadow traffic: how often the shadow backend agrees with the primary.
//!
//! Classifiers agree when they pick the same top class (the integer `label`-style output, or
//! the arg-max of a `[N, classes]` float output); other models are compared by the mean absolute
//! difference of their first common output.

use super::{names, Telemetry};
use crate::protocol::Tensor;
use metrics::{Counter, Gauge, Label};
use serde::Serialize;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One output reduced to what comparison needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Flat {
    /// Output name.
    pub name: String,
    /// Integer (class label) output.
    pub integer: bool,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements as f64.
    pub values: Vec<f64>,
}

/// Outputs of an in-process model.
pub fn flatten_tensors(tensors: &[Tensor]) -> Vec<Flat> {
    // BYTES outputs have no numeric reading and are left out.
    tensors
        .iter()
        .filter_map(|t| {
            let (integer, values) = t.data.numbers()?;
            Some(Flat { name: t.name.clone(), integer, shape: t.shape.clone(), values })
        })
        .collect()
}

/// Outputs of an Open Inference Protocol JSON answer (flat `data` only).
pub fn flatten_json(answer: &Value) -> Option<Vec<Flat>> {
    answer["outputs"]
        .as_array()?
        .iter()
        .map(|o| {
            let datatype = o["datatype"].as_str()?;
            let integer = datatype.starts_with("INT") || datatype.starts_with("UINT") || datatype == "BOOL";
            let shape = o["shape"].as_array()?.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<_>>()?;
            let values = o["data"]
                .as_array()?
                .iter()
                .map(|x| x.as_f64().or_else(|| x.as_bool().map(|b| f64::from(u8::from(b)))))
                .collect::<Option<_>>()?;
            Some(Flat { name: o["name"].as_str()?.to_string(), integer, shape, values })
        })
        .collect()
}

/// How one shadowed request compared.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Classifier: rows compared and rows with the same top class.
    Classes {
        /// Rows compared.
        rows: u64,
        /// Rows where both picked the same class.
        agreed: u64,
    },
    /// Regression: sum of absolute differences over `n` elements.
    Difference {
        /// Sum of |primary - shadow|.
        sum: f64,
        /// Elements compared.
        n: u64,
    },
    /// No common output of the same shape.
    Incomparable,
}

/// The top class of each row: an integer label output as it is, or the arg-max of a
/// `[N, classes]` float output.
pub fn top_classes(f: &Flat) -> Option<Vec<f64>> {
    classes_of(f.integer, &f.shape, &f.values)
}

fn classes_of(integer: bool, shape: &[usize], values: &[f64]) -> Option<Vec<f64>> {
    if integer && shape.len() == 1 {
        return Some(values.to_vec());
    }
    if !integer && shape.len() == 2 && shape[1] >= 2 {
        return Some(
            values
                .chunks(shape[1])
                .map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0.0, |(i, _)| i as f64))
                .collect(),
        );
    }
    None
}

/// Compares a shadow's outputs with the primary's.
pub fn compare(primary: &[Flat], shadow: &[Flat]) -> Comparison {
    let common: Vec<(&Flat, &Flat)> = primary
        .iter()
        .filter_map(|p| shadow.iter().find(|s| s.name == p.name && s.shape == p.shape).map(|s| (p, s)))
        .collect();
    // Classifiers: an integer label output first, then class probabilities.
    let classes = common
        .iter()
        .filter(|(p, _)| p.integer)
        .chain(common.iter().filter(|(p, _)| !p.integer))
        .find_map(|(p, s)| Some((top_classes(p)?, top_classes(s)?)));
    if let Some((p, s)) = classes {
        let agreed = p.iter().zip(&s).filter(|(a, b)| a == b).count() as u64;
        return Comparison::Classes { rows: p.len() as u64, agreed };
    }
    match common.first() {
        Some((p, s)) => Comparison::Difference {
            sum: p.values.iter().zip(&s.values).map(|(a, b)| (a - b).abs()).sum(),
            n: p.values.len() as u64,
        },
        None => Comparison::Incomparable,
    }
}

/// Running totals of a route's shadow traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct ShadowSnapshot {
    /// Copies sent.
    pub sent: u64,
    /// Copies that failed (error or unreadable answer).
    pub failed: u64,
    /// Copies not sent because `max_in_flight` were already out.
    pub skipped: u64,
    /// Classifier rows compared.
    pub rows_compared: u64,
    /// Classifier rows with the same top class.
    pub rows_agreed: u64,
    /// `rows_agreed / rows_compared`, when any were compared.
    pub agreement: Option<f64>,
    /// Elements compared by difference.
    pub values_compared: u64,
    /// Mean absolute difference over those elements.
    pub mean_abs_diff: Option<f64>,
    /// Answers with no common output to compare.
    pub incomparable: u64,
}

/// A route's shadow totals, with their metrics; shared across table swaps.
#[derive(Debug)]
pub struct ShadowStats {
    totals: Mutex<ShadowSnapshot>,
    in_flight: AtomicUsize,
    sent: Counter,
    failed: Counter,
    skipped: Counter,
    agreement: Gauge,
    difference: Gauge,
}

impl Default for ShadowStats {
    fn default() -> Self {
        ShadowStats {
            totals: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            sent: Counter::noop(),
            failed: Counter::noop(),
            skipped: Counter::noop(),
            agreement: Gauge::noop(),
            difference: Gauge::noop(),
        }
    }
}

impl ShadowStats {
    /// Totals for `route`, exported through `telemetry`.
    pub fn new(telemetry: &Telemetry, route: &str) -> Self {
        let labels = |outcome: Option<&'static str>| {
            let mut l = vec![Label::new("route", route.to_string())];
            if let Some(o) = outcome {
                l.push(Label::new("outcome", o));
            }
            l
        };
        ShadowStats {
            totals: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            sent: telemetry.counter(names::SHADOW_TOTAL, labels(Some("sent"))),
            failed: telemetry.counter(names::SHADOW_TOTAL, labels(Some("failed"))),
            skipped: telemetry.counter(names::SHADOW_TOTAL, labels(Some("skipped"))),
            agreement: telemetry.gauge(names::SHADOW_AGREEMENT, labels(None)),
            difference: telemetry.gauge(names::SHADOW_DIFFERENCE, labels(None)),
        }
    }

    fn with(&self, f: impl FnOnce(&mut ShadowSnapshot)) {
        let mut s = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }

    /// Takes one of `max` in-flight slots for a copy, or counts the copy as skipped.
    pub fn begin(self: &Arc<Self>, max: usize) -> Option<InFlight> {
        let taken = self.in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1));
        match taken {
            Ok(_) => Some(InFlight(self.clone())),
            Err(_) => {
                self.with(|s| s.skipped += 1);
                self.skipped.increment(1);
                None
            }
        }
    }

    /// A copy was sent.
    pub fn sent(&self) {
        self.with(|s| s.sent += 1);
        self.sent.increment(1);
    }

    /// A copy failed.
    pub fn failed(&self) {
        self.with(|s| s.failed += 1);
        self.failed.increment(1);
    }

    /// A copy answered and was compared.
    pub fn record(&self, c: &Comparison) {
        self.with(|s| match *c {
            Comparison::Classes { rows, agreed } => {
                s.rows_compared += rows;
                s.rows_agreed += agreed;
                s.agreement = Some(s.rows_agreed as f64 / s.rows_compared.max(1) as f64);
            }
            Comparison::Difference { sum, n } => {
                let total = s.mean_abs_diff.unwrap_or(0.0) * s.values_compared as f64 + sum;
                s.values_compared += n;
                s.mean_abs_diff = Some(total / s.values_compared.max(1) as f64);
            }
            Comparison::Incomparable => s.incomparable += 1,
        });
        let s = self.snapshot();
        if let Some(a) = s.agreement {
            self.agreement.set(a);
        }
        if let Some(d) = s.mean_abs_diff {
            self.difference.set(d);
        }
    }

    /// The totals now.
    pub fn snapshot(&self) -> ShadowSnapshot {
        *self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The top class of each row of a classifier's answer: its integer label output if it has one,
/// else the arg-max of a `[N, classes]` float output. `None` for other models.
pub fn prediction(outputs: &[Flat]) -> Option<Vec<i64>> {
    first_classes(outputs, |o| Some(o.integer), top_classes)
}

/// [`prediction`] straight from a model's outputs, without reducing every output first (what
/// the in-process path does on each request that has no shadow to compare with).
pub fn prediction_of(outputs: &[Tensor]) -> Option<Vec<i64>> {
    first_classes(
        outputs,
        |t| t.data.integer(),
        |t| {
            let (integer, values) = t.data.numbers()?;
            classes_of(integer, &t.shape, &values)
        },
    )
}

/// The classes of the first output that has them, integer outputs first (`integer`: `None` for
/// an output with no numeric reading, which is skipped).
fn first_classes<T>(
    outputs: &[T],
    integer: impl Fn(&T) -> Option<bool>,
    classes: impl Fn(&T) -> Option<Vec<f64>>,
) -> Option<Vec<i64>> {
    let integer = &integer;
    let of_kind = |kind: bool| outputs.iter().filter(move |o| integer(o) == Some(kind));
    of_kind(true).chain(of_kind(false)).find_map(classes).map(|rows| rows.into_iter().map(|c| c as i64).collect())
}

/// A shadow copy's in-flight slot; given back when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ShadowStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(name: &str, integer: bool, shape: &[usize], values: &[f64]) -> Flat {
        Flat { name: name.into(), integer, shape: shape.to_vec(), values: values.to_vec() }
    }

    #[test]
    fn classifiers_compare_labels_then_argmax() {
        let p = [
            flat("label", true, &[3], &[0.0, 1.0, 1.0]),
            flat("probabilities", false, &[3, 2], &[0.9, 0.1, 0.2, 0.8, 0.4, 0.6]),
        ];
        let s = [
            flat("label", true, &[3], &[0.0, 1.0, 0.0]),
            flat("probabilities", false, &[3, 2], &[0.8, 0.2, 0.3, 0.7, 0.6, 0.4]),
        ];
        assert_eq!(compare(&p, &s), Comparison::Classes { rows: 3, agreed: 2 });
        assert_eq!(compare(&p[1..], &s[1..]), Comparison::Classes { rows: 3, agreed: 2 });
    }

    #[test]
    fn predictions_from_outputs_agree_with_predictions_from_their_reduction() {
        use crate::protocol::TensorData;
        let t =
            |name: &str, shape: &[usize], data: TensorData| Tensor { name: name.into(), shape: shape.to_vec(), data };
        let probabilities = t("probabilities", &[3, 2], TensorData::Fp32(vec![0.9, 0.1, 0.2, 0.8, 0.4, 0.6]));
        let cases = [
            // The integer label wins over the float output listed before it.
            vec![probabilities.clone(), t("label", &[3], TensorData::Int64(vec![2, 1, 0]))],
            // No usable label (BYTES, or not one-dimensional): the arg-max of the float output.
            vec![t("names", &[3], TensorData::Bytes(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])), probabilities],
            vec![t("label", &[3, 1], TensorData::Int32(vec![1, 1, 1])), t("y", &[3], TensorData::Fp64(vec![0.5; 3]))],
        ];
        let expected = [Some(vec![2, 1, 0]), Some(vec![0, 1, 1]), None];
        for (outputs, expected) in cases.iter().zip(expected) {
            assert_eq!(prediction_of(outputs), expected, "{outputs:?}");
            assert_eq!(prediction(&flatten_tensors(outputs)), expected, "{outputs:?}");
        }
    }

    #[test]
    fn regressions_compare_by_mean_absolute_difference() {
        let stats = ShadowStats::default();
        stats.record(&compare(&[flat("y", false, &[2, 1], &[1.0, 2.0])], &[flat("y", false, &[2, 1], &[1.5, 1.0])]));
        let s = stats.snapshot();
        assert_eq!(s.values_compared, 2);
        assert_eq!(s.mean_abs_diff, Some(0.75));
        assert_eq!(
            compare(&[flat("y", false, &[1], &[1.0])], &[flat("z", false, &[1], &[1.0])]),
            Comparison::Incomparable
        );
    }

    #[test]
    fn json_answers_flatten() {
        let v: Value =
            serde_json::json!({"outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}]});
        assert_eq!(flatten_json(&v).unwrap(), vec![flat("label", true, &[2], &[1.0, 0.0])]);
    }
}
