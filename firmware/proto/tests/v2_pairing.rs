//! Vehicle pairing frames and proofs (`latchkey_proto::v2::pairing`): what each side accepts,
//! and that nothing a stranger sends panics a decoder.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::pairing::{
    open_approval, seal_approval, sign_completion, verify_completion, PairingChallenge,
    PairingResponse, APPROVAL_LEN, CHALLENGE_LEN, ENDPOINT, RESPONSE_LEN,
};
use latchkey_proto::v2::{parse_secret_key, public_key_bytes, Error, PublicKeyBytes};
use proptest::prelude::*;

const VEHICLE: [u8; 16] = [0x3d; 16];
const SESSION: [u8; 16] = [0x5e; 16];

fn secret(b: u8) -> latchkey_proto::v2::p256::SecretKey {
    parse_secret_key(&[b; 32]).unwrap()
}

fn public(b: u8) -> PublicKeyBytes {
    public_key_bytes(&secret(b).public_key())
}

fn gateway() -> SigningKey {
    SigningKey::from_bytes(&[0x44; 32])
}

fn challenge() -> PairingChallenge {
    PairingChallenge {
        vehicle_id: VEHICLE,
        nonce: [7; 16],
        timestamp: 1_767_225_600,
    }
}

fn response() -> PairingResponse {
    PairingResponse {
        nonce: [7; 16],
        key_id: [0xa1; 16],
        not_before: 1_767_225_000,
        expires: 1_769_817_000,
        epoch: 3,
        phone_key: public(0x11),
    }
}

#[test]
fn a_challenge_signed_by_the_vehicle_verifies_under_its_key_only() {
    let frame = challenge().sign(&secret(0x22));
    assert_eq!(frame.len(), CHALLENGE_LEN);
    assert_eq!(PairingChallenge::decode(&frame), Ok(challenge()));
    assert_eq!(
        PairingChallenge::verify(&frame, &public(0x22)),
        Ok(challenge())
    );
    // Another node's key (a foreign challenge) and any flipped byte are refused.
    assert_eq!(
        PairingChallenge::verify(&frame, &public(0x23)),
        Err(Error::BadSignature)
    );
    for i in 0..CHALLENGE_LEN {
        let mut bad = frame;
        bad[i] ^= 0x01;
        assert!(
            PairingChallenge::verify(&bad, &public(0x22)).is_err(),
            "byte {i} flipped"
        );
    }
    assert!(matches!(
        PairingChallenge::decode(&frame[..CHALLENGE_LEN - 1]),
        Err(Error::BadLength { .. })
    ));
}

#[test]
fn a_response_verifies_for_its_vehicle_and_becomes_a_vehicle_grant() {
    let frame = response().sign(&VEHICLE, &gateway());
    assert_eq!(frame.len(), RESPONSE_LEN);
    let key = gateway().verifying_key();
    let got = PairingResponse::verify(&frame, &VEHICLE, &key).unwrap();
    assert_eq!(got, response());
    let grant = got.grant(&VEHICLE).unwrap();
    assert_eq!(grant.endpoint.as_str(), ENDPOINT);
    assert_eq!(
        (grant.node_id, grant.tool_id, grant.epoch),
        (VEHICLE, [0xa1; 16], 3)
    );
    assert_eq!(grant.phone_key, public(0x11));
    // For another vehicle, under another gateway key, or altered: refused.
    assert_eq!(
        PairingResponse::verify(&frame, &[0x3e; 16], &key),
        Err(Error::BadSignature)
    );
    let other = SigningKey::from_bytes(&[0x45; 32]).verifying_key();
    assert_eq!(
        PairingResponse::verify(&frame, &VEHICLE, &other),
        Err(Error::BadSignature)
    );
    for i in 0..RESPONSE_LEN {
        let mut bad = frame;
        bad[i] ^= 0x80;
        assert!(
            PairingResponse::verify(&bad, &VEHICLE, &key).is_err(),
            "byte {i}"
        );
    }
    // A validity that is empty is refused even when signed.
    let mut empty = response();
    empty.expires = empty.not_before;
    let frame = empty.sign(&VEHICLE, &gateway());
    assert_eq!(
        PairingResponse::verify(&frame, &VEHICLE, &key),
        Err(Error::EmptyValidity)
    );
}

#[test]
fn the_approval_opens_only_for_its_session_challenge_and_phone() {
    let frame = challenge().sign(&secret(0x22));
    let sealed = seal_approval(&secret(0x11), &public(0x33), &SESSION, &frame).unwrap();
    assert_eq!(sealed.len(), APPROVAL_LEN);
    assert_eq!(
        open_approval(&secret(0x33), &public(0x11), &SESSION, &frame, &sealed),
        Ok(())
    );
    // Another phone, another session, another challenge, a flipped bit, a short blob.
    assert!(open_approval(&secret(0x33), &public(0x12), &SESSION, &frame, &sealed).is_err());
    assert!(open_approval(&secret(0x33), &public(0x11), &[0; 16], &frame, &sealed).is_err());
    let other = PairingChallenge {
        nonce: [8; 16],
        ..challenge()
    }
    .sign(&secret(0x22));
    assert!(open_approval(&secret(0x33), &public(0x11), &SESSION, &other, &sealed).is_err());
    let mut bad = sealed;
    bad[0] ^= 1;
    assert!(open_approval(&secret(0x33), &public(0x11), &SESSION, &frame, &bad).is_err());
    assert!(matches!(
        open_approval(&secret(0x33), &public(0x11), &SESSION, &frame, &sealed[1..]),
        Err(Error::BadLength { .. })
    ));
}

#[test]
fn the_completion_signature_binds_session_challenge_and_approval() {
    let frame = challenge().sign(&secret(0x22));
    let sealed = seal_approval(&secret(0x11), &public(0x33), &SESSION, &frame).unwrap();
    let sig = sign_completion(&secret(0x11), &SESSION, &frame, &sealed);
    assert_eq!(
        verify_completion(&public(0x11), &SESSION, &frame, &sealed, &sig),
        Ok(())
    );
    // Signed by another device's key, or for another session or approval: refused.
    assert_eq!(
        verify_completion(&public(0x12), &SESSION, &frame, &sealed, &sig),
        Err(Error::BadSignature)
    );
    assert!(verify_completion(&public(0x11), &[1; 16], &frame, &sealed, &sig).is_err());
    assert!(verify_completion(&public(0x11), &SESSION, &frame, &sealed[1..], &sig).is_err());
    assert!(verify_completion(&public(0x11), &SESSION, &frame, &sealed, &sig[1..]).is_err());
}

proptest! {
    #[test]
    fn no_input_panics_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let key = gateway().verifying_key();
        let _ = PairingChallenge::decode(&bytes);
        let _ = PairingChallenge::verify(&bytes, &public(0x22));
        let _ = PairingResponse::verify(&bytes, &VEHICLE, &key);
        let _ = open_approval(&secret(0x33), &public(0x11), &SESSION, &bytes, &bytes);
        let _ = verify_completion(&public(0x11), &SESSION, &bytes, &bytes, &bytes);
    }

    #[test]
    fn framed_inputs_of_the_right_length_never_panic(
        mut frame in proptest::collection::vec(any::<u8>(), RESPONSE_LEN..=RESPONSE_LEN),
        kind in prop_oneof![Just(0x21u8), Just(0x22u8)],
    ) {
        frame[0] = 2;
        frame[1] = kind;
        let key = gateway().verifying_key();
        let _ = PairingResponse::verify(&frame, &VEHICLE, &key);
        let _ = PairingChallenge::decode(&frame[..CHALLENGE_LEN]);
        let _ = PairingChallenge::verify(&frame[..CHALLENGE_LEN], &public(0x22));
    }
}
