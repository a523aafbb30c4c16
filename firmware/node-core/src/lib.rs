//! Everything a latchkey endpoint node decides, for every board.
//!
//! A board crate (`firmware/linux`, later `firmware/esp32c3`) implements the small traits in
//! [`board`] and calls [`run`]; every rule lives here and is unit-tested on the host:
//!
//! - [`lifecycle`]: unprovisioned → joining → registering → online/offline, and the way back
//!   (NODES.md §1);
//! - [`provision`] and [`ap`]: the setup access point's API (seed 004), one picoserve router;
//! - [`register`]: redeeming the provisioning token at the gateway (NODES.md §3.2);
//! - [`session`] and [`backoff`]: the gateway session (NODES.md §5);
//! - [`relay`]: the relay pulse with its deadline;
//! - [`grants`], [`door`] and [`ring`]: the offline door (protocol v2, NODES.md §8): the
//!   verified grant set kept in flash, the BLE door service, the decision ring and its upload;
//! - [`pairing`]: a vehicle's pairing service (issue 12): its signed challenge, and the
//!   gateway's pairing response that adds a vehicle key offline;
//! - [`storage`]: credentials, grants and the decision ring on NOR flash through
//!   sequential-storage;
//! - [`identity`] and [`setup_code`]: the node's P-256 key pair and the label's setup code.
//!
//! JSON is `serde_json` over `alloc` (not serde-json-core): bodies carry escaped strings and
//! optional fields, and the node needs a heap anyway for its HTTP and WebSocket buffers.
//!
//! Time: [`time::Instant`] is monotonic milliseconds since boot (never goes back, unknown epoch);
//! [`time::WallClock`] is Unix time, which starts unknown and is learnt from the gateway's hello.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod ap;
pub mod backoff;
pub mod board;
pub mod door;
pub mod grants;
pub mod identity;
pub mod lifecycle;
pub mod pairing;
pub mod provision;
pub mod register;
pub mod relay;
pub mod ring;
mod run;
pub mod session;
pub mod setup_code;
pub mod storage;
/// Fixtures (the PROTOCOL.md §24 keys, a signing gateway, phones): the tests', and the fuzz
/// targets' with the `test-support` feature. Never in a board's build.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;
pub mod time;

pub use run::{run, Config, RunError};

/// The node's firmware version, sent at registration and in status frames.
pub const FIRMWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a node drives: seed 004's two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A door strike or lock relay.
    Door,
    /// A vehicle's immobiliser/unlock relay.
    Vehicle,
}

impl Kind {
    /// The wire name (`"door"`, `"vehicle"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Door => "door",
            Kind::Vehicle => "vehicle",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "door" => Some(Kind::Door),
            "vehicle" => Some(Kind::Vehicle),
            _ => None,
        }
    }
}
