#!/usr/bin/env bash
# Endpoint-node figures for docs/PERFORMANCE.md: gateway RSS idle and with 500 scripted nodes
# connected, and the unlock round trip (POST /api/endpoints/{id}/open → node result → answer)
# p50/p99 at 10 commands/s. Loopback only; the daemon runs on a throwaway data dir and is
# stopped at the end. Extra arguments go to the tool (e.g. --nodes 200 --rate 10 --seconds 30).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin latchkey --example node_load
echo "rustc: $(rustc --version); cores: $(nproc); $(uname -srm)"
# 500 nodes: 500 sockets on each side, plus the daemon's own.
ulimit -n 4096 2>/dev/null || true

scratch=$(mktemp -d)
log="$scratch/serve.log"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

bin=target/release/latchkey
# Created here: the daemon's redirection happens in the background child, maybe after the poll.
: >"$log"
LATCHKEY_LOG=warn,latchkey=info "$bin" --data-dir "$scratch/data" serve --ble off --listen 127.0.0.1:0 \
    >/dev/null 2>"$log" &
pid=$!
addr=""
for _ in $(seq 1 600); do
    addr=$(sed -n 's/.*latchkey is ready.* listen=\([0-9.:]*\).*/\1/p' "$log" | head -n1)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "latchkey did not become ready" >&2; cat "$log" >&2; exit 1; }
token=$("$bin" --data-dir "$scratch/data" admin token --name bench)
target/release/examples/node_load --base "http://$addr" --admin "$token" --pid "$pid" "$@"
