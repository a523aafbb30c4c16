//! The fuzz targets, one function each, so that the AFL binaries (src/bin/) stay one line and
//! `cargo test` replays the committed corpora through the same code.
//!
//! Each target feeds the bytes exactly where an attacker's bytes arrive: a BLE write, a frame
//! from the gateway's socket, an HTTP body on the setup access point, a page read back from
//! flash, a frame or body on the gateway's LAN port, its configuration file. A target must
//! never panic, whatever the input; everything else is the decoders' own business (their
//! errors are the expected outcome for nearly every input).

pub mod gateway;
pub mod node;
pub mod proto;

/// A target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// The targets by name, as `scripts/fuzz.sh` and the corpus directories name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("ble_v1", proto::ble_v1),
    ("ble_v2", proto::ble_v2),
    ("node_door", node::door),
    ("node_pairing", node::pairing),
    ("node_grants", node::grants),
    ("node_session", node::session),
    ("node_ap", node::ap),
    ("node_ring", node::ring),
    ("gateway_ws", gateway::ws),
    ("gateway_config", gateway::config),
    ("gateway_http", gateway::http),
];
