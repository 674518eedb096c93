#!/usr/bin/env bash
# A/B/C of the upstream client: modelgate (--workers 1) in front of an nginx static upstream, the
# legacy hyper-util client (MODELGATE_UPSTREAM_CLIENT=legacy), the pool driven on the request's
# task over hyper's client::conn (=hyper) and over our own HTTP/1.1 client (=own, the default),
# in interleaved rounds, each round in another order (the machine may be loaded: compare within
# a round).
# Prints one row per run: requests/s, p50, p99, and the proxy's CPU seconds per 1,000 requests
# (with its user and kernel shares).
# ROUNDS (default 3), SECS (default 8), CONNS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}; secs=${SECS:-8}; conns=${CONNS:-32}
work=$(mktemp -d /tmp/bench-pool.XXXXXX)
export MODELGATE_FEEDBACK_KEY=bench
mg=${CARGO_TARGET_DIR:-target}/release/modelgate
lt=${CARGO_TARGET_DIR:-target}/release/loadtest
source scripts/bench-lib.sh
cpu() { awk '{print $14 "," $15}' /proc/"$1"/stat; }  # user,system ticks
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
up=$(free_port)
static_upstream_conf "$work/upstream.conf" "$up"
nginx -c "$work/upstream.conf" >/dev/null 2>&1 & pids+=($!)
wait_port "$up"
run() { # run NAME CLIENT
  local name=$1 client=$2 p a; p=$(free_port); a=$(free_port)
  mkdir -p "$work/state-$p"
  proxy_routes "$work/proxy-$p.yaml" "$p" "$a" "$up" "$work/state-$p"
  MODELGATE_UPSTREAM_CLIENT=$client "$mg" --workers 1 serve --config "$work/proxy-$p.yaml" >"$work/mg-$p.log" 2>&1 &
  local pid=$!; pids+=("$pid"); wait_port "$p"
  "$lt" --quiet --url "http://127.0.0.1:$p" --path /bench/x -c "$conns" --duration 1s >/dev/null  # warm-up
  local before; before=$(cpu "$pid")
  "$lt" --quiet --url "http://127.0.0.1:$p" --path /bench/x -c "$conns" --duration "${secs}s" --report "$work/r.json" >/dev/null
  local after; after=$(cpu "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$name" "$before" "$after" "$work/r.json" <<'PY'
import json, sys, os
name, path = sys.argv[1], sys.argv[4]
(u0, s0), (u1, s1) = [map(int, a.split(",")) for a in sys.argv[2:4]]
r = json.load(open(path))
per = 1000 / os.sysconf("SC_CLK_TCK") / max(r["requests"], 1)
bad = r["requests"] - r["statuses"].get("200", 0) + r["transport_errors"]
print(f"| {name} | {r['requests_per_second']:,.0f} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {(u1 - u0 + s1 - s0) * per:.4f} | {(u1 - u0) * per:.4f} | {(s1 - s0) * per:.4f} | {bad} |", flush=True)
PY
}
echo "| client | requests/s | p50 ms | p99 ms | proxy CPU s / 1000 req | of it user | of it kernel | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
clients=(legacy hyper own)
for i in $(seq 1 "$rounds"); do
  for j in 0 1 2; do c=${clients[$(( (i + j) % 3 ))]}; run "$c r$i" "$c"; done
done
