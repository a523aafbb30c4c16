//! esp-hal's linker script (it includes the memory map, the ROM functions and the radio's
//! sections), for the binary and the size report's floor example only.
fn main() {
    println!("cargo::rustc-link-arg-bins=-Tlinkall.x");
    println!("cargo::rustc-link-arg-examples=-Tlinkall.x");
}
