#!/usr/bin/env bash
# The soak run (docs/RELIABILITY.md, "Soak"): the release daemon with N phones and M nodes
# connected for a while under steady publishes, unlocks and a reconnect storm every 10 minutes;
# RSS, open fds, event-log size and delivery latency sampled each minute into DIR/soak.csv and
# plotted in DIR/soak.svg (both rewritten each minute, so a cut run keeps its data). Not run in
# CI: the short version (`--minutes 5`) runs before a release. Loopback only.
#
#   scripts/soak.sh [--minutes 60] [--phones 1000] [--nodes 100] [--out DIR] [--heap] [tool options]
#
# --heap loads examples/load/heapstats.c into the daemon: the live heap and glibc's arenas are
# sampled beside RSS (DIR/heap.csv, columns in soak.csv, orange in the plot), to tell a leak
# from memory the allocator keeps.
# Other options go to the tool (`target/release/examples/soak --help`): --rate, --publishers,
# --unlock-rate, --storm-every, --no-ble.
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
heap=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --out=*) out="${1#--out=}"; shift ;;
        --heap) heap=1; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
out=${out:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

cargo build --release --bin latchkey --example soak
if [ -n "$heap" ]; then
    gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o target/release/heapstats.so \
        examples/load/heapstats.c -lpthread
    args+=(--heap-shim target/release/heapstats.so)
fi
# 1,000 phones and 100 nodes: as many sockets on each side, plus the daemon's own.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
    echo "machine: $(nproc) CPUs, $(uname -srm); rustc: $(rustc --version)"
    echo "loadavg at start: $(cat /proc/loadavg)"
    echo "args: ${args[*]:-(defaults)}"
} | tee "$out/run.txt"
target/release/examples/soak --latchkey target/release/latchkey --out "$out" ${args[@]+"${args[@]}"} \
    2>&1 | tee "$out/soak.log"
echo "loadavg at end: $(cat /proc/loadavg)" | tee -a "$out/run.txt"
echo "outputs: $out/soak.csv, $out/soak.svg, $out/summary.txt"
