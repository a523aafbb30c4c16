//! Pins the test vectors of `docs/PROTOCOL.md` to the bytes this crate produces, and checks
//! that the document still lists them, so the document cannot drift from the code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use latchkey_proto::vectors::{self, compute};
use latchkey_proto::{
    AuthFrame, Challenge, ResultFrame, Status, UuidText, AUTH_MAC_LABEL, AUTH_UUID, CHALLENGE_UUID,
    INFO_AUTH_KEY, INFO_RESULT_KEY, RESULT_MAC_LABEL, RESULT_UUID, SERVICE_UUID,
};
use sha2::Digest as _;

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

const HKDF_PRK: &str = "fd8d2a05fd381332a5d73944378dafb97e3b025098983a06d1b4f79c15d655c1";
const AUTH_KEY: &str = "764ff5e171595f1e843b6f56c8ee8176d9247846423f85f85e261350b3efcc8d";
const RESULT_KEY: &str = "90be1d816183ea430854654aaa09416cfb049f86dfde1b0a77186d6eabd77ca9";
const TOTP: &str = "745690";
const TOTP_STEP: u64 = 58_907_520;
const CHALLENGE: &str = "0101000102030405060708090a0b0c0d0e0f000000006955b900";
const AUTH: &str = "0102000102030405060708090a0b0c0d0e0f6f1c2a9e3b4d4e5f8a7b9c0d1e2f3a4b\
000b60da000000006955b90c0a66726f6e742d646f6f72\
7fd2bec59e4bf525568988f2332d3d48ec463eb0463fd906bd334488afbd1d15";
const AUTH_TAG: &str = "7fd2bec59e4bf525568988f2332d3d48ec463eb0463fd906bd334488afbd1d15";
const RESULT_GRANTED: &str = "0103000000000102030405060708090a0b0c0d0e0f\
3c47a4a61e5469bab6d63917dbbc4de986dd2231a9f98e8b2dfbdb2caaa3c706";
const RESULT_LOCKED_OUT: &str = "0103090078000102030405060708090a0b0c0d0e0f\
d0b7eae8a6dcee332240640062fbaf96f19370fce355f4de245bb69bf0dcc750";
const RESULT_UNKNOWN_DEVICE: &str = "0103020000000102030405060708090a0b0c0d0e0f\
0000000000000000000000000000000000000000000000000000000000000000";
const RESULT_PEER_LOCKED_OUT: &str = "010309003c000102030405060708090a0b0c0d0e0f\
0000000000000000000000000000000000000000000000000000000000000000";
const GATEWAY_HASH: &str = "3cf3a4f49b93864a48d71bc65bc2edcd3ee05a564ab39401ac0080caf2296988";
const ADV_DATA: &str = "013cf3a4f49b";
const ADVERTISING: &str = "0201061107e3ceed99c8165aab2b4601006ecf038609ffffff013cf3a4f49b";

#[test]
fn vectors_are_pinned() {
    let v = compute().unwrap();
    let (prk, _) =
        hkdf::Hkdf::<sha2::Sha256>::extract(Some(&vectors::DEVICE_ID), vectors::TOTP_SECRET);
    assert_eq!(hex::encode(prk), HKDF_PRK);
    assert_eq!(hex::encode(v.keys.auth_key()), AUTH_KEY);
    assert_eq!(hex::encode(v.keys.result_key()), RESULT_KEY);
    assert_eq!(v.step, TOTP_STEP);
    assert_eq!(format!("{:06}", v.totp), TOTP);
    assert_eq!(hex::encode(v.challenge), CHALLENGE);
    assert_eq!(hex::encode(v.auth_frame()), AUTH);
    assert_eq!(hex::encode(v.auth_tag()), AUTH_TAG);
    assert_eq!(hex::encode(v.result_granted), RESULT_GRANTED);
    assert_eq!(hex::encode(v.result_locked_out), RESULT_LOCKED_OUT);
    assert_eq!(hex::encode(v.result_unknown_device), RESULT_UNKNOWN_DEVICE);
    assert_eq!(
        hex::encode(v.result_peer_locked_out),
        RESULT_PEER_LOCKED_OUT
    );
    let mut hash = sha2::Sha256::new();
    sha2::Digest::update(&mut hash, latchkey_proto::ADV_GATEWAY_LABEL);
    sha2::Digest::update(&mut hash, vectors::GATEWAY_ID.as_bytes());
    assert_eq!(hex::encode(sha2::Digest::finalize(hash)), GATEWAY_HASH);
    assert_eq!(hex::encode(v.adv_data), ADV_DATA);
    assert_eq!(
        hex::encode(latchkey_proto::gateway_tag(vectors::GATEWAY_ID)),
        &ADV_DATA[2..]
    );
    assert_eq!(hex::encode(v.advertising), ADVERTISING);
    assert!(latchkey_proto::adv_matches(
        &v.adv_data,
        vectors::GATEWAY_ID
    ));
}

#[test]
fn vectors_verify_as_a_phone_and_gateway_would() {
    let v = compute().unwrap();
    let challenge = Challenge::decode(&hex::decode(CHALLENGE).unwrap()).unwrap();
    assert_eq!(challenge.nonce, vectors::NONCE);
    assert_eq!(challenge.gateway_time, vectors::GATEWAY_TIME);

    let auth = hex::decode(AUTH).unwrap();
    let parsed = AuthFrame::decode(&auth).unwrap();
    assert_eq!(parsed.request.endpoint, vectors::ENDPOINT);
    assert_eq!(parsed.request.device_id, vectors::DEVICE_ID);
    assert!(latchkey_proto::verify_tag(&v.keys, &challenge.nonce, &auth));
    assert_eq!(
        latchkey_proto::verify_totp(
            vectors::TOTP_SECRET,
            parsed.request.totp,
            vectors::GATEWAY_TIME,
            1
        ),
        Some(TOTP_STEP)
    );

    let tag = v.auth_tag();
    for (hex_frame, status, authenticated) in [
        (RESULT_GRANTED, Status::Granted, true),
        (RESULT_LOCKED_OUT, Status::LockedOut, true),
        (RESULT_UNKNOWN_DEVICE, Status::UnknownDevice, false),
        (RESULT_PEER_LOCKED_OUT, Status::LockedOut, false),
    ] {
        let frame = hex::decode(hex_frame).unwrap();
        let checked = ResultFrame::verify(&frame, &v.keys, &challenge.nonce, &tag).unwrap();
        assert_eq!(checked.result.status, status);
        assert_eq!(checked.authenticated, authenticated);
    }
}

#[test]
fn protocol_md_lists_the_vectors() {
    // The document shows long frames in one piece so that they can be copied; check each.
    let expected = [
        HKDF_PRK,
        AUTH_KEY,
        RESULT_KEY,
        CHALLENGE,
        AUTH,
        AUTH_TAG,
        RESULT_GRANTED,
        RESULT_LOCKED_OUT,
        RESULT_UNKNOWN_DEVICE,
        RESULT_PEER_LOCKED_OUT,
        GATEWAY_HASH,
        ADV_DATA,
        ADVERTISING,
    ];
    for hex in expected {
        assert!(PROTOCOL_MD.contains(hex), "PROTOCOL.md lacks {hex}");
    }
    assert!(PROTOCOL_MD.contains(&format!("`{TOTP}`")));
    assert!(PROTOCOL_MD.contains(&TOTP_STEP.to_string()));
}

#[test]
fn protocol_md_matches_constants() {
    for uuid in [SERVICE_UUID, CHALLENGE_UUID, AUTH_UUID, RESULT_UUID] {
        let text = UuidText(uuid).to_string();
        assert!(PROTOCOL_MD.contains(&text), "PROTOCOL.md lacks {text}");
    }
    for status in Status::ALL {
        let row = format!("| {} | `{}` |", status.code(), status.as_str());
        assert!(
            PROTOCOL_MD.contains(&row),
            "PROTOCOL.md lacks status row {row}"
        );
    }
    for label in [
        latchkey_proto::ADV_GATEWAY_LABEL,
        INFO_AUTH_KEY,
        INFO_RESULT_KEY,
        AUTH_MAC_LABEL,
        RESULT_MAC_LABEL,
    ] {
        let text = std::str::from_utf8(label).unwrap();
        assert!(
            PROTOCOL_MD.contains(&format!("`{text}`")),
            "PROTOCOL.md lacks `{text}`"
        );
        let hex = hex::encode(label);
        assert!(
            PROTOCOL_MD.contains(&format!("`{hex}`")),
            "PROTOCOL.md lacks `{hex}`"
        );
    }
    assert!(PROTOCOL_MD.contains("## Gateway D-Bus objects"));
}
