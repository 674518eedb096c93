#!/usr/bin/env bash
# A/B of the upstream client: modelgate (--workers 1) in front of an nginx static upstream, the
# legacy hyper-util client (MODELGATE_UPSTREAM_CLIENT=legacy) and the pool driven on the
# request's task, in interleaved rounds (the machine may be loaded: compare within a round).
# Prints one row per run: requests/s, p50, p99, and the proxy's CPU seconds per 1,000 requests.
# ROUNDS (default 3), SECS (default 8), CONNS (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}; secs=${SECS:-8}; conns=${CONNS:-32}
work=$(mktemp -d /tmp/bench-pool.XXXXXX)
export MODELGATE_FEEDBACK_KEY=bench
mg=${CARGO_TARGET_DIR:-target}/release/modelgate
lt=${CARGO_TARGET_DIR:-target}/release/loadtest
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 200); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; exit 1; }
cpu() { awk '{print $14 + $15}' /proc/"$1"/stat; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
up=$(free_port)
cat >"$work/upstream.conf" <<CONF
worker_processes 1; daemon off; pid $work/upstream.pid; error_log /dev/null;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$up; location / { return 200 "ok"; } } }
CONF
nginx -c "$work/upstream.conf" >/dev/null 2>&1 & pids+=($!)
wait_port "$up"
run() { # run NAME CLIENT
  local name=$1 client=$2 p a; p=$(free_port); a=$(free_port)
  mkdir -p "$work/state-$p"
  cat >"$work/proxy-$p.yaml" <<CONF
server: {listen: "127.0.0.1:$p", admin_listen: "127.0.0.1:$a", state_dir: "$work/state-$p"}
backends:
  - name: up
    upstream: {url: "http://127.0.0.1:$up"}
routes:
  - path_prefix: /bench/
    backend: up
    rewrite: /
CONF
  MODELGATE_UPSTREAM_CLIENT=$client "$mg" --workers 1 serve --config "$work/proxy-$p.yaml" >"$work/mg-$p.log" 2>&1 &
  local pid=$!; pids+=("$pid"); wait_port "$p"
  "$lt" --quiet --url "http://127.0.0.1:$p" --path /bench/x -c "$conns" --duration 1s >/dev/null  # warm-up
  local before; before=$(cpu "$pid")
  "$lt" --quiet --url "http://127.0.0.1:$p" --path /bench/x -c "$conns" --duration "${secs}s" --report "$work/r.json" >/dev/null
  local after; after=$(cpu "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 - "$name" "$before" "$after" "$work/r.json" <<'PY'
import json, sys, os
name, before, after, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
cpu = (after - before) / os.sysconf("SC_CLK_TCK")
bad = r["requests"] - r["statuses"].get("200", 0) + r["transport_errors"]
print(f"| {name} | {r['requests_per_second']:,.0f} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {1000 * cpu / max(r['requests'], 1):.4f} | {bad} |", flush=True)
PY
}
echo "| client | requests/s | p50 ms | p99 ms | proxy CPU s / 1000 req | errors |"
echo "|---|---:|---:|---:|---:|---:|"
for i in $(seq 1 "$rounds"); do
  if [ $((i % 2)) -eq 1 ]; then run "legacy r$i" legacy; run "pool r$i" pool
  else run "pool r$i" pool; run "legacy r$i" legacy; fi
done
