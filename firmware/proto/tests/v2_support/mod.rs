//! A gateway, a door and phones with fixed keys, for the version-2 door tests and benches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use latchkey_proto::v2::ed25519_dalek::{SigningKey, VerifyingKey};
use latchkey_proto::v2::p256::SecretKey;
use latchkey_proto::v2::{
    encode_snapshot, parse_secret_key, public_key_bytes, snapshot_len, Challenge, EndpointId,
    Grant, PeerSecret, Request, RequestBody, SessionKeys, SnapshotHeader, ToolId, GRANT_CAPACITY,
};

pub const DOOR_ID: [u8; 16] = [0xd0; 16];
pub const NOW: u64 = 1_767_225_600;
pub const DAY: u64 = 86_400;

pub struct Gateway {
    pub key: SigningKey,
    pub version: u64,
}

impl Gateway {
    pub fn new() -> Gateway {
        Gateway {
            key: SigningKey::from_bytes(&[0x44; 32]),
            version: 0,
        }
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The next snapshot for `door_id` at `epoch`.
    pub fn snapshot(&mut self, door_id: [u8; 16], epoch: u32, grants: &[Grant]) -> Vec<u8> {
        self.version += 1;
        let mut out = vec![0u8; snapshot_len(grants.len())];
        let header = SnapshotHeader {
            node_id: door_id,
            version: self.version,
            epoch,
            issued_at: NOW,
        };
        encode_snapshot(&header, grants, &self.key, &mut out).unwrap();
        out
    }
}

/// A P-256 key from a counter (never zero, always below the group order).
pub fn key(i: u32) -> SecretKey {
    let mut bytes = [0x5a; 32];
    bytes[28..].copy_from_slice(&(i + 1).to_be_bytes());
    parse_secret_key(&bytes).unwrap()
}

pub fn door_key() -> SecretKey {
    key(1_000_000)
}

pub fn tool(i: u32) -> ToolId {
    let mut id = [0x70; 16];
    id[12..].copy_from_slice(&i.to_be_bytes());
    id
}

/// Phone `i`'s grant for `endpoint` on `door_id`.
pub fn grant(i: u32, door_id: [u8; 16], endpoint: &str, epoch: u32) -> Grant {
    Grant {
        tool_id: tool(i),
        node_id: door_id,
        endpoint: EndpointId::new(endpoint).unwrap(),
        not_before: NOW - DAY,
        expires: NOW + 7 * DAY,
        epoch,
        phone_key: public_key_bytes(&key(i).public_key()),
    }
}

/// Grants for phones `0..n`, each for `front-door`.
pub fn grants(n: u32, epoch: u32) -> Vec<Grant> {
    assert!(n as usize <= GRANT_CAPACITY);
    (0..n)
        .map(|i| grant(i, DOOR_ID, "front-door", epoch))
        .collect()
}

/// Phone `i` answering a challenge frame: the request and the keys to read the result.
pub fn phone_request(
    i: u32,
    door: &SecretKey,
    challenge: &[u8],
    tool_id: ToolId,
    endpoint: &str,
) -> ([u8; Request::LEN], SessionKeys, [u8; 16]) {
    let challenge = Challenge::decode(challenge).unwrap();
    let door = public_key_bytes(&door.public_key());
    let secret = PeerSecret::derive(&key(i), &door, &challenge.door_id).unwrap();
    let keys = secret.session(&challenge.nonce, &challenge.door_id);
    let body = RequestBody {
        tool_id,
        phone_time: NOW + 3,
        endpoint: EndpointId::new(endpoint).unwrap(),
    };
    let frame = Request::seal(
        &body,
        &keys,
        &secret.hint(&challenge.nonce),
        &challenge.nonce,
    )
    .unwrap();
    (frame, keys, challenge.nonce)
}
