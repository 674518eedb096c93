#!/usr/bin/env python3
"""scikit-learn's value of a `modelgate evaluate` metric, for tests/evaluate_sklearn.rs: the
model is run by Python onnxruntime on the holdout's rows and scored with sklearn.metrics
(accuracy_score, roc_auc_score on column 1 of `probabilities`, root of mean_squared_error).
With --diabetes-holdout PATH it first writes the diabetes regression holdout (the split
models/generate.py trained on: test_size=0.3, random_state=42) as `{"samples": [...]}`.

    .venv-ct/bin/python scripts/sklearn_metrics.py --model M.onnx --data holdout.json --metric auc
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--metric", choices=["accuracy", "auc", "rmse"], required=True)
    p.add_argument("--diabetes-holdout", action="store_true")
    args = p.parse_args()
    if args.diabetes_holdout:
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split
        x, y = load_diabetes(return_X_y=True)
        _, x_te, _, y_te = train_test_split(x, y, test_size=0.3, random_state=42)
        with open(args.data, "w", encoding="utf-8") as f:
            json.dump({"samples": [{"features": r.tolist(), "label": float(v)} for r, v in zip(x_te, y_te)]}, f)
    with open(args.data, encoding="utf-8") as f:
        samples = json.load(f)["samples"]
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    x = np.array([s["features"] for s in samples], dtype=dtype)
    y = np.array([s["label"] for s in samples])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {inp.name: x})))
    if args.metric == "accuracy":
        value = accuracy_score(y.astype(np.int64), out["label"])
    elif args.metric == "auc":
        value = roc_auc_score(y.astype(np.int64), out["probabilities"][:, 1])
    else:
        pred = next(iter(out.values())).reshape(-1)
        value = float(np.sqrt(mean_squared_error(y, pred)))
    print(json.dumps({"metric": args.metric, "value": float(value), "rows": len(y)}))


if __name__ == "__main__":
    main()
