#!/usr/bin/env bash
# The amd64 package under a real systemd: a Debian bookworm container made with debootstrap
# (cached outside the repo, in $LATCHKEY_NSPAWN_CACHE, default /var/cache/latchkey-test), booted
# with systemd-nspawn on its own network namespace (loopback only), then: install the .deb with
# apt, the service active (Type=notify: READY=1 arrived) with the watchdog armed, /healthz from
# inside, the CLI as the service user, `systemd-analyze security` exposure, a reinstall keeping
# the master key, and `apt purge`: the user gone, the data and the key kept; then installed over
# them again, and purged with LATCHKEY_PURGE_DATA=yes: both gone. Needs root.
#
#   scripts/test-package-nspawn.sh [DEB]     (default target/packages/latchkey_<version>_amd64.deb)
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
deb=${1:-target/packages/latchkey_${version}_amd64.deb}
[ -f "$deb" ] || { echo "test-package-nspawn: $deb is missing: scripts/package.sh amd64" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "test-package-nspawn: needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cache=${LATCHKEY_NSPAWN_CACHE:-/var/cache/latchkey-test}
base=$cache/bookworm
if [ ! -d "$base" ]; then
  mkdir -p "$cache"
  rm -rf "$base.tmp"
  echo "== debootstrap bookworm into $base (once)"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,ca-certificates \
    bookworm "$base.tmp" http://deb.debian.org/debian >/dev/null
  mv "$base.tmp" "$base"
fi

# Each run boots a fresh copy, so nothing of a previous run (user, key, data) is left inside.
root=$(mktemp -d "$cache/run.XXXXXX")
cp -a "$base/." "$root/"
cp "$deb" "$root/root/latchkey.deb"
log=$(mktemp)
nspawn=""
cleanup() {
  if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
    kill -TERM "$nspawn" 2>/dev/null || true # nspawn asks the container's systemd to halt
    for _ in $(seq 1 100); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn" 2>/dev/null || true
  fi
  rm -rf "$root" "$log"
}
trap cleanup EXIT

systemd-nspawn --register=no --keep-unit --boot --private-network --console=passive \
  -D "$root" -M latchkey-test >"$log" 2>&1 &
nspawn=$!
# The container's init is the child of nspawn that became systemd (another child comes and goes
# while it sets up); commands run in its namespaces with nsenter.
leader=""
for _ in $(seq 1 300); do
  for p in $(pgrep -P "$nspawn" || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && leader=$p
  done
  [ -z "$leader" ] || break
  sleep 0.1
done
[ -n "$leader" ] || { echo "FAIL container did not start:"; cat "$log"; exit 1; }
ct() { nsenter -t "$leader" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# Until its manager answers (the bus socket comes a moment after PID 1), then until boot is done.
state=""
for _ in $(seq 1 600); do
  state=$(ct timeout 120 systemctl is-system-running --wait 2>&1) || true
  case "$state" in running | degraded) break ;; esac
  sleep 0.1
done
echo "== container booted: $state"

fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
expect() { # description, wanted output, command...
  local what=$1 want=$2 got
  shift 2
  got=$("$@" 2>&1) || true
  if [ "$got" = "$want" ]; then ok "$what: $got"; else bad "$what: wanted '$want', got '$got'"; fi
}

echo "== apt-get install ./latchkey.deb"
installed=$(ct apt-get install -y --no-install-recommends /root/latchkey.deb 2>&1) || true
sed 's/^/    /' <<<"$installed" | grep -v '^    \(Reading\|Building\|Selecting\|(Reading\)' || true
# First run (CONTRACT §2): the install shows the daemon's one-time set-up URL.
if grep -q 'latchkey: finish set-up in a browser: http://[^ ]*/setup?code=' <<<"$installed"; then
  ok "the install printed the set-up URL"
else
  bad "the install printed no set-up URL"
fi

expect "service active (Type=notify: READY=1 received)" "active" ct systemctl is-active latchkey.service
expect "service enabled" "enabled" ct systemctl is-enabled latchkey.service
expect "watchdog period" "WatchdogUSec=20s" ct systemctl show -p WatchdogUSec latchkey.service
# WATCHDOG=1 arrives every 10 s; wait for the first one.
for _ in $(seq 1 150); do
  wd=$(ct systemctl show -p WatchdogTimestampMonotonic --value latchkey.service) || true
  [ "${wd:-0}" = 0 ] || break
  sleep 0.1
done
if [ "${wd:-0}" != 0 ]; then ok "watchdog armed (WATCHDOG=1 received)"; else bad "no WATCHDOG=1 within 15 s"; fi
expect "master key: mode, owner, size" "600 root:root 32" ct stat -c '%a %U:%G %s' /etc/latchkey/latchkey.key
expect "data dir: mode, owner" "700 latchkey:latchkey" ct stat -c '%a %U:%G' /var/lib/latchkey
expect "user latchkey is a system user in gpio" "latchkey gpio" ct id -nG latchkey
body=""
for _ in $(seq 1 50); do
  body=$(ct curl -fsS --max-time 2 http://127.0.0.1:8080/healthz 2>/dev/null) && break
  sleep 0.1
done
expect "GET /healthz inside the container" '{"status":"ok"}' echo "$body"

# The README's way to run the CLI: as the service user, with the key as its credential.
cli() {
  ct systemd-run --quiet --uid=latchkey --gid=latchkey --wait --pipe \
    -p LoadCredential=latchkey.key:/etc/latchkey/latchkey.key -p StateDirectory=latchkey -p StateDirectoryMode=0700 \
    latchkey --config /etc/latchkey/latchkey.toml "$@"
}
token=$(cli admin token --name nspawn-test 2>/dev/null) || true
if [ -n "$token" ]; then ok "CLI as latchkey: admin token printed"; else bad "CLI as latchkey: admin token"; fi
devices=$(ct curl -fsS --max-time 5 -H "Authorization: Bearer $token" http://127.0.0.1:8080/api/devices 2>&1) || true
expect "that token on GET /api/devices" '{"devices":[]}' echo "$devices"
expect "CLI as latchkey: devices list --json" '{"devices":[]}' cli devices list --json
expect "database files still owned by latchkey" "" ct find /var/lib/latchkey ! -user latchkey

echo "== systemd-analyze security latchkey.service"
ct systemd-analyze security --no-pager latchkey.service | tail -n 1 | sed 's/^/    /'

key_before=$(ct sha256sum /etc/latchkey/latchkey.key)
ct apt-get install -y --reinstall /root/latchkey.deb >/dev/null 2>&1 || bad "reinstall"
expect "reinstall keeps the master key" "$key_before" ct sha256sum /etc/latchkey/latchkey.key
expect "service active after reinstall" "active" ct systemctl is-active latchkey.service

echo "== apt-get purge latchkey"
ct apt-get purge -y latchkey 2>&1 | grep -i 'latchkey:' | sed 's/^/    /' || true
expect "service gone" "inactive" ct systemctl is-active latchkey.service
expect "user removed" "" ct getent passwd latchkey
expect "group removed" "" ct getent group latchkey
expect "data kept" "yes" ct sh -c 'test -d /var/lib/latchkey && echo yes'
expect "master key kept" "$key_before" ct sha256sum /etc/latchkey/latchkey.key
expect "unit removed" "no" ct sh -c 'test -e /usr/lib/systemd/system/latchkey.service && echo yes || echo no'

# Asked for: install again (over the kept data and key), then purge with LATCHKEY_PURGE_DATA=yes.
ct apt-get install -y --no-install-recommends /root/latchkey.deb >/dev/null 2>&1 || bad "install over kept data"
expect "install over the kept data: service active" "active" ct systemctl is-active latchkey.service
expect "install over the kept data: same master key" "$key_before" ct sha256sum /etc/latchkey/latchkey.key
ct env LATCHKEY_PURGE_DATA=yes apt-get purge -y latchkey >/dev/null 2>&1 || bad "purge with LATCHKEY_PURGE_DATA=yes"
expect "LATCHKEY_PURGE_DATA=yes: data and key deleted" "gone" \
  ct sh -c 'test -e /var/lib/latchkey || test -e /etc/latchkey/latchkey.key || echo gone'

if [ "$fails" -gt 0 ]; then
  echo "test-package-nspawn: $fails checks failed; container log:"
  tail -n 30 "$log"
  exit 1
fi
echo "test-package-nspawn: all checks passed"
