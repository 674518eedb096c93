#!/usr/bin/env python3
"""The retraining job runner of `make ct`: a CloudEvents receiver on 127.0.0.1 that starts the
retraining job when modelgate has reported both input drift (`drift_detected`) and enough new
labels (`labelled_data_ready`) for a route. The job:

1. joins the captured answers and their label feedback (capture files, on `key`);
2. splits them (stratified, seeded) into a training and a holdout part;
3. trains a scikit-learn model on the training part and converts it to ONNX (skl2onnx, the
   production model's signature: input `input` FP32 [N, 30], outputs `label`, `probabilities`);
4. runs `modelgate evaluate` of it against the production model (downloaded from the registry)
   on the holdout; exit code 0 is PASS;
5. on PASS registers it in MLflow's Model Registry and moves the `challenger` alias to it.

Each hop is one JSON line on stdout ({"hop": ..., "t": unix seconds, ...}); the driver (ct.py)
prints them. One job at a time; events while a job runs are counted, not queued.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {"drift": set(), "ready": set(), "running": False, "done": 0}


def hop(name, **kw):
    print(json.dumps({"hop": name, "t": time.time(), **kw}), flush=True)


def joined_rows(capture_dir):
    """(features, label) pairs: answers joined with their label feedback on `key`."""
    answers, labels = {}, {}
    for path in sorted(glob.glob(os.path.join(capture_dir, "*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line being written
                if rec.get("type") == "answer":
                    inp = rec["inputs"][0]
                    rows, width = inp["shape"]
                    answers[rec["key"]] = [inp["data"][i * width:(i + 1) * width] for i in range(rows)]
                elif rec.get("type") == "feedback" and rec.get("feedback", {}).get("label") is not None:
                    lab = rec["feedback"]["label"]
                    labels[rec["key"]] = lab if isinstance(lab, list) else [lab]
    x, y = [], []
    for key, rows in answers.items():
        lab = labels.get(key)
        if lab is not None and len(lab) == len(rows):
            x.extend(rows)
            y.extend(lab)
    return x, y


def job(args, route):
    import mlflow
    import numpy as np
    import onnx
    from mlflow import MlflowClient
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    work = tempfile.mkdtemp(prefix="job-", dir=args.workdir)
    x, y = joined_rows(args.captures)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    hop("job_data", route=route, rows=int(len(y)), positives=int(y.sum()))
    if len(y) < 100 or len(set(y.tolist())) < 2:
        hop("job_failed", route=route, reason=f"only {len(y)} labelled rows")
        return
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=7, stratify=y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(x_tr, y_tr)
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
                          options={id(clf.steps[-1][1]): {"zipmap": False}},
                          target_opset={"": 17, "ai.onnx.ml": 3})
    onx.doc_string = f"retrained by make ct on {len(y_tr)} captured labelled rows"
    candidate = os.path.join(work, "candidate.onnx")
    with open(candidate, "wb") as f:
        f.write(onx.SerializeToString())
    hop("job_trained", route=route, train_rows=int(len(y_tr)), holdout_rows=int(len(y_te)),
        sklearn_holdout_accuracy=float(clf.score(x_te, y_te)))

    mlflow.set_tracking_uri(args.mlflow)
    client = MlflowClient()
    prod = client.get_model_version_by_alias(args.model, "production")
    baseline = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{args.model}@production", dst_path=os.path.join(work, "production"))
    baseline = os.path.join(baseline, "model.onnx")
    holdout = os.path.join(work, "holdout.json")
    with open(holdout, "w", encoding="utf-8") as f:
        json.dump({"samples": [{"features": r.tolist(), "label": int(v)} for r, v in zip(x_te, y_te)]}, f)
    ev = subprocess.run([args.modelgate, "evaluate", "--baseline", baseline, "--candidate", candidate,
                         "--data", holdout, "--metric", "accuracy", "--max-regression", "0", "--json"],
                        capture_output=True, text=True, timeout=120, check=False)
    try:
        verdict = json.loads(ev.stdout)
    except ValueError:
        verdict = {"stdout": ev.stdout[-500:], "stderr": ev.stderr[-500:]}
    hop("evaluate", route=route, exit_code=ev.returncode, production_version=prod.version,
        baseline=verdict.get("baseline"), candidate=verdict.get("candidate"),
        regression_upper=verdict.get("regression_upper"), pass_=verdict.get("pass"))
    if ev.returncode != 0:
        hop("job_failed", route=route, reason="the candidate did not pass modelgate evaluate")
        return
    with mlflow.start_run(run_name="ct-retrain") as run:
        mlflow.log_metric("holdout_accuracy", float(clf.score(x_te, y_te)))
        mlflow.onnx.log_model(onnx.load(candidate), name="model", registered_model_name=args.model)
    versions = client.search_model_versions(f"name='{args.model}' and run_id='{run.info.run_id}'")
    version = max(int(v.version) for v in versions)
    client.set_registered_model_alias(args.model, "challenger", str(version))
    hop("registered", route=route, model=args.model, version=version, alias="challenger", run_id=run.info.run_id)


def run_job(args, route):
    try:
        job(args, route)
    except Exception as e:  # the runner reports a failed job and stays up
        hop("job_failed", route=route, reason=f"{type(e).__name__}: {e}")
    finally:
        with LOCK:
            STATE["running"] = False
            STATE["done"] += 1


class Hooks(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > 1 << 20:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        try:
            ev = json.loads(body)
            kind = ev["type"].removeprefix("io.modelgate.")
            route = ev.get("subject") or ""
        except (ValueError, KeyError, AttributeError):
            self.send_error(400, "not a structured CloudEvent")
            return
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()
        hop("event", kind=kind, route=route, id=ev.get("id"))
        start = False
        with LOCK:
            if kind == "drift_detected":
                STATE["drift"].add(route)
            elif kind == "labelled_data_ready":
                STATE["ready"].add(route)
            if route in STATE["drift"] and route in STATE["ready"] and not STATE["running"] and STATE["done"] == 0:
                STATE["running"] = True
                start = True
        if start:
            hop("job_started", route=route, trigger=kind)
            threading.Thread(target=run_job, args=(self.server.args, route), daemon=True).start()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mlflow", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--captures", required=True)
    p.add_argument("--modelgate", required=True)
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    server.args = args
    hop("listening", url=f"http://127.0.0.1:{server.server_address[1]}/hooks")
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
