#!/usr/bin/env bash
# Checks /metrics with Prometheus's own linter: serves the demo routes.yaml on free loopback
# ports, drives every kind of traffic (inference on each strategy, feedback, a shadow, a reload),
# and runs `promtool check metrics` on what the admin listener exports.
# promtool comes from Debian's `prometheus` package; it is installed when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "check-metrics: installing promtool (Debian package prometheus)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  else
    echo "check-metrics: promtool not found; install it with: sudo apt-get install prometheus" >&2
    exit 1
  fi
fi

./scripts/fetch-ort.sh
cargo build --locked --release --quiet --bin modelgate
bin=target/release/modelgate
out=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$out"' EXIT
MODELGATE_FEEDBACK_KEY=check-metrics "$bin" serve --config routes.yaml --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  >"$out/stdout" 2>"$out/stderr" &
pid=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$out/stdout" 2>/dev/null && break
  sleep 0.1
done
line=$(head -n 1 "$out/stdout")
addr=$(echo "$line" | sed -E 's|.*listening on http://([^ ]+) .*|\1|')
admin=$(echo "$line" | sed -E 's|.*\(admin http://([^)]+)\).*|\1|')
[ -n "$addr" ] && [ -n "$admin" ] || { echo "check-metrics: gateway did not start: $(cat "$out/stderr")" >&2; exit 1; }

sample='{"inputs":[{"name":"input","datatype":"FP32","shape":[1,30],"data":[13.73,22.61,93.6,578.3,0.1131,0.2293,0.2128,0.08025,0.2069,0.07682,0.2121,1.169,2.061,19.21,0.006429,0.05936,0.05501,0.01628,0.01961,0.008093,15.03,32.01,108.8,697.7,0.1651,0.7725,0.6943,0.2208,0.3596,0.1431]}]}'
for route in breast-cancer breast-cancer-bg breast-cancer-ab; do
  for i in $(seq 1 20); do
    id=$(curl -s -D - -o /dev/null "http://$addr/v2/models/$route/infer" -H "x-user-id: u$i" -d "$sample" \
      | tr -d '\r' | awk -F': ' 'tolower($1) == "x-modelgate-request-id" { print $2 }')
    curl -s -o /dev/null "http://$addr/v2/feedback" -d "{\"request_id\":\"$id\",\"label\":0,\"conversion\":true,\"reward\":0.5}"
  done
done
curl -s -o /dev/null "http://$addr/v2/models/breast-cancer/infer" -d '{"inputs": ['   # a 400
curl -s -o /dev/null -X POST "http://$admin/admin/reload"
curl -s "http://$admin/metrics" >"$out/metrics"
promtool check metrics <"$out/metrics"
echo "check-metrics: promtool accepts /metrics ($(grep -c '^modelgate_' "$out/metrics") samples, $(grep -c '^# TYPE' "$out/metrics") metrics)"
