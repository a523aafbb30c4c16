#!/usr/bin/env bash
# Size report of the ESP32-C3 firmware's release image: flash and static RAM by section, and the
# budget lines (docs/PERFORMANCE.md, "ESP32-C3 firmware size"): the image at most IMAGE_BUDGET_KIB,
# and static RAM leaving at least 128 KiB of heap for the radio.
#   --no-build  report the image already built
#   --strict    exit 1 when a budget line is not met (scripts/test.sh, so CI, runs it so)
#   --floor     also build examples/stack_floor.rs (the radio and network stacks alone, no
#               latchkey code) and print how much of the image is the stack and how much latchkey
# Uses llvm-size (reads any ELF), else rust-size (cargo-binutils), else GNU size; all three print
# `size -A`'s format.
set -euo pipefail
cd "$(dirname "$0")/../firmware/esp32c3"

# A ratchet, not a wish: today's image plus a little. A change that needs more raises it in the
# same commit and says why in docs/PERFORMANCE.md. The flash's own limit is the app partition
# (APP_RANGE in src/board.rs, 1728 KiB), checked as well.
IMAGE_BUDGET_KIB=1100
HEAP_MIN_KIB=128

build=1 strict=0 floor=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --strict) strict=1 ;;
    --floor) floor=1 ;;
    *) echo "usage: $0 [--no-build] [--strict] [--floor]" >&2; exit 2 ;;
  esac
done
release=target/riscv32imc-unknown-none-elf/release
elf=$release/latchkey-node-esp32c3
floor_elf=$release/examples/stack_floor
if [ "$build" = 1 ]; then
  cargo build --release --quiet
fi
if [ "$floor" = 1 ] && { [ "$build" = 1 ] || [ ! -f "$floor_elf" ]; }; then
  cargo build --release --quiet --example stack_floor
fi
[ -f "$elf" ] || { echo "no image at $elf" >&2; exit 1; }

size_tool=
for t in llvm-size rust-size size; do
  if command -v "$t" >/dev/null; then size_tool=$t; break; fi
done
[ -n "$size_tool" ] || { echo "no size tool (llvm-size, rust-size or size)" >&2; exit 1; }

# The main heap compiled in (src/board.rs) sits inside .bss; the other is .dram2_uninit.
kib_const() { sed -n "s/^pub const $1: usize = \([0-9]*\) \* 1024;/\1/p" src/board.rs; }
heap_main=$(kib_const HEAP_MAIN)
# APP_RANGE = 0x1_0000..0x1C_0000 -> its length in bytes.
app_bytes=$(sed -n 's/^pub const APP_RANGE: Range<u32> = \(0x[0-9A-Fa-f_]*\)\.\.\(0x[0-9A-Fa-f_]*\);/\1 \2/p' src/board.rs \
  | tr -d _ | { read -r a b; echo $((b - a)); })

# ESP32-C3 address map: flash is mapped at 0x3C00_0000 (data) and 0x4200_0000 (code); SRAM is
# seen at 0x3FC8_0000.. (data bus) and 0x4037_C000.. (instruction bus: the same 400 KiB); RTC
# fast RAM at 0x5000_0000. Sections in SRAM that hold bytes (.data, .rwtext, ...) are copied
# from the image, so they count for flash too; .bss-like ones only take RAM. The `*_dummy`
# sections only reserve address space (IRAM and DRAM share the RAM; rodata and text share the
# flash cache's map): no bytes. The image espflash writes adds segment headers and padding
# (a few KiB) to the flash total.
# report ELF full|total: the tables and the budget lines (exit 1 when one is not met), or only
# the image's bytes.
report() {
  "$size_tool" -A -d "$1" | awk -v tool="$size_tool" -v mode="$2" -v heap_main="$heap_main" \
    -v budget_kib="$IMAGE_BUDGET_KIB" -v heap_min_kib="$HEAP_MIN_KIB" -v app_bytes="$app_bytes" '
function kib(n) { return sprintf("%7.1f", n / 1024) }
$1 ~ /^\./ && $2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ {
  name = $1; sz = $2 + 0; a = $3 + 0
  if (sz == 0 || name ~ /_dummy$/) next
  flash_map = (a >= 1006632960 && a < 1023410176) || (a >= 1107296256 && a < 1124073472)
  sram = (a >= 1070071808 && a < 1070465024) || (a >= 1077395456 && a < 1077805056) \
         || (a >= 1342177280 && a < 1342185472)
  nobits = (name ~ /bss|uninit|noinit|heap|stack/)
  if (flash_map) { fl[++nf] = name; fs[nf] = sz; tflash += sz }
  else if (sram) {
    if (name == ".stack") { stack = sz; next }
    if (name == ".dram2_uninit") { dram2 = sz; next }
    rsz = (name == ".bss") ? sz - heap_main * 1024 : sz
    rm[++nr] = (name == ".bss") ? ".bss (without the heap)" : name; rs[nr] = rsz; tram += rsz
    if (!nobits) { fl[++nf] = name " (copied to RAM)"; fs[nf] = sz; tflash += sz }
  }
}
END {
  if (mode == "total") { print tflash; exit 0 }
  printf "size tool: %s\n\n", tool
  printf "%-34s %10s %8s\n", "flash (the image)", "bytes", "KiB"
  for (i = 1; i <= nf; i++) printf "%-34s %10d %s\n", fl[i], fs[i], kib(fs[i])
  printf "%-34s %10d %s\n\n", "total", tflash, kib(tflash)
  printf "%-34s %10s %8s\n", "static RAM", "bytes", "KiB"
  for (i = 1; i <= nr; i++) printf "%-34s %10d %s\n", rm[i], rs[i], kib(rs[i])
  printf "%-34s %10d %s\n\n", "total", tram, kib(tram)
  hm = heap_main * 1024
  printf "%-34s %10d %s\n", "heap in .bss (HEAP_MAIN)", hm, kib(hm)
  printf "%-34s %10d %s\n", "heap in .dram2_uninit (reclaimed)", dram2, kib(dram2)
  printf "%-34s %10d %s\n\n", "main stack (the rest of the RAM)", stack, kib(stack)
  heap = hm + dram2
  img_ok = (tflash <= budget_kib * 1024); part_ok = (tflash <= app_bytes)
  heap_ok = (heap >= heap_min_kib * 1024)
  printf "budget: image %.1f KiB of %d KiB: %s\n", tflash / 1024, budget_kib, img_ok ? "ok" : "OVER"
  printf "budget: image fits the app partition (%d KiB): %s\n", app_bytes / 1024, part_ok ? "ok" : "NO"
  printf "budget: heap %.0f KiB, at least %d KiB of it for the radio: %s\n", heap / 1024, heap_min_kib, heap_ok ? "ok" : "SHORT"
  exit !(img_ok && part_ok && heap_ok)
}'
}

status=0
report "$elf" full || status=$?
if [ "$floor" = 1 ]; then
  image=$(report "$elf" total)
  stack=$(report "$floor_elf" total)
  echo
  awk -v i="$image" -v s="$stack" 'BEGIN {
    printf "floor: the stacks alone (examples/stack_floor.rs)  %7.1f KiB\n", s / 1024
    printf "floor: latchkey on top of them                     %7.1f KiB\n", (i - s) / 1024
  }'
fi
if [ "$strict" = 1 ]; then exit "$status"; fi
