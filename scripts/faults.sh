#!/usr/bin/env bash
# `make faults`: modelgate under faults, each bounded in time, loopback only (about 2 minutes).
#   1. upstream killed (SIGKILL) and restarted mid-load: the gateway stays up, answers 502/503
#      while it is down, and serves again once it is back;
#   2. a model file corrupted on disk, then a reload that needs it: refused whole, the running
#      table keeps serving, the error shows in GET /admin/routes;
#   3. the state folder's disk full (a 64 KiB tmpfs, needs root): serving goes on, the save
#      error shows in GET /admin/status, and saving resumes once there is room;
#   4. SIGKILL while status is being written (FAULT_KILLS times, default 30): status.json is
#      never torn and every restart resumes from it.
# Prints one line per check and exits 1 if any failed.
set -euo pipefail
script_name=faults
source "$(dirname "$0")/common.sh"
work=$(mktemp -d)
failures=0
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  mountpoint -q "$work/full" 2>/dev/null && umount "$work/full"
  rm -rf "$work"
}
trap cleanup EXIT
check() { # check NAME CONDITION-EXIT-CODE DETAIL
  if [ "$2" = 0 ]; then printf 'PASS  %s: %s\n' "$1" "$3"; else printf 'FAIL  %s: %s\n' "$1" "$3"; failures=$((failures + 1)); fi
}
build_all
cp "$root/models/breast-cancer-v2.onnx" "$work/model.onnx"
python3 - "$root/models/breast-cancer-holdout.json" >"$work/one-row.json" <<'PY'
import json, sys
features = json.load(open(sys.argv[1]))["samples"][0]["features"]
print(json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30], "data": features}]}))
PY

# --- 1. upstream killed and restarted mid-load -------------------------------------------
up_port=$(free_port)
cat >"$work/upstream.yaml" <<YAML
backends:
  - name: v2
    onnx: {path: "$work/model.onnx"}
routes:
  - model: breast-cancer
    backend: v2
YAML
cat >"$work/gw1.yaml" <<YAML
backends:
  - name: remote
    upstream: {url: "http://127.0.0.1:$up_port", connect_timeout: 200ms, outlier: {consecutive_failures: 3, ejection_time: 500ms}}
routes:
  - model: risk
    backend: remote
    upstream_model: breast-cancer
YAML
listen=127.0.0.1:$up_port start_gateway upstream "$work/upstream.yaml" --state-dir "$work/up-state"
up_pid=$gw_pid; pids+=("$up_pid")
start_gateway gw1 "$work/gw1.yaml" --state-dir "$work/gw1-state"
gw1=$gw_pid; pids+=("$gw1"); gw1_url=$gw_url
log "1. load for 12s; upstream killed at 3s, restarted at 6s"
"$lt" --quiet --url "$gw_url" --model risk -c 8 --duration 12s --report "$work/kill.json" >/dev/null &
load=$!
sleep 3
kill -9 "$up_pid"; wait "$up_pid" 2>/dev/null || true
sleep 3
listen=127.0.0.1:$up_port start_gateway upstream "$work/upstream.yaml" --state-dir "$work/up-state"
up_pid=$gw_pid; pids+=("$up_pid")
restarted=$(date +%s.%N)
until curl -sf -o /dev/null -X POST --data @"$work/one-row.json" "$gw1_url/v2/models/risk/infer"; do
  sleep 0.02
  [ "$(python3 -c "print(int($(date +%s.%N) - $restarted > 10))")" = 0 ] || break
done
recovered_ms=$(python3 -c "print(round(($(date +%s.%N) - $restarted) * 1000))")
wait "$load"
read -r ok bad errs < <(json '"%d %d %d" % (j["statuses"].get("200",0), j["requests"]-j["statuses"].get("200",0), j["transport_errors"])' <"$work/kill.json")
"$lt" --quiet --url "$gw1_url" --model risk -c 8 --duration 3s --report "$work/after.json" >/dev/null
read -r after_ok after_bad < <(json '"%d %d" % (j["statuses"].get("200",0), j["requests"]-j["statuses"].get("200",0)+j["transport_errors"])' <"$work/after.json")
kill -0 "$gw1" 2>/dev/null; alive=$?
check "upstream kill" $((alive || (bad == 0) || errs > 0)) \
  "gateway alive; $ok × 200 and $bad × 502/503 over 12s with a 3s outage, 0 transport errors ($errs)"
check "upstream restart" $((after_bad > 0 || recovered_ms > 2000)) \
  "first 200 ${recovered_ms} ms after the upstream was back; then $after_ok × 200, $after_bad failed in 3s"
stop_gateway "$gw1"; stop_gateway "$up_pid"

# --- 2. model corrupted on disk, then a reload that needs it ------------------------------
cat >"$work/gw2.yaml" <<YAML
backends:
  - name: local
    onnx: {path: "$work/model.onnx", sessions: 1}
routes:
  - model: risk
    backend: local
YAML
start_gateway gw2 "$work/gw2.yaml" --state-dir "$work/gw2-state"
gw2=$gw_pid; pids+=("$gw2")
gen_before=$(admin GET /admin/routes | json 'j["generation"]')
log "2. load for 6s; model file corrupted and routes.yaml changed to reload it at 2s"
"$lt" --quiet --url "$gw_url" --model risk -c 8 --duration 6s --report "$work/corrupt.json" >/dev/null &
load=$!
sleep 2
head -c 4096 /dev/urandom >"$work/model.onnx"
sed -i 's/sessions: 1/sessions: 2/' "$work/gw2.yaml"
sleep 1.5
routes=$(admin GET /admin/routes)
gen_after=$(json 'j["generation"]' <<<"$routes")
reload_error=$(json '" | ".join(e if isinstance(e, str) else json.dumps(e) for e in (j.get("reload") or {}).get("errors", []))' <<<"$routes")
wait "$load"
read -r ok bad < <(json '"%d %d" % (j["statuses"].get("200",0), j["requests"]-j["statuses"].get("200",0)+j["transport_errors"])' <"$work/corrupt.json")
check "corrupted model" $(( (gen_before != gen_after) || bad > 0 )) \
  "table generation $gen_before → $gen_after (unchanged); $ok × 200, $bad failed during the reload"
case "$reload_error" in *model.onnx*) e=0 ;; *) e=1 ;; esac
check "corrupted model error" "$e" "GET /admin/routes reload.errors: ${reload_error:0:160}"
stop_gateway "$gw2"
cp "$root/models/breast-cancer-v2.onnx" "$work/model.onnx"

# --- 3. disk full for the state folder ----------------------------------------------------
cat >"$work/gw3.yaml" <<YAML
backends:
  - name: a
    onnx: {path: "$work/model.onnx"}
  - name: b
    onnx: {path: "$root/models/breast-cancer-v1.onnx"}
routes:
  - model: risk
    strategy:
      canary: {stable: a, canary: b, weight: 10}
YAML
mkdir -p "$work/full"
if mount -t tmpfs -o size=64k tmpfs "$work/full" 2>/dev/null; then
  start_gateway gw3 "$work/gw3.yaml" --state-dir "$work/full/state"
  gw3=$gw_pid; pids+=("$gw3")
  log "3. state folder on a 64 KiB tmpfs; filled up, then weight changes under load"
  dd if=/dev/zero of="$work/full/filler" bs=4k 2>/dev/null || true
  "$lt" --quiet --url "$gw_url" --model risk -c 4 --duration 4s --report "$work/full.json" >/dev/null &
  load=$!
  before=$(cat "$work/full/state/status.json")
  admin POST /admin/routes/risk/weight '{"weight": 20}' >/dev/null
  persist_error=$(admin GET /admin/status | json 'j["persist_error"] or ""')
  weight=$(admin GET /admin/routes | json '[v["weight"] for v in j["routes"][0]["variants"]][1]')
  still=$(cat "$work/full/state/status.json")
  wait "$load"
  read -r ok bad < <(json '"%d %d" % (j["statuses"].get("200",0), j["requests"]-j["statuses"].get("200",0)+j["transport_errors"])' <"$work/full.json")
  [ "$before" = "$still" ] && python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$work/full/state/status.json"
  intact=$?
  case "$persist_error" in *"No space left"*) e=0 ;; *) e=1 ;; esac
  check "disk full: error visible" "$e" "GET /admin/status persist_error: $persist_error"
  check "disk full: serving" $(( bad > 0 || intact != 0 )) \
    "weight applied in memory ($weight); $ok × 200, $bad failed; status.json untouched and whole"
  rm -f "$work/full/filler"
  admin POST /admin/routes/risk/weight '{"weight": 30}' >/dev/null
  persist_error=$(admin GET /admin/status | json 'j["persist_error"] or ""')
  saved=$(json 'j["risk"]["status"]["canary_weight"]' <"$work/full/state/status.json" 2>/dev/null || echo "?")
  check "disk full: recovered" $([ -z "$persist_error" ] && [ "$saved" = 30.0 ] && echo 0 || echo 1) \
    "room again: persist_error cleared, status.json holds canary weight $saved (sent 30)"
  stop_gateway "$gw3"
  umount "$work/full"
else
  printf 'SKIP  disk full: mounting a tmpfs needs root (run as root to include this check)\n'
fi

# --- 4. SIGKILL while status is being written ---------------------------------------------
kills=${FAULT_KILLS:-30}
log "4. $kills × SIGKILL while weight changes are being saved"
torn=0; restarts=0; resumed=0
for i in $(seq 1 "$kills"); do
  start_gateway gw4 "$work/gw3.yaml" --state-dir "$work/kill-state" || { torn=$((torn + 1)); continue; }
  gw4=$gw_pid; pids+=("$gw4")
  restarts=$((restarts + 1))
  if [ -f "$work/want" ]; then
    current=$(admin GET /admin/routes | json 'int([v["weight"] for v in j["routes"][0]["variants"]][1])')
    want=$(cat "$work/want")
    # The last weight acknowledged before the kill, or the next one (sent, saved, not yet answered).
    if [ "$current" = "$want" ] || [ "$current" = $(( want % 90 + 1 )) ]; then resumed=$((resumed + 1)); fi
  else
    resumed=$((resumed + 1))
  fi
  start_w=$(( ${current:-0} % 90 + 1 ))
  ( w=$start_w; while true; do
      if admin POST /admin/routes/risk/weight "{\"weight\": $w}" 2>/dev/null | grep -q generation; then
        echo "$w" >"$work/want.tmp" && mv "$work/want.tmp" "$work/want"; echo >>"$work/acks"
      fi
      w=$(( w % 90 + 1 ))
    done ) &
  writer=$!
  sleep "0.$(( RANDOM % 4 + 1 ))$(( RANDOM % 10 ))"
  kill -9 "$gw4"; wait "$gw4" 2>/dev/null || true
  kill "$writer" 2>/dev/null; wait "$writer" 2>/dev/null || true
  python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$work/kill-state/status.json" 2>/dev/null || torn=$((torn + 1))
done
check "SIGKILL during state writes" $(( torn > 0 || resumed != restarts )) \
  "$kills kills amid $(wc -l <"$work/acks") acknowledged saves: $torn torn status files; $restarts restarts, $resumed resumed at the last acknowledged weight (or the one in flight)"

if [ "$failures" -gt 0 ]; then log "$failures check(s) failed"; exit 1; fi
log "every check passed"
