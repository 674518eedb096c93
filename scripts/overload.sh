#!/usr/bin/env bash
# `make overload`: does modelgate shed instead of collapsing under twice its capacity?
#   1. capacity: closed loop on a route without a concurrency limit → R req/s;
#   2. unloaded: open loop at R/4 on the limited route → p99 of its answers;
#   3. overload: open loop at 2R on the limited route → 503s, the p99 of accepted answers, which
#      must stay within 3× the unloaded p99, and the accepted rate, which must stay at 90% of R
#      (exit 1 otherwise);
#   4. for contrast: 2R on the route without a limit.
# The gateway runs pinned to CPU 0 (one tokio worker, one ORT session), the load generator to
# CPU 1, so the generator does not steal the gateway's CPU. Loopback only, about a minute.
# OVERLOAD_ROWS (default 32) rows per request; OVERLOAD_LIMIT (default 16, the concurrency at which
# capacity is measured: a lower limit caps the route below capacity whatever shedding costs)
# max_concurrency. Verdicts: accepted p99 within 3x unloaded, accepted throughput >= 90% of R.
set -euo pipefail
script_name=overload
source "$(dirname "$0")/common.sh"
rows=${OVERLOAD_ROWS:-32}
limit=${OVERLOAD_LIMIT:-16}
work=$(mktemp -d)
trap 'kill ${gw_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
build_all
cat >"$work/routes.yaml" <<YAML
backends:
  - name: gbm
    onnx: {path: "$root/models/breast-cancer-v2.onnx", sessions: 1, queue: 1024}
routes:
  - model: limited
    backend: gbm
    max_concurrency: $limit
  - model: unlimited
    backend: gbm
YAML
MODELGATE_WORKERS=1 gw_launcher=$(pin 0) start_gateway gw "$work/routes.yaml" --state-dir "$work/state"
load() { $(pin 1) "$lt" --quiet --url "$gw_url" --rows "$rows" "$@"; }
log "capacity: closed loop, 16 connections, 10s, $rows rows per request"
load --model unlimited -c 16 --duration 10s --report "$work/capacity.json" >/dev/null
cap=$(json 'j["requests_per_second"]' <"$work/capacity.json")
quarter=$(python3 -c "print(round($cap / 4, 1))"); double=$(python3 -c "print(round($cap * 2, 1))")
log "unloaded: $quarter req/s for 10s"
load --model limited --rate "$quarter" --duration 10s --report "$work/unloaded.json" >/dev/null
log "overload: $double req/s for 20s (max_concurrency $limit)"
load --model limited --rate "$double" --duration 20s --report "$work/overload.json" >/dev/null
log "contrast: $double req/s for 10s without a limit"
load --model unlimited --rate "$double" --duration 10s --report "$work/unlimited.json" >/dev/null
python3 - "$work" "$limit" "$rows" <<'PY'
import json, sys
work, limit, rows = sys.argv[1], sys.argv[2], sys.argv[3]
r = {n: json.load(open(f"{work}/{n}.json")) for n in ["capacity", "unloaded", "overload", "unlimited"]}
cap = r["capacity"]["requests_per_second"]
base = r["unloaded"]["accepted_latency_ms"]["p99"]
def line(name, x):
    st = x["statuses"]; acc = x["accepted"]; secs = x["seconds"]
    print(f"| {name} | {x.get('rate_target') or '-'} | {x['requests']} | {acc / secs:,.0f} | "
          f"{st.get('503', 0)} | {x['transport_errors']} | {x['accepted_latency_ms']['p50']:.2f} | "
          f"{x['accepted_latency_ms']['p99']:.2f} |")
print(f"capacity {cap:,.0f} req/s ({rows} rows per request, 1 ORT session, gateway on 1 CPU); max_concurrency {limit}")
print("| run | offered req/s | answered | accepted req/s | 503 | transport errors | accepted p50 ms | accepted p99 ms |")
print("|---|---|---|---|---|---|---|---|")
line("capacity (closed loop, no limit)", r["capacity"])
line("unloaded (R/4, limited)", r["unloaded"])
line("overload (2R, limited)", r["overload"])
line("overload (2R, no limit)", r["unlimited"])
p99 = r["overload"]["accepted_latency_ms"]["p99"]
shed = r["overload"]["statuses"].get("503", 0)
ok = shed > 0 and p99 <= 3 * base and r["overload"]["transport_errors"] == 0
print(f"accepted p99 under 2R: {p99:.2f} ms = {p99 / base:.2f}x the unloaded p99 ({base:.2f} ms); limit 3x: {'PASS' if ok else 'FAIL'}")
o = r["overload"]
share = o["accepted"] / o["seconds"] / cap
kept = share >= 0.9
print(f"accepted under 2R: {share:.1%} of capacity; target 90%: {'PASS' if kept else 'FAIL'}")
sys.exit(0 if ok and kept else 1)
PY
