//! Input validation ("garbage in, garbage out"): each row's features against the profile's
//! bounds — the reference range widened by a margin, NaN only where the reference had NaN, and
//! only seen values for categorical features. Violations are counted per feature under a
//! bounded set of labels; a route may reject them.

use super::profile::Profile;
use crate::config::{OnInvalid, ValidationSpec, MAX_LABELLED_FEATURES};
use metrics::Counter;

/// The label of features beyond the labelled ones.
pub const OTHER: &str = "other";

/// One feature's bounds.
#[derive(Debug, Clone)]
struct Bound {
    lo: f64,
    hi: f64,
    nan_allowed: bool,
    /// Seen values of a categorical feature, sorted.
    categories: Option<Box<[f64]>>,
    /// Index into the counters.
    counter: usize,
}

/// The first bound a row broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Row in the request.
    pub row: usize,
    /// The feature's name in the profile.
    pub feature: String,
    /// What was sent, and the bound it broke, in words.
    pub why: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input row {} feature {}: {}", self.row, self.feature, self.why)
    }
}

/// Checks rows against one profile; made with the routing table.
#[derive(Debug)]
pub struct Validator {
    bounds: Vec<Bound>,
    names: Vec<String>,
    counters: Vec<Counter>,
    /// Count or reject.
    pub on_invalid: OnInvalid,
    margin: f64,
}

impl Validator {
    /// Bounds from `profile` widened by `spec.margin`; `counter(feature)` makes the counter of
    /// a label (the labelled features, then [`OTHER`]).
    pub fn new(profile: &Profile, spec: &ValidationSpec, counter: impl Fn(&str) -> Counter) -> Validator {
        let labelled: Vec<&str> = if spec.features.is_empty() {
            profile.features.iter().take(MAX_LABELLED_FEATURES).map(|f| f.name.as_str()).collect()
        } else {
            spec.features.iter().map(String::as_str).collect()
        };
        let mut counters: Vec<Counter> = labelled.iter().map(|name| counter(name)).collect();
        let other = counters.len();
        if profile.features.iter().any(|f| !labelled.contains(&f.name.as_str())) {
            counters.push(counter(OTHER));
        }
        let bounds = profile
            .features
            .iter()
            .map(|f| {
                let slack = spec.margin * (f.max - f.min);
                Bound {
                    lo: f.min - slack,
                    hi: f.max + slack,
                    nan_allowed: f.nan > 0,
                    categories: f.categories.as_ref().map(|c| c.iter().map(|(v, _)| *v as f64).collect()),
                    counter: labelled.iter().position(|l| *l == f.name).unwrap_or(other),
                }
            })
            .collect();
        Validator {
            bounds,
            names: profile.features.iter().map(|f| f.name.clone()).collect(),
            counters,
            on_invalid: spec.on_invalid,
            margin: spec.margin,
        }
    }

    /// Features per row.
    pub fn width(&self) -> usize {
        self.bounds.len()
    }

    /// Checks `rows` rows whose column `j` of row `i` is `get(i * width + j)`; counts every
    /// broken bound and returns the first. Allocates only to describe a violation.
    #[inline]
    pub fn check(&self, rows: usize, get: impl Fn(usize) -> f64) -> Option<Violation> {
        let width = self.bounds.len();
        let mut first: Option<(usize, usize, f64)> = None;
        for i in 0..rows {
            for (j, b) in self.bounds.iter().enumerate() {
                let x = get(i * width + j);
                let ok = if x.is_nan() {
                    b.nan_allowed
                } else {
                    x >= b.lo
                        && x <= b.hi
                        && b.categories.as_ref().is_none_or(|c| c.binary_search_by(|v| v.total_cmp(&x)).is_ok())
                };
                if !ok {
                    self.counters[b.counter].increment(1);
                    first.get_or_insert((i, j, x));
                }
            }
        }
        first.map(|(row, j, x)| self.describe(row, j, x))
    }

    fn describe(&self, row: usize, j: usize, x: f64) -> Violation {
        let b = &self.bounds[j];
        let m = self.margin * 100.0;
        let why = if x.is_nan() {
            "NaN, but the reference profile has no NaN for it".to_string()
        } else if x < b.lo {
            format!("{x} is below the bound {} (the profile's min less {m}% of its range)", b.lo)
        } else if x > b.hi {
            format!("{x} is above the bound {} (the profile's max plus {m}% of its range)", b.hi)
        } else {
            format!("{x} is a category the reference profile never saw")
        };
        Violation { row, feature: self.names[j].clone(), why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::profile::FeatureProfile;

    fn profile() -> Profile {
        let a: Vec<f64> = (0..=100).map(f64::from).collect();
        let c: Vec<f64> = (0..=100).map(|i| f64::from(i % 3 * 2)).collect();
        let mut p = Profile::of(String::new(), "x".into(), 0, &[], Vec::new());
        p.features = vec![FeatureProfile::of("f0".into(), &a), FeatureProfile::of("f1".into(), &c)];
        p
    }

    fn spec(features: Vec<String>) -> ValidationSpec {
        ValidationSpec { on_invalid: OnInvalid::Reject, margin: 0.1, features }
    }

    #[test]
    fn rows_inside_the_margin_pass_and_others_name_feature_and_bound() {
        let v = Validator::new(&profile(), &spec(vec![]), |_| Counter::noop());
        let rows = [50.0, 2.0, 109.0, 4.0];
        assert_eq!(v.check(2, |i| rows[i]), None);
        let bad = [50.0, 2.0, 111.0, 4.0];
        let got = v.check(2, |i| bad[i]).unwrap();
        assert_eq!((got.row, got.feature.as_str()), (1, "f0"));
        assert!(got.why.contains("above the bound 110"), "{}", got.why);
        let unseen = [50.0, 3.0];
        assert!(v.check(1, |i| unseen[i]).unwrap().why.contains("never saw"));
        let nan = [f64::NAN, 2.0];
        assert!(v.check(1, |i| nan[i]).unwrap().why.contains("NaN"));
    }

    #[test]
    fn features_beyond_the_labelled_ones_share_one_counter() {
        let names = std::sync::Mutex::new(Vec::new());
        let _ = Validator::new(&profile(), &spec(vec!["f1".into()]), |n| {
            names.lock().unwrap().push(n.to_string());
            Counter::noop()
        });
        assert_eq!(*names.lock().unwrap(), ["f1", OTHER]);
    }
}
