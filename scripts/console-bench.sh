#!/usr/bin/env bash
# The console's cost: the same gateway and load with the console on (the default) and off
# (`server.console: false`: no sampler, no /ui/), in interleaved rounds (on off on off ...)
# because other work may share the machine. Prints each round's requests/s and p99 and the
# gateway's RSS after warm-up and after the load. Loopback only; bounded by ROUNDS x SECONDS.
#   scripts/console-bench.sh            (ROUNDS=3 SECONDS_PER_ROUND=15 CONNECTIONS=16)
set -euo pipefail
script_name=console-bench
source "$(dirname "$0")/common.sh"
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_ROUND:-15}
connections=${CONNECTIONS:-16}
cd "$root"
[ -x "$mg" ] && [ -x "$lt" ] || build_all
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# A canary held at 50% (two variants charted and judged) and a plain route, both in-process.
cat >"$work/on.yaml" <<YAML
backends:
  - name: bc-v1
    onnx: {path: $root/models/breast-cancer-v1.onnx, sessions: 2, intra_op_threads: 1}
  - name: bc-v2
    onnx: {path: $root/models/breast-cancer-v2.onnx, sessions: 2, intra_op_threads: 1}
routes:
  - model: risk
    strategy:
      canary:
        stable: bc-v1
        canary: bc-v2
        steps: [{weight: 50, pause: until_promoted}]
        analysis: {interval: 10s, min_samples: 100000000}
  - model: plain
    backend: bc-v1
YAML
{ printf 'server:\n  console: false\n'; cat "$work/on.yaml"; } >"$work/off.yaml"
printf '%-6s %-4s %10s %8s %12s %12s\n' round mode 'req/s' 'p99 ms' 'RSS warm KB' 'RSS end KB'
for round in $(seq "$rounds"); do
  for mode in on off; do
    start_gateway "$mode-$round" "$work/$mode.yaml" --state-dir "$work/state-$mode-$round"
    # Warm-up: both routes' variants exist and the sampler has its tracks.
    "$lt" --url "$gw_url" --model risk -c "$connections" --duration 3s >/dev/null
    "$lt" --url "$gw_url" --model plain -c 2 --duration 1s >/dev/null
    sleep 2
    warm=$(rss_kb "$gw_pid")
    "$lt" --url "$gw_url" --model risk -c "$connections" --duration "${seconds}s" >"$work/report.json"
    end=$(rss_kb "$gw_pid")
    read -r rps p99 < <(json 'str(round(j["requests_per_second"])) + " " + str(j["latency_ms"]["p99"])' <"$work/report.json")
    printf '%-6s %-4s %10s %8s %12s %12s\n' "$round" "$mode" "$rps" "$p99" "$warm" "$end"
    stop_gateway "$gw_pid"
  done
done
