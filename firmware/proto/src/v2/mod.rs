//! Door protocol version 2 (`docs/PROTOCOL.md`, "Version 2"): offline doors.
//!
//! A phone and a door each hold a static P-256 key (the phone's lives in its Secure Enclave /
//! Android Keystore, which offer P-256 only). The gateway signs, with its Ed25519 key, a
//! snapshot of every [`Grant`] a node honours; the node verifies it before storing it and
//! computes each phone's ECDH secret once ([`PeerSecret`]). An unlock is then three ATT
//! operations: the door's [`Challenge`] (door id, fresh nonce), the phone's [`Request`]
//! (an 8-byte hint that lets the door find the grant without naming the phone, and AES-GCM
//! of the tool id, the endpoint and the phone's time under a key derived from the shared
//! secret and the nonce), and the door's [`ResultFrame`], sealed under the reverse key.
//!
//! The frame and grant codecs are allocation-free; the door's [`GrantSet`] and [`decide`]
//! need the `alloc` feature.

mod endpoint;
mod error;
mod frame;
mod grant;
mod keys;
pub mod pairing;
#[doc(hidden)]
pub mod vectors;
mod wire;

#[cfg(feature = "alloc")]
mod door;

pub use ed25519_dalek;
pub use p256;

/// The status codes: one code space for both versions (codes 13–17 are version 2's).
pub use crate::Status;
pub use endpoint::{EndpointId, ENDPOINT_FIELD_LEN};
pub use error::Error;
pub use frame::{
    Challenge, Request, RequestBody, ResultFrame, VerifiedResult, GCM_IV, GCM_TAG_LEN,
    REQUEST_BODY_LEN,
};
pub use grant::{
    encode_snapshot, from_base64, gateway_key, snapshot_len, to_base64, verify_snapshot, Grant,
    SignedGrant, SnapshotHeader, VerifiedSnapshot, GRANT_LABEL, MAX_SNAPSHOT_LEN, SIGNATURE_LEN,
    SNAPSHOT_HEADER_LEN, SNAPSHOT_LABEL,
};
pub use keys::{
    parse_public_key, parse_secret_key, public_key_bytes, HintMac, PeerSecret, SessionKeys,
    HINT_LABEL, INFO_HINT_KEY, INFO_TO_DOOR, INFO_TO_PHONE,
};

#[cfg(feature = "alloc")]
pub use door::{decide, Applied, Decision, Effects, GrantSet, IssuedChallenge, Record, ReplyFrame};

use sha2::{Digest, Sha256};

/// First byte of every version-2 frame, signed grant and snapshot.
pub const VERSION: u8 = 2;
/// Second byte of a [`Challenge`].
pub const KIND_CHALLENGE: u8 = 0x01;
/// Second byte of a [`Request`].
pub const KIND_REQUEST: u8 = 0x02;
/// Second byte of a sealed (authenticated) result.
pub const KIND_SEALED_RESULT: u8 = 0x03;
/// Second byte of a plain (unauthenticated) result.
pub const KIND_PLAIN_RESULT: u8 = 0x04;
/// Second byte of a [`SignedGrant`].
pub const KIND_SIGNED_GRANT: u8 = 0x11;
/// Second byte of a snapshot.
pub const KIND_SNAPSHOT: u8 = 0x12;

/// Length of the request's grant hint.
pub const HINT_LEN: usize = 8;
/// Length of a SEC1 uncompressed P-256 public key.
pub const PUBLIC_KEY_LEN: usize = 65;
/// Grants a door keeps at most; a snapshot with more is refused.
pub const GRANT_CAPACITY: usize = 256;

/// A door id: a node's 16 UUID bytes (the gateway's own door: its `gatewayId`, hex-decoded).
pub type DoorId = [u8; 16];
/// An access tool id (`accessToolId`, 16 UUID bytes).
pub type ToolId = [u8; 16];
/// A request's grant hint.
pub type Hint = [u8; HINT_LEN];
/// A P-256 public key, SEC1 uncompressed (`04 ‖ X ‖ Y`).
pub type PublicKeyBytes = [u8; PUBLIC_KEY_LEN];

/// The version-2 GATT service: `8603cf6e-0011-462b-ab5a-16c899edcee3`.
pub const SERVICE_UUID: u128 = 0x8603_cf6e_0011_462b_ab5a_16c8_99ed_cee3;
/// Challenge characteristic (read, notify): `8603cf6e-0012-462b-ab5a-16c899edcee3`.
pub const CHALLENGE_UUID: u128 = 0x8603_cf6e_0012_462b_ab5a_16c8_99ed_cee3;
/// Request characteristic (write with response): `8603cf6e-0013-462b-ab5a-16c899edcee3`.
pub const REQUEST_UUID: u128 = 0x8603_cf6e_0013_462b_ab5a_16c8_99ed_cee3;
/// Result characteristic (notify): `8603cf6e-0014-462b-ab5a-16c899edcee3`.
pub const RESULT_UUID: u128 = 0x8603_cf6e_0014_462b_ab5a_16c8_99ed_cee3;

/// Label of the door tag a node advertises.
pub const DOOR_TAG_LABEL: &[u8] = b"latchkey/v2/adv/door";
/// Bytes of the door tag.
pub const DOOR_TAG_LEN: usize = 5;

/// The short form of a door id a node advertises: the first 5 bytes of
/// `SHA-256("latchkey/v2/adv/door" ‖ door_id)`. It picks a candidate; it proves nothing.
#[must_use]
pub fn door_tag(door_id: &DoorId) -> [u8; DOOR_TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(DOOR_TAG_LABEL)
        .chain_update(door_id)
        .finalize();
    let mut tag = [0u8; DOOR_TAG_LEN];
    for (dst, src) in tag.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    tag
}

// Every frame fits one ATT write or notification at the MTU version 1 requires (114: 111-byte
// payloads), let alone at the 185 phones request.
const _: () = assert!(Request::LEN <= 111 && Challenge::LEN <= 111);
const _: () = assert!(ResultFrame::SEALED_LEN <= 111 && ResultFrame::PLAIN_LEN <= 111);
