#!/usr/bin/env bash
# `make run`: serves routes.yaml on :8080 (gRPC on :8001), with a second modelgate on :8081 as its upstream.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/modelgate
"$bin" validate routes.yaml
"$bin" serve --config scripts/demo-upstream.yaml &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
exec_status=0
# gRPC on :8001 for tritonclient.grpc and other gRPC clients (the file leaves it unset, so the
# tests that serve this file choose their own ports).
"$bin" serve --config routes.yaml --grpc-listen 127.0.0.1:8001 || exec_status=$?
exit $exec_status
