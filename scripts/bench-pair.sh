#!/usr/bin/env bash
# Gateway-core figures for docs/PERFORMANCE.md: release binary size, cold start to /healthz 200,
# idle RSS, /api/pair throughput and p50/p99 with 50 concurrent phones. Loopback only; the
# daemon runs on throwaway data dirs and is stopped at the end. Extra arguments go to the tool
# (e.g. --pairings 5000 --concurrency 50 --starts 10).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin latchkey --example pair_load
echo "rustc: $(rustc --version); cores: $(nproc); $(uname -srm)"
exec target/release/examples/pair_load --bin target/release/latchkey "$@"
