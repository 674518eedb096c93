#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that modelgate loads (ort's `load-dynamic`):
# pip downloads the pinned onnxruntime wheel from PyPI, its sha256 is checked against
# scripts/onnxruntime.sha256, and the library is unpacked into .ort/ (ignored by git).
# ort's own binary download cannot work here, which is why the wheel is used.
set -euo pipefail
cd "$(dirname "$0")/.."

version=1.31.1
lib=".ort/libonnxruntime.so.${version}"
if [ -f "$lib" ] && [ -f .ort/wheel.sha256 ] && cmp -s .ort/wheel.sha256 scripts/onnxruntime.sha256; then
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "fetch-ort: $python not found; install Python 3 with pip" >&2; exit 1; }
mkdir -p .ort/download
# Always the same wheel (cp311, manylinux_2_28 x86_64), whatever Python runs pip: the shared
# library inside does not depend on the interpreter, and one file means one recorded sha256.
"$python" -m pip download --quiet --no-deps --only-binary=:all: --dest .ort/download \
  --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
  "onnxruntime==${version}"
wheel=$(ls .ort/download/onnxruntime-${version}-*.whl | head -n 1)
name=$(basename "$wheel")
want=$(awk -v n="$name" '$2 == n { print $1 }' scripts/onnxruntime.sha256)
if [ -z "$want" ]; then
  echo "fetch-ort: no sha256 recorded for $name in scripts/onnxruntime.sha256 (recorded: $(awk '{print $2}' scripts/onnxruntime.sha256 | tr '\n' ' '))" >&2
  exit 1
fi
got=$(sha256sum "$wheel" | awk '{ print $1 }')
if [ "$got" != "$want" ]; then
  echo "fetch-ort: sha256 mismatch for $name: got $got, recorded $want; refusing to use it" >&2
  rm -f "$wheel"
  exit 1
fi
"$python" - "$wheel" "$lib" <<'PY'
import sys, zipfile, shutil
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("capi/" + dest.rsplit("/", 1)[1]))
    with z.open(member) as src, open(dest + ".tmp", "wb") as out:
        shutil.copyfileobj(src, out)
shutil.move(dest + ".tmp", dest)
PY
cp scripts/onnxruntime.sha256 .ort/wheel.sha256
rm -rf .ort/download
echo "fetch-ort: installed $lib (from $name, sha256 $got)"
