//! latchkey-proto's decoders: the BLE frames of version 1 (the gateway's door) and version 2
//! (nodes and the gateway's v2 door), and the grant and pairing formats inside them.

use std::sync::OnceLock;

use latchkey_proto::v2::ed25519_dalek::{SigningKey, VerifyingKey as EdVerifyingKey};
use latchkey_proto::v2::pairing::{PairingChallenge, PairingResponse};
use latchkey_proto::v2::{vectors, Challenge, Grant, PeerSecret, Request, ResultFrame};
use latchkey_proto::{AuthFrame, Challenge as ChallengeV1, ResultFrame as ResultV1};

/// Version 1: a phone's auth write, and the challenge and result frames a phone decodes.
pub fn ble_v1(data: &[u8]) {
    let _ = AuthFrame::decode(data);
    let _ = ChallengeV1::decode(data);
    let _ = ResultV1::decode(data);
}

/// Version 2: a phone's request write (hint, then opened under the vectors' session keys, so
/// the length and tag checks run), the door's challenge and result as a phone reads them, a
/// grant record, and the vehicle pairing frames.
pub fn ble_v2(data: &[u8]) {
    let _ = Challenge::decode(data);
    let _ = Request::hint(data);
    let _ = Grant::decode(data);
    let _ = PairingChallenge::decode(data);
    let (keys, gateway) = fixtures();
    if let Some(keys) = keys {
        let _ = Request::open(data, keys, &vectors::NONCE);
        let _ = ResultFrame::open(data, keys, &vectors::NONCE);
    }
    let _ = PairingResponse::verify(data, &vectors::DOOR_ID, gateway);
}

/// The vectors' session keys and gateway key, derived once (ECDH per run would take most of it).
fn fixtures() -> &'static (Option<latchkey_proto::v2::SessionKeys>, EdVerifyingKey) {
    static FIXTURES: OnceLock<(Option<latchkey_proto::v2::SessionKeys>, EdVerifyingKey)> =
        OnceLock::new();
    FIXTURES.get_or_init(|| {
        let gateway = SigningKey::from_bytes(&vectors::GATEWAY_SEED).verifying_key();
        (session_keys(), gateway)
    })
}

fn session_keys() -> Option<latchkey_proto::v2::SessionKeys> {
    let phone = latchkey_proto::v2::parse_secret_key(&vectors::PHONE_SECRET).ok()?;
    let door = latchkey_proto::v2::parse_secret_key(&vectors::DOOR_SECRET).ok()?;
    let door_public = latchkey_proto::v2::public_key_bytes(&door.public_key());
    let peer = PeerSecret::derive(&phone, &door_public, &vectors::DOOR_ID).ok()?;
    Some(peer.session(&vectors::NONCE, &vectors::DOOR_ID))
}
