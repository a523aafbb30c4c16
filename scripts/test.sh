#!/usr/bin/env bash
# Every check the project has: formatting, lints, the firmware-target build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf
if command -v systemd-analyze >/dev/null; then
  systemd-analyze verify --man=no systemd/latchkey.service 2>&1 | { grep -v 'Failed to create \|latchkey.service: Command /usr/local/bin/latchkey is not executable' || true; }
fi
cargo test --workspace --all-targets --no-fail-fast
