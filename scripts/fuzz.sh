#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder that takes outside bytes (fuzz/, docs/RELIABILITY.md),
# with AFL++ through cargo-afl on the stable toolchain. Builds the targets, runs each from its
# committed seed corpus, prints executions, coverage, crashes and hangs per target, and exits 1
# when any target crashed or hung (the inputs are kept under the output directory).
#   scripts/fuzz.sh                      every target for 30 s (the smoke run .ci/run does)
#   scripts/fuzz.sh --execs 10000000     every target until about that many executions
#   scripts/fuzz.sh --seconds 600 node_door ble_v2
# Options: --seconds N | --execs N, --jobs J (targets at once; default: the cores), --out DIR
# (default target/afl-runs). Installs cargo-afl (and with it AFL++) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30 execs= jobs=$(nproc) out=target/afl-runs targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --execs) execs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -*) echo "usage: $0 [--seconds N | --execs N] [--jobs J] [--out DIR] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz/corpus)
fi
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "no target $t (see fuzz/src/lib.rs)" >&2; exit 2; }
done

if ! cargo afl --version >/dev/null 2>&1; then
  cargo install cargo-afl --locked --quiet
fi
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --profile fuzz -p latchkey-fuzz --features afl --quiet

# The gateway targets write a registry (with fsyncs) and a config file per run: on tmpfs the code
# path is the same and the disk is not the limit.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then export TMPDIR=/dev/shm; fi
# Not a tuned fuzzing host: no CPU governor, a core_pattern that may pipe to a crash
# reporter, cores shared with the build. AFL++ is told to carry on and not pin CPUs.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
  AFL_NO_UI=1 AFL_QUIET=1
limit=(-V "$seconds")
[ -n "$execs" ] && limit=(-E "$execs")
rm -rf "$out" && mkdir -p "$out"

run() {
  local t=$1
  # -t: a run over 1 s is a hang; -m none: Rust's allocator reserves more than AFL's default.
  cargo afl fuzz -i "fuzz/corpus/$t" -o "$out/$t" "${limit[@]}" -t 1000 -m none \
    -- "target/fuzz/$t" >"$out/$t.log" 2>&1 || echo "afl-fuzz failed for $t: $out/$t.log" >&2
}
running=0
for t in "${targets[@]}"; do
  run "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

stat() { sed -n "s/^$2 *: //p" "$out/$1/default/fuzzer_stats" 2>/dev/null; }
status=0
printf '%-14s %12s %9s %8s %16s %8s %6s\n' target execs execs/s corpus "edges (cover)" crashes hangs
for t in "${targets[@]}"; do
  if [ ! -f "$out/$t/default/fuzzer_stats" ]; then
    printf '%-14s did not run: %s\n' "$t" "$out/$t.log"; status=1; continue
  fi
  crashes=$(stat "$t" saved_crashes) hangs=$(stat "$t" saved_hangs)
  printf '%-14s %12s %9s %8s %7s (%6s) %8s %6s\n' "$t" "$(stat "$t" execs_done)" \
    "$(stat "$t" execs_per_sec)" "$(stat "$t" corpus_count)" "$(stat "$t" edges_found)" \
    "$(stat "$t" bitmap_cvg)" "$crashes" "$hangs"
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    status=1
    ls "$out/$t/default/crashes" "$out/$t/default/hangs" 2>/dev/null | sed "s|^|  $t: |" >&2
  fi
done
[ "$status" = 0 ] || echo "inputs that crashed or hung: $out/<target>/default/{crashes,hangs}/" >&2
exit "$status"
