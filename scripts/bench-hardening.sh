#!/usr/bin/env bash
# Hardening figures (docs/PERFORMANCE.md, "Hardening"), against the release daemon on loopback:
#  1. peak RSS (VmHWM) under 60 concurrent wrong logins from one address, and under 200 from
#     200 addresses;
#  2. with the daemon's fd limit at 1024 and 1,100 half-sent requests held from 127.0.0.1, how
#     long a request from 127.0.0.2 takes, and when the stalled ones are dropped.
# Prints figures; it is not a test (tests/hardening.rs is).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin latchkey
bin=target/release/latchkey
work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
# The client side holds over a thousand sockets.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# start NAME [prlimit args...]: a fresh daemon with an admin password; sets $pid and $port.
start() {
  local name=$1; shift
  local data=$work/$name log=$work/$name.log
  mkdir -m 700 "$data"
  echo "a long enough admin password" | "$bin" --data-dir "$data" admin password >/dev/null
  "$@" "$bin" serve --listen 127.0.0.1:0 --ble off --data-dir "$data" 2>"$log" &
  pid=$!
  for _ in $(seq 200); do
    port=$(sed -n 's/.*latchkey is ready.* listen=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { cat "$log"; exit 1; }
  grep -o 'fd_limit=[0-9]* max_connections=[0-9]* max_connections_per_address=[0-9]*' "$log" |
    sed 's/^/  /'
}

stop() {
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
}

echo "== 60 concurrent wrong logins, one address"
start logins60
python3 scripts/hostile_client.py logins "$port" "$pid" --count 60
stop

echo "== 200 concurrent wrong logins, 200 addresses"
start logins200
python3 scripts/hostile_client.py logins "$port" "$pid" --count 200 --addresses 200
stop

echo "== 1,100 stalled requests at fd limit 1024 (default timeouts)"
start stall prlimit --nofile=1024:1024
python3 scripts/hostile_client.py stall "$port" "$pid" --count 1100
echo "  accept-error warnings in the log: $(grep -c 'cannot accept connections' "$work/stall.log" || true)"
stop
