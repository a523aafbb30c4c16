//! The reference phone: what an app does, as a library the `latchkey phone …` commands and the
//! tests share. It is a real second party to the gateway: it speaks only the public interface
//! (HTTP API, WebSocket, BLE frames from docs/PROTOCOL.md, the node AP API of docs/NODES.md)
//! and depends on nothing of the gateway but the wire-protocol crate.

pub mod add_node;
pub mod cli;
pub mod clock;
pub mod credentials;
pub mod discover;
pub mod pair;
pub mod pair_vehicle;
pub mod provisioning;
pub mod secret;
pub mod sync;
pub mod sync_client;
pub mod tool;
pub mod unlock;
pub mod vehicle;

pub use credentials::Credentials;
