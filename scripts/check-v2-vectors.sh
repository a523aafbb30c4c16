#!/usr/bin/env bash
# Recomputes the door protocol version 2 vectors of docs/PROTOCOL.md with an independent
# implementation (scripts/v2_vectors.py, Python's `cryptography`). Python packages come from a
# venv if Python can make one, else a plain `pip install --target` beside it (as bench-ws.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/v2-venv
python="$venv/bin/python"
if ! "$python" -c 'import cryptography' 2>/dev/null; then
  if python3 -m venv "$venv" 2>/dev/null; then
    "$venv/bin/pip" install --quiet cryptography
  else
    python3 -m pip install --quiet --target target/v2-pylib cryptography
    export PYTHONPATH="$PWD/target/v2-pylib${PYTHONPATH:+:$PYTHONPATH}"
    python=python3
  fi
fi
exec "$python" scripts/v2_vectors.py
