#!/usr/bin/env bash
# The continuous-training loop's Python environment (make ct, tests/registry.rs): a real MLflow
# tracking server and client, scikit-learn, skl2onnx and onnxruntime, every package pinned in
# scripts/ct-requirements.txt, installed from PyPI into .venv-ct/ (ignored by git; apart from
# .venv/, the client tests' environment). Made once; made again when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."

req=scripts/ct-requirements.txt
if [ -x .venv-ct/bin/mlflow ] && [ -f .venv-ct/requirements.txt ] && cmp -s .venv-ct/requirements.txt "$req"; then
  exit 0
fi
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "ct-env: $python not found; install Python 3.11 with venv and pip" >&2; exit 1; }
started=$(date +%s)
rm -rf .venv-ct
"$python" -m venv .venv-ct
.venv-ct/bin/pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$req"
cp "$req" .venv-ct/requirements.txt
echo "ct-env: .venv-ct ready in $(( $(date +%s) - started )) s ($(.venv-ct/bin/python -c 'import mlflow, sklearn, skl2onnx; print("mlflow", mlflow.__version__, "scikit-learn", sklearn.__version__, "skl2onnx", skl2onnx.__version__)'))"
