#!/usr/bin/env bash
# The Python environment of the client conformance tests: the official tritonclient (HTTP and gRPC),
# numpy and onnxruntime (the reference the answers are compared with), every package pinned in
# tests/triton/requirements.txt, installed from PyPI into .venv/ (ignored by git). Made once;
# made again when the requirements change.
set -euo pipefail
cd "$(dirname "$0")/.."

req=tests/triton/requirements.txt
if [ -x .venv/bin/python ] && [ -f .venv/requirements.txt ] && cmp -s .venv/requirements.txt "$req"; then
  exit 0
fi
python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "python-env: $python not found; install Python 3 with venv and pip" >&2; exit 1; }
rm -rf .venv
"$python" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check --only-binary=:all: -r "$req"
cp "$req" .venv/requirements.txt
echo "python-env: .venv ready ($(.venv/bin/python -c 'import tritonclient, onnxruntime; print("tritonclient", tritonclient.__version__ if hasattr(tritonclient, "__version__") else "", "onnxruntime", onnxruntime.__version__)'))"
