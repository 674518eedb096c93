#!/usr/bin/env bash
# The operator console during a scenario (default bad-canary-errors): runs the scenario with its
# gateway held up afterwards (SCENARIO_HOLD), loads /ui/ in headless Chromium, checks that the
# page shows the rollback (a decision marker on the charts, the event with its reason) and the
# canary's error-rate line, and writes target/console-screenshots/scenario-<name>.png.
# Needs the release binaries (`make scenario` builds them) and Chromium (`make chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${NAME:-bad-canary-errors}
bin=${CARGO_TARGET_DIR:-target}/release
chromium=${CHROMIUM:-/usr/bin/chromium}
out=target/console-screenshots
mkdir -p "$out"
work=$(mktemp -d)
# Its own process group, so that stopping it stops its gateway too.
SCENARIO_HOLD=${SCENARIO_HOLD:-120} setsid "$bin/scenario" "$name" >"$work/scenario.log" 2>&1 &
pid=$!
trap 'kill -- "-$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 600); do # up to 5 minutes for the scenario to decide
  grep -q '^holding the gateway' "$work/scenario.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/scenario.log"; echo "the scenario ended without holding its gateway" >&2; exit 1; }
  sleep 0.5
done
grep -q '^holding the gateway' "$work/scenario.log" || { cat "$work/scenario.log"; exit 1; }
cat "$work/scenario.log"
url=$(sed -n 's/^holding the gateway for [0-9]* s: console \(http[^ ]*\) .*/\1/p' "$work/scenario.log")
browse() {
  # Virtual time runs only while no request is pending: 6 s lets the page poll and draw 3 times.
  "$chromium" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/profile" --window-size=1280,1700 --virtual-time-budget=6000 "$@" "$url" 2>/dev/null
}
browse --dump-dom >"$work/page.html"
check() {
  grep -q "$1" "$work/page.html" || { echo "console-scenario: the page does not show $2" >&2; exit 1; }
}
check 'data-chart="error_rate"' 'an error-rate chart'
check 'class="marker decision" [^>]*data-kind="rolled_back"' 'the rollback marker on the charts'
check '<li data-kind="rolled_back"' 'the rollback event in the timeline'
check 'class="phase phase-rolled_back"' 'the rolled_back phase'
check 'path class="line" d="[^"]*" stroke="[^"]*" data-variant="bc-v2"' "the canary's lines"
browse --screenshot="$out/scenario-$name.png" >/dev/null
echo "console-scenario: the rollback and its reason are on the page; screenshot $out/scenario-$name.png"
