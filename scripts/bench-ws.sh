#!/usr/bin/env bash
# The WebSocket sync benchmark (docs/PERFORMANCE.md, "WebSocket sync"): the same load against
# latchkey, a bare tokio-tungstenite broadcast server and a Python `websockets` server, on
# loopback. Prints figures; it is not a test. Extra arguments go to `ws_load bench`
# (e.g. `--targets latchkey --idle 0`).
set -euo pipefail
cd "$(dirname "$0")/.."

# 10,000 idle connections need as many descriptors in the gateway and in the load tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the 10,000-connection run needs ~12,000" >&2
fi

# Python `websockets` for the reference server: a venv if Python can make one, else a plain
# `pip install --target` beside it.
venv=target/bench-venv
python="$venv/bin/python"
if ! "$python" -c 'import websockets' 2>/dev/null; then
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet websockets
  else
    python3 -m pip install --quiet --target target/bench-pylib websockets
    export PYTHONPATH="$PWD/target/bench-pylib${PYTHONPATH:+:$PYTHONPATH}"
    python=python3
  fi
fi

cargo build --release --bin latchkey --example ws_load
exec target/release/examples/ws_load bench \
  --latchkey target/release/latchkey \
  --python "$python" \
  --python-server scripts/ws_bench_server.py \
  "$@"
