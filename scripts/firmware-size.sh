#!/usr/bin/env bash
# Size report of the ESP32-C3 firmware's release image: flash and static RAM by section, and the
# budget of issue 11 (image <= 800 KiB; static RAM leaving >= 128 KiB of heap for the radio).
# Builds the image first unless --no-build. Uses llvm-size (LLVM's, reads any ELF); GNU `size`
# as a fallback.
set -euo pipefail
cd "$(dirname "$0")/../firmware/esp32c3"

if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --quiet
fi
elf=target/riscv32imc-unknown-none-elf/release/latchkey-node-esp32c3
[ -f "$elf" ] || { echo "no image at $elf" >&2; exit 1; }

if command -v llvm-size >/dev/null; then size_tool=llvm-size
elif command -v rust-size >/dev/null; then size_tool=rust-size
else size_tool=size; fi

# ESP32-C3 memory map: flash is mapped at 0x4200_0000 (code) and 0x3C00_0000 (rodata); on-chip
# SRAM at 0x3FC8_0000 (data bus) and 0x4037_C000 (instruction bus, same RAM).
"$size_tool" -A -x "$elf" | awk -v tool="$size_tool" '
function kib(n) { return sprintf("%.1f", n / 1024) }
NR > 2 && $1 ~ /^\./ {
  name = $1; sz = strtonum($2); addr = strtonum($3)
  if (sz == 0) next
  in_flash = (addr >= 0x3C000000 && addr < 0x3D000000) || (addr >= 0x42000000 && addr < 0x43000000)
  in_ram = (addr >= 0x3FC80000 && addr < 0x3FD00000) || (addr >= 0x40370000 && addr < 0x403E0000) \
           || (addr >= 0x50000000 && addr < 0x50002000)
  nobits = (name ~ /bss|uninit|heap|stack/)
  if (in_flash) { flash[name] = sz; tflash += sz }
  else if (in_ram) {
    ram[name] = sz; tram += sz
    # Initialised RAM sections (.data, .rwtext) are also copied from flash.
    if (!nobits) { flash[name " (load)"] = sz; tflash += sz }
  }
}
END {
  printf "size tool: %s\n\n", tool
  printf "%-32s %10s %9s\n", "flash (image)", "bytes", "KiB"
  for (n in flash) printf "%-32s %10d %9s\n", n, flash[n], kib(flash[n])
  printf "%-32s %10d %9s\n\n", "total", tflash, kib(tflash)
  printf "%-32s %10d %9s\n", "static RAM", "", ""
  for (n in ram) printf "%-32s %10d %9s\n", n, ram[n], kib(ram[n])
  printf "%-32s %10d %9s\n", "total", tram, kib(tram)
}'

# The heap regions as compiled in (src/board.rs): the main one is inside .bss above.
heap_main=$(sed -n 's/^pub const HEAP_MAIN: usize = \([0-9]*\) \* 1024;/\1/p' src/board.rs)
heap_reclaimed=$(sed -n 's/^pub const HEAP_RECLAIMED: usize = \([0-9]*\) \* 1024;/\1/p' src/board.rs)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
# The flashed image is what espflash writes: the ELF's loadable segments (llvm-objcopy when present).
if command -v llvm-objcopy >/dev/null; then
  llvm-objcopy -O binary "$elf" "$bin" 2>/dev/null || true
fi
image=$("$size_tool" -A "$elf" | awk '
  NR > 2 && $1 ~ /^\./ { a = strtonum($3); s = strtonum($2)
    if ((a >= 0x3C000000 && a < 0x3D000000) || (a >= 0x42000000 && a < 0x43000000)) t += s
    else if (((a >= 0x3FC80000 && a < 0x3FD00000) || (a >= 0x40370000 && a < 0x403E0000)) && $1 !~ /bss|uninit|heap|stack/) t += s }
  END { print t }')
echo
echo "heap: ${heap_main} KiB main (in .bss) + ${heap_reclaimed} KiB reclaimed (.dram2_uninit)"
budget=$((800 * 1024))
if [ "$image" -le "$budget" ]; then verdict=ok; else verdict=OVER; fi
echo "budget: image $((image / 1024)) KiB of 800 KiB: $verdict"
heap_total=$((heap_main + heap_reclaimed))
if [ "$heap_total" -ge 128 ]; then hverdict=ok; else hverdict=SHORT; fi
echo "budget: heap ${heap_total} KiB, at least 128 KiB for the radio: $hverdict"
[ "$verdict" = ok ] && [ "$hverdict" = ok ]
