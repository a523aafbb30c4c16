#!/usr/bin/env bash
# Size report of the ESP32-C3 firmware's release image: flash and static RAM by section, and
# issue 11's budget (image <= 800 KiB; static RAM leaving >= 128 KiB of heap for the radio).
# Builds the image first unless --no-build; with --strict, exits 1 when a budget line is not ok
# (CI runs it without: the image is over the 800 KiB line today, docs/PERFORMANCE.md says why). Uses llvm-size (reads any ELF), else rust-size
# (cargo-binutils), else GNU size; all three print `size -A`'s format.
set -euo pipefail
cd "$(dirname "$0")/../firmware/esp32c3"

build=1 strict=0
for arg in "$@"; do
  case "$arg" in
    --no-build) build=0 ;;
    --strict) strict=1 ;;
    *) echo "usage: $0 [--no-build] [--strict]" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ]; then
  cargo build --release --quiet
fi
elf=target/riscv32imc-unknown-none-elf/release/latchkey-node-esp32c3
[ -f "$elf" ] || { echo "no image at $elf" >&2; exit 1; }

size_tool=
for t in llvm-size rust-size size; do
  if command -v "$t" >/dev/null; then size_tool=$t; break; fi
done
[ -n "$size_tool" ] || { echo "no size tool (llvm-size, rust-size or size)" >&2; exit 1; }

# The main heap compiled in (src/board.rs) sits inside .bss; the other is .dram2_uninit.
kib_const() { sed -n "s/^pub const $1: usize = \([0-9]*\) \* 1024;/\1/p" src/board.rs; }
heap_main=$(kib_const HEAP_MAIN)

# ESP32-C3 address map: flash is mapped at 0x3C00_0000 (data) and 0x4200_0000 (code); SRAM is
# seen at 0x3FC8_0000.. (data bus) and 0x4037_C000.. (instruction bus: the same 400 KiB); RTC
# fast RAM at 0x5000_0000. Sections in SRAM that hold bytes (.data, .rwtext, ...) are copied
# from the image, so they count for flash too; .bss-like ones only take RAM. The `*_dummy`
# sections only reserve address space (IRAM and DRAM share the RAM; rodata and text share the
# flash cache's map): no bytes. The image espflash writes adds segment headers and padding
# (a few KiB) to the flash total.
status=0
"$size_tool" -A -d "$elf" | awk -v tool="$size_tool" -v heap_main="$heap_main" '
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
  img_ok = (tflash <= 800 * 1024); heap_ok = (heap >= 128 * 1024)
  printf "budget: image %.0f KiB of 800 KiB: %s\n", tflash / 1024, img_ok ? "ok" : "OVER"
  printf "budget: heap %.0f KiB, at least 128 KiB of it for the radio: %s\n", heap / 1024, heap_ok ? "ok" : "SHORT"
  exit !(img_ok && heap_ok)
}' || status=$?
if [ "$strict" = 1 ]; then exit "$status"; fi
