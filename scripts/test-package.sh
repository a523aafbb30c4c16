#!/usr/bin/env bash
# Builds the amd64 packages (scripts/package.sh) and checks what is inside them with dpkg-deb:
# files and their modes, conffiles, control fields, maintainer scripts. Prints each check;
# exit 1 on the first that fails.
#
#   scripts/test-package.sh            release build (as shipped)
#   scripts/test-package.sh --dev      packages the debug binaries the test run already built
#                                      (CI: a release build of the gateway is too slow there)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--dev" ]; then
  # The binaries the test suite's build made (a one-second check after it; a narrower
  # `cargo build` resolves the dependencies' features differently and rebuilds them all).
  cargo test --quiet --workspace --all-targets --no-run
  LATCHKEY_DEB_PROFILE=dev scripts/package.sh amd64 --no-build
else
  scripts/package.sh amd64
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }
check() { # description, command...
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}

deb=target/packages/latchkey_${version}_amd64.deb
node=target/packages/latchkey-node_${version}_amd64.deb
check "file name $deb (CONTRACT: latchkey_<version>_<arch>.deb)" test -f "$deb"
check "file name $node" test -f "$node"
[ "$fails" -eq 0 ] || exit 1

listing=$(dpkg-deb -c "$deb")
# "-rwxr-xr-x root/root 123 2026-01-01 00:00 ./usr/bin/latchkey" → "-rwxr-xr-x root/root /usr/bin/latchkey"
# (tar stores no owner names: 0/0 is root/root.)
entries=$(awk '{ sub(/^\./, "", $6); sub(/^0\/0$/, "root/root", $2); print $1, $2, $6 }' <<<"$listing")
has() { grep -qxF -e "$1" <<<"$entries"; }
for want in \
  "-rwxr-xr-x root/root /usr/bin/latchkey" \
  "-rw-r--r-- root/root /usr/lib/systemd/system/latchkey.service" \
  "-rw-r--r-- root/root /usr/lib/sysusers.d/latchkey.conf" \
  "-rw-r--r-- root/root /usr/lib/tmpfiles.d/latchkey.conf" \
  "-rw-r--r-- root/root /usr/share/dbus-1/system.d/latchkey.conf" \
  "-rw-r--r-- root/root /etc/latchkey/latchkey.toml" \
  "-rw-r--r-- root/root /usr/share/doc/latchkey/README.md" \
  "-rw-r--r-- root/root /usr/share/doc/latchkey/copyright" \
  "-rw-r--r-- root/root /usr/share/doc/latchkey/changelog.Debian.gz" \
  "-rw-r--r-- root/root /usr/share/lintian/overrides/latchkey"; do
  if has "$want"; then ok "has $want"; else bad "has $want"; fi
done
# Made on the target, never shipped: the key (one per machine) and the data.
if grep -qE 'latchkey\.key|/var/lib/latchkey' <<<"$entries"; then bad "no key and no data dir in the package"; else ok "no key and no data dir in the package"; fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/root"
dpkg-deb -e "$deb" "$tmp/control"
unit=$tmp/root/usr/lib/systemd/system/latchkey.service
check "unit runs /usr/bin/latchkey serve" grep -qx 'ExecStart=/usr/bin/latchkey serve' "$unit"
check "unit takes the master key as a credential" grep -qx 'LoadCredential=latchkey.key:/etc/latchkey/latchkey.key' "$unit"
check "unit equals systemd/latchkey.service but for the paths" \
  diff <(sed -e 's|/usr/local/bin/|/usr/bin/|' -e 's|/usr/local/share/doc/|/usr/share/doc/|' systemd/latchkey.service) "$unit"
check "sysusers entry is systemd/latchkey.sysusers" cmp systemd/latchkey.sysusers "$tmp/root/usr/lib/sysusers.d/latchkey.conf"
check "tmpfiles entry is systemd/latchkey.tmpfiles" cmp systemd/latchkey.tmpfiles "$tmp/root/usr/lib/tmpfiles.d/latchkey.conf"
check "example config is systemd/latchkey.toml" cmp systemd/latchkey.toml "$tmp/root/etc/latchkey/latchkey.toml"

control=$tmp/control/control
check "control: Package: latchkey" grep -qx 'Package: latchkey' "$control"
check "control: Version: $version" grep -qx "Version: $version" "$control"
check "control: Architecture: amd64" grep -qx 'Architecture: amd64' "$control"
check "control: depends on systemd" grep -qE '^Depends:.*\bsystemd\b' "$control"
check "conffiles: exactly /etc/latchkey/latchkey.toml" test "$(cat "$tmp/control/conffiles")" = /etc/latchkey/latchkey.toml
for s in postinst prerm postrm; do
  check "$s is executable" test -x "$tmp/control/$s"
  check "$s parses (sh -n)" sh -n "$tmp/control/$s"
done
postinst=$tmp/control/postinst
check "postinst makes the key only when none exists" grep -q 'if \[ ! -e "$key" \]' "$postinst"
check "postinst makes the key 0600 root:root" grep -q 'chmod 0600 "$tmp"' "$postinst"
check "postinst: systemd-sysusers latchkey.conf" grep -q 'systemd-sysusers .*latchkey.conf' "$postinst"
check "postinst: systemd-tmpfiles --create latchkey.conf" grep -q 'systemd-tmpfiles --create latchkey.conf' "$postinst"
check "postinst enables latchkey.service" grep -q 'deb-systemd-helper enable .*latchkey.service' "$postinst"
check "postinst starts latchkey.service (restarts on upgrade)" \
  sh -c "grep -q '_dh_action=start' '$postinst' && grep -q 'deb-systemd-invoke \$_dh_action latchkey.service' '$postinst'"
check "postinst makes the key before it starts the service" \
  test "$(grep -n 'mv "$tmp" "$key"' "$postinst" | cut -d: -f1)" -lt "$(grep -n 'deb-systemd-invoke \$_dh_action' "$postinst" | cut -d: -f1)"
check "prerm stops latchkey.service" grep -q 'deb-systemd-invoke stop .*latchkey.service' "$tmp/control/prerm"
postrm=$tmp/control/postrm
check "postrm purge removes the user" grep -q 'userdel latchkey' "$postrm"
check "postrm deletes data only with LATCHKEY_PURGE_DATA=yes" \
  sh -c "grep -B3 'rm -rf /var/lib/latchkey' '$postrm' | grep -q 'LATCHKEY_PURGE_DATA:-}\" = \"yes\"'"

nlisting=$(dpkg-deb -c "$node" | awk '{ sub(/^\./, "", $6); sub(/^0\/0$/, "root/root", $2); print $1, $2, $6 }')
for want in \
  "-rwxr-xr-x root/root /usr/bin/latchkey-node" \
  "-rw-r--r-- root/root /usr/share/dbus-1/system.d/latchkey-node.conf" \
  "-rw-r--r-- root/root /usr/share/doc/latchkey-node/NODES.md"; do
  if grep -qxF -e "$want" <<<"$nlisting"; then ok "node has $want"; else bad "node has $want"; fi
done

# Tags lintian still finds are overridden, each with its reason, in systemd/deb/*.lintian-overrides.
if command -v lintian >/dev/null; then
  for pkg in "$deb" "$node"; do
    tags=$(lintian --info --pedantic "$pkg" 2>&1 | grep -E '^[EWIPX]: ' || true)
    if [ -z "$tags" ]; then ok "lintian --info --pedantic: no tag on $(basename "$pkg")"; else bad "lintian on $(basename "$pkg"):"; echo "$tags"; fi
  done
else
  echo "skip lintian (not installed: apt-get install lintian)"
fi

if [ "$fails" -gt 0 ]; then
  echo "test-package: $fails checks failed"
  exit 1
fi
echo "test-package: all checks passed"
