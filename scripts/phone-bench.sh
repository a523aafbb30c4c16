#!/usr/bin/env bash
# End-to-end unlock time through the simulated radio (docs/PERFORMANCE.md, "Phone end to end"):
# the same setup as scripts/demo.sh (bluez-sim, the gateway on hci0, the phone on hci1), then
# RUNS × `latchkey phone unlock bench-door --adapter hci1 --json`, each a fresh process, each by
# a freshly paired phone (a phone sends at most two TOTP codes per 30 s period, PROTOCOL §4.2).
# Prints the median, min and max of each stage and of the whole command, and the ATT operations.
#
#   scripts/phone-bench.sh [RUNS]        # RUNS=20; PROFILE=release (default) or debug
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-20}"
profile="${PROFILE:-release}"
port="${LATCHKEY_BENCH_PORT:-18081}"

case "$profile" in
  release) cargo build --quiet --release -p latchkey -p latchkey-bluez-standin --bins ;;
  debug) cargo build --quiet -p latchkey -p latchkey-bluez-standin --bins ;;
  *) echo "PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin="$PWD/target/$profile"

work="$(mktemp -d -t latchkey-bench.XXXXXX)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() {
  local tries=$(( ${2:-20} * 10 ))
  while ! eval "$1" >/dev/null 2>&1; do
    tries=$((tries - 1)); [ "$tries" -gt 0 ] || return 1; sleep 0.1
  done
}

"$bin/bluez-sim" >"$work/sim.out" 2>"$work/sim.err" &
pids+=($!)
wait_for '[ -s "$work/sim.out" ]' || { cat "$work/sim.err" >&2; exit 1; }
DBUS_SYSTEM_BUS_ADDRESS="$(head -n1 "$work/sim.out")"
export DBUS_SYSTEM_BUS_ADDRESS

cat >"$work/latchkey.toml" <<EOF
name = "latchkey-bench"
[ble]
mode = "on"
adapter = "hci0"
[[endpoint]]
id = "bench-door"
action = { type = "none" }
EOF
export LATCHKEY_DATA_DIR="$work/gateway" LATCHKEY_CONFIG="$work/latchkey.toml"
# The listening socket is bound before BLE starts, so once BLE is up the API answers.
LATCHKEY_LOG=info "$bin/latchkey" serve --listen "127.0.0.1:$port" 2>"$work/gateway.log" &
pids+=($!)
wait_for 'grep -q "BLE door service registered" "$work/gateway.log"' 30 \
  || { tail -n 5 "$work/gateway.log" >&2; exit 1; }
export LATCHKEY_LOG=warn

for i in $(seq 1 "$runs"); do
  payload="$("$bin/latchkey" pair | tail -n 1)"
  "$bin/latchkey" phone pair --payload "$payload" --name "bench $i" \
    --credentials "$work/phone-$i.json" 2>/dev/null
done

echo "profile: $profile, runs: $runs, $(nproc) CPUs, $(uname -sr)"
: >"$work/results"
for i in $(seq 1 "$runs"); do
  start=$(date +%s%N)
  line="$("$bin/latchkey" phone unlock bench-door --adapter hci1 --json \
    --credentials "$work/phone-$i.json")"
  end=$(date +%s%N)
  case "$line" in *'"status":"GRANTED"'*) ;; *) echo "run $i: $line" >&2; exit 1 ;; esac
  echo "$line wall=$(( (end - start) / 1000 ))" >>"$work/results"
done

field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$work/results"; }
stats() {
  sort -n | awk '{ a[NR] = $1 }
    END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2;
          printf "median %8.2f   min %8.2f   max %8.2f\n", m, a[1], a[NR] }'
}
printf '%-28s' "scan (ms)";        field scan | stats
printf '%-28s' "connect (ms)";     field connect | stats
printf '%-28s' "challenge (ms)";   field challenge | stats
printf '%-28s' "decision (ms)";    field decision | stats
printf '%-28s' "unlock total (ms)"; field total | stats
printf '%-28s' "whole process (ms)"
sed -n 's/.* wall=\([0-9]*\)$/\1/p' "$work/results" | awk '{ print $1 / 1000 }' | stats
printf '%-28s%s\n' "ATT ops after connecting" "$(field attOps | sort -u | tr '\n' ' ')"
