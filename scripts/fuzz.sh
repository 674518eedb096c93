#!/usr/bin/env bash
# Runs each fuzz target for FUZZ_SECONDS (default 600) on one core, one after another.
# Needs a nightly toolchain (`rustup toolchain list`) and cargo-fuzz (installed here if missing).
# The growing corpus lives in .fuzz/corpus/<target> (not committed); seeds in fuzz/seeds/<target>.
# A crash stops the run with libFuzzer's report; fix it, then keep the input under
# fuzz/regressions/<target>/ so `make test` replays it (tests/fuzz_regressions.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-600}"
targets="${FUZZ_TARGETS:-oip routes request_id}"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: needs a nightly Rust toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O
for t in $targets; do
    mkdir -p ".fuzz/corpus/$t" ".fuzz/artifacts/$t"
    echo "fuzz: $t for ${seconds}s"
    cargo +nightly fuzz run -O "$t" ".fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=8192 -timeout=10 \
        -artifact_prefix=".fuzz/artifacts/$t/" -print_final_stats=1 2>&1 |
        tee ".fuzz/$t.log" | grep -E "^#[0-9]+ +(pulse|DONE)|ERROR|panicked|SUMMARY|stat::number_of_executed_units|Done " || true
    if ls ".fuzz/artifacts/$t/" | grep -q .; then
        echo "fuzz: $t found crashes in .fuzz/artifacts/$t/ (log: .fuzz/$t.log)" >&2
        exit 1
    fi
done
echo "fuzz: all targets ran ${seconds}s without a crash"
