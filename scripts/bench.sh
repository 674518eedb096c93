#!/usr/bin/env bash
# `make bench`: the three benchmark tables, each run side by side on this machine, loopback only.
#   1. proxy overhead: direct to an upstream vs. modelgate vs. nginx vs. HAProxy (1 worker each)
#   2. in-process inference: modelgate OIP infer vs. a raw ONNX Runtime loop vs. MLServer 1.7,
#      then JSON vs. binary tensor data vs. gRPC at 1 and 256 rows, then dynamic batching on/off
#      at 1, 16 and 64 connections
#   3. criterion micro-benchmarks: variant assignment and table swaps
# and perf profiles (top symbols and an inferno flamegraph) of the proxy and the inference path
# in .bench/proxy.* and .bench/inference.*.
# Installs what it needs when missing: nginx and haproxy (Debian), MLServer (PyPI, in .bench/venv).
# BENCH_SECONDS (default 10) sets each load run's length; BENCH_CONNECTIONS (default 32) its connections.
# BENCH_ONLY=proxy,inference,batching,micro (default: all) runs only the named sections.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${BENCH_SECONDS:-10}
conns=${BENCH_CONNECTIONS:-32}
work=.bench
mkdir -p "$work"
export MODELGATE_FEEDBACK_KEY=${MODELGATE_FEEDBACK_KEY:-bench}  # serve refuses to start without one
log() { printf '%s\n' "$*" >&2; }
want() { [ -z "${BENCH_ONLY:-}" ] || [[ ",$BENCH_ONLY," == *",$1,"* ]]; }

need_apt() {
  local missing=()
  for p in "$@"; do command -v "$p" >/dev/null || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || { log "bench: install ${missing[*]} (apt-get install ${missing[*]})"; exit 1; }
  log "bench: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}
need_apt nginx haproxy
if [ ! -x "$work/venv/bin/mlserver" ]; then
  log "bench: installing MLServer into $work/venv"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q -r bench/mlserver/requirements.txt
fi
command -v perf >/dev/null || need_apt linux-perf || true
if [ ! -x "$work/tools/bin/inferno-flamegraph" ]; then
  log "bench: installing inferno (flamegraphs) into $work/tools"
  cargo install --quiet --locked inferno --version 0.12.3 --root "$work/tools" || log "bench: no inferno: profiles without flamegraphs"
fi
./scripts/fetch-ort.sh
cargo build --locked --release --quiet --workspace --bin modelgate --bin loadtest
mg=target/release/modelgate
lt=target/release/loadtest

# profile NAME PID LOAD-ARGS...: a perf profile of PID under 6 s of the same load, saved as
# .bench/NAME.perf.txt (top symbols) and .bench/NAME.svg (flamegraph, inferno).
profile() {
  local name=$1 pid=$2; shift 2
  command -v perf >/dev/null && [ -x "$work/tools/bin/inferno-flamegraph" ] || { log "bench: no perf or inferno: no $name profile"; return 0; }
  "$lt" --quiet --duration 8s -c "$conns" "$@" >/dev/null &
  local load=$!
  sleep 1
  perf record -q -F 999 -g -p "$pid" -o "$work/$name.perf.data" -- sleep 6 >/dev/null 2>&1 || true
  wait "$load" || true
  perf report -i "$work/$name.perf.data" --no-children --stdio --percent-limit 0.5 -g none >"$work/$name.perf.txt" 2>/dev/null || true
  perf script -i "$work/$name.perf.data" 2>/dev/null | "$work/tools/bin/inferno-collapse-perf" 2>/dev/null \
    | "$work/tools/bin/inferno-flamegraph" >"$work/$name.svg" 2>/dev/null || true
  rm -f "$work/$name.perf.data"
  log "bench: profile of $name in $work/$name.perf.txt and $work/$name.svg"
}

source scripts/bench-lib.sh
# CPU clock ticks "user system" of a process and its children, from /proc.
cpu() { local u=0 s=0; for p in $(pgrep -g "$(ps -o pgid= "$1" | tr -d ' ')" 2>/dev/null || echo "$1"); do
          [ -r /proc/$p/stat ] && read -r pu ps < <(awk '{print $14, $15}' /proc/$p/stat) && u=$((u + pu)) && s=$((s + ps)); done
        echo "$u $s"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
# start CMD...: runs CMD in its own process group, logs to .bench/, prints its pid.
start() { setsid "$@" >"$work/$(basename "$1").log" 2>&1 & echo $!; }
# load NAME PID ARGS...: a closed-loop run; prints one table row (CPU of PID per 1000 requests).
row() {
  local name=$1 pid=$2; shift 2
  local before; before=$(cpu "$pid")
  "$lt" --quiet --duration "${secs}s" -c "$conns" "$@" --report "$work/report.json" >/dev/null
  local after; after=$(cpu "$pid")
  python3 - "$name" "$before" "$after" "$work/report.json" "${CPU_SPLIT:-}" <<'PY'
import json, sys, os
name, before, after, path, split = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4], sys.argv[5]
r = json.load(open(path))
hz = os.sysconf("SC_CLK_TCK")
user, system = ((int(a) - int(b)) / hz for a, b in zip(after, before))
n = max(r["requests"], 1)
bad = r["requests"] - r["statuses"].get("200", 0) + r["transport_errors"]
per_k = f"{1000 * (user + system) / n:.3f}"
if split:
    per_k += f" ({1000 * user / n:.4f} + {1000 * system / n:.4f})"
print(f"| {name} | {r['requests_per_second']:,.0f} | {r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {per_k} | {bad} |")
PY
}

# ---- 1. proxy overhead --------------------------------------------------------------------
if want proxy; then
up=$(free_port); mgp=$(free_port); mga=$(free_port); ngp=$(free_port); hap=$(free_port)
static_upstream_conf "$PWD/$work/upstream.conf" "$up"
cat >"$work/nginx.conf" <<CONF
worker_processes 1; daemon off; pid $PWD/$work/nginx.pid; error_log /dev/null;
events { worker_connections 8192; }
http { access_log off;
  upstream u { server 127.0.0.1:$up; keepalive 256; }
  server { listen 127.0.0.1:$ngp; location /bench/ { proxy_pass http://u/; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:$hap
  default_backend b
backend b
  http-reuse always
  http-request set-path %[path,regsub(^/bench/,/)]
  server s1 127.0.0.1:$up
CONF
proxy_routes "$work/proxy.yaml" "$mgp" "$mga" "$up" state
upid=$(start nginx -c "$PWD/$work/upstream.conf"); pids+=("$upid"); wait_port "$up"
mgpid=$(start "$mg" --workers 1 serve --config "$work/proxy.yaml"); pids+=("$mgpid"); wait_port "$mgp"
ngpid=$(start nginx -c "$PWD/$work/nginx.conf"); pids+=("$ngpid"); wait_port "$ngp"
hapid=$(start haproxy -f "$work/haproxy.cfg"); pids+=("$hapid"); wait_port "$hap"
echo
echo "### Proxy overhead (one worker thread each, same upstream, $conns connections, ${secs}s each)"
echo
echo "| target | requests/s | p50 ms | p99 ms | proxy CPU s / 1000 req (user + kernel) | errors |"
echo "|---|---:|---:|---:|---:|---:|"
CPU_SPLIT=1 row "direct to the upstream (nginx static)" "$upid" --url "http://127.0.0.1:$up" --path /x
CPU_SPLIT=1 row "modelgate (path_prefix route)" "$mgpid" --url "http://127.0.0.1:$mgp" --path /bench/x
CPU_SPLIT=1 row "nginx 1.22 (proxy_pass, keepalive)" "$ngpid" --url "http://127.0.0.1:$ngp" --path /bench/x
CPU_SPLIT=1 row "HAProxy 2.6 (http-reuse always)" "$hapid" --url "http://127.0.0.1:$hap" --path /bench/x
profile proxy "$mgpid" --url "http://127.0.0.1:$mgp" --path /bench/x
cleanup; pids=()
fi

# ---- 2. in-process inference --------------------------------------------------------------
if want inference; then
mip=$(free_port); mia=$(free_port); msp=$(free_port); mig=$(free_port)
cat >"$work/infer.yaml" <<CONF
server: {listen: "127.0.0.1:$mip", admin_listen: "127.0.0.1:$mia", grpc_listen: "127.0.0.1:$mig", state_dir: state}
backends:
  - name: bc-v2
    onnx: {path: "$PWD/models/breast-cancer-v2.onnx", sessions: 2, intra_op_threads: 1}
routes:
  - model: breast-cancer-v2
    backend: bc-v2
CONF
mkdir -p "$work/mlserver/breast-cancer-v2"
cp bench/mlserver/onnx_runtime.py "$work/mlserver/"
cat >"$work/mlserver/settings.json" <<CONF
{"http_port": $msp, "grpc_port": $(free_port), "metrics_port": $(free_port), "parallel_workers": 0, "debug": false}
CONF
cat >"$work/mlserver/breast-cancer-v2/model-settings.json" <<CONF
{"name": "breast-cancer-v2", "implementation": "onnx_runtime.OnnxRuntime", "parameters": {"uri": "$PWD/models/breast-cancer-v2.onnx"}}
CONF
echo
echo "### In-process inference (breast-cancer-v2, 100-tree gradient boosting, one row per request, $conns connections, ${secs}s each)"
echo
echo "| target | requests/s | p50 ms | p99 ms | server CPU s / 1000 req | errors |"
echo "|---|---:|---:|---:|---:|---:|"
mipid=$(start "$mg" serve --config "$work/infer.yaml"); pids+=("$mipid"); wait_port "$mip"
row "modelgate OIP infer (2 sessions)" "$mipid" --url "http://127.0.0.1:$mip" --model breast-cancer-v2
profile inference "$mipid" --url "http://127.0.0.1:$mip" --model breast-cancer-v2
# The HTTP ceiling for this exchange (the static nginx row of the proxy table answers a GET with
# "ok"): nginx answering the same POSTs with a copy of modelgate's answer and its headers.
python3 -c 'import json; print(json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1.5] * 30}]}))' >"$work/one-row.json"
answer=$(curl -sf -D "$work/answer.head" -H 'content-type: application/json' --data @"$work/one-row.json" \
  "http://127.0.0.1:$mip/v2/models/breast-cancer-v2/infer")
shp=$(free_port)
headers=$(grep -i '^x-' "$work/answer.head" | tr -d '\r' | sed -E 's/^([^:]+): (.*)$/add_header \1 "\2";/' | tr '\n' ' ')
static_upstream_conf "$PWD/$work/shape.conf" "$shp" "default_type application/json; $headers return 200 '$answer';"
shpid=$(start nginx -c "$PWD/$work/shape.conf"); pids+=("$shpid"); wait_port "$shp"
row "nginx, static copy of that answer to the same POSTs (the HTTP ceiling for this exchange)" "$shpid" \
  --url "http://127.0.0.1:$shp" --model breast-cancer-v2
forms=$(
  echo
  echo "### Tensor forms over HTTP and gRPC (the same modelgate and model, $conns connections, ${secs}s each)"
  echo
  echo "| request | requests/s | p50 ms | p99 ms | server CPU s / 1000 req | errors |"
  echo "|---|---:|---:|---:|---:|---:|"
  for rows in 1 256; do
    row "JSON, $rows row(s)" "$mipid" --url "http://127.0.0.1:$mip" --model breast-cancer-v2 --rows "$rows"
    row "binary tensor data, $rows row(s)" "$mipid" --url "http://127.0.0.1:$mip" --model breast-cancer-v2 --rows "$rows" --binary
    row "gRPC ModelInfer (raw contents), $rows row(s)" "$mipid" --url "http://127.0.0.1:$mig" --model breast-cancer-v2 --rows "$rows" --grpc
  done
)
cleanup; pids=()
raw=$("$mg" bench-onnx models/breast-cancer-v2.onnx --threads 2 --seconds "$secs")
python3 - "$raw" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"| raw ONNX Runtime loop, same binary (2 threads, no HTTP/JSON: the limit) | {r['runs_per_second']:,.0f} | {r['mean_us_per_run']/1000:.3f} (mean) | - | - | 0 |")
PY
mspid=$(start env -C "$work/mlserver" "$PWD/$work/venv/bin/mlserver" start .); pids+=("$mspid"); wait_port "$msp"
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$msp/v2/models/breast-cancer-v2/ready" >/dev/null && break; sleep 0.2; done
row "MLServer 1.7.1 + onnxruntime custom runtime (in-process, parallel_workers 0)" "$mspid" --url "http://127.0.0.1:$msp" --model breast-cancer-v2
cleanup; pids=()

echo "$forms"
fi

# ---- 2b. dynamic batching ---------------------------------------------------------------------
if want batching; then
mbp=$(free_port); mba=$(free_port)
cat >"$work/batching.yaml" <<CONF
server: {listen: "127.0.0.1:$mbp", admin_listen: "127.0.0.1:$mba", state_dir: state}
backends:
  - name: single
    onnx: {path: "$PWD/models/mlp-batching.onnx", sessions: 2}
  - name: batched
    onnx: {path: "$PWD/models/mlp-batching.onnx", sessions: 2, batching: {max_batch_size: 64, max_queue_delay: 2ms}}
routes:
  - {model: single, backend: single}
  - {model: batched, backend: batched}
CONF
echo
echo "### Dynamic batching (models/mlp-batching.onnx, 2.6M weights, one row per request, 2 sessions, ${secs}s each)"
echo
echo "| connections | batching | requests/s | p50 ms | p99 ms | server CPU s / 1000 req | errors |"
echo "|---:|---|---:|---:|---:|---:|---:|"
mbpid=$(start "$mg" serve --config "$work/batching.yaml"); pids+=("$mbpid"); wait_port "$mbp"
for c in 1 16 64; do
  for m in single batched; do
    label=$([ "$m" = batched ] && echo "on (max 64 rows, 2 ms)" || echo "off")
    conns=$c row "$c | $label" "$mbpid" --url "http://127.0.0.1:$mbp" --model "$m" --samples models/mlp-batching-samples.json
  done
done
cleanup; pids=()
fi

# ---- 3. criterion ---------------------------------------------------------------------------
if want micro; then
echo
echo "### Micro-benchmarks (criterion: \`cargo bench --bench routing\`, \`--bench upstream\`, \`--bench oip\`)"
echo
echo "| benchmark | time per operation |"
echo "|---|---:|"
for b in routing upstream oip; do cargo bench --locked --quiet --bench $b -- --warm-up-time 1 --measurement-time 3 2>/dev/null; done | python3 -c '
import re, sys
name = None
for line in sys.stdin:
    m = re.match(r"^([a-z_0-9]+/[a-z_0-9]+)", line)
    if m:
        name = m.group(1)
    t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) ", line)
    if t and name:
        print(f"| {name} | {t.group(1)} {t.group(2)} |")
'


fi