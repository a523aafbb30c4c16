#!/usr/bin/env bash
# The whole story on one machine, with nothing but the repo and Rust (and dbus-daemon, else the
# in-process busd): a private D-Bus with a simulated Bluetooth radio, the gateway serving its
# BLE door service on hci0, and a phone (`latchkey phone …`) on hci1 that pairs from the QR,
# listens to the event stream, opens "demo-door", gets revoked, and is refused and cut off.
#
#   scripts/demo.sh            # LATCHKEY_DEMO_PORT=18080 by default
#
# Every process it starts is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

port="${LATCHKEY_DEMO_PORT:-18080}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
fail() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }

# Waits up to $2 seconds (default 20) for the command $1 to succeed.
wait_for() {
  local tries=$(( ${2:-20} * 10 ))
  while ! eval "$1" >/dev/null 2>&1; do
    tries=$((tries - 1))
    [ "$tries" -gt 0 ] || return 1
    sleep 0.1
  done
}

healthy() {
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  local status
  read -r status <&3 || true
  exec 3>&-
  [[ "$status" == *" 200 "* ]]
}

step "Building (debug)"
cargo build --quiet -p latchkey -p latchkey-bluez-standin --bins
bin="$PWD/target/debug"

work="$(mktemp -d -t latchkey-demo.XXXXXX)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "A private D-Bus with a simulated Bluetooth radio (adapters hci0 and hci1)"
"$bin/bluez-sim" --adapter hci0 --adapter hci1 >"$work/sim.out" 2>"$work/sim.err" &
pids+=($!)
wait_for '[ -s "$work/sim.out" ]' || fail "bluez-sim did not start: $(cat "$work/sim.err")"
DBUS_SYSTEM_BUS_ADDRESS="$(head -n1 "$work/sim.out")"
export DBUS_SYSTEM_BUS_ADDRESS
note "bus: $DBUS_SYSTEM_BUS_ADDRESS"

step "The gateway: loopback, BLE on against that bus (hci0), endpoint demo-door"
cat >"$work/latchkey.toml" <<EOF
name = "latchkey-demo"

[ble]
mode = "on"
adapter = "hci0"

[[endpoint]]
id = "demo-door"
name = "Demo door"
action = { type = "command", timeout_secs = 5, argv = ["/bin/sh", "-c", "echo \"opened for \$LATCHKEY_DEVICE_NAME\" > '$work/door-opened'"] }
EOF
export LATCHKEY_DATA_DIR="$work/gateway" LATCHKEY_CONFIG="$work/latchkey.toml"
"$bin/latchkey" serve --listen "127.0.0.1:$port" 2>"$work/gateway.log" &
pids+=($!)
wait_for healthy 30 || fail "the gateway did not come up: $(tail -n 5 "$work/gateway.log")"
wait_for 'grep -q "BLE door service registered" "$work/gateway.log"' \
  || fail "no BLE registration: $(tail -n 5 "$work/gateway.log")"
note "http://127.0.0.1:$port is up; BLE door service registered and advertising on hci0"

step "latchkey pair: the QR code (and its payload) for the phone"
"$bin/latchkey" pair >"$work/pair.out"
cat "$work/pair.out"
payload="$(tail -n 1 "$work/pair.out")"

creds="$work/phone/phone.json"
step "The phone pairs from the QR payload"
"$bin/latchkey" phone pair --payload "$payload" --name "Demo phone" --credentials "$creds"
device_id="$(sed -n 's/.*"deviceId": *"\([^"]*\)".*/\1/p' "$creds")"
note "credentials: $creds (mode $(stat -c %a "$creds")); device $device_id"

step "The phone listens to the gateway's events in the background"
"$bin/latchkey" phone listen --credentials "$creds" >"$work/events.jsonl" 2>"$work/listen.err" &
listener=$!
pids+=($listener)
wait_for 'grep -q "listening" "$work/listen.err"' || fail "the listener did not connect"
note "$(grep listening "$work/listen.err")"

step "phone unlock demo-door --adapter hci1 (scan, connect, challenge, auth, result)"
"$bin/latchkey" phone unlock demo-door --adapter hci1 --credentials "$creds"
wait_for '[ -s "$work/door-opened" ]' 10 || fail "the door's action did not run"
note "the door's action wrote: $(cat "$work/door-opened")"
wait_for 'grep -q "access.granted" "$work/events.jsonl"' 10 || fail "no access.granted event"
note "the listener received: $(grep access.granted "$work/events.jsonl")"

step "latchkey devices revoke $device_id"
"$bin/latchkey" devices revoke "$device_id"

step "The revoked phone tries again"
if "$bin/latchkey" phone unlock demo-door --adapter hci1 --credentials "$creds"; then
  fail "a revoked phone opened the door"
fi
wait_for '! kill -0 $listener' 10 || fail "the listener was not cut off"
set +e
wait "$listener"
code=$?
set -e
note "the listener exited with status $code: $(tail -n 1 "$work/listen.err")"
[ "$code" -ne 0 ] || fail "the listener exited 0"
note "events it printed:"
sed 's/^/     /' "$work/events.jsonl"

step "Done: every process stops now"
