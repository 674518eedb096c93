# Helpers shared by the fault, soak and overload scripts. Source it; loopback only.
# start_gateway NAME CONFIG [ARGS...] runs `modelgate serve` on 127.0.0.1:0 (pid in $gw_pid,
# inference URL in $gw_url, admin URL in $gw_admin), prefixed by $gw_launcher when set (a
# command that execs the rest, like `taskset -c 0`); stop_gateway kills it with SIGTERM.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mg="${MODELGATE_BIN:-$root/target/release/modelgate}"  # MODELGATE_BIN: another build to run
lt="$root/target/release/loadtest"
export MODELGATE_ADMIN_TOKEN=${MODELGATE_ADMIN_TOKEN:-fault-test-token}
export MODELGATE_FEEDBACK_KEY=${MODELGATE_FEEDBACK_KEY:-script-feedback-key}  # serve needs one
log() { printf '%s: %s\n' "${script_name:-script}" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
build_all() {
  "$root/scripts/fetch-ort.sh" >/dev/null
  "$root/scripts/fetch-tools.sh" >/dev/null
  (cd "$root" && cargo build --locked --release --quiet --workspace --bin modelgate --bin loadtest)
}
start_gateway() {
  local name=$1 config=$2; shift 2
  local out="$work/$name.out"
  : >"$out"
  ${gw_launcher:-} "$mg" serve --config "$config" --listen "${listen:-127.0.0.1:0}" --admin-listen 127.0.0.1:0 "$@" \
    >"$out" 2>"$work/$name.err" &
  gw_pid=$!
  for _ in $(seq 1 400); do
    grep -q listening "$out" 2>/dev/null && break
    kill -0 "$gw_pid" 2>/dev/null || { log "$name did not start:"; tail -5 "$work/$name.err" >&2; return 1; }
    sleep 0.05
  done
  gw_url=$(sed -n 's/.*listening on \(http:\/\/[0-9.:]*\).*/\1/p' "$out")
  gw_admin=$(sed -n 's/.*(admin \(http:\/\/[0-9.:]*\)).*/\1/p' "$out")
  [ -n "$gw_url" ] || { log "$name printed no address"; return 1; }
}
stop_gateway() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# admin METHOD PATH [JSON]: an admin call with the token; prints the JSON answer.
admin() {
  curl -s -X "$1" -H "authorization: Bearer $MODELGATE_ADMIN_TOKEN" -H 'content-type: application/json' \
    ${3:+--data "$3"} "$gw_admin$2"
}
# json EXPR: evaluates a Python expression over the JSON on stdin (bound to `j`).
json() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
# pin CPU: the prefix that runs a command on that CPU (nothing where taskset or a 2nd CPU is missing).
pin() { if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then echo "taskset -c $1"; fi; }
# rss_kb PID / fds PID: resident memory and open file descriptors of a process.
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
