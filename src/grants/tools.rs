//! Phone keys and access tools (CONTRACT §6, seed 002). A device has one phone key (P-256,
//! SEC1 uncompressed) and at most one live general access tool: the id doors know the phone
//! by, valid from `issued_at` (the grants' `not_before`) until `expires_at`. A tool with a
//! `vehicle_id` is a vehicle key (issue 12, [`super::vehicle`]): at most one live per vehicle. Registering the same key
//! again refreshes the live tool (an idempotent retry); a new key voids it and issues another.
//! Every change appends `device.tool` in its transaction, so the event log is what tells the
//! doors' holders (node sessions, the gateway's door, another process's daemon) to rebuild.

use data_encoding::{BASE64, HEXLOWER};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::GrantsError;
use crate::access::endpoint::Endpoints;
use crate::clock::{rfc3339, UnixTime};
use crate::config::ActionConfig;
use crate::events;
use crate::registry::DeviceId;
use crate::store::StoreError;
use latchkey_proto::v2::{PublicKeyBytes, PUBLIC_KEY_LEN};

/// `[access] tool_lifetime_secs`: default 7 days, 1 hour to 90 days.
pub const DEFAULT_LIFETIME_SECS: u64 = 604_800;
pub const LIFETIME_RANGE: std::ops::RangeInclusive<u64> = 3_600..=7_776_000;
/// Longest `pubkey` text looked at (65 bytes are 88 characters of base64).
const MAX_PUBKEY_TEXT: usize = 128;

/// A phone's P-256 public key, checked: 65 bytes `04 ‖ X ‖ Y`, a point on the curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneKey(pub PublicKeyBytes);

impl PhoneKey {
    /// `pubkey` (standard base64) and `hash` (lower-case hex SHA-256 of the key bytes), as
    /// `POST /device/register` takes them. Errors name the field, never echo it.
    pub fn parse(pubkey: &str, hash: &str) -> Result<Self, GrantsError> {
        if pubkey.len() > MAX_PUBKEY_TEXT {
            return Err(GrantsError::BadRequest("pubkey is not a P-256 public key"));
        }
        let bytes = BASE64
            .decode(pubkey.as_bytes())
            .map_err(|_| GrantsError::BadRequest("pubkey is not standard base64"))?;
        let key: PublicKeyBytes = bytes
            .as_slice()
            .try_into()
            .map_err(|_| GrantsError::BadRequest("pubkey is not 65 bytes"))?;
        latchkey_proto::v2::parse_public_key(&key).map_err(|_| {
            GrantsError::BadRequest(
                "pubkey is not an uncompressed SEC1 P-256 public key on the curve",
            )
        })?;
        let lower_hex = hash.len() == 64
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !lower_hex {
            return Err(GrantsError::BadRequest(
                "hash is not lower-case hex SHA-256 (64 digits)",
            ));
        }
        let digest = HEXLOWER.encode(&Sha256::digest(key));
        if !crate::secret::ct_eq(digest.as_bytes(), hash.as_bytes()) {
            return Err(GrantsError::BadRequest(
                "hash is not the SHA-256 of the pubkey bytes",
            ));
        }
        Ok(Self(key))
    }
}

/// An access tool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// Canonical lower-case UUID (`accessToolId`).
    pub id: String,
    pub device_id: DeviceId,
    pub pubkey: PublicKeyBytes,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
    /// The vehicle node a vehicle key opens; `None` for the general tool.
    pub vehicle_id: Option<String>,
}

impl Tool {
    /// The id's 16 bytes, as grants and requests carry it.
    pub fn id_bytes(&self) -> [u8; 16] {
        uuid::Uuid::try_parse(&self.id)
            .map(|u| u.into_bytes())
            .unwrap_or_default()
    }
}

pub(crate) const TOOL_COLUMNS: &str = "id, device_id, pubkey, issued_at, expires_at, vehicle_id";

pub(crate) fn tool_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tool> {
    let pubkey: Vec<u8> = r.get(2)?;
    Ok(Tool {
        id: r.get(0)?,
        device_id: DeviceId::parse(&r.get::<_, String>(1)?)
            .unwrap_or_else(|| DeviceId::from_bytes([0; 16])),
        pubkey: pubkey.as_slice().try_into().unwrap_or([0; PUBLIC_KEY_LEN]),
        issued_at: r.get(3)?,
        expires_at: r.get(4)?,
        vehicle_id: r.get(5)?,
    })
}

/// The device's live (not voided) general tool, if any.
pub fn live_for_device(conn: &Connection, device: &DeviceId) -> Result<Option<Tool>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {TOOL_COLUMNS} FROM access_tools
                 WHERE device_id = ?1 AND voided_at IS NULL AND vehicle_id IS NULL"
            ),
            [device.as_str()],
            tool_from_row,
        )
        .optional()?)
}

/// The device's live tool `id` (general tool or vehicle key), if any.
pub fn live_by_id(
    conn: &Connection,
    device: &DeviceId,
    id: &str,
) -> Result<Option<Tool>, StoreError> {
    Ok(conn
        .query_row(
            &format!(
                "SELECT {TOOL_COLUMNS} FROM access_tools
                 WHERE id = ?1 AND device_id = ?2 AND voided_at IS NULL"
            ),
            [id, device.as_str()],
            tool_from_row,
        )
        .optional()?)
}

/// Which tools a door honours: the general tools (door nodes, the gateway's door) or one
/// vehicle's keys.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    General,
    Vehicle(&'a str),
}

/// Every live tool of `scope` of an unrevoked device that expired no earlier than `since`,
/// with the device's name, oldest first.
pub fn live(
    conn: &Connection,
    since: UnixTime,
    scope: Scope<'_>,
) -> Result<Vec<(Tool, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.id, t.device_id, t.pubkey, t.issued_at, t.expires_at, t.vehicle_id, d.name
         FROM access_tools t JOIN devices d ON d.id = t.device_id
         WHERE t.voided_at IS NULL AND d.revoked_at IS NULL AND t.expires_at > ?1
           AND t.vehicle_id IS ?2
         ORDER BY t.issued_at, t.id",
    )?;
    let vehicle = match scope {
        Scope::General => None,
        Scope::Vehicle(v) => Some(v),
    };
    let rows = stmt.query_map(params![since, vehicle], |r| {
        Ok((tool_from_row(r)?, r.get(6)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whose tool `id` is (voided or not): the device and its name.
pub fn owner(conn: &Connection, id: &str) -> Result<Option<(DeviceId, String)>, StoreError> {
    let row: Option<(String, String)> = conn
        .query_row(
            "SELECT d.id, d.name FROM access_tools t JOIN devices d ON d.id = t.device_id
             WHERE t.id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.and_then(|(d, n)| DeviceId::parse(&d).map(|d| (d, n))))
}

/// What a register or refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Issued,
    Refreshed,
    Voided,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Refreshed => "refreshed",
            Self::Voided => "voided",
        }
    }
}

pub(crate) fn record(
    tx: &Transaction<'_>,
    tool: &Tool,
    action: Action,
    origin: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mut data = json!({
        "deviceId": tool.device_id,
        "accessToolId": tool.id,
        "expiresOn": rfc3339(tool.expires_at),
        "action": action.as_str(),
    });
    if let Some(v) = &tool.vehicle_id {
        data["vehicleId"] = json!(v);
    }
    events::append(tx, "device.tool", &data, origin, now.saturating_mul(1000))?;
    Ok(())
}

pub(crate) fn ensure_active(tx: &Transaction<'_>, device: &DeviceId) -> Result<(), GrantsError> {
    let revoked: Option<Option<i64>> = tx
        .query_row(
            "SELECT revoked_at FROM devices WHERE id = ?1",
            [device.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    match revoked {
        Some(None) => Ok(()),
        // Unknown here means deleted under us; it cannot hold a tool either way.
        _ => Err(GrantsError::Revoked),
    }
}

pub(crate) fn origin(device: &DeviceId) -> String {
    format!("device:{device}")
}

/// Extends `tool` to `now + lifetime` (never shortens it), with its event.
fn extend(
    tx: &Transaction<'_>,
    mut tool: Tool,
    lifetime: u64,
    now: UnixTime,
) -> Result<Tool, GrantsError> {
    let lifetime = i64::try_from(lifetime).unwrap_or(i64::MAX);
    tool.expires_at = tool.expires_at.max(now.saturating_add(lifetime));
    tx.execute(
        "UPDATE access_tools SET expires_at = ?2 WHERE id = ?1",
        params![tool.id, tool.expires_at],
    )?;
    record(tx, &tool, Action::Refreshed, &origin(&tool.device_id), now)?;
    Ok(tool)
}

/// `POST /device/register`: stores `key` as the device's phone key and returns its live tool
/// — the same tool, extended, when the key is the stored one (a retry); a new one otherwise,
/// after voiding the old.
pub fn register(
    tx: &Transaction<'_>,
    device: &DeviceId,
    key: &PhoneKey,
    lifetime: u64,
    now: UnixTime,
) -> Result<Tool, GrantsError> {
    ensure_active(tx, device)?;
    if let Some(tool) = live_for_device(tx, device)? {
        if crate::secret::ct_eq(&tool.pubkey, &key.0) {
            return extend(tx, tool, lifetime, now);
        }
    }
    // A new key: every tool naming the old one goes (vehicle keys too); the same key again
    // only lost its general tool (none is live), and its vehicle keys stay.
    let same = phone_key(tx, device)?.is_some_and(|k| crate::secret::ct_eq(&k, &key.0));
    if !same {
        void_for_device(tx, device, now, &origin(device))?;
    }
    tx.execute(
        "INSERT INTO phone_keys (device_id, pubkey, registered_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(device_id) DO UPDATE SET pubkey = excluded.pubkey,
                                              registered_at = excluded.registered_at",
        params![device.as_str(), key.0.as_slice(), now],
    )?;
    issue(tx, device, &key.0, None, lifetime, now)
}

/// The device's registered phone key, if any.
pub fn phone_key(
    conn: &Connection,
    device: &DeviceId,
) -> Result<Option<PublicKeyBytes>, StoreError> {
    let key: Option<Vec<u8>> = conn
        .query_row(
            "SELECT pubkey FROM phone_keys WHERE device_id = ?1",
            [device.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(key.and_then(|k| PublicKeyBytes::try_from(k.as_slice()).ok()))
}

/// Stores a new live tool (the caller voided whatever it replaces), with its event.
pub(crate) fn issue(
    tx: &Transaction<'_>,
    device: &DeviceId,
    pubkey: &PublicKeyBytes,
    vehicle_id: Option<&str>,
    lifetime: u64,
    now: UnixTime,
) -> Result<Tool, GrantsError> {
    let id = uuid::Builder::from_random_bytes(crate::secret::random_array::<16>()?)
        .into_uuid()
        .hyphenated()
        .to_string();
    let tool = Tool {
        id,
        device_id: device.clone(),
        pubkey: *pubkey,
        issued_at: now,
        expires_at: now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
        vehicle_id: vehicle_id.map(str::to_owned),
    };
    tx.execute(
        "INSERT INTO access_tools (id, device_id, pubkey, issued_at, expires_at, vehicle_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            tool.id,
            device.as_str(),
            pubkey.as_slice(),
            tool.issued_at,
            tool.expires_at,
            tool.vehicle_id,
        ],
    )?;
    record(tx, &tool, Action::Issued, &origin(device), now)?;
    Ok(tool)
}

/// How long each kind of tool lives from an issue or refresh (`[access]`).
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub general: u64,
    pub vehicle: u64,
}

/// `POST /device/refresh`: extends this device's tool `id` — its general tool or one of its
/// vehicle keys, an expired one too — by its kind's lifetime. Another device's, an unknown
/// or a voided tool is `NotFound`.
pub fn refresh(
    tx: &Transaction<'_>,
    device: &DeviceId,
    id: &str,
    lifetimes: Lifetimes,
    now: UnixTime,
) -> Result<Tool, GrantsError> {
    ensure_active(tx, device)?;
    let tool = live_by_id(tx, device, id)?.ok_or(GrantsError::NotFound)?;
    let lifetime = match tool.vehicle_id {
        Some(_) => lifetimes.vehicle,
        None => lifetimes.general,
    };
    extend(tx, tool, lifetime, now)
}

/// Voids `tool`, with its event.
pub(crate) fn void(
    tx: &Transaction<'_>,
    tool: &Tool,
    now: UnixTime,
    origin: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE access_tools SET voided_at = ?2 WHERE id = ?1 AND voided_at IS NULL",
        params![tool.id, now],
    )?;
    record(tx, tool, Action::Voided, origin, now)
}

/// Voids every live tool of the device — its general tool and its vehicle keys (revocation;
/// a new phone key, which the old tools' grants no longer name) — each with its event.
pub fn void_for_device(
    tx: &Transaction<'_>,
    device: &DeviceId,
    now: UnixTime,
    origin: &str,
) -> Result<(), StoreError> {
    let tools: Vec<Tool> = tx
        .prepare_cached(&format!(
            "SELECT {TOOL_COLUMNS} FROM access_tools
             WHERE device_id = ?1 AND voided_at IS NULL ORDER BY issued_at, id"
        ))?
        .query_map([device.as_str()], tool_from_row)?
        .collect::<Result<_, _>>()?;
    for tool in &tools {
        void(tx, tool, now, origin)?;
    }
    Ok(())
}

/// Where a tool opens an endpoint with protocol v2.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DoorView {
    pub door_id: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub pubkey: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointView {
    pub id: String,
    pub name: String,
    pub doors: Vec<DoorView>,
}

/// The access tool as `POST /device/register`, `/device/refresh` and `GET /api/me` show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ToolView {
    pub access_tool_id: String,
    pub device_pub_key: String,
    pub issued_on: String,
    pub expires_on: String,
    pub endpoints: Vec<EndpointView>,
    /// The gateway's own door, also when the device may open no endpoint: its key is what a
    /// phone seals its vehicle-pairing approval to (PROTOCOL.md §27).
    pub gateway_door: DoorView,
}

/// Describes `tool`: every endpoint its device may open (the order of `GET /api/me`), each
/// with the doors that open it over v2 — its node (when node-backed and registered) and the
/// gateway's own door (`gateway_door_key`) for every endpoint.
pub fn view(
    conn: &Connection,
    tool: &Tool,
    endpoints: &Endpoints,
    gateway_id: &str,
    gateway_door_key: &PublicKeyBytes,
) -> Result<ToolView, StoreError> {
    let gateway_door = DoorView {
        door_id: gateway_id.to_owned(),
        kind: "gateway",
        node_id: None,
        pubkey: BASE64.encode(gateway_door_key),
    };
    let mut out = Vec::new();
    for ep in endpoints.open_to(&tool.device_id) {
        let mut doors = Vec::new();
        if let ActionConfig::Node { node_id, .. } = &ep.action {
            let key: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT pubkey FROM nodes WHERE id = ?1 AND registered_at IS NOT NULL
                     AND revoked_at IS NULL AND kind = 'door'",
                    [node_id],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            if let Some(key) = key {
                doors.push(DoorView {
                    door_id: node_id.replace('-', ""),
                    kind: "node",
                    node_id: Some(node_id.clone()),
                    pubkey: BASE64.encode(&key),
                });
            }
        }
        doors.push(gateway_door.clone());
        out.push(EndpointView {
            id: ep.id.clone(),
            name: ep.name.clone(),
            doors,
        });
    }
    Ok(ToolView {
        access_tool_id: tool.id.clone(),
        device_pub_key: BASE64.encode(&tool.pubkey),
        issued_on: rfc3339(tool.issued_at),
        expires_on: rfc3339(tool.expires_at),
        endpoints: out,
        gateway_door,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn key_and_hash() -> (String, String) {
        let sk = latchkey_proto::v2::parse_secret_key(&[0x11; 32]).unwrap();
        let pk = latchkey_proto::v2::public_key_bytes(&sk.public_key());
        (BASE64.encode(&pk), HEXLOWER.encode(&Sha256::digest(pk)))
    }

    #[test]
    fn phone_keys_are_checked_and_errors_name_the_field() {
        let (pk, hash) = key_and_hash();
        assert!(PhoneKey::parse(&pk, &hash).is_ok());
        let msg = |r: Result<PhoneKey, GrantsError>| r.unwrap_err().to_string();
        assert!(msg(PhoneKey::parse("!!", &hash)).starts_with("pubkey"));
        assert!(msg(PhoneKey::parse(&BASE64.encode(&[4u8; 33]), &hash)).starts_with("pubkey"));
        // 65 bytes, right prefix, not on the curve.
        let off = BASE64.encode(&[4u8; 65]);
        assert!(msg(PhoneKey::parse(&off, &hash)).contains("on the curve"));
        assert!(msg(PhoneKey::parse(&pk, &hash.to_uppercase())).starts_with("hash"));
        let mut wrong = hash.clone().into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        let e = msg(PhoneKey::parse(&pk, &wrong));
        assert!(e.starts_with("hash") && !e.contains(&wrong), "{e}");
    }
}
