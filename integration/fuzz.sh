#!/usr/bin/env bash
# Fuzzing of every parser that reads untrusted bytes (issue 10): the
# proptest harness of tests/fuzz.rs in release mode, FUZZ_CASES inputs per
# parser (default 10^6; a plain `cargo test` runs 2000). Prints one count
# line per parser and the wall time. FUZZ_SEED=N replays a run (a failure
# prints its seed and its minimal input).
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_CASES="${FUZZ_CASES:-1000000}"

cargo test --release -p rkt-mds --test fuzz --no-run --quiet
log=$(mktemp)
trap 'rm -f "$log"' EXIT
SECONDS=0
status=0
cargo test --release -p rkt-mds --test fuzz -- --nocapture --test-threads 2 2>&1 |
  tee "$log" || status=$?
echo
echo "fuzz: ${FUZZ_CASES} inputs per parser, ${SECONDS} s wall time (exit ${status})"
grep '^fuzz ' "$log" || true
exit "$status"
