#!/usr/bin/env bash
# The benchmark (issue: throughput, latency, scale, reaction time): builds
# the agent and the reference server in release mode, installs wrk if it is
# missing, and runs them side by side from inside pod namespaces. Needs
# root. Arguments go to the bench (see `bench --help`), e.g. --skip scale.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null 2>&1; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk
fi
cargo build --release --workspace --bins --quiet
exec target/release/bench "$@"
