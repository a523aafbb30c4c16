//! Paired devices: lookup by key, listing, revocation. Keys live here only as hashes; TOTP
//! secrets only sealed under the master key.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::json;

use crate::clock::{rfc3339, UnixTime};
use crate::crypto::MasterKey;
use crate::events;
use crate::secret::{SecretBytes, TokenHash};
use crate::store::StoreError;

/// A device id: a UUID in its hyphenated lowercase form (16 raw bytes on the BLE wire).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn new_random() -> Result<Self, crate::secret::RandomError> {
        let bytes = crate::secret::random_array::<16>()?;
        Ok(Self(
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string(),
        ))
    }

    /// Accepts only the canonical form, so one device has exactly one spelling.
    pub fn parse(s: &str) -> Option<Self> {
        let u = uuid::Uuid::try_parse(s).ok()?;
        let canonical = u.hyphenated().to_string();
        (canonical == s).then_some(Self(canonical))
    }

    pub fn from_bytes(b: [u8; 16]) -> Self {
        Self(uuid::Uuid::from_bytes(b).hyphenated().to_string())
    }

    pub fn to_bytes(&self) -> [u8; 16] {
        uuid::Uuid::try_parse(&self.0)
            .map(|u| u.into_bytes())
            .unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A registry entry as the API shows it: never a key or a secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub device_id: DeviceId,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub paired_at: String,
    pub last_seen: Option<String>,
    pub revoked: bool,
    #[serde(skip)]
    pub last_seen_unix: Option<UnixTime>,
}

const DEVICE_COLUMNS: &str = "id, name, type, paired_at, last_seen, revoked_at";

fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    let last_seen: Option<i64> = r.get(4)?;
    Ok(Device {
        device_id: DeviceId(r.get(0)?),
        name: r.get(1)?,
        kind: r.get(2)?,
        paired_at: rfc3339(r.get(3)?),
        last_seen: last_seen.map(rfc3339),
        revoked: r.get::<_, Option<i64>>(5)?.is_some(),
        last_seen_unix: last_seen,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<Device>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY paired_at, rowid"
    ))?;
    let rows = stmt.query_map([], device_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn get(conn: &Connection, id: &DeviceId) -> Result<Option<Device>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
            [id.as_str()],
            device_from_row,
        )
        .optional()?)
}

/// The device whose key hashes to `hash`. The lookup is by an indexed hash of a 256-bit key,
/// so timing reveals nothing about any stored key.
pub fn by_key_hash(conn: &Connection, hash: &TokenHash) -> Result<Option<Device>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE key_hash = ?1"),
            [hash.as_bytes()],
            device_from_row,
        )
        .optional()?)
}

#[derive(Debug, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

/// Marks a device revoked, voids its access tool, and records `device.revoked`; revoking
/// twice changes nothing.
pub fn revoke(
    tx: &Transaction<'_>,
    id: &DeviceId,
    now: UnixTime,
    origin: &str,
) -> Result<RevokeOutcome, StoreError> {
    let changed = tx.execute(
        "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id.as_str(), now],
    )?;
    if changed == 0 {
        return unchanged_revoke(tx, "devices", id.as_str());
    }
    // `device.revoked` first: a phone's session stops at it, so the device learns nothing
    // recorded after its revocation (such as its tool's void below).
    events::append(
        tx,
        "device.revoked",
        &json!({ "deviceId": id }),
        origin,
        now * 1000,
    )?;
    // Its access tool goes with it: the doors' holders rebuild their grants on these events.
    crate::grants::tools::void_for_device(tx, id, now, origin)?;
    Ok(RevokeOutcome::Revoked)
}

/// What a revoke whose conditional UPDATE changed no row of `table` means: the row is already
/// revoked, or there is none. (`table` is one of ours, never input.)
pub(crate) fn unchanged_revoke(
    tx: &Transaction<'_>,
    table: &'static str,
    id: &str,
) -> Result<RevokeOutcome, StoreError> {
    let exists: bool = tx.query_row(
        &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE id = ?1)"),
        [id],
        |r| r.get(0),
    )?;
    Ok(if exists {
        RevokeOutcome::AlreadyRevoked
    } else {
        RevokeOutcome::NotFound
    })
}

/// Records that a device was seen, at most once a minute per device so a busy phone does not
/// turn into a write per message.
pub fn touch_last_seen(
    tx: &Transaction<'_>,
    id: &DeviceId,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE devices SET last_seen = ?2 WHERE id = ?1 AND (last_seen IS NULL OR last_seen <= ?2 - 60)",
        params![id.as_str(), now],
    )?;
    Ok(())
}

/// The associated data that binds a sealed TOTP secret to its row.
pub fn totp_aad(id: &DeviceId) -> String {
    format!("latchkey/devices/{}/totp", id.as_str())
}

/// Unseals a device's TOTP secret (for BLE verification).
pub fn totp_secret(
    conn: &Connection,
    key: &MasterKey,
    id: &DeviceId,
) -> Result<Option<SecretBytes>, StoreError> {
    let sealed: Option<Vec<u8>> = conn
        .query_row(
            "SELECT totp_sealed FROM devices WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    match sealed {
        None => Ok(None),
        Some(s) => key
            .open(&s, &totp_aad(id))
            .map(Some)
            .map_err(|_| StoreError::Corrupt("a TOTP secret does not open under this master key")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_canonical_uuids() {
        let id = DeviceId::new_random().unwrap();
        assert_eq!(DeviceId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(DeviceId::from_bytes(id.to_bytes()), id);
        assert_eq!(DeviceId::parse(&id.as_str().to_uppercase()), None);
        assert_eq!(DeviceId::parse("pixel7"), None);
        assert_eq!(DeviceId::parse(""), None);
    }
}
