//! Offline access (issue 10): phone keys, expiring access tools, and the signed grants that
//! let doors decide without the gateway (docs/PROTOCOL.md §13–§25, NODES.md §5).
//!
//! - [`tools`]: a device's one phone key and its one live access tool (register, refresh,
//!   void), each change with its `device.tool` event in the same transaction;
//! - [`doorkey`]: the gateway's own door key (P-256), sealed under the master key;
//! - [`snapshot`]: what each door may honour — the grants of a node (versioned, with its
//!   revocation epoch, signed with the gateway's Ed25519 key) and of the gateway's own door;
//! - [`decisions`]: a node's uploaded decision log turned into `access.*` events, exactly once;
//! - [`vehicle`]: vehicle keys, tools for one vehicle node (issue 12);
//! - [`pairing_sessions`]: the one-time sessions a phone gets a vehicle key through.
//!
//! Transport-free: callers pass `now`; the web, ws and ble adapters call in.

pub mod decisions;
pub mod doorkey;
pub mod pairing_sessions;
pub mod snapshot;
pub mod tools;
pub mod vehicle;

use crate::nodes::NodeError;
use crate::store::StoreError;

/// Topics whose events may change what some door honours: the adapters that hold grants
/// (node sessions, the gateway's own door) rebuild them when one goes by.
pub const TRIGGERS: &[&str] = &[
    "device.tool",
    "device.revoked",
    "node.renamed",
    "node.registered",
    "node.revoked",
];

/// Whether an event of `topic` may change some door's grants.
pub fn is_trigger(topic: &str) -> bool {
    TRIGGERS.contains(&topic)
}

#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    /// The request is malformed; the message names the field, never its value.
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("no such access tool")]
    NotFound,
    #[error("the device is revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Key(#[from] NodeError),
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
    #[error("grant encoding: {0}")]
    Proto(String),
}

impl From<latchkey_proto::v2::Error> for GrantsError {
    fn from(e: latchkey_proto::v2::Error) -> Self {
        Self::Proto(format!("{e:?}"))
    }
}
