#!/usr/bin/env bash
# The crash harness (examples/crash.rs, docs/RELIABILITY.md "Crashes and power cuts"): the real
# daemon under mixed load, killed with SIGKILL at random moments, checked after every restart;
# then the same with a simulated power cut (tests/support/powerloss.c under LD_PRELOAD).
# Prints a line per round and the totals of each run; exits 1 on any broken promise.
#   scripts/crash.sh                      200 rounds of each, debug build
#   scripts/crash.sh --rounds 20          the short run scripts/test.sh does
#   scripts/crash.sh --release --seed 7   the release binary; replay a run's choices
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=200 profile=debug extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --release) profile=release; shift ;;
    --seed) extra+=(--seed "$2"); shift 2 ;;
    *) echo "usage: $0 [--rounds N] [--release] [--seed S]" >&2; exit 2 ;;
  esac
done

flags=()
[ "$profile" = release ] && flags=(--release)
# With --workspace the features match what scripts/test.sh's test run built (after it, this
# links one crate); without it cargo resolved other features and built the whole tree again.
cargo build --quiet --workspace "${flags[@]}" --bin latchkey --example crash
gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "target/$profile/powerloss.so" \
  tests/support/powerloss.c -ldl -lpthread

crash=("target/$profile/examples/crash" --latchkey "target/$profile/latchkey" --rounds "$rounds" "${extra[@]}")
echo "== SIGKILL: $rounds rounds =="
"${crash[@]}"
echo
echo "== power cut: $rounds rounds =="
"${crash[@]}" --power-loss "target/$profile/powerloss.so"
