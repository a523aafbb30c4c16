//! The `latchkey-node` board's adapters that tests drive directly (the binary is `main.rs`).

pub mod ble;
