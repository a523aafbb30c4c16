#!/usr/bin/env bash
# Every check the project has: formatting, lints, the firmware-target build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, so a slow CI run says where its minutes went.
step() {
  local t0=$SECONDS
  "$@"
  echo "[test.sh] $((SECONDS - t0)) s: $*" >&2
}

step cargo fmt --all -- --check
step cargo clippy --workspace --all-targets -- -D warnings
step cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf
step cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf --features alloc
step cargo build -p latchkey-node-core --target riscv32imc-unknown-none-elf
# The ESP32-C3 firmware: its own workspace (the root one excludes it), built for the chip only;
# .cargo/config.toml there sets the target. Clippy's -D warnings covers rustc's warnings too.
firmware() (
  cd firmware/esp32c3
  cargo fmt -- --check
  cargo clippy --release --all-targets -- -D warnings
  cargo build --release --bins --examples
)
step firmware
# Flash and static RAM by section, and the stacks' floor; fails above the budget lines
# (docs/PERFORMANCE.md, "ESP32-C3 firmware size").
step scripts/firmware-size.sh --no-build --floor --strict
# systemd-analyze verify runs in tests/systemd.rs, on a copy of the unit whose ExecStart is the
# binary just built (the installed path does not exist here).
step cargo test --workspace --all-targets --no-fail-fast
# The crash harness, short: 20 SIGKILL rounds and 20 simulated power cuts against the daemon
# under load (docs/RELIABILITY.md; the long run is `scripts/crash.sh`, 200 rounds of each).
step scripts/crash.sh --rounds 20
# The amd64 packages, built from the debug binaries just tested (a release build of the gateway
# takes about 15 minutes on 2 cores): their contents, then installed, run and purged under
# systemd in a Debian container. Needs root, lintian, debootstrap and systemd-nspawn (.ci/run
# installs them); elsewhere they are skipped with a line saying so, never in CI. The arm64/armhf
# emulation test (scripts/test-package-qemu.sh) needs two cross release builds: run by hand.
if [ "$(id -u)" = 0 ] && command -v lintian >/dev/null && command -v debootstrap >/dev/null \
  && command -v systemd-nspawn >/dev/null; then
  step scripts/test-package.sh --dev
  step scripts/test-package-nspawn.sh
elif [ -n "${CI:-}" ]; then
  echo "the package tests need root, lintian, debootstrap and systemd-nspawn" >&2
  exit 1
else
  echo "skipped: the package tests (they need root, lintian, debootstrap and systemd-nspawn)"
fi
# Fuzzing, 30 s per target (docs/RELIABILITY.md); installs cargo-afl when missing.
step scripts/fuzz.sh
