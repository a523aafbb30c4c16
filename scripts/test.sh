#!/usr/bin/env bash
# Every check the project has: formatting, lints, the firmware-target build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf
cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf --features alloc
cargo build -p latchkey-node-core --target riscv32imc-unknown-none-elf
# The ESP32-C3 firmware: its own workspace (the root one excludes it), built for the chip only;
# .cargo/config.toml there sets the target. Clippy's -D warnings covers rustc's warnings too.
(
  cd firmware/esp32c3
  cargo fmt -- --check
  cargo clippy --release --all-targets -- -D warnings
  cargo build --release --bins --examples
)
# Flash and static RAM by section, and the stacks' floor; fails above the budget lines
# (docs/PERFORMANCE.md, "ESP32-C3 firmware size").
scripts/firmware-size.sh --no-build --floor --strict
# systemd-analyze verify runs in tests/systemd.rs, on a copy of the unit whose ExecStart is the
# binary just built (the installed path does not exist here).
cargo test --workspace --all-targets --no-fail-fast
