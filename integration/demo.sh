#!/usr/bin/env bash
# The README's demo: build the agent (release) and run it for real with two
# pods in network namespaces. Needs root. Cleans up on exit and on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins --quiet
exec target/release/demo "$@"
