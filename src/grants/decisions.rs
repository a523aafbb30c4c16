//! A node's decision log, uploaded over its session (NODES.md §5 `decisions`), turned into
//! `access.*` events exactly once: the registry keeps per node the highest `seq` recorded, and
//! entries at or below it are acknowledged again without new events. Each upload is recorded
//! in one transaction with the mark.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use super::tools;
use crate::events;
use crate::nodes::NodeId;
use crate::store::StoreError;
use latchkey_proto::v2::{EndpointId, Status};

/// Entries in one `decisions` frame at most.
pub const MAX_ENTRIES: usize = 32;

/// One checked entry of a node's decision log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub status: Status,
    /// Canonical lower-case UUID.
    pub tool_id: Option<String>,
    pub endpoint: Option<String>,
    pub phone_time: Option<u64>,
    pub door_time: Option<u64>,
    pub offline: bool,
}

impl Entry {
    /// Checks one entry as the node sent it; `Err` names what is wrong (for `BAD_FRAME`).
    pub fn check(
        seq: u64,
        status: &str,
        tool_id: Option<&str>,
        endpoint: Option<&str>,
        phone_time: Option<u64>,
        door_time: Option<u64>,
        offline: bool,
    ) -> Result<Self, &'static str> {
        if seq == 0 {
            return Err("decision seq starts at 1");
        }
        let status = Status::from_name(status).ok_or("decision status is not a status name")?;
        let tool_id = match tool_id {
            Some(t) => {
                let u = uuid::Uuid::try_parse(t).map_err(|_| "decision toolId is not a UUID")?;
                let canonical = u.hyphenated().to_string();
                if canonical != t {
                    return Err("decision toolId is not a lower-case hyphenated UUID");
                }
                Some(canonical)
            }
            None => None,
        };
        if let Some(e) = endpoint {
            EndpointId::new(e).map_err(|_| "decision endpoint is not an endpoint id")?;
        }
        Ok(Self {
            seq,
            status,
            tool_id,
            endpoint: endpoint.map(str::to_owned),
            phone_time,
            door_time,
            offline,
        })
    }
}

/// Checks a frame's entries as a whole: at most 32, `seq` strictly increasing.
pub fn check_batch(entries: &[Entry]) -> Result<(), &'static str> {
    if entries.len() > MAX_ENTRIES {
        return Err("more than 32 decisions in one frame");
    }
    if entries.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err("decision seqs are not strictly increasing");
    }
    Ok(())
}

/// Which door decided a v2 request.
#[derive(Debug, Clone, Copy)]
pub enum DoorKind<'a> {
    Node { id: &'a NodeId, seq: u64 },
    Gateway,
}

/// One v2 decision as `access.granted` / `access.denied` records it, the same for a node's
/// uploaded entries and the gateway's own door.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub status: Status,
    /// The tool's device and its name, when the tool is known.
    pub device: Option<&'a (crate::registry::DeviceId, String)>,
    pub tool_id: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub phone_time: Option<u64>,
    pub door_time: Option<u64>,
    pub door: DoorKind<'a>,
    pub offline: bool,
    /// Why a granted endpoint's action failed (`ACTION_FAILED`).
    pub detail: Option<&'a str>,
}

/// Appends the `access.*` event of a v2 decision.
pub fn append_access(
    tx: &Transaction<'_>,
    a: &Access<'_>,
    origin: &str,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let topic = if a.status == Status::Granted {
        "access.granted"
    } else {
        "access.denied"
    };
    let (door, node_id, seq) = match a.door {
        DoorKind::Node { id, seq } => ("node", Some(id), Some(seq)),
        DoorKind::Gateway => ("gateway", None, None),
    };
    let mut data = json!({
        "deviceId": a.device.map(|d| &d.0),
        "deviceName": a.device.map(|d| &d.1),
        "endpoint": a.endpoint,
        "reason": a.status.as_str(),
        "transport": "ble",
        "protocol": 2,
        "door": door,
        "nodeId": node_id,
        "toolId": a.tool_id,
        "offline": a.offline,
        "seq": seq,
        "doorTime": a.door_time,
        "phoneTime": a.phone_time,
    });
    if let Some(d) = a.detail {
        data["detail"] = json!(d);
    }
    events::append(tx, topic, &data, origin, now_ms)
}

/// What a `decisions` frame reports besides its entries (NODES.md §5.1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Decisions the node's full ring dropped.
    pub lost: u64,
    /// Attempts that matched no grant, counted by the node instead of stored.
    pub unrecognised: u64,
}

/// Records the entries above the node's mark and raises it; `lost` becomes one
/// `node.decisions_lost` and `unrecognised` one `node.unrecognised`, unless the frame is a
/// resend of entries all recorded already. Returns the `upTo` to acknowledge.
pub fn record(
    tx: &Transaction<'_>,
    node: &NodeId,
    entries: &[Entry],
    counts: Counts,
    now_ms: i64,
) -> Result<u64, StoreError> {
    tx.execute(
        "INSERT OR IGNORE INTO node_grants (node_id) VALUES (?1)",
        [node.as_str()],
    )?;
    let mark: i64 = tx
        .query_row(
            "SELECT decisions_seq FROM node_grants WHERE node_id = ?1",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let mut mark = u64::try_from(mark).unwrap_or(0);
    let fresh: Vec<&Entry> = entries.iter().filter(|e| e.seq > mark).collect();
    let origin = format!("node:{node}");
    for e in &fresh {
        let owner = match &e.tool_id {
            Some(t) => tools::owner(tx, t)?,
            None => None,
        };
        let record = Access {
            status: e.status,
            device: owner.as_ref(),
            tool_id: e.tool_id.as_deref(),
            endpoint: e.endpoint.as_deref(),
            phone_time: e.phone_time,
            door_time: e.door_time,
            door: DoorKind::Node {
                id: node,
                seq: e.seq,
            },
            offline: e.offline,
            detail: None,
        };
        append_access(tx, &record, &origin, now_ms)?;
        mark = e.seq;
    }
    if entries.is_empty() || !fresh.is_empty() {
        for (topic, count) in [
            ("node.decisions_lost", counts.lost),
            ("node.unrecognised", counts.unrecognised),
        ] {
            if count > 0 {
                let data = json!({ "nodeId": node, "count": count });
                events::append(tx, topic, &data, &origin, now_ms)?;
            }
        }
    }
    tx.execute(
        "UPDATE node_grants SET decisions_seq = ?2 WHERE node_id = ?1",
        params![node.as_str(), i64::try_from(mark).unwrap_or(i64::MAX)],
    )?;
    Ok(entries.iter().map(|e| e.seq).max().unwrap_or(0).max(mark))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        let ok = Entry::check(1, "GRANTED", None, Some("front-door"), None, Some(5), true);
        assert!(ok.is_ok());
        assert!(Entry::check(0, "GRANTED", None, None, None, None, true).is_err());
        assert!(Entry::check(1, "OPEN_SESAME", None, None, None, None, true).is_err());
        assert!(Entry::check(1, "GRANTED", Some("x"), None, None, None, true).is_err());
        let upper = "A1B2C3D4-E5F6-4A7B-8C9D-0E1F2A3B4C5D";
        assert!(Entry::check(1, "GRANTED", Some(upper), None, None, None, true).is_err());
        assert!(Entry::check(1, "GRANTED", None, Some("Front"), None, None, true).is_err());
        let e = |seq| Entry::check(seq, "UNKNOWN_TOOL", None, None, None, None, false).unwrap();
        assert!(check_batch(&[e(1), e(2)]).is_ok());
        assert!(check_batch(&[e(2), e(2)]).is_err());
        assert!(check_batch(&(1..=33).map(e).collect::<Vec<_>>()).is_err());
    }
}
