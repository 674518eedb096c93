#!/usr/bin/env bash
# `make run`: serves routes.yaml on :8080, with a second modelgate on :8081 as its upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/modelgate
"$bin" validate routes.yaml
"$bin" serve --config scripts/demo-upstream.yaml &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
exec_status=0
"$bin" serve --config routes.yaml || exec_status=$?
exit $exec_status
