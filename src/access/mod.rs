//! Access to doors: the transport-free domain behind the BLE door service.
//!
//! - [`challenge`]: per-connection nonces (single-use, 30 s, bounded table);
//! - [`verify`]: the order of checks of PROTOCOL.md §7.2 as a pure function, and the
//!   transaction that commits a decision with its event;
//! - [`lockout`]: 5 failures → 60 s, doubling to 1 h, per device and per peer, persisted;
//! - [`endpoint`] and [`action`]: which doors exist, who may use them, what a grant does;
//! - [`gate`]: one attempt from frame to result frame, for any transport.
//!
//! Nothing here reads a clock or knows BlueZ: callers pass `now` and a connection key.

pub mod action;
pub mod challenge;
pub mod endpoint;
pub mod gate;
pub mod lockout;
pub mod verify;

pub use challenge::{Challenges, Taken};
pub use gate::{Gate, Outcome};
