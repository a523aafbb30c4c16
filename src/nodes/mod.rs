//! Endpoint nodes (docs/NODES.md): the registry of pending, registered and revoked nodes.
//!
//! - [`provisioning`]: one-time provisioning tokens and registration (one conditional UPDATE
//!   inside the writer's IMMEDIATE transaction, as `pairing` does);
//! - [`signing`]: the gateway's Ed25519 signing key, created once and sealed;
//! - [`doors`]: the endpoints a gateway can open, over the config and this registry;
//! - [`hub`]: the live node sessions, through which doors send `unlock` and await the result.
//!
//! Everything but the hub is transport-free and takes `now`; every change appends its
//! `node.*` event in the same transaction.

pub mod doors;
pub mod hub;
pub mod provisioning;
pub mod signing;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::json;

use crate::clock::{rfc3339, UnixTime};
use crate::events;
use crate::registry::{DeviceId, RevokeOutcome};
use crate::secret::TokenHash;
use crate::store::StoreError;

pub use hub::{NodeHub, UnlockError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("the provisioning token is not valid")]
    TokenInvalid,
    #[error("the provisioning token has expired")]
    TokenExpired,
    #[error("the provisioning token was already used")]
    TokenUsed,
    #[error("no such node")]
    NotFound,
    #[error("node is already registered")]
    AlreadyRegistered,
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
    #[error("sealing failed")]
    Seal,
}

/// A node id: a UUID v4 in its canonical lower-case hyphenated form, made by the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn new_random() -> Result<Self, crate::secret::RandomError> {
        Ok(Self(DeviceId::new_random()?.as_str().to_owned()))
    }

    /// Only the canonical spelling, so one node has exactly one id.
    pub fn parse(s: &str) -> Option<Self> {
        DeviceId::parse(s).map(|d| Self(d.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Door or vehicle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Door,
    Vehicle,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "door" => Some(Self::Door),
            "vehicle" => Some(Self::Vehicle),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Door => "door",
            Self::Vehicle => "vehicle",
        }
    }
}

/// Checks a name, room or household id with the rule device names follow (CONTRACT §2,
/// `crate::names`) and returns it trimmed. Empty is allowed here (every field is optional);
/// callers that need a value say so. The message names the field, never the value.
pub fn validate_name(s: &str, field: &str) -> Result<String, NodeError> {
    if s.trim().is_empty() {
        return Ok(String::new());
    }
    crate::names::display_name(s)
        .map(str::to_owned)
        .map_err(|e| NodeError::BadRequest(format!("{field} {e}")))
}

/// A node as the API shows it: never a key or a token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Node {
    pub node_id: NodeId,
    pub name: String,
    pub room: String,
    pub household_id: String,
    pub kind: Option<String>,
    pub firmware: Option<String>,
    /// `pending`, `registered` or `revoked`.
    pub state: &'static str,
    pub online: bool,
    pub last_seen: Option<String>,
    pub registered_at: Option<String>,
    pub revoked: bool,
    /// The endpoint id a door node is opened by.
    pub endpoint: Option<String>,
    /// Its offline-access grants: the snapshot signed last and what the node applied.
    pub grants: Option<GrantsState>,
    #[serde(skip)]
    pub last_seen_unix: Option<UnixTime>,
}

/// `"grants": {"version","count","applied"}` of a node (NODES.md §5): the version and grant
/// count of the snapshot the gateway signed last, and the version the node said it applied.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct GrantsState {
    pub version: u64,
    pub count: u64,
    pub applied: Option<u64>,
}

impl Node {
    /// What the UI shows as its name: the name, else the room, else the id.
    pub fn label(&self) -> &str {
        if !self.name.is_empty() {
            &self.name
        } else if !self.room.is_empty() {
            &self.room
        } else {
            self.node_id.as_str()
        }
    }
}

const NODE_COLUMNS: &str = "id, name, room, household_id, kind, firmware, registered_at, \
                            revoked_at, last_seen, online, endpoint_id, \
                            g.version, g.grant_count, g.applied_version";
/// Nodes with their grants state (migration 5), if any.
const NODE_FROM: &str = "nodes LEFT JOIN node_grants g ON g.node_id = nodes.id";

fn node_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    let registered: Option<i64> = r.get(6)?;
    let revoked: Option<i64> = r.get(7)?;
    let last_seen: Option<i64> = r.get(8)?;
    Ok(Node {
        node_id: NodeId(r.get(0)?),
        name: r.get(1)?,
        room: r.get(2)?,
        household_id: r.get(3)?,
        kind: r.get(4)?,
        firmware: r.get(5)?,
        state: match (registered, revoked) {
            (_, Some(_)) => "revoked",
            (Some(_), None) => "registered",
            (None, None) => "pending",
        },
        online: r.get::<_, i64>(9)? != 0,
        last_seen: last_seen.map(rfc3339),
        registered_at: registered.map(rfc3339),
        revoked: revoked.is_some(),
        endpoint: r.get(10)?,
        grants: r.get::<_, Option<i64>>(11)?.map(|version| GrantsState {
            version: u64::try_from(version).unwrap_or(0),
            count: r
                .get::<_, Option<i64>>(12)
                .ok()
                .flatten()
                .and_then(|c| u64::try_from(c).ok())
                .unwrap_or(0),
            applied: r
                .get::<_, Option<i64>>(13)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok()),
        }),
        last_seen_unix: last_seen,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<Node>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {NODE_COLUMNS} FROM {NODE_FROM} ORDER BY created_at, nodes.rowid"
    ))?;
    let rows = stmt.query_map([], node_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get(conn: &Connection, id: &NodeId) -> Result<Option<Node>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {NODE_COLUMNS} FROM {NODE_FROM} WHERE id = ?1"),
            [id.as_str()],
            node_from_row,
        )
        .optional()?)
}

/// The node whose key hashes to `hash` (an indexed lookup of a 256-bit key's hash).
pub fn by_key_hash(conn: &Connection, hash: &TokenHash) -> Result<Option<Node>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {NODE_COLUMNS} FROM {NODE_FROM} WHERE key_hash = ?1"),
            [hash.as_bytes()],
            node_from_row,
        )
        .optional()?)
}

/// Revokes a node (pending or registered): its key stops working, its unused tokens are void,
/// a vehicle's keys are voided, and `node.revoked` is recorded. Revoking twice changes nothing.
pub fn revoke(
    tx: &Transaction<'_>,
    id: &NodeId,
    now: UnixTime,
    origin: &str,
) -> Result<RevokeOutcome, StoreError> {
    let changed = tx.execute(
        "UPDATE nodes SET revoked_at = ?2, online = 0 WHERE id = ?1 AND revoked_at IS NULL",
        params![id.as_str(), now],
    )?;
    if changed == 0 {
        return crate::registry::unchanged_revoke(tx, "nodes", id.as_str());
    }
    tx.execute(
        "UPDATE provisioning_tokens SET voided_at = ?2
         WHERE node_id = ?1 AND used_at IS NULL AND voided_at IS NULL",
        params![id.as_str(), now],
    )?;
    // A vehicle's keys go with it (they open nothing else).
    crate::grants::vehicle::void_for_vehicle(tx, id.as_str(), now, origin)?;
    events::append(
        tx,
        "node.revoked",
        &json!({ "nodeId": id }),
        origin,
        now * 1000,
    )?;
    Ok(RevokeOutcome::Revoked)
}

/// What an admin may change about a node; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct Rename {
    pub name: Option<String>,
    pub room: Option<String>,
    /// A new endpoint id for a door node (`[a-z0-9_-]{1,32}`, unique).
    pub endpoint: Option<String>,
}

/// Renames a node; `reserved` are the endpoint ids the configuration already uses.
pub fn rename(
    tx: &Transaction<'_>,
    id: &NodeId,
    change: &Rename,
    reserved: &[String],
    now: UnixTime,
    origin: &str,
) -> Result<Node, NodeError> {
    let node = get(tx, id)?.ok_or(NodeError::NotFound)?;
    let name = match &change.name {
        Some(n) => validate_name(n, "name")?,
        None => node.name.clone(),
    };
    let room = match &change.room {
        Some(r) => validate_name(r, "room")?,
        None => node.room.clone(),
    };
    let endpoint = match &change.endpoint {
        Some(e) if Some(e.as_str()) != node.endpoint.as_deref() => {
            if node.kind.as_deref() != Some("door") {
                return Err(NodeError::BadRequest(
                    "only a registered door node has an endpoint".into(),
                ));
            }
            if !doors::valid_endpoint_id(e) {
                return Err(NodeError::BadRequest(
                    "endpoint must be 1 to 32 of [a-z0-9_-]".into(),
                ));
            }
            if doors::endpoint_taken(tx, e, reserved)? {
                return Err(NodeError::BadRequest(
                    "that endpoint id is already in use".into(),
                ));
            }
            Some(e.clone())
        }
        _ => node.endpoint.clone(),
    };
    tx.execute(
        "UPDATE nodes SET name = ?2, room = ?3, endpoint_id = ?4 WHERE id = ?1",
        params![id.as_str(), name, room, endpoint],
    )?;
    events::append(
        tx,
        "node.renamed",
        &json!({ "nodeId": id, "name": name, "room": room, "endpoint": endpoint }),
        origin,
        now * 1000,
    )?;
    get(tx, id)?.ok_or(NodeError::NotFound)
}

/// Why a node session ended (`node.offline`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    Closed,
    Timeout,
    Replaced,
    Shutdown,
    Revoked,
}

impl OfflineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Replaced => "replaced",
            Self::Shutdown => "shutdown",
            Self::Revoked => "revoked",
        }
    }
}

/// A session came up: `online`, `last_seen`, `node.online`.
pub fn set_online(tx: &Transaction<'_>, id: &NodeId, now: UnixTime) -> Result<i64, StoreError> {
    tx.execute(
        "UPDATE nodes SET online = 1, last_seen = ?2 WHERE id = ?1",
        params![id.as_str(), now],
    )?;
    events::append(
        tx,
        "node.online",
        &json!({ "nodeId": id }),
        "gateway",
        now * 1000,
    )
}

/// A session ended: offline, `last_seen`, `node.offline` with the reason.
pub fn set_offline(
    tx: &Transaction<'_>,
    id: &NodeId,
    reason: OfflineReason,
    now: UnixTime,
) -> Result<i64, StoreError> {
    tx.execute(
        "UPDATE nodes SET online = 0, last_seen = ?2 WHERE id = ?1",
        params![id.as_str(), now],
    )?;
    events::append(
        tx,
        "node.offline",
        &json!({ "nodeId": id, "reason": reason.as_str() }),
        "gateway",
        now * 1000,
    )
}

/// Records that a node was heard from, at most once a minute.
pub fn touch_last_seen(tx: &Transaction<'_>, id: &NodeId, now: UnixTime) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE nodes SET last_seen = ?2 WHERE id = ?1 AND (last_seen IS NULL OR last_seen <= ?2 - 60)",
        params![id.as_str(), now],
    )?;
    Ok(())
}

/// A status frame named another firmware version (after an update): keep the registry current.
pub fn record_firmware(
    tx: &Transaction<'_>,
    id: &NodeId,
    firmware: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE nodes SET firmware = ?2 WHERE id = ?1 AND firmware IS NOT ?2",
        params![id.as_str(), firmware],
    )?;
    Ok(())
}

/// On start-up no node is connected yet, whatever the last run left behind.
pub fn reset_online(tx: &Transaction<'_>) -> Result<usize, StoreError> {
    Ok(tx.execute("UPDATE nodes SET online = 0 WHERE online != 0", [])?)
}

/// A `node.command` outcome, recorded after the node answered (or did not).
pub struct CommandRecord<'a> {
    pub node_id: &'a NodeId,
    pub command_id: u64,
    pub command: &'a str,
    pub endpoint: &'a str,
    pub error: Option<&'a str>,
    pub ms: u64,
}

pub fn record_command(
    tx: &Transaction<'_>,
    c: &CommandRecord<'_>,
    origin: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let mut data = json!({
        "nodeId": c.node_id,
        "commandId": c.command_id,
        "command": c.command,
        "endpoint": c.endpoint,
        "ok": c.error.is_none(),
        "ms": c.ms,
    });
    if let Some(e) = c.error {
        data["error"] = json!(e);
    }
    events::append(tx, "node.command", &data, origin, now_ms)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(
            validate_name("  Front door ", "name").unwrap(),
            "Front door"
        );
        assert_eq!(validate_name("", "name").unwrap(), "");
        assert_eq!(validate_name("Küche", "room").unwrap(), "Küche");
        assert!(validate_name(&"x".repeat(65), "name").is_err());
        assert!(validate_name(&"é".repeat(64), "name").is_ok());
        for bad in [
            "a\u{7}b",
            "a\u{202e}b",
            "a\u{200b}b",
            "a\u{2028}b",
            "a\u{feff}",
        ] {
            assert!(validate_name(bad, "name").is_err(), "{bad:?}");
        }
        // The message names the field, never the value.
        let e = validate_name("evil\u{202e}", "room")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("room "), "{e}");
        assert!(!e.contains("evil"), "{e}");
    }

    #[test]
    fn node_ids_are_canonical() {
        let id = NodeId::new_random().unwrap();
        assert_eq!(NodeId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(NodeId::parse(&id.as_str().to_uppercase()), None);
        assert_eq!(NodeId::parse("node-1"), None);
    }
}
