//! The CI model gate's statistics: a candidate model against the baseline on the same held-out
//! labelled rows — accuracy, ROC AUC or RMSE, the candidate's regression with a one-sided
//! paired-bootstrap bound, and for accuracy McNemar's exact test on the discordant rows.
//! Pure functions; `modelgate evaluate` runs the models and prints the verdict.

use super::profile::Outputs;
use rand::{Rng, SeedableRng};
use statrs::distribution::{Binomial, DiscreteCDF};

/// What the models are compared on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of rows whose predicted class is the label (higher is better).
    Accuracy,
    /// Area under the ROC curve of the positive class's score, labels 0/1 (higher is better).
    Auc,
    /// Root mean squared error of a regression output (lower is better).
    Rmse,
}

impl Metric {
    /// Parses `accuracy`, `auc` or `rmse`.
    pub fn parse(text: &str) -> Option<Metric> {
        match text {
            "accuracy" => Some(Metric::Accuracy),
            "auc" => Some(Metric::Auc),
            "rmse" => Some(Metric::Rmse),
            _ => None,
        }
    }
}

/// A model's predictions per row, read from its outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Predictions {
    /// Predicted class: the `label` output, else the arg max of the first multi-column output.
    pub class: Option<Vec<f64>>,
    /// Positive-class score: column 1 of a two-column output, else a one-column non-label output.
    pub score: Option<Vec<f64>>,
    /// Regression value: the first one-column output.
    pub value: Option<Vec<f64>>,
}

impl Predictions {
    /// Reads the predictions of `rows` rows from a model's outputs.
    pub fn from_outputs(outputs: &Outputs, rows: usize) -> Predictions {
        let column = |values: &[f64], width: usize, j: usize| -> Vec<f64> {
            (0..rows).map(|i| values.get(i * width + j).copied().unwrap_or(f64::NAN)).collect()
        };
        let label = outputs.iter().find(|(n, w, _)| n == "label" && *w == 1).map(|(_, w, v)| column(v, *w, 0));
        let multi = outputs.iter().find(|(_, w, _)| *w >= 2);
        let argmax = multi.map(|(_, w, v)| {
            (0..rows)
                .map(|i| {
                    let row = &v[(i * w).min(v.len())..((i + 1) * w).min(v.len())];
                    row.iter()
                        .enumerate()
                        .fold((0, f64::NEG_INFINITY), |b, (j, x)| if *x > b.1 { (j, *x) } else { b })
                        .0 as f64
                })
                .collect()
        });
        let score = outputs
            .iter()
            .find(|(_, w, _)| *w == 2)
            .map(|(_, w, v)| column(v, *w, 1))
            .or_else(|| outputs.iter().find(|(n, w, _)| n != "label" && *w == 1).map(|(_, w, v)| column(v, *w, 0)));
        let value = outputs.iter().find(|(_, w, _)| *w == 1).map(|(_, w, v)| column(v, *w, 0));
        Predictions { class: label.or(argmax), score, value }
    }

    fn series(&self, metric: Metric) -> Option<&[f64]> {
        match metric {
            Metric::Accuracy => self.class.as_deref(),
            Metric::Auc => self.score.as_deref(),
            Metric::Rmse => self.value.as_deref(),
        }
    }
}

/// `metric` of predictions `p` against `labels` on the rows `idx`.
fn metric_on(metric: Metric, labels: &[f64], p: &[f64], idx: &[usize]) -> f64 {
    let n = idx.len() as f64;
    match metric {
        Metric::Accuracy => idx.iter().filter(|&&i| p[i] == labels[i]).count() as f64 / n,
        Metric::Rmse => (idx.iter().map(|&i| (p[i] - labels[i]).powi(2)).sum::<f64>() / n).sqrt(),
        Metric::Auc => auc(idx.iter().map(|&i| (p[i], labels[i] == 1.0))),
    }
}

/// ROC AUC by the Mann–Whitney statistic, ties given their average rank; NaN without both
/// classes.
pub fn auc(scored: impl Iterator<Item = (f64, bool)>) -> f64 {
    let mut v: Vec<(f64, bool)> = scored.collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives) = (0.0, 0usize);
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].0 == v[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for item in &v[i..=j] {
            if item.1 {
                rank_sum += rank;
                positives += 1;
            }
        }
        i = j + 1;
    }
    let negatives = v.len() - positives;
    if positives == 0 || negatives == 0 {
        return f64::NAN;
    }
    let (p, q) = (positives as f64, negatives as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// McNemar's exact test: rows only the baseline got right (`b`) against rows only the candidate
/// got right (`c`); two-sided p-value.
pub fn mcnemar(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    Binomial::new(0.5, n).map_or(1.0, |d| (2.0 * d.cdf(b.min(c))).min(1.0))
}

/// How a candidate is judged: the metric, the regression allowed, the bound's confidence and
/// the bootstrap resamples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    /// What is compared.
    pub metric: Metric,
    /// Largest regression allowed, in the metric's units.
    pub max_regression: f64,
    /// Confidence of the one-sided bound (0.5 to 1, exclusive).
    pub confidence: f64,
    /// Paired bootstrap resamples (100 to 1 000 000).
    pub resamples: usize,
}

impl Gate {
    /// A gate from command-line values; the error says which value is wrong.
    pub fn new(metric: &str, max_regression: f64, confidence: f64, resamples: usize) -> Result<Gate, String> {
        let metric =
            Metric::parse(metric).ok_or_else(|| format!("unknown metric {metric:?}: use accuracy, auc or rmse"))?;
        if !max_regression.is_finite() {
            return Err("--max-regression must be a number".into());
        }
        if !(confidence > 0.5 && confidence < 1.0) {
            return Err("--confidence must be between 0.5 and 1".into());
        }
        if !(100..=1_000_000).contains(&resamples) {
            return Err("--resamples must be between 100 and 1000000".into());
        }
        Ok(Gate { metric, max_regression, confidence, resamples })
    }
}

/// The gate's verdict and the numbers behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// What was compared.
    pub metric: Metric,
    /// Rows compared.
    pub rows: usize,
    /// The baseline's value.
    pub baseline: f64,
    /// The candidate's value.
    pub candidate: f64,
    /// How much worse the candidate is (negative: better), in the metric's units.
    pub regression: f64,
    /// One-sided upper bound of the regression at `confidence` (paired bootstrap).
    pub regression_upper: f64,
    /// Confidence of the bound.
    pub confidence: f64,
    /// Bootstrap resamples (seeded: the same data gives the same bound).
    pub resamples: usize,
    /// For accuracy: McNemar's exact two-sided p-value of the two models' difference.
    pub mcnemar_p: Option<f64>,
    /// The largest regression allowed.
    pub max_regression: f64,
    /// `regression_upper <= max_regression`: the candidate is shown no worse than allowed.
    pub pass: bool,
}

impl Evaluation {
    /// The comparison as a small table for people (`baseline` and `candidate` name the models).
    pub fn table(&self, baseline: &str, candidate: &str) -> String {
        let mut t = format!("metric      {:?} on {} rows\n", self.metric, self.rows);
        t += &format!("baseline    {:.6}  {baseline}\n", self.baseline);
        t += &format!("candidate   {:.6}  {candidate}\n", self.candidate);
        t += &format!(
            "regression  {:+.6} (upper {:.0}% bound {:+.6}, paired bootstrap x{})\n",
            self.regression,
            self.confidence * 100.0,
            self.regression_upper,
            self.resamples
        );
        if let Some(p) = self.mcnemar_p {
            t += &format!("mcnemar p   {p:.6}\n");
        }
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        t + &format!("verdict     {verdict} (max regression {})\n", self.max_regression)
    }
}

/// Compares the candidate with the baseline on `labels`.
pub fn evaluate(
    gate: Gate,
    labels: &[f64],
    baseline: &Predictions,
    candidate: &Predictions,
) -> Result<Evaluation, String> {
    let Gate { metric, max_regression, confidence, resamples } = gate;
    let what = match metric {
        Metric::Accuracy => "a class (a `label` output or class scores)",
        Metric::Auc => "a positive-class score (a two-column or one-column score output)",
        Metric::Rmse => "a one-column regression output",
    };
    let (Some(a), Some(b)) = (baseline.series(metric), candidate.series(metric)) else {
        return Err(format!("{metric:?} needs {what} from both models"));
    };
    let n = labels.len();
    if n == 0 || a.len() != n || b.len() != n {
        return Err(format!("{n} labels, but {} and {} predictions", a.len(), b.len()));
    }
    let worse = |x: f64, y: f64| if metric == Metric::Rmse { y - x } else { x - y };
    let all: Vec<usize> = (0..n).collect();
    let (va, vb) = (metric_on(metric, labels, a, &all), metric_on(metric, labels, b, &all));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut idx = vec![0usize; n];
    let mut diffs = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for slot in idx.iter_mut() {
            *slot = rng.random_range(0..n);
        }
        let d = worse(metric_on(metric, labels, a, &idx), metric_on(metric, labels, b, &idx));
        if d.is_finite() {
            diffs.push(d);
        }
    }
    if diffs.is_empty() {
        return Err("no bootstrap resample had a defined metric (AUC needs both classes)".into());
    }
    diffs.sort_by(f64::total_cmp);
    let k = ((confidence * diffs.len() as f64).ceil() as usize).clamp(1, diffs.len()) - 1;
    let regression_upper = diffs[k];
    let mcnemar_p = (metric == Metric::Accuracy).then(|| {
        let only_a = (0..n).filter(|&i| a[i] == labels[i] && b[i] != labels[i]).count() as u64;
        let only_b = (0..n).filter(|&i| a[i] != labels[i] && b[i] == labels[i]).count() as u64;
        mcnemar(only_a, only_b)
    });
    Ok(Evaluation {
        metric,
        rows: n,
        baseline: va,
        candidate: vb,
        regression: worse(va, vb),
        regression_upper,
        confidence,
        resamples,
        mcnemar_p,
        max_regression,
        pass: regression_upper <= max_regression,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_values_worked_by_hand() {
        // Positives score 0.9 and 0.4, negatives 0.4 and 0.1: of the four pairs one is a tie
        // (half) and three are ordered right, so AUC = 3.5 / 4.
        let auc = auc([(0.9, true), (0.4, true), (0.4, false), (0.1, false)].into_iter());
        assert!((auc - 0.875).abs() < 1e-15);
        // McNemar: 1 against 9 discordant rows: 2 × P(X <= 1), X ~ Bin(10, ½) = 2 × 11/1024.
        assert!((mcnemar(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert_eq!(mcnemar(0, 0), 1.0);
    }

    #[test]
    fn a_worse_candidate_fails_and_an_equal_one_passes() {
        let labels: Vec<f64> = (0..200).map(|i| f64::from(i % 2)).collect();
        let right = Predictions { class: Some(labels.clone()), score: None, value: None };
        let wrong: Vec<f64> = labels.iter().enumerate().map(|(i, l)| if i % 5 == 0 { 1.0 - l } else { *l }).collect();
        let worse = Predictions { class: Some(wrong), score: None, value: None };
        let gate = |metric, max| Gate { metric, max_regression: max, confidence: 0.95, resamples: 1000 };
        let e = evaluate(gate(Metric::Accuracy, 0.05), &labels, &right, &worse).unwrap();
        assert!((e.regression - 0.2).abs() < 1e-12 && !e.pass, "{e:?}");
        assert!(e.mcnemar_p.unwrap() < 1e-6);
        let same = evaluate(gate(Metric::Accuracy, 0.0), &labels, &right, &right).unwrap();
        assert!(same.pass && same.regression == 0.0);
        assert!(evaluate(gate(Metric::Rmse, 0.0), &labels, &right, &right).is_err(), "no regression output");
        assert!(Gate::new("f1", 0.0, 0.95, 1000).unwrap_err().contains("unknown metric"));
    }
}
