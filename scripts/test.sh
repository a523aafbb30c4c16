#!/usr/bin/env bash
# Every check the project has: formatting, lints, the firmware-target build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf
cargo build -p latchkey-proto --target riscv32imc-unknown-none-elf --features alloc
cargo build -p latchkey-node-core --target riscv32imc-unknown-none-elf
# systemd-analyze verify runs in tests/systemd.rs, on a copy of the unit whose ExecStart is the
# binary just built (the installed path does not exist here).
cargo test --workspace --all-targets --no-fail-fast
