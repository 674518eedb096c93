#!/usr/bin/env python3
"""Registers an ONNX file in an MLflow Model Registry (logged with mlflow.onnx in a new run) and
points aliases at the new version; prints the version. For tests/registry.rs and by hand:

    .venv-ct/bin/python scripts/ct_register.py --mlflow http://127.0.0.1:5000 \\
        --model breast-cancer --file models/breast-cancer-v2.onnx --alias challenger
"""
import argparse

import mlflow
import onnx
from mlflow import MlflowClient


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mlflow", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--alias", action="append", default=[])
    args = p.parse_args()
    mlflow.set_tracking_uri(args.mlflow)
    with mlflow.start_run() as run:
        mlflow.onnx.log_model(onnx.load(args.file), name="model", registered_model_name=args.model)
    client = MlflowClient()
    version = max(int(v.version) for v in client.search_model_versions(
        f"name='{args.model}' and run_id='{run.info.run_id}'"))
    for alias in args.alias:
        client.set_registered_model_alias(args.model, alias, str(version))
    print(version)


if __name__ == "__main__":
    main()
