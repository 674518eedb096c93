#!/usr/bin/env bash
# `make soak`: SOAK_SECONDS (default 600) of open-loop load at 80% of the measured maximum rate
# on a canary route with sticky users, labels fed back and a shadow, sampling the gateway's
# resident memory and open file descriptors every SOAK_SAMPLE seconds (default 10).
# Flat means: after the first minute, memory grows by less than 10% (+16 MiB) from the
# first to the last quarter of the run (quarter means), open fds by at most 16 (quarter maxima),
# and every answer is a 200; exit 1 otherwise.
# The generator keeps at most 64 requests in flight (a client with a bounded pool; waits count
# in the latency). Loopback only; the samples are written to $SOAK_CSV (default .soak/samples.csv).
set -euo pipefail
script_name=soak
source "$(dirname "$0")/common.sh"
seconds=${SOAK_SECONDS:-600}
every=${SOAK_SAMPLE:-10}
out_dir="$root/.soak"
csv=${SOAK_CSV:-$out_dir/samples.csv}
mkdir -p "$out_dir"
work=$(mktemp -d)
trap 'kill ${gw_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
build_all
cat >"$work/routes.yaml" <<YAML
backends:
  - name: v1
    onnx: {path: "$root/models/breast-cancer-v1.onnx", sessions: 2}
  - name: v2
    onnx: {path: "$root/models/breast-cancer-v2.onnx", sessions: 2}
  - name: v2-shadow
    onnx: {path: "$root/models/breast-cancer-v2.onnx"}
routes:
  - model: risk
    strategy:
      canary: {stable: v1, canary: v2, weight: 20, sticky: {header: x-user-id}}
    shadow: {backend: v2-shadow, percent: 10}
YAML
start_gateway soak "$work/routes.yaml" --state-dir "$work/state"
log "maximum rate: closed loop, 64 connections, 10s, the same workload (label feedback for every answer)"
"$lt" --quiet --url "$gw_url" --model risk -c 64 --duration 10s --users 10000 --feedback label \
  --report "$work/closed.json" >/dev/null
estimate=$(json 'j["requests_per_second"]' <"$work/closed.json")
# The soak's own mode (open loop, at most 64 in flight) costs the generator more per request than
# a closed loop on these shared cores: its maximum is what that mode gets answered when offered
# more than the closed-loop estimate.
over=$(python3 -c "print(round($estimate * 1.25, 1))")
log "maximum rate: open loop at $over req/s (1.25 x the closed-loop $estimate), at most 64 in flight, 10s"
"$lt" --quiet --url "$gw_url" --model risk --rate "$over" --max-in-flight 64 --duration 10s --users 10000 \
  --feedback label --report "$work/max.json" >/dev/null
max=$(json 'j["requests_per_second"]' <"$work/max.json")
rate=$(python3 -c "print(round($max * 0.8, 1))")
log "soak: $rate req/s (80% of $max) for ${seconds}s, with label feedback; sampling every ${every}s"
echo "seconds,rss_kb,fds,threads" >"$csv"
"$lt" --quiet --url "$gw_url" --model risk --rate "$rate" --max-in-flight 64 --duration "${seconds}s" --users 10000 \
  --feedback label --report "$work/soak.json" >/dev/null &
load=$!
start=$(date +%s)
while kill -0 "$load" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  threads=$(awk '/^Threads/ {print $2}' "/proc/$gw_pid/status")
  echo "$now,$(rss_kb "$gw_pid"),$(fds "$gw_pid"),$threads" >>"$csv"
  sleep "$every"
done
wait "$load"
kill -0 "$gw_pid" 2>/dev/null || { log "the gateway died during the soak"; exit 1; }
cp "$work/soak.json" "$out_dir/report.json"
python3 - "$csv" "$work/soak.json" "$rate" <<'PY'
import csv, json, sys
rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(sys.argv[1]))]
report = json.load(open(sys.argv[2]))
rate = float(sys.argv[3])
steady = [r for r in rows if r["seconds"] >= 60] or rows
q = max(1, len(steady) // 4)
first, last = steady[:q], steady[-q:]
mean = lambda xs, k: sum(x[k] for x in xs) / len(xs)
rss0, rss1 = mean(first, "rss_kb"), mean(last, "rss_kb")
fds_all = [r["fds"] for r in steady]
fds0, fds1 = max(r["fds"] for r in first), max(r["fds"] for r in last)
bad = report["requests"] - report["statuses"].get("200", 0) + report["transport_errors"]
print(f"soak: {report['seconds']:.0f} s at {rate:,.0f} req/s offered, {report['requests_per_second']:,.0f} answered/s; "
      f"{report['requests']:,} requests, {bad} not 200, {report['feedback_sent']:,} feedback posts; "
      f"p50 {report['latency_ms']['p50']:.2f} ms, p99 {report['latency_ms']['p99']:.2f} ms")
print(f"RSS: {rows[0]['rss_kb'] / 1024:.1f} MiB at start, {rss0 / 1024:.1f} MiB (first quarter after 60 s) → "
      f"{rss1 / 1024:.1f} MiB (last quarter), max {max(r['rss_kb'] for r in rows) / 1024:.1f} MiB")
print(f"open fds: at most {fds0} (first quarter) → at most {fds1} (last quarter), {min(fds_all)}–{max(fds_all)} after 60 s; threads {min(r['threads'] for r in rows)}–{max(r['threads'] for r in rows)}")
flat = rss1 <= rss0 * 1.10 + 16 * 1024 and fds1 <= fds0 + 16
print("flat: " + ("PASS" if flat and bad == 0 else "FAIL"))
sys.exit(0 if flat and bad == 0 else 1)
PY
