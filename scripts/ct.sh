#!/usr/bin/env bash
# make ct: the continuous-training loop end to end on loopback (scripts/ct.py says what it does),
# run in the environment scripts/ct-env.sh makes. Exit code = verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ct-env.sh
exec .venv-ct/bin/python scripts/ct.py "$@"
