//! `modelgate evaluate` against scikit-learn: on the shipped holdouts, its accuracy, ROC AUC and
//! RMSE of each model equal sklearn.metrics' (accuracy_score, roc_auc_score, mean_squared_error)
//! on Python onnxruntime's outputs of the same file, to 1e-9; and its exit codes (0 pass, 1 fail,
//! 2 error). scikit-learn comes from the CT loop's environment (`make ctenv`, .venv-ct/).

mod support;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use support::process::*;
use support::*;

fn sklearn(model: &str, data: &Path, metric: &str, write_diabetes: bool) -> f64 {
    let python = root().join(".venv-ct/bin/python");
    assert!(python.exists(), "{} is missing: run `make ctenv` (make test does)", python.display());
    let mut cmd = Command::new(python);
    cmd.arg(root().join("scripts/sklearn_metrics.py"))
        .args(["--model"])
        .arg(root().join(model))
        .arg("--data")
        .arg(data)
        .args(["--metric", metric]);
    if write_diabetes {
        cmd.arg("--diabetes-holdout");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "sklearn_metrics.py: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["value"].as_f64().unwrap()
}

fn evaluate(baseline: &str, candidate: &str, data: &Path, metric: &str, extra: &[&str]) -> (i32, Value) {
    let out = modelgate()
        .args(["evaluate", "--baseline", baseline, "--candidate", candidate, "--metric", metric, "--json", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json)
}

#[test]
fn evaluate_agrees_with_scikit_learn_on_accuracy_auc_and_rmse() {
    let holdout = root().join("models/breast-cancer-holdout.json");
    let (v1, v2) = ("models/breast-cancer-v1.onnx", "models/breast-cancer-v2.onnx");
    for metric in ["accuracy", "auc"] {
        let (_, got) = evaluate(v1, v2, &holdout, metric, &[]);
        for (side, model) in [("baseline", v1), ("candidate", v2)] {
            let want = sklearn(model, &holdout, metric, false);
            let value = got[side].as_f64().unwrap();
            assert!((value - want).abs() < 1e-9, "{metric} of {model}: modelgate {value}, scikit-learn {want}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let diabetes = dir.path().join("diabetes-holdout.json");
    let want = sklearn("models/diabetes-v1.onnx", &diabetes, "rmse", true);
    let (code, got) = evaluate("models/diabetes-v1.onnx", "models/diabetes-v1.onnx", &diabetes, "rmse", &[]);
    assert_eq!(code, 0, "{got:#}");
    let value = got["baseline"].as_f64().unwrap();
    assert!((value - want).abs() < 1e-9, "rmse: modelgate {value}, scikit-learn {want}");
}

#[test]
fn evaluate_exit_codes_are_its_verdict() {
    let holdout = root().join("models/breast-cancer-holdout.json");
    let (v1, v2) = ("models/breast-cancer-v1.onnx", "models/breast-cancer-v2.onnx");
    // v2 is shown better than v1 on accuracy: pass; v1 in v2's place is not: fail.
    assert_eq!(evaluate(v1, v2, &holdout, "accuracy", &["--max-regression", "0"]).0, 0);
    assert_eq!(evaluate(v2, v1, &holdout, "accuracy", &["--max-regression", "0"]).0, 1);
    // A model that cannot take the rows (diabetes: 10 FP64 features) is an error, not a verdict.
    assert_eq!(evaluate(v1, "models/diabetes-v1.onnx", &holdout, "accuracy", &[]).0, 2);
    assert_eq!(evaluate(v1, v2, &root().join("models/missing.json"), "accuracy", &[]).0, 2);
}
