//! Pins the version-2 test vectors of `docs/PROTOCOL.md` to the bytes this crate produces, checks
//! that the document lists them, and plays them through a phone and a door.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use latchkey_proto::v2::vectors::{self, compute};
use latchkey_proto::v2::{
    door_tag, gateway_key, to_base64, verify_snapshot, Challenge, Grant, Request, ResultFrame,
    SignedGrant, Status, CHALLENGE_UUID, DOOR_TAG_LABEL, GRANT_LABEL, HINT_LABEL, INFO_HINT_KEY,
    INFO_TO_DOOR, INFO_TO_PHONE, REQUEST_UUID, RESULT_UUID, SERVICE_UUID, SNAPSHOT_LABEL,
};
use latchkey_proto::UuidText;

const PROTOCOL_MD: &str = include_str!("../../../docs/PROTOCOL.md");

const PHONE_PUBLIC: &str = "040217e617f0b6443928278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa876\
5a56f45fc758599652f2897c65306e5794";
const DOOR_PUBLIC: &str = "04d65a93977caa3d1b081852ff57a79e465f1660577304baead505dd3a48589cf350185e895372df6221ea3a137557e4\
73fddb6755f05bd507c3c533fce9c91285";
const OTHER_PHONE_PUBLIC: &str = "0451a7580833898ea1b183cbd7350a4099078c6ef1c1e18e970cd7683035f25e7d0110522712b0b5a7cff08168548698\
4a94e6831edac46e7360fa9d834a7a81a1";
const GATEWAY_PUBLIC: &str = "d759793bbc13a2819a827c76adb6fba8a49aee007f49f2d0992d99b825ad2c48";
const DOOR_TAG: &str = "30f47b66a5";
const SHARED_Z: &str = "ccfc261f58193c98ca4ad4a53bbac6f0ee29bc4d48438090446908622ca79af6";
const HINT_KEY: &str = "d0b400aee66386bc061748899bf0740998a6f8e9c9c56ef86c7b143c45f1a291";
const HINT: &str = "35818963ea862c48";
const SESSION_PRK: &str = "d1df3f65afd272d86d8c664a5efc16db54eadd7f8a43ba7608887b96aff11000";
const TO_DOOR: &str = "e38d197a2a6ec05e0403ab34679955269020a23da6dbcde38df0e1968c9dcaea";
const TO_PHONE: &str = "e7e71193db8c611998b2d93303c46c8ef09693ccdd754a5b9e22b8a9f0bb7799";
const CHALLENGE: &str =
    "02013d9a5c1e7b2f4c809e415a6b7c8d9e0f000102030405060708090a0b0c0d0e0f000000006955b900";
const REQUEST_PLAIN: &str = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d000000006955b90c0a66726f6e742d646f6f7200000000000000000000000000\
000000000000000000";
const REQUEST: &str = "020235818963ea862c48e417de6976c5f7044dc69aa72c72648bddb9a2eb152d7d036cc4da6d51a4afff38964c7556ee\
61afc0137c99634294f6a882980cef4816a231ca44789ff4ea53c08d0852f3c78a4afe";
const RESULT_GRANTED: &str =
    "0203000102030405060708090a0b0c0d0e0f372750a1e123c5f1193c5b018443ea20418b6ab4b27b7a0591";
const RESULT_UNKNOWN: &str = "0204000102030405060708090a0b0c0d0e0f0d";
const GRANT: &str = "a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d3d9a5c1e7b2f4c809e415a6b7c8d9e0f0a66726f6e742d646f6f720000000000\
0000000000000000000000000000000000000000006955b6a800000000695ef38000000003040217e617f0b644392827\
8f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f289\
7c65306e5794";
const SIGNED_GRANT: &str = "0211a1b2c3d4e5f64a7b8c9d0e1f2a3b4c5d3d9a5c1e7b2f4c809e415a6b7c8d9e0f0a66726f6e742d646f6f72000000\
00000000000000000000000000000000000000000000006955b6a800000000695ef38000000003040217e617f0b64439\
28278f96999e69a23a4f2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa8765a56f45fc758599652\
f2897c65306e5794df4940225135ae2f89e2ee31684e383d056af017cb79f0a00266b0cc39ec8154dae6f1e8730c623e\
ec29b6365a24e3cc2f9626794164fcd49eec4adf7064f80d";
const SNAPSHOT: &str = "02123d9a5c1e7b2f4c809e415a6b7c8d9e0f000000000000002a00000003000000006955b6a80002a1b2c3d4e5f64a7b\
8c9d0e1f2a3b4c5d3d9a5c1e7b2f4c809e415a6b7c8d9e0f0a66726f6e742d646f6f7200000000000000000000000000\
000000000000000000000000006955b6a800000000695ef38000000003040217e617f0b6443928278f96999e69a23a4f\
2c152bdf6d6cdf66e5b80282d4ed194a7debcb97712d2dda3ca85aa8765a56f45fc758599652f2897c65306e57940f1e\
2d3c4b5a49688778695a4b3c2d1e3d9a5c1e7b2f4c809e415a6b7c8d9e0f066761726167650000000000000000000000\
000000000000000000000000000000000000006955b6a800000000695ef380000000030451a7580833898ea1b183cbd7\
350a4099078c6ef1c1e18e970cd7683035f25e7d0110522712b0b5a7cff081685486984a94e6831edac46e7360fa9d83\
4a7a81a11ce1367cc48b2642633376dbda8380343515099def4bd3d96230e79ba9dd26ad4a0ac77690c819ddeb97ccc7\
e2fd798bb5be8174f86a246b28abc9f7cb92ea08";
const SIGNED_GRANT_B64: &str = "AhGhssPU5fZKe4ydDh8qO0xdPZpcHnsvTICeQVprfI2eDwpmcm9udC1kb29yAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABp\
VbaoAAAAAGle84AAAAADBAIX5hfwtkQ5KCePlpmeaaI6TywVK99tbN9m5bgCgtTtGUp968uXcS0t2jyoWqh2Wlb0X8dYWZZS\
8ol8ZTBuV5TfSUAiUTWuL4ni7jFoTjg9BWrwF8t58KACZrDMOeyBVNrm8ehzDGI+7Cm2Nlok48wvliZ5QWT81J7sSt9wZPgN";

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[test]
fn vectors_are_pinned() {
    let v = compute().unwrap();
    let got: [(&str, String); 20] = [
        (PHONE_PUBLIC, hex(&v.phone_public)),
        (DOOR_PUBLIC, hex(&v.door_public)),
        (OTHER_PHONE_PUBLIC, hex(&v.other_phone_public)),
        (GATEWAY_PUBLIC, hex(&v.gateway_public)),
        (DOOR_TAG, hex(&door_tag(&vectors::DOOR_ID))),
        (SHARED_Z, hex(v.secret.shared())),
        (HINT_KEY, hex(v.secret.hint_key())),
        (HINT, hex(&v.hint)),
        (SESSION_PRK, hex(&v.session_prk)),
        (TO_DOOR, hex(&v.to_door)),
        (TO_PHONE, hex(&v.to_phone)),
        (CHALLENGE, hex(&v.challenge)),
        (REQUEST_PLAIN, hex(&v.request_plain)),
        (REQUEST, hex(&v.request)),
        (RESULT_GRANTED, hex(&v.result_granted)),
        (RESULT_UNKNOWN, hex(&v.result_unknown)),
        (GRANT, hex(&v.grant)),
        (SIGNED_GRANT, hex(&v.signed_grant)),
        (SNAPSHOT, hex(&v.snapshot)),
        (SIGNED_GRANT_B64, {
            let mut out = [0u8; 400];
            to_base64(&v.signed_grant, &mut out).unwrap().to_owned()
        }),
    ];
    for (expected, actual) in got {
        assert_eq!(actual, expected);
    }
}

#[test]
fn protocol_md_lists_the_vectors_and_constants() {
    for value in [
        PHONE_PUBLIC,
        DOOR_PUBLIC,
        OTHER_PHONE_PUBLIC,
        GATEWAY_PUBLIC,
        DOOR_TAG,
        SHARED_Z,
        HINT_KEY,
        HINT,
        SESSION_PRK,
        TO_DOOR,
        TO_PHONE,
        CHALLENGE,
        REQUEST_PLAIN,
        REQUEST,
        RESULT_GRANTED,
        RESULT_UNKNOWN,
        GRANT,
        SIGNED_GRANT,
        SNAPSHOT,
        SIGNED_GRANT_B64,
    ] {
        assert!(
            PROTOCOL_MD.contains(&format!("`{value}`"))
                || PROTOCOL_MD.contains(&format!("\n{value}\n")),
            "PROTOCOL.md lacks {value}"
        );
    }
    for uuid in [SERVICE_UUID, CHALLENGE_UUID, REQUEST_UUID, RESULT_UUID] {
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
        INFO_HINT_KEY,
        HINT_LABEL,
        INFO_TO_DOOR,
        INFO_TO_PHONE,
        GRANT_LABEL,
        SNAPSHOT_LABEL,
        DOOR_TAG_LABEL,
    ] {
        let text = std::str::from_utf8(label).unwrap();
        assert!(
            PROTOCOL_MD.contains(&format!("`{text}`")),
            "PROTOCOL.md lacks `{text}`"
        );
        assert!(
            PROTOCOL_MD.contains(&format!("`{}`", hex::encode(label))),
            "PROTOCOL.md lacks the hex of {text}"
        );
    }
    assert!(PROTOCOL_MD.contains(&format!("{} bytes", Request::LEN)));
}

#[test]
fn vectors_play_through_a_phone_and_a_door() {
    let v = compute().unwrap();
    let gateway = gateway_key(&v.gateway_public).unwrap();
    let snapshot = hex::decode(SNAPSHOT).unwrap();
    let verified = verify_snapshot(&snapshot, &gateway, &vectors::DOOR_ID).unwrap();
    assert_eq!(verified.header.version, vectors::SNAPSHOT_VERSION);
    let grants: Vec<Grant> = verified.grants().collect();
    assert_eq!(grants, vectors::grants().unwrap());
    assert_eq!(
        SignedGrant::verify(&hex::decode(SIGNED_GRANT).unwrap(), &gateway).unwrap(),
        grants[0]
    );

    let challenge = Challenge::decode(&hex::decode(CHALLENGE).unwrap()).unwrap();
    assert_eq!(challenge.nonce, vectors::NONCE);
    let request = hex::decode(REQUEST).unwrap();
    let keys = v.secret.session(&challenge.nonce, &challenge.door_id);
    let body = Request::open(&request, &keys, &challenge.nonce).unwrap();
    assert_eq!(body.tool_id, vectors::TOOL_ID);
    assert_eq!(body.endpoint.as_str(), vectors::ENDPOINT);
    assert_eq!(body.phone_time, vectors::PHONE_TIME);
    let granted = ResultFrame::open(
        &hex::decode(RESULT_GRANTED).unwrap(),
        &keys,
        &challenge.nonce,
    )
    .unwrap();
    assert_eq!(
        (granted.status, granted.authenticated, granted.door_time),
        (Status::Granted, true, Some(vectors::DOOR_TIME))
    );
    let unknown = ResultFrame::open(
        &hex::decode(RESULT_UNKNOWN).unwrap(),
        &keys,
        &challenge.nonce,
    )
    .unwrap();
    assert_eq!(
        (unknown.status, unknown.authenticated),
        (Status::UnknownTool, false)
    );
}

#[cfg(feature = "alloc")]
#[test]
fn the_vector_door_grants_the_vector_request() {
    use latchkey_proto::v2::{decide, parse_secret_key, GrantSet, IssuedChallenge};
    let v = compute().unwrap();
    let mut set = GrantSet::new(vectors::DOOR_ID);
    let door = parse_secret_key(&vectors::DOOR_SECRET).unwrap();
    set.apply(&v.snapshot, &gateway_key(&v.gateway_public).unwrap(), &door)
        .unwrap();
    let (issued, frame) = IssuedChallenge::issue(&set, vectors::NONCE, 0, Some(vectors::DOOR_TIME));
    assert_eq!(hex(&frame), CHALLENGE);
    let d = decide(&set, Some(&issued), &v.request, 0, Some(vectors::DOOR_TIME));
    assert_eq!(d.status, Status::Granted);
    assert_eq!(
        hex(d
            .reply(Status::Granted, Some(vectors::DOOR_TIME))
            .as_bytes()),
        RESULT_GRANTED
    );
}
