//! What each door honours offline (PROTOCOL.md §19): for a door node, one grant per live
//! general tool and per endpoint of that node its device may open, signed as one snapshot with
//! the gateway's Ed25519 key; for a vehicle node, one grant per live key for that vehicle
//! (endpoint `vehicle`, PROTOCOL.md §27); for the gateway's own door, the general tools' grants
//! for every endpoint.
//!
//! Per node the registry keeps the last snapshot it signed, its `version` (strictly increasing,
//! `max(previous + 1, now_ms)`, so it stays above anything sent before a backup restore) and
//! its revocation `epoch`, raised by one whenever a grant that had not expired disappears (a
//! voided tool, a revoked device, a renamed endpoint): the node then refuses every grant signed
//! before (§19.4). [`refresh`] signs a new snapshot only when the grants (or the pulse) changed.

use ed25519_dalek::VerifyingKey;
use rusqlite::{params, OptionalExtension, Transaction};

use super::tools::{self, Scope, Tool};
use super::{doorkey, GrantsError};
use crate::access::endpoint::Endpoint;
use crate::clock::UnixTime;
use crate::config::{ActionConfig, EndpointConfig};
use crate::crypto::MasterKey;
use crate::nodes::{doors, signing, NodeId};
use crate::registry::DeviceId;
use crate::store::StoreError;
use latchkey_proto::v2::{
    encode_snapshot, snapshot_len, verify_snapshot, DoorId, EndpointId, Grant, SnapshotHeader,
    GRANT_CAPACITY,
};

/// Tools that expired up to a day ago still go out: a node whose clock runs a little behind
/// answers `TOOL_EXPIRED` (which says what happened) rather than `UNKNOWN_TOOL`.
pub const GRACE_SECS: i64 = 86_400;
/// NODES.md §5: `pulse_ms` 100–30000, else the node's 3000.
const PULSE_RANGE: std::ops::RangeInclusive<u64> = 100..=30_000;

/// A node's current snapshot, as the session sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSnapshot {
    pub version: u64,
    pub epoch: u32,
    pub bytes: Vec<u8>,
    pub pulse_ms: u64,
    pub count: usize,
}

/// One grant per tool and per endpoint `opens(device)` lists, at most 256 (those that expire
/// last), in a fixed order (tool id, endpoint).
fn grants_for(
    tools: &[(Tool, String)],
    door_id: &DoorId,
    epoch: u32,
    opens: impl Fn(&DeviceId) -> Vec<EndpointId>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    for (tool, _) in tools {
        let (Ok(not_before), Ok(expires)) = (
            u64::try_from(tool.issued_at),
            u64::try_from(tool.expires_at),
        ) else {
            continue;
        };
        if not_before >= expires {
            continue;
        }
        for endpoint in opens(&tool.device_id) {
            grants.push(Grant {
                tool_id: tool.id_bytes(),
                node_id: *door_id,
                endpoint,
                not_before,
                expires,
                epoch,
                phone_key: tool.pubkey,
            });
        }
    }
    if grants.len() > GRANT_CAPACITY {
        tracing::warn!(
            grants = grants.len(),
            kept = GRANT_CAPACITY,
            "a door's grants exceed its capacity: the ones expiring first are left out"
        );
        grants.sort_by_key(|g| std::cmp::Reverse(g.expires));
        grants.truncate(GRANT_CAPACITY);
    }
    grants.sort_by(|a, b| (a.tool_id, a.endpoint.as_str()).cmp(&(b.tool_id, b.endpoint.as_str())));
    grants
}

fn endpoint_ids<'a>(eps: impl Iterator<Item = &'a Endpoint>) -> Vec<EndpointId> {
    eps.filter_map(|e| EndpointId::new(&e.id).ok()).collect()
}

/// A node's door id: its UUID's 16 bytes.
pub fn node_door_id(node: &NodeId) -> DoorId {
    uuid::Uuid::try_parse(node.as_str())
        .map(|u| u.into_bytes())
        .unwrap_or_default()
}

fn sign(
    header: &SnapshotHeader,
    grants: &[Grant],
    key: &ed25519_dalek::SigningKey,
) -> Result<Vec<u8>, GrantsError> {
    let mut out = vec![0u8; snapshot_len(grants.len())];
    let n = encode_snapshot(header, grants, key, &mut out)?;
    out.truncate(n);
    Ok(out)
}

/// The same grants apart from the epoch (which re-signing changes, not what they allow).
fn same_grants(a: &[Grant], b: &[Grant]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.tool_id == y.tool_id
                && x.endpoint == y.endpoint
                && x.not_before == y.not_before
                && x.expires == y.expires
                && x.phone_key == y.phone_key
        })
}

type Stored = (u64, u32, Option<Vec<u8>>, u64, usize);

fn stored(tx: &Transaction<'_>, node: &NodeId) -> Result<Option<Stored>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT version, epoch, snapshot, pulse_ms, grant_count FROM node_grants
             WHERE node_id = ?1",
            [node.as_str()],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            },
        )
        .optional()?
        .map(|(v, e, s, p, c)| {
            (
                u64::try_from(v).unwrap_or(0),
                u32::try_from(e).unwrap_or(0),
                s,
                u64::try_from(p).unwrap_or(0),
                usize::try_from(c).unwrap_or(0),
            )
        }))
}

/// The node's snapshot as of now: the stored one if its grants are still what the registry
/// says, else a newly signed one (stored before it is returned). `None` for a node that is
/// not a registered, unrevoked door or vehicle.
pub fn refresh(
    tx: &Transaction<'_>,
    master: &MasterKey,
    config: &[EndpointConfig],
    node: &NodeId,
    now: UnixTime,
    now_ms: i64,
) -> Result<Option<NodeSnapshot>, GrantsError> {
    let kind: Option<String> = tx
        .query_row(
            "SELECT kind FROM nodes WHERE id = ?1
             AND registered_at IS NOT NULL AND revoked_at IS NULL",
            [node.as_str()],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let door_id = node_door_id(node);
    let since = now.saturating_sub(GRACE_SECS);
    let (mut grants, pulse_ms) = match kind.as_deref() {
        Some("door") => {
            let endpoints = doors::endpoints(tx, config)?;
            let mine: Vec<&Endpoint> = endpoints
                .iter()
                .filter(|e| {
                    matches!(&e.action, ActionConfig::Node { node_id, .. } if node_id == node.as_str())
                })
                .collect();
            let pulse_ms = mine
                .iter()
                .find_map(|e| match e.action {
                    ActionConfig::Node { pulse_ms, .. } => Some(pulse_ms),
                    _ => None,
                })
                .filter(|p| PULSE_RANGE.contains(p))
                .unwrap_or(doors::DEFAULT_PULSE_MS);
            let live = tools::live(tx, since, Scope::General)?;
            let grants = grants_for(&live, &door_id, 0, |device| {
                endpoint_ids(mine.iter().copied().filter(|e| e.allows(device)))
            });
            (grants, pulse_ms)
        }
        Some("vehicle") => {
            let live = tools::live(tx, since, Scope::Vehicle(node.as_str()))?;
            let endpoint = EndpointId::new(latchkey_proto::v2::pairing::ENDPOINT)?;
            let grants = grants_for(&live, &door_id, 0, |_| vec![endpoint]);
            (grants, doors::DEFAULT_PULSE_MS)
        }
        _ => return Ok(None),
    };

    let key = signing::get_or_create(tx, master)?;
    let previous = stored(tx, node)?;
    let (prev_version, prev_epoch) = previous.as_ref().map_or((0, 0), |p| (p.0, p.1));
    if let Some((version, epoch, Some(bytes), prev_pulse, count)) = &previous {
        let old: Vec<Grant> = verify_snapshot(bytes, &key.verifying_key(), &door_id)
            .map(|v| v.grants().collect())
            .unwrap_or_default();
        if same_grants(&old, &grants) && *prev_pulse == pulse_ms {
            return Ok(Some(NodeSnapshot {
                version: *version,
                epoch: *epoch,
                bytes: bytes.clone(),
                pulse_ms,
                count: *count,
            }));
        }
        let still = |g: &Grant| {
            grants
                .iter()
                .any(|n| n.tool_id == g.tool_id && n.endpoint == g.endpoint)
        };
        let removed = old
            .iter()
            .any(|g| !still(g) && i64::try_from(g.expires).unwrap_or(i64::MAX) > now);
        if removed {
            return sign_and_store(
                tx,
                node,
                &key,
                grants,
                prev_version,
                epoch + 1,
                pulse_ms,
                now,
                now_ms,
            )
            .map(Some);
        }
    }
    for g in &mut grants {
        g.epoch = prev_epoch;
    }
    sign_and_store(
        tx,
        node,
        &key,
        grants,
        prev_version,
        prev_epoch,
        pulse_ms,
        now,
        now_ms,
    )
    .map(Some)
}

#[allow(clippy::too_many_arguments)]
fn sign_and_store(
    tx: &Transaction<'_>,
    node: &NodeId,
    key: &ed25519_dalek::SigningKey,
    mut grants: Vec<Grant>,
    prev_version: u64,
    epoch: u32,
    pulse_ms: u64,
    now: UnixTime,
    now_ms: i64,
) -> Result<NodeSnapshot, GrantsError> {
    for g in &mut grants {
        g.epoch = epoch;
    }
    let version = (prev_version + 1).max(u64::try_from(now_ms).unwrap_or(0));
    let header = SnapshotHeader {
        node_id: node_door_id(node),
        version,
        epoch,
        issued_at: u64::try_from(now).unwrap_or(0),
    };
    let bytes = sign(&header, &grants, key)?;
    tx.execute(
        "INSERT INTO node_grants (node_id, version, epoch, snapshot, pulse_ms, grant_count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(node_id) DO UPDATE SET version = excluded.version, epoch = excluded.epoch,
             snapshot = excluded.snapshot, pulse_ms = excluded.pulse_ms,
             grant_count = excluded.grant_count",
        params![
            node.as_str(),
            i64::try_from(version).unwrap_or(i64::MAX),
            i64::from(epoch),
            bytes,
            i64::try_from(pulse_ms).unwrap_or(0),
            i64::try_from(grants.len()).unwrap_or(0),
        ],
    )?;
    Ok(NodeSnapshot {
        version,
        epoch,
        bytes,
        pulse_ms,
        count: grants.len(),
    })
}

/// A node applied (and persisted) snapshot `version` holding `count` grants. Only versions
/// this gateway signed count; an older ack arriving late does not go backwards.
pub fn record_ack(
    tx: &Transaction<'_>,
    node: &NodeId,
    version: u64,
    count: u64,
) -> Result<bool, StoreError> {
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let n = tx.execute(
        "UPDATE node_grants SET applied_version = ?2, applied_count = ?3
         WHERE node_id = ?1 AND version >= ?2
           AND (applied_version IS NULL OR applied_version < ?2)",
        params![node.as_str(), version, i64::try_from(count).unwrap_or(0)],
    )?;
    Ok(n > 0)
}

/// What the gateway's own door needs to (re)build its grant set.
pub struct GatewayDoor {
    pub snapshot: Vec<u8>,
    pub gateway_key: VerifyingKey,
    pub door_key: p256::SecretKey,
    pub count: usize,
}

/// The gateway door's snapshot (door id = `gateway_id` hex-decoded, epoch 0: the gateway
/// rebuilds its set from the registry at every change, so nothing stale can be replayed to
/// it), signed as `version` (above the one it holds).
pub fn gateway(
    tx: &Transaction<'_>,
    master: &MasterKey,
    config: &[EndpointConfig],
    gateway_id: &str,
    version: u64,
    now: UnixTime,
) -> Result<GatewayDoor, GrantsError> {
    let door_id = gateway_door_id(gateway_id);
    let endpoints = doors::endpoints(tx, config)?;
    let live = tools::live(tx, now.saturating_sub(GRACE_SECS), Scope::General)?;
    let grants = grants_for(&live, &door_id, 0, |device| {
        endpoint_ids(endpoints.open_to(device))
    });
    let key = signing::get_or_create(tx, master)?;
    let header = SnapshotHeader {
        node_id: door_id,
        version,
        epoch: 0,
        issued_at: u64::try_from(now).unwrap_or(0),
    };
    Ok(GatewayDoor {
        snapshot: sign(&header, &grants, &key)?,
        gateway_key: key.verifying_key(),
        door_key: doorkey::get_or_create(tx, master)?,
        count: grants.len(),
    })
}

/// Whether an event that may change grants ([`super::TRIGGERS`]) was committed after `seq`,
/// and the log's latest seq (the point a rebuild now is current to).
pub fn changed_since(conn: &rusqlite::Connection, seq: i64) -> Result<(bool, i64), StoreError> {
    let latest = crate::events::latest_seq(conn)?;
    let topics = super::TRIGGERS
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(",");
    let changed: bool = conn.query_row(
        &format!(
            "SELECT EXISTS(SELECT 1 FROM events WHERE seq > ?1 AND seq <= ?2
             AND topic IN ({topics}))"
        ),
        params![seq, latest],
        |r| r.get(0),
    )?;
    Ok((changed, latest))
}

/// The gateway's door id: its `gatewayId` (32 hex digits) decoded.
pub fn gateway_door_id(gateway_id: &str) -> DoorId {
    data_encoding::HEXLOWER
        .decode(gateway_id.as_bytes())
        .ok()
        .and_then(|b| DoorId::try_from(b.as_slice()).ok())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tool(id: u8, expires: i64) -> (Tool, String) {
        let sk = latchkey_proto::v2::parse_secret_key(&[id; 32]).unwrap();
        (
            Tool {
                id: uuid::Uuid::from_bytes([id; 16]).hyphenated().to_string(),
                device_id: DeviceId::from_bytes([id; 16]),
                pubkey: latchkey_proto::v2::public_key_bytes(&sk.public_key()),
                issued_at: 1_000,
                expires_at: expires,
                vehicle_id: None,
            },
            format!("phone {id}"),
        )
    }

    #[test]
    fn at_most_256_grants_keeping_the_latest_expiries_in_a_fixed_order() {
        let tools: Vec<_> = (1..=200u8)
            .map(|i| tool(i, 10_000 + i64::from(i)))
            .collect();
        let two = |_: &DeviceId| vec![EndpointId::new("a").unwrap(), EndpointId::new("b").unwrap()];
        let g = grants_for(&tools, &[9; 16], 3, two);
        assert_eq!(g.len(), GRANT_CAPACITY);
        // 400 grants, 256 kept: those of tools 73..=200 (the latest expiries).
        assert!(g.iter().all(|g| g.expires >= 10_073));
        assert!(g.windows(2).all(
            |w| (w[0].tool_id, w[0].endpoint.as_str()) < (w[1].tool_id, w[1].endpoint.as_str())
        ));
        assert!(g.iter().all(|g| g.epoch == 3 && g.node_id == [9; 16]));

        // Signed, the full set fits the session's 64 KiB frame (NODES.md §5).
        let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let header = SnapshotHeader {
            node_id: [9; 16],
            version: 1,
            epoch: 3,
            issued_at: 1_000,
        };
        let bytes = sign(&header, &g, &key).unwrap();
        assert_eq!(bytes.len(), 38_504);
        let text = data_encoding::BASE64.encode(&bytes);
        assert_eq!(text.len(), 51_340);
        let frame = serde_json::json!({"type": "grants", "snapshot": text, "pulse_ms": 3000});
        let frame = frame.to_string();
        assert!(frame.len() <= 64 * 1024);
        assert!(verify_snapshot(&bytes, &key.verifying_key(), &[9; 16]).is_ok());
    }
}
