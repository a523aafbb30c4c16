#!/usr/bin/env bash
# Smoke test of the arm64 and armhf packages on this (x86) machine: the gateway binary from each
# .deb runs under Debian's qemu-user with the cross C library (libc6-arm64-cross /
# libc6-armhf-cross), `latchkey serve --ble off` on 127.0.0.1, and must answer GET /healthz.
# Prints the start time under emulation (not a gate: emulation is slow and machine-dependent).
#
#   scripts/test-package-qemu.sh [arm64] [armhf]    (default: both; build them first with
#                                                    scripts/package.sh arm64 armhf)
set -euo pipefail
cd "$(dirname "$0")/.."

arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(arm64 armhf)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
dpkg-query -W -f='${Status}' libc6-arm64-cross 2>/dev/null | grep -q "ok installed" || need+=(libc6-arm64-cross)
dpkg-query -W -f='${Status}' libc6-armhf-cross 2>/dev/null | grep -q "ok installed" || need+=(libc6-armhf-cross)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "test-package-qemu: install first: apt-get install ${need[*]}" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fails=0
for arch in "${arches[@]}"; do
  case "$arch" in
    arm64) qemu=qemu-aarch64 sysroot=/usr/aarch64-linux-gnu machine=aarch64 ;;
    armhf) qemu=qemu-arm sysroot=/usr/arm-linux-gnueabihf machine=ARM ;;
    *) echo "usage: scripts/test-package-qemu.sh [arm64] [armhf]" >&2; exit 2 ;;
  esac
  deb=target/packages/latchkey_${version}_${arch}.deb
  [ -f "$deb" ] || { echo "test-package-qemu: $deb is missing: scripts/package.sh $arch" >&2; exit 1; }
  root=$tmp/$arch
  dpkg-deb -x "$deb" "$root"
  bin=$root/usr/bin/latchkey
  echo "== $arch: $(file -b "$bin" | cut -d, -f1-2)"
  file -b "$bin" | grep -q "$machine" || { echo "FAIL $arch: $bin is not an $machine binary"; fails=$((fails + 1)); continue; }
  mkdir -m 0700 "$root/data"
  start=$(date +%s%N)
  LATCHKEY_LOG=info "$qemu" -L "$sysroot" "$bin" serve --ble off --listen 127.0.0.1:0 \
    --data-dir "$root/data" 2>"$root/log" &
  pid=$!
  addr=""
  for _ in $(seq 1 600); do
    addr=$(grep -o 'listen=[0-9.]*:[0-9]*' "$root/log" 2>/dev/null | head -n 1 | cut -d= -f2) || true
    [ -z "$addr" ] || break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  body=""
  [ -z "$addr" ] || body=$(curl -fsS --max-time 10 "http://$addr/healthz") || true
  ms=$((($(date +%s%N) - start) / 1000000))
  if [ "$body" = '{"status":"ok"}' ]; then
    echo "ok   $arch: GET http://$addr/healthz -> $body ($ms ms from exec under $qemu)"
  else
    echo "FAIL $arch: no /healthz answer (got '${body}'); log:"
    sed 's/^/    /' "$root/log"
    fails=$((fails + 1))
  fi
  kill -TERM "$pid" 2>/dev/null || true
  status=0
  wait "$pid" || status=$?
  pid=""
  if [ "$status" -eq 0 ]; then echo "ok   $arch: SIGTERM -> exit 0"; else echo "FAIL $arch: SIGTERM -> exit $status"; fails=$((fails + 1)); fi
done
[ "$fails" -eq 0 ] || { echo "test-package-qemu: $fails failed"; exit 1; }
echo "test-package-qemu: all passed"
