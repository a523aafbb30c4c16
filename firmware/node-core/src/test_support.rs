//! Fixtures for the door's tests: a gateway that signs snapshots, phones that speak version 2,
//! a door with the PROTOCOL.md §24 keys.
// Fixtures: a broken one should stop the test or fuzz run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use alloc::string::String;
use alloc::vec::Vec;

use data_encoding::BASE64;
use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::{
    encode_snapshot, parse_secret_key, public_key_bytes, snapshot_len, vectors, Challenge, DoorId,
    EndpointId, Grant, PeerSecret, PublicKeyBytes, Request, RequestBody, ResultFrame, SessionKeys,
    SnapshotHeader, VerifiedResult,
};
use zeroize::Zeroizing;

use crate::board::Rng;
use crate::grants::{GrantStore, Outcome};
use crate::identity::Identity;
use crate::storage::Credentials;

/// The door (node) id of the vectors, as the registry writes it.
pub const NODE_ID: &str = "3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f";
/// Its 16 bytes.
pub const DOOR_ID: DoorId = vectors::DOOR_ID;
/// Another node.
pub const OTHER_DOOR: DoorId = [0x77; 16];
/// A wall time inside every grant made by [`grant`] (2026-01-01T00:00:00Z).
pub const NOW: u64 = vectors::DOOR_TIME;
/// Grants made by [`grant`] run from `NOW - 600` to `NOW + 7 days`.
pub const EXPIRES: u64 = NOW + 7 * 86_400;
/// [`NOW`] as the node's wall clock says it.
pub const WALL: Option<crate::time::UnixTime> = Some(NOW as i64);

/// Monotonic `ms` since boot.
pub fn at(ms: u64) -> crate::time::Instant {
    crate::time::Instant::from_millis(ms)
}

pub fn gateway() -> SigningKey {
    SigningKey::from_bytes(&vectors::GATEWAY_SEED)
}

pub fn door_identity() -> Identity {
    Identity::from_secret_bytes(&vectors::DOOR_SECRET).unwrap()
}

pub fn door_public() -> PublicKeyBytes {
    public_key_bytes(&door_identity().door_key().public_key())
}

pub fn credentials() -> Credentials {
    Credentials {
        node_id: String::from(NODE_ID),
        node_key: Zeroizing::new(String::from("node_key")),
        gateway_id: String::from("gw"),
        gateway_pubkey: BASE64.encode(gateway().verifying_key().as_bytes()),
        ws_url: String::from("ws://127.0.0.1:1/ws"),
        room: String::from("hall"),
        wifi_ssid: String::new(),
        wifi_password: Zeroizing::new(String::new()),
        revoked: false,
    }
}

/// An empty grant store of the vectors' door.
pub fn empty_store() -> GrantStore {
    GrantStore::new(&credentials(), door_identity().door_key()).unwrap()
}

/// A store holding `grants` (snapshot version 1), with a 1500 ms pulse.
pub fn store_with(grants: &[Grant]) -> GrantStore {
    let mut store = empty_store();
    let outcome = store.apply_frame(&snapshot(&gateway(), 1, 0, NOW - 600, grants), Some(1500));
    assert!(matches!(outcome, Outcome::Applied { .. }), "{outcome:?}");
    store
}

/// A snapshot signed by `key`, standard base64 as the `grants` frame carries it.
pub fn snapshot(
    key: &SigningKey,
    version: u64,
    epoch: u32,
    issued_at: u64,
    grants: &[Grant],
) -> String {
    let node_id = grants.first().map_or(DOOR_ID, |g| g.node_id);
    let header = SnapshotHeader {
        node_id,
        version,
        epoch,
        issued_at,
    };
    let mut out = alloc::vec![0u8; snapshot_len(grants.len())];
    let n = encode_snapshot(&header, grants, key, &mut out).unwrap();
    BASE64.encode(&out[..n])
}

/// A phone: its P-256 key and the tool it was given.
pub struct Phone {
    secret: p256::SecretKey,
    pub tool: [u8; 16],
}

impl Phone {
    pub fn new(seed: u8) -> Self {
        Self {
            secret: parse_secret_key(&[seed; 32]).unwrap(),
            tool: [seed; 16],
        }
    }

    pub fn public(&self) -> PublicKeyBytes {
        public_key_bytes(&self.secret.public_key())
    }

    /// This phone's grant for `endpoint` at `door`, epoch 0, valid `[NOW − 600, EXPIRES)`.
    pub fn grant(&self, door: DoorId, endpoint: &str) -> Grant {
        Grant {
            tool_id: self.tool,
            node_id: door,
            endpoint: EndpointId::new(endpoint).unwrap(),
            not_before: NOW - 600,
            expires: EXPIRES,
            epoch: 0,
            phone_key: self.public(),
        }
    }

    /// The request for `challenge` (as read from the door) and the keys to open its result.
    pub fn request(&self, challenge: &[u8], endpoint: &str) -> (Vec<u8>, SessionKeys, [u8; 16]) {
        let c = Challenge::decode(challenge).unwrap();
        let peer = PeerSecret::derive(&self.secret, &door_public(), &c.door_id).unwrap();
        let keys = peer.session(&c.nonce, &c.door_id);
        let body = RequestBody {
            tool_id: self.tool,
            phone_time: NOW + 12,
            endpoint: EndpointId::new(endpoint).unwrap(),
        };
        let frame = Request::seal(&body, &keys, &peer.hint(&c.nonce), &c.nonce).unwrap();
        (frame.to_vec(), keys, c.nonce)
    }
}

/// Opens a result as the phone does.
pub fn open_result(frame: &[u8], keys: &SessionKeys, nonce: &[u8; 16]) -> VerifiedResult {
    ResultFrame::open(frame, keys, nonce).unwrap()
}

/// A CSPRNG stand-in giving a new value at every call.
#[derive(Default)]
pub struct Counter(pub u8);

impl Rng for Counter {
    fn fill_bytes(&mut self, buf: &mut [u8]) {
        self.0 = self.0.wrapping_add(1);
        buf.fill(self.0);
    }
}

/// One unlock attempt as a phone makes it: read a challenge on connection 1, write the request
/// for `front-door`, open the result. Returns it with the pulse the door asked for, if any.
pub fn attempt(
    door: &mut crate::door::Door,
    grants: &GrantStore,
    phone: &Phone,
    now: crate::time::Instant,
    wall: Option<crate::time::UnixTime>,
) -> (VerifiedResult, Option<u32>) {
    attempt_at(door, grants, phone, "front-door", now, wall)
}

/// [`attempt`] for `endpoint`.
pub fn attempt_at(
    door: &mut crate::door::Door,
    grants: &GrantStore,
    phone: &Phone,
    endpoint: &str,
    now: crate::time::Instant,
    wall: Option<crate::time::UnixTime>,
) -> (VerifiedResult, Option<u32>) {
    use crate::board::DoorEvent;
    use crate::door::DoorAction;
    let mut rng = Counter::default();
    let read = door.on(
        DoorEvent::ReadChallenge { conn: 1 },
        grants,
        now,
        wall,
        &mut rng,
        |_| true,
    );
    let [DoorAction::Reply { value, .. }] = &read[..] else {
        panic!("{read:?}")
    };
    let (request, keys, nonce) = phone.request(value, endpoint);
    let mut pulse = None;
    let event = DoorEvent::Request {
        conn: 1,
        value: request,
    };
    let done = door.on(event, grants, now, wall, &mut rng, |ms| {
        pulse = Some(ms);
        true
    });
    let [DoorAction::Notify { value, .. }, DoorAction::Record(_)] = &done[..] else {
        panic!("{done:?}")
    };
    (open_result(value, &keys, &nonce), pulse)
}
