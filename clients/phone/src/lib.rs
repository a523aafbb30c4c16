//! The reference phone: what an app does, as a library the `latchkey phone …` commands and the
//! tests share. It is a real second party to the gateway: it speaks only the public interface
//! (HTTP API, WebSocket, BLE frames from docs/PROTOCOL.md).

pub mod cli;
pub mod credentials;
pub mod pair;
pub mod sync;
pub mod unlock;

pub use credentials::Credentials;
