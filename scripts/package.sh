#!/usr/bin/env bash
# Debian packages with cargo-deb: latchkey_<version>_<arch>.deb (the gateway) and
# latchkey-node_<version>_<arch>.deb (the Linux endpoint node) for amd64, arm64 (Raspberry Pi
# OS 64-bit) and armhf (Pi OS 32-bit), into target/packages/.
#
#   scripts/package.sh [amd64|arm64|armhf|all]... [--gateway-only] [--no-build]
#
# Cross builds use Debian's gcc-aarch64-linux-gnu / gcc-arm-linux-gnueabihf as linker and C
# compiler (SQLite3 Multiple Ciphers and libdbus are C, compiled in); installed with apt-get
# when missing and running as root. --no-build packages binaries already built for the release
# profile (or LATCHKEY_DEB_PROFILE, e.g. dev for a quick contents check).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
profile=${LATCHKEY_DEB_PROFILE:-release}
out=target/packages
arches=()
gateway_only=no
no_build=()
fast=()
# A dev-profile package is only for checking contents: quicker, lighter compression.
[ "$profile" = release ] || fast=(--fast)
for arg in "$@"; do
  case "$arg" in
    amd64 | arm64 | armhf) arches+=("$arg") ;;
    all) arches+=(amd64 arm64 armhf) ;;
    --gateway-only) gateway_only=yes ;;
    --no-build) no_build=(--no-build) ;;
    *) echo "usage: scripts/package.sh [amd64|arm64|armhf|all]... [--gateway-only] [--no-build]" >&2; exit 2 ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(amd64)

if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

apt_install() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "package.sh: install first: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

# One unit file in the repo (systemd/latchkey.service, for the from-source install in
# /usr/local/bin); the package's copy differs only in the binary's and the docs' paths.
units=target/deb-units
rm -rf "$units"
mkdir -p "$units" "$out"
sed -e 's|^ExecStart=/usr/local/bin/latchkey |ExecStart=/usr/bin/latchkey |' \
    -e 's|file:///usr/local/share/doc/latchkey/|file:///usr/share/doc/latchkey/|' \
    systemd/latchkey.service > "$units/latchkey.service"
grep -q '^ExecStart=/usr/bin/latchkey ' "$units/latchkey.service" \
  || { echo "package.sh: systemd/latchkey.service has no ExecStart=/usr/local/bin/latchkey line" >&2; exit 1; }
cp systemd/latchkey.sysusers "$units/latchkey.sysusers"
cp systemd/latchkey.tmpfiles "$units/latchkey.tmpfile"

# A cross build: Debian's gcc for the target links and compiles the C parts (cc crate: CC_<triple>).
cross() { # rust target, gcc prefix, Debian's C library -dev package for it
  local triple=$1 prefix=$2 upper
  apt_install "gcc-$prefix" "$3"
  rustup target add "$triple" >/dev/null 2>&1 || true
  upper=$(tr 'a-z-' 'A-Z_' <<<"$triple")
  export "CARGO_TARGET_${upper}_LINKER=$prefix-gcc" "CC_${triple//-/_}=$prefix-gcc" "AR_${triple//-/_}=$prefix-ar"
  target=(--target "$triple")
}

for arch in "${arches[@]}"; do
  target=()
  case "$arch" in
    amd64) ;;
    arm64) cross aarch64-unknown-linux-gnu aarch64-linux-gnu libc6-dev-arm64-cross ;;
    armhf) cross armv7-unknown-linux-gnueabihf arm-linux-gnueabihf libc6-dev-armhf-cross ;;
  esac
  # cargo-deb strips the binaries (the release profile does too; a dev build is stripped here),
  # with binutils-<triple> for the cross builds.
  cargo deb -p latchkey --profile "$profile" "${target[@]}" "${no_build[@]}" "${fast[@]}" --output "$out/"
  if [ "$gateway_only" = no ]; then
    cargo deb -p latchkey-node --profile "$profile" "${target[@]}" "${no_build[@]}" "${fast[@]}" --output "$out/"
  fi
done
ls -l "$out"/*.deb
