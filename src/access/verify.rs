//! Checking an auth frame, in the order PROTOCOL.md §7.2 fixes, and recording the decision.
//!
//! [`evaluate`] is the rule itself: a function of the frame, the connection's nonce, `now` and
//! what a [`Ledger`] knows (lockouts and devices), with no clock, radio or database of its own.
//! [`decide`] runs it inside one write transaction over the registry and commits its
//! consequences — the TOTP step it accepted, the failure it counts, the `access.denied` event —
//! together, so concurrent attempts are serialized by SQLite and nothing half-happens.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::json;
use subtle::ConstantTimeEq;

use latchkey_proto::{
    timestamp_acceptable, verify_totp, AuthFrame, DeviceKeys, Nonce, Status, Tag, TOTP_SKEW_STEPS,
};

use super::challenge::Taken;
use super::endpoint::{Endpoint, Endpoints};
use super::lockout::{self, Budget, LockState, Subject};
use crate::clock::UnixTime;
use crate::crypto::MasterKey;
use crate::events;
use crate::registry::{self, DeviceId};
use crate::secret::SecretBytes;
use crate::store::StoreError;

/// `origin` of the events the door service writes.
pub const ORIGIN: &str = "ble";

/// One auth write, as the transport saw it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The bytes written to the Auth characteristic.
    pub frame: &'a [u8],
    /// The connection (BlueZ: the peer's device object path).
    pub peer: &'a str,
    /// The connection's nonce, consumed by this write.
    pub nonce: Taken,
    pub now: UnixTime,
}

/// What the registry knows about one device, secret unsealed.
pub struct DeviceRecord {
    pub name: String,
    pub revoked: bool,
    /// Newest TOTP step accepted from this device.
    pub last_step: u64,
    pub secret: SecretBytes,
}

/// Where [`evaluate`] looks things up.
pub trait Ledger {
    fn lockout(&mut self, subject: &Subject) -> Result<LockState, StoreError>;
    fn budget(&mut self) -> Result<Budget, StoreError>;
    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError>;
}

/// Which lockout answered an attempt `LOCKED_OUT` (PROTOCOL.md §7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    /// The device, by a frame proving its key: the answer is signed.
    Device,
    /// The peer address, by a frame proving nothing: unsigned.
    Peer,
    /// The gateway-wide budget of frames proving nothing was spent: unsigned.
    Gateway,
}

impl LockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::Device => "device",
            LockScope::Peer => "peer",
            LockScope::Gateway => "gateway",
        }
    }
}

/// The outcome of [`evaluate`]: the status and everything needed to answer, record and act.
#[derive(Debug)]
pub struct Verdict {
    /// `Granted` here means "everything checked out: run the endpoint's action".
    pub status: Status,
    pub retry_after: u16,
    /// The nonce the result frame carries.
    pub nonce: Nonce,
    /// The auth frame's tag (the result's MAC covers it), when the frame decoded.
    pub auth_tag: Option<Tag>,
    /// The device's keys, when the result is to be signed.
    pub keys: Option<DeviceKeys>,
    /// The device the frame names (not proven unless `authenticated`).
    pub device_id: Option<DeviceId>,
    pub device_name: Option<String>,
    /// The endpoint id as requested (`""` = default), when the frame decoded.
    pub endpoint_requested: Option<String>,
    /// The endpoint to act on (grants only).
    pub endpoint: Option<Endpoint>,
    /// The frame proved possession of the device's key: its nonce was live and its tag
    /// verified.
    pub authenticated: bool,
    /// The phone's timestamp, only from an authenticated frame.
    pub phone_time: Option<u64>,
    /// TOTP step accepted by this attempt (already recorded by [`decide`]).
    pub accepted_step: Option<u64>,
    /// Whose lockout count this failure increments, if any.
    pub charge: Option<Subject>,
    /// The frame proved nothing and was examined: it spends the gateway-wide budget.
    pub spends_budget: bool,
    /// Which lockout answered, for `LOCKED_OUT`.
    pub lock_scope: Option<LockScope>,
    /// Why the frame did not decode, for the log.
    pub decode_error: Option<latchkey_proto::Error>,
}

impl Verdict {
    fn new(nonce: Nonce) -> Self {
        Verdict {
            status: Status::Malformed,
            retry_after: 0,
            nonce,
            auth_tag: None,
            keys: None,
            device_id: None,
            device_name: None,
            endpoint_requested: None,
            endpoint: None,
            authenticated: false,
            phone_time: None,
            accepted_step: None,
            charge: None,
            spends_budget: false,
            lock_scope: None,
            decode_error: None,
        }
    }

    fn deny(mut self, status: Status) -> Self {
        self.status = status;
        self
    }

    fn locked(mut self, scope: LockScope, retry_after: u16) -> Self {
        if scope != LockScope::Device {
            // Only a frame that proved the device's key earns a signed answer about a lock.
            self.keys = None;
        }
        self.lock_scope = Some(scope);
        self.retry_after = retry_after;
        self.deny(Status::LockedOut)
    }

    /// Shed by the spent gateway-wide budget: answered, but not recorded one by one.
    pub fn is_shed(&self) -> bool {
        self.lock_scope == Some(LockScope::Gateway)
    }

    /// Encodes the result frame for `status` (signed when the device's key is known).
    pub fn result_frame(&self, status: Status) -> [u8; latchkey_proto::ResultFrame::LEN] {
        let frame = latchkey_proto::ResultFrame {
            status,
            retry_after: if status == Status::LockedOut {
                self.retry_after
            } else {
                0
            },
            nonce: self.nonce,
        };
        let mut out = [0u8; latchkey_proto::ResultFrame::LEN];
        let written = match (&self.keys, &self.auth_tag) {
            (Some(keys), Some(tag)) => frame.encode_signed(keys, tag, &mut out),
            _ => frame.encode_unsigned(&mut out),
        };
        if written.is_err() {
            // Only an unsigned grant can fail, and a grant always has keys and a tag; answer
            // an unsigned failure rather than anything that could read as success.
            out = unsigned(Status::ActionFailed, self.nonce);
        }
        out
    }
}

/// An unsigned result frame (no key for the sender, or the gateway itself failed).
pub fn unsigned(status: Status, nonce: Nonce) -> [u8; latchkey_proto::ResultFrame::LEN] {
    let mut out = [0u8; latchkey_proto::ResultFrame::LEN];
    let status = if status.is_granted() {
        Status::ActionFailed
    } else {
        status
    };
    let _ = latchkey_proto::ResultFrame {
        status,
        retry_after: 0,
        nonce,
    }
    .encode_unsigned(&mut out);
    out
}

/// Decides an attempt, PROTOCOL.md §7.2 steps 1–10. Pure: it reads only `ledger` and writes
/// nothing.
///
/// Steps 1–4 establish whether the frame proves possession of a paired device's key (a live
/// nonce and a tag that verifies). Only then can a failure be the device's doing, so only
/// then does it count against the device; a frame that proves nothing counts against its
/// peer address and the gateway-wide budget, and a lock of either answers it unsigned.
pub fn evaluate(
    att: &Attempt<'_>,
    ledger: &mut impl Ledger,
    endpoints: &Endpoints,
) -> Result<Verdict, StoreError> {
    let now = att.now;
    let mut v = Verdict::new(att.nonce.last.unwrap_or([0; 16]));

    // 1. Decode.
    let frame = match AuthFrame::decode(att.frame) {
        Ok(f) => f,
        Err(e) => {
            v.decode_error = Some(e);
            return unproven(v, e.status(), att, ledger);
        }
    };
    v.nonce = frame.nonce;
    v.auth_tag = Some(frame.tag);
    v.endpoint_requested = Some(frame.request.endpoint.to_owned());
    let id = DeviceId::from_bytes(frame.request.device_id);
    v.device_id = Some(id.clone());

    // 2. The device is paired (its key is needed for anything further).
    let Some(device) = ledger.device(&id)? else {
        return unproven(v, Status::UnknownDevice, att, ledger);
    };
    v.device_name = Some(device.name.clone());
    let keys = DeviceKeys::derive(device.secret.expose(), &frame.request.device_id)
        .map_err(|_| StoreError::Corrupt("a TOTP secret is shorter than 16 bytes"))?;
    let keys = v.keys.insert(keys);

    // 3. The nonce is this connection's live one: a captured frame replayed proves nothing.
    let nonce_ok = att
        .nonce
        .live
        .is_some_and(|live| bool::from(live.ct_eq(&frame.nonce)));
    if !nonce_ok {
        return unproven(v, Status::NonceInvalid, att, ledger);
    }

    // 4. The tag (constant time, inside the hmac crate's verify).
    if !frame.tag_valid(keys) {
        return unproven(v, Status::BadTag, att, ledger);
    }
    v.authenticated = true;
    v.phone_time = Some(frame.request.timestamp);

    // 5. The device is locked out. From here on a failure is the device's own.
    let subject = Subject::Device(id.clone());
    let lock = ledger.lockout(&subject)?;
    if lock.remaining(now).is_some() {
        return Ok(v.locked(LockScope::Device, lock.retry_after(now)));
    }
    v.charge = Some(subject);

    // 6. Not revoked.
    if device.revoked {
        return Ok(v.deny(Status::Revoked));
    }

    // 7. The phone's clock agrees with ours within 5 minutes.
    let now_u = u64::try_from(now).unwrap_or(0);
    if !timestamp_acceptable(frame.request.timestamp, now_u) {
        return Ok(v.deny(Status::ClockSkew));
    }

    // 8. TOTP: within ±1 step, and newer than the last step this device used.
    match verify_totp(
        device.secret.expose(),
        frame.request.totp,
        now_u,
        TOTP_SKEW_STEPS,
    ) {
        None => return Ok(v.deny(Status::BadTotp)),
        Some(step) if step <= device.last_step => return Ok(v.deny(Status::TotpReused)),
        Some(step) => v.accepted_step = Some(step),
    }

    // 9. The endpoint exists and this device may use it.
    match endpoints.resolve(frame.request.endpoint) {
        Some(ep) if ep.allows(&id) => v.endpoint = Some(ep.clone()),
        _ => return Ok(v.deny(Status::EndpointDenied)),
    }

    v.charge = None;
    v.status = Status::Granted;
    Ok(v)
}

/// A frame that proves no key: shed if the gateway-wide budget is spent, `LOCKED_OUT` if its
/// peer is locked, else `status` counted against the peer. Never against the device it names.
fn unproven(
    mut v: Verdict,
    status: Status,
    att: &Attempt<'_>,
    ledger: &mut impl Ledger,
) -> Result<Verdict, StoreError> {
    if let Some(wait) = ledger.budget()?.wait(att.now) {
        return Ok(v.locked(LockScope::Gateway, wait));
    }
    v.spends_budget = true;
    let peer = Subject::Peer(att.peer.to_owned());
    let lock = ledger.lockout(&peer)?;
    if lock.remaining(att.now).is_some() {
        return Ok(v.locked(LockScope::Peer, lock.retry_after(att.now)));
    }
    v.charge = Some(peer);
    Ok(v.deny(status))
}

/// The registry as a [`Ledger`] (inside [`decide`]'s write transaction, or on any
/// connection for a read-only look).
pub struct SqlLedger<'t> {
    pub conn: &'t Connection,
    pub master: &'t MasterKey,
}

impl Ledger for SqlLedger<'_> {
    fn lockout(&mut self, subject: &Subject) -> Result<LockState, StoreError> {
        lockout::load(self.conn, subject)
    }

    fn budget(&mut self) -> Result<Budget, StoreError> {
        lockout::load_budget(self.conn)
    }

    fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let row: Option<(String, Option<i64>, i64, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT name, revoked_at, totp_last_step, totp_sealed FROM devices WHERE id = ?1",
            )?
            .query_row([id.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((name, revoked_at, last_step, sealed)) = row else {
            return Ok(None);
        };
        let secret = self
            .master
            .open(&sealed, &registry::totp_aad(id))
            .map_err(|_| {
                StoreError::Corrupt("a TOTP secret does not open under this master key")
            })?;
        Ok(Some(DeviceRecord {
            name,
            revoked: revoked_at.is_some(),
            last_step: u64::try_from(last_step).unwrap_or(0),
            secret,
        }))
    }
}

/// Decides an attempt and commits what the decision changes, in the caller's (write)
/// transaction: the accepted TOTP step, and for a denial its lockout count, the budget and
/// its `access.denied` event (for shed frames, only the first of a run gets one). A
/// provisional grant is finished by [`record_outcome`] once the endpoint's action has run.
pub fn decide(
    tx: &Transaction<'_>,
    master: &MasterKey,
    endpoints: &Endpoints,
    att: &Attempt<'_>,
) -> Result<Verdict, StoreError> {
    let v = evaluate(att, &mut SqlLedger { conn: tx, master }, endpoints)?;
    if let (Some(step), Some(id)) = (v.accepted_step, &v.device_id) {
        // Recorded as soon as accepted, whatever happens next (PROTOCOL.md §4.2).
        tx.execute(
            "UPDATE devices SET totp_last_step = ?2 WHERE id = ?1 AND totp_last_step < ?2",
            params![id.as_str(), i64::try_from(step).unwrap_or(i64::MAX)],
        )?;
    }
    if v.status == Status::Granted {
        return Ok(v);
    }
    if let Some(subject) = &v.charge {
        let mut state = lockout::load(tx, subject)?;
        if let Some(secs) = state.record_failure(att.now) {
            tracing::warn!(
                subject = %subject.key(),
                failures = state.failures,
                lock_secs = secs,
                "BLE access locked out after repeated failures"
            );
        }
        lockout::save(tx, subject, &state, att.now)?;
    }
    if v.spends_budget || v.is_shed() {
        let mut budget = lockout::load_budget(tx)?;
        let record = if v.is_shed() {
            let first = budget.shed();
            if first {
                tracing::warn!(
                    retry_after = v.retry_after,
                    "too many BLE frames proving no key: shedding them until the budget refills"
                );
            }
            first
        } else {
            let shed = budget.spend(att.now);
            if shed > 0 {
                tracing::warn!(shed, "BLE frames proving no key were shed");
            }
            true
        };
        lockout::save_budget(tx, &budget, att.now)?;
        if !record {
            return Ok(v);
        }
    }
    record_event(tx, &v.summary(), v.status, att.peer, att.now)?;
    Ok(v)
}

/// Finishes a provisional grant: `Granted` (the action ran) or `ActionFailed`. Commits the
/// event and notes the device as seen; a grant resets the lockout counts of the device and
/// of the peer it came from (PROTOCOL.md §7.3).
pub fn record_outcome(
    tx: &Transaction<'_>,
    s: &Summary,
    status: Status,
    peer: &str,
    now: UnixTime,
) -> Result<i64, StoreError> {
    if let Some(id) = &s.device_id {
        if status == Status::Granted {
            for subject in [Subject::Device(id.clone()), Subject::Peer(peer.to_owned())] {
                lockout::save(tx, &subject, &LockState::default(), now)?;
            }
        }
        registry::touch_last_seen(tx, id, now)?;
    }
    record_event(tx, s, status, peer, now)
}

fn record_event(
    tx: &Transaction<'_>,
    s: &Summary,
    status: Status,
    peer: &str,
    now: UnixTime,
) -> Result<i64, StoreError> {
    let topic = if status == Status::Granted {
        "access.granted"
    } else {
        "access.denied"
    };
    events::append(
        tx,
        topic,
        &s.event_data(status, peer),
        ORIGIN,
        now.saturating_mul(1000),
    )
}

/// What a decision is recorded and logged as: a verdict without its keys.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The device the frame names (proven only when `authenticated`).
    pub device_id: Option<DeviceId>,
    pub device_name: Option<String>,
    /// The endpoint acted on, else the one requested.
    pub endpoint: Option<String>,
    pub authenticated: bool,
    pub retry_after: u16,
    /// Which lockout answered, for `LOCKED_OUT`.
    pub lock_scope: Option<LockScope>,
    /// Why a granted endpoint's action failed (`ACTION_FAILED`), e.g. "node is offline".
    pub detail: Option<String>,
}

impl Summary {
    /// The `data` of an `access.*` event.
    pub fn event_data(&self, status: Status, peer: &str) -> serde_json::Value {
        let mut data = json!({
            "deviceId": self.device_id,
            "deviceName": self.device_name,
            "endpoint": self.endpoint,
            "reason": status.as_str(),
            "peer": peer,
            "authenticated": self.authenticated,
            "transport": "ble",
        });
        if status == Status::LockedOut {
            data["retryAfter"] = json!(self.retry_after);
            if let Some(scope) = self.lock_scope {
                data["lockout"] = json!(scope.as_str());
            }
        }
        if let Some(d) = &self.detail {
            data["detail"] = json!(d);
        }
        data
    }
}

impl Verdict {
    pub fn summary(&self) -> Summary {
        Summary {
            device_id: self.device_id.clone(),
            device_name: self.device_name.clone(),
            endpoint: self
                .endpoint
                .as_ref()
                .map(|e| e.id.clone())
                .or_else(|| self.endpoint_requested.clone()),
            authenticated: self.authenticated,
            retry_after: self.retry_after,
            lock_scope: self.lock_scope,
            detail: None,
        }
    }
}

/// Forgets idle peer lockout rows; run now and then.
pub fn housekeeping(tx: &Transaction<'_>, now: UnixTime) -> Result<usize, StoreError> {
    lockout::prune_peers(tx, now)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use latchkey_proto::{hotp, totp_step, AuthRequest};

    use super::*;
    use crate::config::{ActionConfig, EndpointConfig};

    const NOW: UnixTime = 1_767_225_612;
    const PEER: &str = "/org/bluez/hci0/dev_11_22_33_44_55_66";
    const SECRET: &[u8] = b"12345678901234567890";

    #[derive(Default)]
    struct Mem {
        locks: HashMap<String, LockState>,
        budget: Budget,
        devices: HashMap<DeviceId, (bool, u64)>,
    }

    impl Ledger for Mem {
        fn lockout(&mut self, s: &Subject) -> Result<LockState, StoreError> {
            Ok(self.locks.get(&s.key()).copied().unwrap_or_default())
        }
        fn budget(&mut self) -> Result<Budget, StoreError> {
            Ok(self.budget)
        }
        fn device(&mut self, id: &DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
            Ok(self
                .devices
                .get(id)
                .map(|(revoked, last_step)| DeviceRecord {
                    name: "phone".into(),
                    revoked: *revoked,
                    last_step: *last_step,
                    secret: SecretBytes::new(SECRET.to_vec()),
                }))
        }
    }

    fn id() -> DeviceId {
        DeviceId::from_bytes([0x6f; 16])
    }

    fn endpoints() -> Endpoints {
        Endpoints::from_config(&[
            EndpointConfig {
                id: "front".into(),
                name: None,
                devices: None,
                action: ActionConfig::None,
            },
            EndpointConfig {
                id: "vault".into(),
                name: None,
                devices: Some(vec![]),
                action: ActionConfig::None,
            },
        ])
    }

    struct Phone {
        totp: u32,
        timestamp: u64,
        endpoint: &'static str,
        nonce: Nonce,
    }

    impl Default for Phone {
        fn default() -> Self {
            Phone {
                totp: hotp(SECRET, totp_step(NOW as u64)),
                timestamp: NOW as u64,
                endpoint: "front",
                nonce: [9; 16],
            }
        }
    }

    fn frame(p: &Phone) -> Vec<u8> {
        let keys = DeviceKeys::derive(SECRET, &id().to_bytes()).unwrap();
        let mut out = [0u8; 111];
        let n = AuthFrame::encode(
            &AuthRequest {
                device_id: id().to_bytes(),
                totp: p.totp,
                timestamp: p.timestamp,
                endpoint: p.endpoint,
            },
            &keys,
            &p.nonce,
            &mut out,
        )
        .unwrap();
        out[..n].to_vec()
    }

    fn run(ledger: &mut Mem, bytes: &[u8], live: Option<Nonce>) -> Verdict {
        let att = Attempt {
            frame: bytes,
            peer: PEER,
            nonce: Taken { live, last: live },
            now: NOW,
        };
        evaluate(&att, ledger, &endpoints()).unwrap()
    }

    fn ledger() -> Mem {
        let mut m = Mem::default();
        m.devices.insert(id(), (false, 0));
        m
    }

    #[test]
    fn grant_then_each_check_in_order() {
        let live = Some([9; 16]);
        let v = run(&mut ledger(), &frame(&Phone::default()), live);
        assert_eq!(v.status, Status::Granted);
        assert_eq!(v.accepted_step, Some(totp_step(NOW as u64)));
        assert!(v.authenticated && v.charge.is_none());

        let cases: Vec<(Status, Mem, Vec<u8>, Option<Nonce>)> = vec![
            (Status::Malformed, ledger(), vec![1, 2, 3], live),
            (Status::Unsupported, ledger(), vec![2; 90], live),
            (
                Status::UnknownDevice,
                Mem::default(),
                frame(&Phone::default()),
                live,
            ),
            (
                Status::NonceInvalid,
                ledger(),
                frame(&Phone::default()),
                None,
            ),
            (
                Status::NonceInvalid,
                ledger(),
                frame(&Phone::default()),
                Some([8; 16]),
            ),
            (
                Status::BadTag,
                ledger(),
                {
                    let mut f = frame(&Phone::default());
                    let last = f.len() - 1;
                    f[last] ^= 1;
                    f
                },
                live,
            ),
            (
                Status::Revoked,
                {
                    let mut m = ledger();
                    m.devices.insert(id(), (true, 0));
                    m
                },
                frame(&Phone::default()),
                live,
            ),
            (
                Status::ClockSkew,
                ledger(),
                frame(&Phone {
                    timestamp: NOW as u64 + 301,
                    ..Phone::default()
                }),
                live,
            ),
            (
                Status::BadTotp,
                ledger(),
                frame(&Phone {
                    totp: hotp(SECRET, totp_step(NOW as u64) + 2),
                    ..Phone::default()
                }),
                live,
            ),
            (
                Status::TotpReused,
                {
                    let mut m = ledger();
                    m.devices.insert(id(), (false, totp_step(NOW as u64)));
                    m
                },
                frame(&Phone::default()),
                live,
            ),
            (
                Status::EndpointDenied,
                ledger(),
                frame(&Phone {
                    endpoint: "back",
                    ..Phone::default()
                }),
                live,
            ),
            (
                Status::EndpointDenied,
                ledger(),
                frame(&Phone {
                    endpoint: "vault",
                    ..Phone::default()
                }),
                live,
            ),
        ];
        for (want, mut m, bytes, live) in cases {
            let v = run(&mut m, &bytes, live);
            assert_eq!(v.status, want);
            let peer_charged = matches!(v.charge, Some(Subject::Peer(_)));
            let signed = v.keys.is_some();
            match want {
                Status::Malformed | Status::Unsupported | Status::UnknownDevice => {
                    assert!(peer_charged && !signed && v.spends_budget, "{want}")
                }
                // The key is known, so the answer is signed; but the frame proved nothing.
                Status::NonceInvalid | Status::BadTag => {
                    assert!(peer_charged && signed && v.spends_budget, "{want}")
                }
                _ => assert!(
                    matches!(v.charge, Some(Subject::Device(_))) && signed,
                    "{want}"
                ),
            }
        }
    }

    #[test]
    fn default_endpoint_and_step_plus_one() {
        let p = Phone {
            endpoint: "",
            totp: hotp(SECRET, totp_step(NOW as u64) + 1),
            ..Phone::default()
        };
        let v = run(&mut ledger(), &frame(&p), Some([9; 16]));
        assert_eq!(v.status, Status::Granted);
        assert_eq!(v.endpoint.map(|e| e.id), Some("front".into()));
        assert_eq!(v.accepted_step, Some(totp_step(NOW as u64) + 1));
    }

    fn bad_tag() -> Vec<u8> {
        let mut f = frame(&Phone::default());
        let last = f.len() - 1;
        f[last] ^= 1;
        f
    }

    #[test]
    fn lockouts_answer_only_frames_they_apply_to() {
        let locked = LockState {
            failures: 5,
            locked_until: NOW + 42,
        };
        let live = Some([9; 16]);

        // A locked peer: what proves nothing is answered LOCKED_OUT, unsigned, with the
        // frame's nonce when it decoded; a frame proving the device's key gets in.
        let mut m = ledger();
        m.locks.insert(Subject::Peer(PEER.into()).key(), locked);
        let v = run(&mut m, &[0xff], None);
        assert_eq!((v.status, v.retry_after), (Status::LockedOut, 42));
        assert!(v.keys.is_none() && v.charge.is_none());
        assert_eq!(v.lock_scope, Some(LockScope::Peer));
        let v = run(&mut m, &bad_tag(), Some([8; 16]));
        assert_eq!(v.status, Status::LockedOut);
        assert_eq!(v.nonce, [9; 16], "the frame's nonce, not the connection's");
        assert!(v.result_frame(v.status)[21..].iter().all(|b| *b == 0));
        assert_eq!(
            run(&mut m, &frame(&Phone::default()), live).status,
            Status::Granted
        );

        // A locked device: only a frame proving its key hears about it (signed); a bad tag
        // in its name is the peer's failure.
        let mut m = ledger();
        m.locks.insert(Subject::Device(id()).key(), locked);
        let v = run(&mut m, &frame(&Phone::default()), live);
        assert_eq!((v.status, v.retry_after), (Status::LockedOut, 42));
        assert!(v.keys.is_some() && v.charge.is_none());
        assert_eq!(v.lock_scope, Some(LockScope::Device));
        let bytes = v.result_frame(Status::LockedOut);
        let keys = DeviceKeys::derive(SECRET, &id().to_bytes()).unwrap();
        let f = frame(&Phone::default());
        let tag: Tag = f[f.len() - 32..].try_into().unwrap();
        let r = latchkey_proto::ResultFrame::verify(&bytes, &keys, &[9; 16], &tag).unwrap();
        assert!(r.authenticated);
        assert_eq!(r.result.retry_after, 42);
        let v = run(&mut m, &bad_tag(), live);
        assert_eq!(v.status, Status::BadTag);
        assert_eq!(v.charge, Some(Subject::Peer(PEER.into())));

        // The gateway-wide budget spent: frames proving nothing are shed, unsigned, and
        // count against nobody; the phone still gets in.
        let mut m = ledger();
        let mut b = Budget::default();
        while b.wait(NOW).is_none() {
            b.spend(NOW);
        }
        m.budget = b;
        for bytes in [vec![1, 2, 3], bad_tag()] {
            let v = run(&mut m, &bytes, live);
            assert_eq!(v.status, Status::LockedOut);
            assert!(v.is_shed() && !v.spends_budget && v.charge.is_none() && v.keys.is_none());
        }
        let v = run(&mut m, &frame(&Phone::default()), live);
        assert_eq!(v.status, Status::Granted);
    }

    #[test]
    fn results_are_signed_only_with_a_key_and_never_grant_unsigned() {
        let v = run(
            &mut Mem::default(),
            &frame(&Phone::default()),
            Some([9; 16]),
        );
        let bytes = v.result_frame(Status::UnknownDevice);
        assert_eq!(bytes[21..], [0u8; 32]);
        assert_eq!(bytes[5..21], [9u8; 16]);
        let bytes = v.result_frame(Status::Granted);
        assert_eq!(bytes[2], Status::ActionFailed.code());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_answered_and_never_granted(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            live in proptest::prelude::any::<bool>(),
        ) {
            let v = run(&mut ledger(), &bytes, live.then_some([9; 16]));
            proptest::prop_assert_ne!(v.status, Status::Granted);
            let r = v.result_frame(v.status);
            proptest::prop_assert!(latchkey_proto::ResultFrame::decode(&r).is_ok());
        }

        #[test]
        fn no_single_bit_flip_of_a_good_frame_is_granted(
            byte in 0usize..84,
            bit in 0u8..8,
        ) {
            let mut f = frame(&Phone::default());
            f[byte] ^= 1 << bit;
            let v = run(&mut ledger(), &f, Some([9; 16]));
            proptest::prop_assert_ne!(v.status, Status::Granted);
        }
    }
}
