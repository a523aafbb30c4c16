#!/usr/bin/env bash
# The WebSocket sync benchmark (docs/PERFORMANCE.md, "WebSocket sync"): the same load against
# latchkey, a bare tokio-tungstenite broadcast server with latchkey's write batching, a Python
# `websockets` server and a Node.js `ws` server, on loopback, in one run with one table of
# figures and every ratio. Prints figures; it is not a test.
#
# The servers run on one cpu and the load tool on the others (ws_load sets the affinity of
# itself and of each server it starts): --server-cpus/--load-cpus (or WS_BENCH_SERVER_CPUS /
# WS_BENCH_LOAD_CPUS) change that, --no-pin turns it off; a 1-cpu machine runs unpinned.
# --quick is a smoke run (the same phases, smaller and shorter). Other arguments go to
# `ws_load bench` as well (e.g. `--targets latchkey,node --idle 0`).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")"

# 10,000 idle connections need as many descriptors in the gateway and in the load tool.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the 10,000-connection run needs ~12,000" >&2
fi

# Python `websockets` for the reference server: a venv if Python can make one, else a plain
# `pip install --target` beside it.
venv="$target_dir/bench-venv"
python="$venv/bin/python"
if ! "$python" -c 'import websockets' 2>/dev/null; then
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet websockets
  else
    python3 -m pip install --quiet --target "$target_dir/bench-pylib" websockets
    export PYTHONPATH="$target_dir/bench-pylib${PYTHONPATH:+:$PYTHONPATH}"
    python=python3
  fi
fi

# Node.js `ws`: the version locked in scripts/ws-bench-node, installed under target/ so the
# repo holds no node_modules.
node_args=()
if command -v node >/dev/null && command -v npm >/dev/null; then
  node_dir="$target_dir/ws-bench-node"
  mkdir -p "$node_dir"
  cp scripts/ws-bench-node/package.json scripts/ws-bench-node/package-lock.json "$node_dir/"
  npm ci --prefix "$node_dir" --silent --no-audit --no-fund
  node_args=(--node "$(command -v node)" --node-modules "$node_dir/node_modules")
  echo "node $(node --version), ws $(node -p "require('$node_dir/node_modules/ws/package.json').version")"
else
  echo "node or npm not found: skipping the Node.js ws peer" >&2
  export WS_BENCH_TARGETS="${WS_BENCH_TARGETS:-latchkey,bare,python}"
fi
echo "python $("$python" -c 'import sys, websockets; print(sys.version.split()[0] + ", websockets " + websockets.__version__)')"

cargo build --release --bin latchkey --example ws_load
exec "$target_dir/release/examples/ws_load" bench \
  --latchkey "$target_dir/release/latchkey" \
  --python "$python" \
  --python-server scripts/ws_bench_server.py \
  --node-server scripts/ws_bench_server.mjs \
  "${node_args[@]}" \
  "$@"
