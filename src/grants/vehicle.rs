//! Vehicle keys (issue 12, PROTOCOL.md §27): an access tool with a `vehicle_id`, one live per
//! (device, vehicle), issued by a completed pairing session ([`super::pairing_sessions`]),
//! refreshed like any tool, voided by a re-pairing, the device's revocation, the vehicle's
//! revocation or an admin. Its grants go into that vehicle's snapshot only (endpoint `vehicle`).

use data_encoding::BASE64;
use rusqlite::{Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::tools::{self, Tool};
use crate::clock::{rfc3339, UnixTime};
use crate::registry::DeviceId;
use crate::store::StoreError;

/// `[access] vehicle_key_lifetime_secs`: default 30 days (range as for tools: 1 h to 90 days).
pub const DEFAULT_LIFETIME_SECS: u64 = 2_592_000;

/// A vehicle key as the phone sees it: what `phone unlock --vehicle` needs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub key_id: String,
    pub vehicle_id: String,
    pub device_id: DeviceId,
    pub issued_on: String,
    pub expires_on: String,
    pub endpoint: &'static str,
    /// The vehicle's door id: its node id's 32 hex digits.
    pub door_id: String,
    /// The vehicle's P-256 key (SEC1 uncompressed, standard base64).
    pub pubkey: String,
}

/// A key as the admin API lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AdminKeyView {
    #[serde(flatten)]
    pub key: KeyView,
    pub device_name: String,
    pub vehicle_name: String,
}

const KEY_SELECT: &str = "SELECT t.id, t.device_id, t.pubkey, t.issued_at, t.expires_at,
        t.vehicle_id, n.pubkey, d.name, n.name
    FROM access_tools t
    JOIN nodes n ON n.id = t.vehicle_id
    JOIN devices d ON d.id = t.device_id
    WHERE t.voided_at IS NULL AND t.vehicle_id IS NOT NULL
      AND d.revoked_at IS NULL AND n.revoked_at IS NULL";

fn admin_view_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AdminKeyView> {
    let pubkey: Vec<u8> = r.get(2)?;
    let tool = Tool {
        id: r.get(0)?,
        device_id: DeviceId::parse(&r.get::<_, String>(1)?)
            .unwrap_or_else(|| DeviceId::from_bytes([0; 16])),
        pubkey: pubkey
            .as_slice()
            .try_into()
            .unwrap_or([0; latchkey_proto::v2::PUBLIC_KEY_LEN]),
        issued_at: r.get(3)?,
        expires_at: r.get(4)?,
        vehicle_id: r.get(5)?,
    };
    let vehicle_key: Option<Vec<u8>> = r.get(6)?;
    Ok(AdminKeyView {
        key: view(&tool, vehicle_key.as_deref().unwrap_or_default()),
        device_name: r.get(7)?,
        vehicle_name: r.get(8)?,
    })
}

/// Describes `tool` (a vehicle key) with the vehicle's public key.
pub fn view(tool: &Tool, vehicle_key: &[u8]) -> KeyView {
    let vehicle_id = tool.vehicle_id.clone().unwrap_or_default();
    KeyView {
        key_id: tool.id.clone(),
        door_id: vehicle_id.replace('-', ""),
        vehicle_id,
        device_id: tool.device_id.clone(),
        issued_on: rfc3339(tool.issued_at),
        expires_on: rfc3339(tool.expires_at),
        endpoint: latchkey_proto::v2::pairing::ENDPOINT,
        pubkey: BASE64.encode(vehicle_key),
    }
}

/// The vehicle's registered P-256 key, if it is a registered, unrevoked vehicle.
pub fn vehicle_key(conn: &Connection, vehicle: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT pubkey FROM nodes WHERE id = ?1 AND kind = 'vehicle'
             AND registered_at IS NOT NULL AND revoked_at IS NULL",
            [vehicle],
            |r| r.get(0),
        )
        .optional()?
        .flatten())
}

/// Describes a key of this device by id (general tools are not keys).
pub fn describe(conn: &Connection, tool: &Tool) -> Result<KeyView, StoreError> {
    let vehicle = tool.vehicle_id.as_deref().unwrap_or_default();
    let key = vehicle_key(conn, vehicle)?.unwrap_or_default();
    Ok(view(tool, &key))
}

/// The device's live (not voided) keys, of one vehicle or all, oldest first.
pub fn for_device(
    conn: &Connection,
    device: &DeviceId,
    vehicle: Option<&str>,
) -> Result<Vec<KeyView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{KEY_SELECT} AND t.device_id = ?1 AND (?2 IS NULL OR t.vehicle_id = ?2)
         ORDER BY t.issued_at, t.id"
    ))?;
    let rows = stmt.query_map(rusqlite::params![device.as_str(), vehicle], |r| {
        admin_view_from_row(r).map(|v| v.key)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every live key, with its device's and vehicle's names (the admin list), by vehicle.
pub fn all(conn: &Connection) -> Result<Vec<AdminKeyView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{KEY_SELECT} ORDER BY n.name, n.id, t.issued_at, t.id"
    ))?;
    let rows = stmt.query_map([], admin_view_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many live keys each vehicle has (the nodes page).
pub fn counts(conn: &Connection) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT vehicle_id, COUNT(*) FROM ({KEY_SELECT}) GROUP BY vehicle_id"
    ))?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn live_keys(tx: &Transaction<'_>, filter: &str, arg: &str) -> Result<Vec<Tool>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {} FROM access_tools
         WHERE voided_at IS NULL AND vehicle_id IS NOT NULL AND {filter}",
        tools::TOOL_COLUMNS
    ))?;
    let rows = stmt.query_map([arg], tools::tool_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The device's live key for `vehicle`, if any.
pub fn live_for(
    tx: &Transaction<'_>,
    device: &DeviceId,
    vehicle: &str,
) -> Result<Option<Tool>, StoreError> {
    Ok(live_keys(tx, "vehicle_id = ?1", vehicle)?
        .into_iter()
        .find(|t| &t.device_id == device))
}

/// `POST /api/vehicle-keys/{keyId}/revoke`: voids the key, with its `device.tool` event.
/// `false` when there is no such vehicle key; an already voided one is `true` (idempotent).
pub fn revoke(
    tx: &Transaction<'_>,
    key_id: &str,
    now: UnixTime,
    origin: &str,
) -> Result<bool, StoreError> {
    let known: Option<bool> = tx
        .query_row(
            "SELECT voided_at IS NULL FROM access_tools WHERE id = ?1 AND vehicle_id IS NOT NULL",
            [key_id],
            |r| r.get(0),
        )
        .optional()?;
    match known {
        None => Ok(false),
        Some(false) => Ok(true),
        Some(true) => {
            for t in live_keys(tx, "id = ?1", key_id)? {
                tools::void(tx, &t, now, origin)?;
            }
            Ok(true)
        }
    }
}

/// Voids every live key of a vehicle (the vehicle was revoked).
pub fn void_for_vehicle(
    tx: &Transaction<'_>,
    vehicle: &str,
    now: UnixTime,
    origin: &str,
) -> Result<(), StoreError> {
    for t in live_keys(tx, "vehicle_id = ?1", vehicle)? {
        tools::void(tx, &t, now, origin)?;
    }
    Ok(())
}

/// A vehicle id as the API takes it: the canonical node id, or `None`.
pub fn parse_vehicle_id(s: &str) -> Option<String> {
    crate::nodes::NodeId::parse(s).map(|n| n.as_str().to_owned())
}
