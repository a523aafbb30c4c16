//! Vehicle pairing sessions (issue 12, seed 000; PROTOCOL.md §27): how a phone standing at a
//! vehicle gets a vehicle key.
//!
//! ```text
//!  start ──► started ──complete (1×)──► completed   (key issued, previous key voided)
//!               │  ├──cancel──────────► cancelled
//!               │  ├──5 forgeries─────► failed
//!               │  └──past expiry─────► expired     (housekeeping)
//! ```
//!
//! A session is opened with a challenge the vehicle signed with its registered key (fresh
//! within 120 s when the vehicle knows the time), once per challenge nonce ever; it lives
//! 60 s. Completion proves the phone holds its registered key twice: an ECDSA signature over
//! the session and the challenge, and an AES-GCM approval sealed under ECDH with the gateway's
//! door key (what the phone will do at the vehicle). Every transition appends its
//! `vehicle.pairing` event in its transaction. Transport-free: callers pass `now`.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use super::tools::{self, Tool};
use super::{doorkey, snapshot, vehicle, GrantsError};
use crate::clock::UnixTime;
use crate::config::EndpointConfig;
use crate::crypto::MasterKey;
use crate::events;
use crate::nodes::{signing, NodeId};
use crate::registry::DeviceId;
use crate::store::StoreError;
use latchkey_proto::v2::pairing::{
    open_approval, verify_completion, PairingChallenge, PairingResponse, APPROVAL_LEN,
    CHALLENGE_LEN, ECDSA_SIGNATURE_LEN,
};
use latchkey_proto::v2::PublicKeyBytes;

/// How long a session lives.
pub const SESSION_SECS: i64 = 60;
/// How far a challenge's timestamp may be from the gateway's clock.
pub const CHALLENGE_SKEW_SECS: i64 = 120;
/// Forged completions a session takes before it is consumed.
pub const MAX_FAILURES: i64 = 5;
/// The `rssi` a phone may report.
pub const RSSI_RANGE: std::ops::RangeInclusive<i64> = -127..=20;
/// Ended sessions whose challenge carried a timestamp are deleted this long after: a replay
/// of their challenge is stale by then. Those with timestamp 0 stay, so their nonce stays
/// used (a few hundred bytes each, at most 5 a minute per device).
pub const KEEP_ENDED_SECS: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Malformed or refused input; the message names the field, never its value.
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("the pairing session was already used")]
    Used,
    #[error("the pairing session has expired")]
    Expired,
    #[error("the completion does not verify")]
    Forbidden,
    #[error(transparent)]
    Grants(#[from] GrantsError),
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        Self::Grants(e.into())
    }
}

impl From<rusqlite::Error> for SessionError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Grants(e.into())
    }
}

impl From<crate::secret::RandomError> for SessionError {
    fn from(e: crate::secret::RandomError) -> Self {
        Self::Grants(e.into())
    }
}

impl From<crate::nodes::NodeError> for SessionError {
    fn from(e: crate::nodes::NodeError) -> Self {
        Self::Grants(e.into())
    }
}

/// `POST /pairing-sessions`, parsed by the adapter.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub vehicle_id: String,
    /// The challenge's vehicle id as the phone read it (32 lower-case hex digits).
    pub device_id: String,
    /// The whole challenge frame.
    pub challenge: Vec<u8>,
    pub rssi: i64,
}

/// A session as `start` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub session_id: String,
    pub expires_at: UnixTime,
}

fn random_uuid() -> Result<String, crate::secret::RandomError> {
    Ok(
        uuid::Builder::from_random_bytes(crate::secret::random_array::<16>()?)
            .into_uuid()
            .hyphenated()
            .to_string(),
    )
}

fn event(
    tx: &Transaction<'_>,
    session: &str,
    vehicle: &str,
    device: &str,
    extra: serde_json::Value,
    origin: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mut data = json!({ "sessionId": session, "vehicleId": vehicle, "deviceId": device });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    events::append(
        tx,
        "vehicle.pairing",
        &data,
        origin,
        now.saturating_mul(1000),
    )?;
    Ok(())
}

/// Opens a session for `device` at the vehicle that signed `req.challenge`.
pub fn start(
    tx: &Transaction<'_>,
    device: &DeviceId,
    req: &StartRequest,
    now: UnixTime,
) -> Result<Started, SessionError> {
    tools::ensure_active(tx, device)?;
    if tools::phone_key(tx, device)?.is_none() {
        return Err(SessionError::BadRequest("register a phone key first"));
    }
    let vehicle = vehicle::parse_vehicle_id(&req.vehicle_id)
        .ok_or(SessionError::NotFound("no such vehicle"))?;
    let node_key =
        vehicle::vehicle_key(tx, &vehicle)?.ok_or(SessionError::NotFound("no such vehicle"))?;
    let node_key = PublicKeyBytes::try_from(node_key.as_slice())
        .map_err(|_| SessionError::NotFound("no such vehicle"))?;
    let door_id = snapshot::node_door_id(
        &NodeId::parse(&vehicle).ok_or(SessionError::NotFound("no such vehicle"))?,
    );
    if req.device_id != vehicle.replace('-', "") {
        return Err(SessionError::BadRequest(
            "deviceId is not the vehicle's id (32 lower-case hex digits)",
        ));
    }
    if req.challenge.len() != CHALLENGE_LEN {
        return Err(SessionError::BadRequest(
            "nonce is not a 106-byte pairing challenge",
        ));
    }
    let challenge = PairingChallenge::verify(&req.challenge, &node_key).map_err(|_| {
        SessionError::BadRequest("nonce is not a pairing challenge signed by this vehicle")
    })?;
    if challenge.vehicle_id != door_id {
        return Err(SessionError::BadRequest(
            "nonce is a pairing challenge of another vehicle",
        ));
    }
    if challenge.timestamp != 0 {
        let ts = i64::try_from(challenge.timestamp).unwrap_or(i64::MAX);
        if ts.abs_diff(now) > CHALLENGE_SKEW_SECS.unsigned_abs() {
            return Err(SessionError::BadRequest(
                "nonce is a stale pairing challenge (its timestamp is more than 120 s off)",
            ));
        }
    }
    let used: bool = tx.query_row(
        "SELECT EXISTS(SELECT 1 FROM pairing_sessions WHERE nonce = ?1)",
        [challenge.nonce.as_slice()],
        |r| r.get(0),
    )?;
    if used {
        return Err(SessionError::BadRequest("challenge already used"));
    }
    if !RSSI_RANGE.contains(&req.rssi) {
        return Err(SessionError::BadRequest(
            "rssi must be an integer from -127 to 20",
        ));
    }
    let started = Started {
        session_id: random_uuid()?,
        expires_at: now.saturating_add(SESSION_SECS),
    };
    tx.execute(
        "INSERT INTO pairing_sessions (id, device_id, vehicle_id, challenge, nonce, challenge_ts,
             rssi, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            started.session_id,
            device.as_str(),
            vehicle,
            req.challenge,
            challenge.nonce.as_slice(),
            i64::try_from(challenge.timestamp).unwrap_or(i64::MAX),
            req.rssi,
            now,
            started.expires_at,
        ],
    )?;
    event(
        tx,
        &started.session_id,
        &vehicle,
        device.as_str(),
        json!({ "rssi": req.rssi, "state": "started" }),
        &tools::origin(device),
        now,
    )?;
    Ok(started)
}

/// A session row.
struct Session {
    id: String,
    vehicle_id: String,
    challenge: Vec<u8>,
    expires_at: UnixTime,
    failures: i64,
    state: String,
    /// The key a completion issued.
    key_id: Option<String>,
}

/// The session `id` of `device`; another device's is `NotFound` like an unknown one.
fn load(tx: &Transaction<'_>, device: &DeviceId, id: &str) -> Result<Session, SessionError> {
    tx.query_row(
        "SELECT id, vehicle_id, challenge, expires_at, failures, state, key_id
         FROM pairing_sessions WHERE id = ?1 AND device_id = ?2",
        [id, device.as_str()],
        |r| {
            Ok(Session {
                id: r.get(0)?,
                vehicle_id: r.get(1)?,
                challenge: r.get(2)?,
                expires_at: r.get(3)?,
                failures: r.get(4)?,
                state: r.get(5)?,
                key_id: r.get(6)?,
            })
        },
    )
    .optional()?
    .ok_or(SessionError::NotFound("no such pairing session"))
}

/// What a completion carries (decoded from base64 by the adapter).
#[derive(Debug, Clone)]
pub struct Completion {
    pub encrypted_response: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What a completion gives the phone.
#[derive(Debug, Clone)]
pub struct Completed {
    pub key: vehicle::KeyView,
    /// The 183-byte pairing response the phone writes to the vehicle.
    pub ble_response: Vec<u8>,
}

/// Where the keys come from and how long a key lives.
pub struct Issuer<'a> {
    pub master: &'a MasterKey,
    pub endpoints: &'a [EndpointConfig],
    pub lifetime: u64,
}

/// Completes `device`'s session `id`: checks (in the order of PROTOCOL.md §27.2), then issues
/// the key in this transaction. A forgery is `Forbidden` and counts against the session
/// (committed by the caller like any answer): at [`MAX_FAILURES`] the session is `failed`.
pub fn complete(
    tx: &Transaction<'_>,
    issuer: &Issuer<'_>,
    device: &DeviceId,
    id: &str,
    c: &Completion,
    now: UnixTime,
    now_ms: i64,
) -> Result<Completed, SessionError> {
    tools::ensure_active(tx, device)?;
    let s = load(tx, device, id)?;
    match s.state.as_str() {
        "started" => {}
        "expired" => return Err(SessionError::Expired),
        _ => return Err(SessionError::Used),
    }
    if now >= s.expires_at {
        return Err(SessionError::Expired);
    }
    if c.encrypted_response.len() != APPROVAL_LEN || c.signature.len() != ECDSA_SIGNATURE_LEN {
        return Err(SessionError::BadRequest(
            "encryptedResponse must be 49 bytes and signature 64 bytes",
        ));
    }
    let session_bytes = *uuid::Uuid::try_parse(&s.id)
        .map_err(|_| StoreError::Corrupt("a pairing session id"))?
        .as_bytes();
    let phone = tools::phone_key(tx, device)?
        .ok_or(SessionError::BadRequest("register a phone key first"))?;
    let door = doorkey::get_or_create(tx, issuer.master)?;
    let genuine = verify_completion(
        &phone,
        &session_bytes,
        &s.challenge,
        &c.encrypted_response,
        &c.signature,
    )
    .is_ok()
        && open_approval(
            &door,
            &phone,
            &session_bytes,
            &s.challenge,
            &c.encrypted_response,
        )
        .is_ok();
    if !genuine {
        let failures = s.failures + 1;
        let state = if failures >= MAX_FAILURES {
            "failed"
        } else {
            "started"
        };
        tx.execute(
            "UPDATE pairing_sessions SET failures = ?2, state = ?3,
                 ended_at = CASE WHEN ?3 = 'failed' THEN ?4 ELSE ended_at END
             WHERE id = ?1",
            params![s.id, failures, state, now],
        )?;
        if state == "failed" {
            event(
                tx,
                &s.id,
                &s.vehicle_id,
                device.as_str(),
                json!({ "state": "failed" }),
                &tools::origin(device),
                now,
            )?;
        }
        return Err(SessionError::Forbidden);
    }
    // Everything after the checks succeeds together or not at all (the caller commits an
    // error answer too, for the failure count above).
    tx.execute_batch("SAVEPOINT pairing_complete")?;
    match issue(tx, issuer, device, &s, &phone, now, now_ms) {
        Ok(done) => {
            tx.execute_batch("RELEASE pairing_complete")?;
            Ok(done)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO pairing_complete; RELEASE pairing_complete")?;
            Err(e)
        }
    }
}

fn issue(
    tx: &Transaction<'_>,
    issuer: &Issuer<'_>,
    device: &DeviceId,
    s: &Session,
    phone: &PublicKeyBytes,
    now: UnixTime,
    now_ms: i64,
) -> Result<Completed, SessionError> {
    let vehicle_key = vehicle::vehicle_key(tx, &s.vehicle_id)?
        .ok_or(SessionError::NotFound("no such vehicle"))?;
    let node = NodeId::parse(&s.vehicle_id).ok_or(SessionError::NotFound("no such vehicle"))?;
    let challenge = PairingChallenge::decode(&s.challenge).map_err(GrantsError::from)?;
    // Once, even under a race: only one completion changes the row.
    let claimed = tx.execute(
        "UPDATE pairing_sessions SET state = 'completed', ended_at = ?2
         WHERE id = ?1 AND state = 'started'",
        params![s.id, now],
    )?;
    if claimed == 0 {
        return Err(SessionError::Used);
    }
    let origin = tools::origin(device);
    if let Some(previous) = vehicle::live_for(tx, device, &s.vehicle_id)? {
        tools::void(tx, &previous, now, &origin)?;
    }
    let tool: Tool = tools::issue(tx, device, phone, Some(&s.vehicle_id), issuer.lifetime, now)?;
    tx.execute(
        "UPDATE pairing_sessions SET key_id = ?2 WHERE id = ?1",
        params![s.id, tool.id],
    )?;
    event(
        tx,
        &s.id,
        &s.vehicle_id,
        device.as_str(),
        json!({ "state": "completed", "keyId": tool.id }),
        &origin,
        now,
    )?;
    // The vehicle's snapshot with the key in it: its epoch is the response's.
    let snap = snapshot::refresh(tx, issuer.master, issuer.endpoints, &node, now, now_ms)?
        .ok_or(SessionError::NotFound("no such vehicle"))?;
    let response = PairingResponse {
        nonce: challenge.nonce,
        key_id: tool.id_bytes(),
        not_before: u64::try_from(tool.issued_at).unwrap_or(0),
        expires: u64::try_from(tool.expires_at).unwrap_or(0),
        epoch: snap.epoch,
        phone_key: *phone,
    };
    let gateway = signing::get_or_create(tx, issuer.master)?;
    let ble_response = response
        .sign(&snapshot::node_door_id(&node), &gateway)
        .to_vec();
    Ok(Completed {
        key: vehicle::view(&tool, &vehicle_key),
        ble_response,
    })
}

/// `DELETE /pairing-sessions/{id}`: a started session is cancelled (with its event); a
/// cancelled, failed or expired one stays as it is (idempotent); a completed one is `Used`.
pub fn cancel(
    tx: &Transaction<'_>,
    device: &DeviceId,
    id: &str,
    now: UnixTime,
) -> Result<(), SessionError> {
    let s = load(tx, device, id)?;
    // A completed session is cancelled when the vehicle refused the key (or the write never
    // got there): the key it will never use is voided rather than left live for the vehicle's
    // next snapshot; an owner voiding its own key harms nobody.
    let issued = match s.state.as_str() {
        "started" => None,
        "completed" => s.key_id.as_deref(),
        _ => return Ok(()),
    };
    if let Some(key) = issued {
        super::vehicle::revoke(tx, key, now, &tools::origin(device))?;
    }
    tx.execute(
        "UPDATE pairing_sessions SET state = 'cancelled', ended_at = ?2 WHERE id = ?1",
        params![s.id, now],
    )?;
    let mut data = json!({ "state": "cancelled" });
    if issued.is_some() {
        data["keyVoided"] = json!(true);
    }
    event(
        tx,
        &s.id,
        &s.vehicle_id,
        device.as_str(),
        data,
        &tools::origin(device),
        now,
    )?;
    Ok(())
}

/// Housekeeping: started sessions past their expiry become `expired` (with their event), and
/// ended ones whose challenge had a timestamp go a day after. Returns how many expired.
pub fn expire(tx: &Transaction<'_>, now: UnixTime) -> Result<usize, StoreError> {
    let due: Vec<(String, String, String)> = tx
        .prepare_cached(
            "SELECT id, vehicle_id, device_id FROM pairing_sessions
             WHERE state = 'started' AND expires_at <= ?1 ORDER BY expires_at, id",
        )?
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, vehicle, device) in &due {
        tx.execute(
            "UPDATE pairing_sessions SET state = 'expired', ended_at = ?2 WHERE id = ?1",
            params![id, now],
        )?;
        event(
            tx,
            id,
            vehicle,
            device,
            json!({ "state": "expired" }),
            "gateway",
            now,
        )?;
    }
    tx.execute(
        "DELETE FROM pairing_sessions
         WHERE state != 'started' AND challenge_ts != 0 AND ended_at < ?1",
        [now.saturating_sub(KEEP_ENDED_SECS)],
    )?;
    Ok(due.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        store
            .write_blocking(|tx| {
                tx.execute_batch(
                    "INSERT INTO devices (id, name, type, key_hash, totp_sealed, paired_at)
                         VALUES ('d', 'Pixel', 'mobile', x'01', x'02', 0);
                     INSERT INTO nodes (id, kind, created_at) VALUES ('v', 'vehicle', 0);",
                )?;
                Ok(())
            })
            .unwrap();
        (dir, store)
    }

    fn session(tx: &Transaction<'_>, id: &str, ts: i64, expires: i64, state: &str, ended: i64) {
        tx.execute(
            "INSERT INTO pairing_sessions (id, device_id, vehicle_id, challenge, nonce,
                 challenge_ts, rssi, created_at, expires_at, state, ended_at)
             VALUES (?1, 'd', 'v', x'00', CAST(?1 AS BLOB), ?2, -60, 0, ?3, ?4, ?5)",
            params![id, ts, expires, state, ended],
        )
        .unwrap();
    }

    /// Housekeeping: a started session past its expiry becomes `expired` with its event; a
    /// live one stays; ended sessions go a day later, unless their challenge had no
    /// timestamp (their nonce must stay used).
    #[test]
    fn expiry_marks_started_sessions_and_prunes_old_timestamped_ones() {
        let (_dir, store) = store();
        let now = 1_000_000;
        store
            .write_blocking(|tx| {
                session(tx, "due", 0, now, "started", 0);
                session(tx, "live", 0, now + 1, "started", 0);
                session(
                    tx,
                    "old-ts",
                    now - 200_000,
                    0,
                    "cancelled",
                    now - KEEP_ENDED_SECS - 1,
                );
                session(tx, "old-zero", 0, 0, "completed", now - KEEP_ENDED_SECS - 1);
                session(tx, "recent-ts", now - 100, 0, "cancelled", now - 10);
                Ok(())
            })
            .unwrap();
        let n = store.write_blocking(|tx| expire(tx, now)).unwrap();
        assert_eq!(n, 1);
        let rows: Vec<(String, String)> = store
            .read_blocking(|c| {
                Ok(
                    c.prepare("SELECT id, state FROM pairing_sessions ORDER BY id")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<_, _>>()?,
                )
            })
            .unwrap();
        let want = [
            ("due", "expired"),
            ("live", "started"),
            ("old-zero", "completed"),
            ("recent-ts", "cancelled"),
        ];
        assert_eq!(
            rows,
            want.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
        let events = store
            .read_blocking(|c| crate::events::since(c, 0, 100))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].topic, "vehicle.pairing");
        let data = events[0].data_json();
        assert_eq!(data["sessionId"], "due");
        assert_eq!(data["state"], "expired");
        assert_eq!(events[0].subject.as_deref(), Some("d"), "device-scoped");
        // Run again: nothing more to expire until the live one's time comes.
        assert_eq!(store.write_blocking(|tx| expire(tx, now)).unwrap(), 0);
        assert_eq!(store.write_blocking(|tx| expire(tx, now + 1)).unwrap(), 1);
    }

    /// Migration 6: one live tool per (device, vehicle or none).
    #[test]
    fn one_live_tool_per_device_and_vehicle() {
        let (_dir, store) = store();
        let insert = |id: &str, vehicle: Option<&str>| {
            store.write_blocking(|tx| {
                tx.execute(
                    "INSERT INTO access_tools (id, device_id, pubkey, issued_at, expires_at,
                         vehicle_id) VALUES (?1, 'd', x'04', 0, 1, ?2)",
                    params![id, vehicle],
                )?;
                Ok(())
            })
        };
        insert("general", None).unwrap();
        insert("car", Some("v")).unwrap();
        assert!(insert("general-2", None).is_err());
        assert!(insert("car-2", Some("v")).is_err());
        store
            .write_blocking(|tx| {
                tx.execute("UPDATE access_tools SET voided_at = 1 WHERE id = 'car'", [])?;
                Ok(())
            })
            .unwrap();
        insert("car-2", Some("v")).unwrap();
    }
}
