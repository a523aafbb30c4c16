//! The fixed inputs of the version-2 test vectors in `docs/PROTOCOL.md`, and the computation
//! of every expected byte from them. `examples/v2_vectors.rs` prints them;
//! `tests/v2_vectors.rs` pins them and checks the document; `scripts/v2_vectors.py` recomputes
//! them independently. Not part of the stable API.

use ed25519_dalek::SigningKey;
use hkdf::Hkdf;
use sha2::Sha256;

use super::{
    encode_snapshot, parse_secret_key, public_key_bytes, snapshot_len, Challenge, EndpointId,
    Error, Grant, PeerSecret, PublicKeyBytes, Request, RequestBody, ResultFrame, SignedGrant,
    SnapshotHeader, Status, REQUEST_BODY_LEN,
};
use crate::Nonce;

/// The phone's P-256 private scalar: 32 × `0x11`.
pub const PHONE_SECRET: [u8; 32] = [0x11; 32];
/// The door's P-256 private scalar: 32 × `0x22`.
pub const DOOR_SECRET: [u8; 32] = [0x22; 32];
/// A second phone's P-256 private scalar (second grant of the snapshot): 32 × `0x33`.
pub const OTHER_PHONE_SECRET: [u8; 32] = [0x33; 32];
/// The gateway's Ed25519 private key (RFC 8032 seed): 32 × `0x44`.
pub const GATEWAY_SEED: [u8; 32] = [0x44; 32];
/// The door (node) id `3d9a5c1e-7b2f-4c80-9e41-5a6b7c8d9e0f`.
pub const DOOR_ID: [u8; 16] = [
    0x3d, 0x9a, 0x5c, 0x1e, 0x7b, 0x2f, 0x4c, 0x80, 0x9e, 0x41, 0x5a, 0x6b, 0x7c, 0x8d, 0x9e, 0x0f,
];
/// The access tool id `a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d`.
pub const TOOL_ID: [u8; 16] = [
    0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x4a, 0x7b, 0x8c, 0x9d, 0x0e, 0x1f, 0x2a, 0x3b, 0x4c, 0x5d,
];
/// The second grant's tool id `0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e`.
pub const OTHER_TOOL_ID: [u8; 16] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49, 0x68, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e,
];
/// The challenge nonce.
pub const NONCE: Nonce = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
/// The door's wall time in the challenge and the result (2026-01-01T00:00:00Z).
pub const DOOR_TIME: u64 = 1_767_225_600;
/// The phone's time in the request.
pub const PHONE_TIME: u64 = 1_767_225_612;
/// The endpoint of the first grant and of the request.
pub const ENDPOINT: &str = "front-door";
/// The endpoint of the second grant.
pub const OTHER_ENDPOINT: &str = "garage";
/// Both grants' `not_before`.
pub const NOT_BEFORE: u64 = 1_767_225_000;
/// Both grants' `expires` (seven days after [`DOOR_TIME`]).
pub const EXPIRES: u64 = 1_767_830_400;
/// The revocation epoch of the grants and the snapshot.
pub const EPOCH: u32 = 3;
/// The snapshot's version.
pub const SNAPSHOT_VERSION: u64 = 42;
/// The snapshot's `issued_at`.
pub const ISSUED_AT: u64 = 1_767_225_000;

/// Everything the version-2 vectors section of `PROTOCOL.md` lists.
pub struct Vectors {
    /// The phone's public key.
    pub phone_public: PublicKeyBytes,
    /// The door's public key.
    pub door_public: PublicKeyBytes,
    /// The second phone's public key.
    pub other_phone_public: PublicKeyBytes,
    /// The gateway's Ed25519 public key.
    pub gateway_public: [u8; 32],
    /// ECDH shared secret and hint key.
    pub secret: PeerSecret,
    /// HKDF-Extract(salt = nonce, ikm = Z).
    pub session_prk: [u8; 32],
    /// Request key.
    pub to_door: [u8; 32],
    /// Result key.
    pub to_phone: [u8; 32],
    /// The hint for [`NONCE`].
    pub hint: [u8; 8],
    /// Challenge frame.
    pub challenge: [u8; Challenge::LEN],
    /// The request body before encryption.
    pub request_plain: [u8; REQUEST_BODY_LEN],
    /// Request frame.
    pub request: [u8; Request::LEN],
    /// Sealed `GRANTED` result with door time [`DOOR_TIME`].
    pub result_granted: [u8; ResultFrame::SEALED_LEN],
    /// Plain `UNKNOWN_TOOL` result.
    pub result_unknown: [u8; ResultFrame::PLAIN_LEN],
    /// The first grant.
    pub grant: [u8; Grant::LEN],
    /// The first grant, signed on its own.
    pub signed_grant: [u8; SignedGrant::LEN],
    /// The snapshot of both grants.
    pub snapshot: [u8; snapshot_len(2)],
}

/// The two grants of the snapshot.
///
/// # Errors
/// Only if the fixed inputs were invalid.
pub fn grants() -> Result<[Grant; 2], Error> {
    let phone = parse_secret_key(&PHONE_SECRET)?;
    let other = parse_secret_key(&OTHER_PHONE_SECRET)?;
    let grant = |tool_id, endpoint, key: &p256::SecretKey| -> Result<Grant, Error> {
        Ok(Grant {
            tool_id,
            node_id: DOOR_ID,
            endpoint: EndpointId::new(endpoint)?,
            not_before: NOT_BEFORE,
            expires: EXPIRES,
            epoch: EPOCH,
            phone_key: public_key_bytes(&key.public_key()),
        })
    };
    Ok([
        grant(TOOL_ID, ENDPOINT, &phone)?,
        grant(OTHER_TOOL_ID, OTHER_ENDPOINT, &other)?,
    ])
}

/// Computes every vector from the fixed inputs.
///
/// # Errors
/// Only if the codec itself is broken.
pub fn compute() -> Result<Vectors, Error> {
    let phone = parse_secret_key(&PHONE_SECRET)?;
    let door = parse_secret_key(&DOOR_SECRET)?;
    let other = parse_secret_key(&OTHER_PHONE_SECRET)?;
    let gateway = SigningKey::from_bytes(&GATEWAY_SEED);
    let door_public = public_key_bytes(&door.public_key());
    let secret = PeerSecret::derive(&phone, &door_public, &DOOR_ID)?;
    let (prk, _) = Hkdf::<Sha256>::extract(Some(&NONCE), secret.shared());
    let mut session_prk = [0u8; 32];
    for (dst, src) in session_prk.iter_mut().zip(prk.iter()) {
        *dst = *src;
    }
    let keys = secret.session(&NONCE, &DOOR_ID);
    let hint = secret.hint(&NONCE);
    let body = RequestBody {
        tool_id: TOOL_ID,
        phone_time: PHONE_TIME,
        endpoint: EndpointId::new(ENDPOINT)?,
    };
    let request_plain = body.to_bytes();
    let [first, second] = grants()?;
    let mut snapshot = [0u8; snapshot_len(2)];
    encode_snapshot(
        &SnapshotHeader {
            node_id: DOOR_ID,
            version: SNAPSHOT_VERSION,
            epoch: EPOCH,
            issued_at: ISSUED_AT,
        },
        &[first, second],
        &gateway,
        &mut snapshot,
    )?;
    Ok(Vectors {
        phone_public: public_key_bytes(&phone.public_key()),
        door_public,
        other_phone_public: public_key_bytes(&other.public_key()),
        gateway_public: gateway.verifying_key().to_bytes(),
        session_prk,
        to_door: *keys.to_door(),
        to_phone: *keys.to_phone(),
        hint,
        challenge: Challenge {
            door_id: DOOR_ID,
            nonce: NONCE,
            door_time: DOOR_TIME,
        }
        .to_bytes(),
        request_plain,
        request: Request::seal(&body, &keys, &hint, &NONCE)?,
        result_granted: ResultFrame::seal(Status::Granted, Some(DOOR_TIME), &keys, &NONCE)?,
        result_unknown: ResultFrame::plain(Status::UnknownTool, &NONCE)?,
        grant: first.to_bytes(),
        signed_grant: first.sign(&gateway),
        snapshot,
        secret,
    })
}
