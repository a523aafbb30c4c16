//! The door's version-2 decision, end to end through the codecs: a phone builds its request
//! from the challenge frame alone, the door decides with `decide`, the phone reads the reply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod v2_support;

use latchkey_proto::v2::{
    decide, Decision, Error, GrantSet, IssuedChallenge, ResultFrame, SessionKeys, Status,
    VerifiedResult, GRANT_CAPACITY,
};
use v2_support::{door_key, grant, grants, phone_request, tool, Gateway, DAY, DOOR_ID, NOW};

/// A door holding grants for phones 0..n, its gateway, and a monotonic clock.
struct Door {
    gateway: Gateway,
    set: GrantSet,
}

impl Door {
    fn new(n: u32) -> Door {
        let mut gateway = Gateway::new();
        let mut set = GrantSet::new(DOOR_ID);
        let snapshot = gateway.snapshot(DOOR_ID, 1, &grants(n, 1));
        set.apply(&snapshot, &gateway.public(), &door_key())
            .unwrap();
        Door { gateway, set }
    }

    fn challenge(&self, nonce_byte: u8, mono: u64) -> (IssuedChallenge, Vec<u8>) {
        let (issued, frame) = IssuedChallenge::issue(&self.set, [nonce_byte; 16], mono, Some(NOW));
        (issued, frame.to_vec())
    }
}

/// What the phone makes of the door's reply.
fn read_reply(decision: Decision, keys: &SessionKeys, nonce: &[u8; 16]) -> VerifiedResult {
    let status = decision.status;
    let reply = decision.reply(status, Some(NOW));
    ResultFrame::open(reply.as_bytes(), keys, nonce).unwrap()
}

#[test]
fn granted_and_the_phone_reads_an_authenticated_result() {
    let door = Door::new(3);
    let (issued, frame) = door.challenge(1, 100);
    let (request, keys, nonce) = phone_request(2, &door_key(), &frame, tool(2), "front-door");
    let d = decide(&door.set, Some(&issued), &request, 105, Some(NOW));
    assert_eq!(d.status, Status::Granted);
    assert_eq!(d.effects.open.unwrap().as_str(), "front-door");
    assert_eq!(d.effects.record.tool_id, Some(tool(2)));
    assert_eq!(d.effects.record.phone_time, Some(NOW + 3));
    let result = read_reply(d, &keys, &nonce);
    assert_eq!(result.status, Status::Granted);
    assert!(result.authenticated);
    assert_eq!(result.door_time, Some(NOW));
}

#[test]
fn action_failure_is_reported_sealed() {
    let door = Door::new(1);
    let (issued, frame) = door.challenge(1, 0);
    let (request, keys, nonce) = phone_request(0, &door_key(), &frame, tool(0), "front-door");
    let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
    assert!(d.status.is_granted());
    let reply = d.reply(Status::ActionFailed, Some(NOW));
    let result = ResultFrame::open(reply.as_bytes(), &keys, &nonce).unwrap();
    assert_eq!(result.status, Status::ActionFailed);
    assert!(result.authenticated);
}

#[test]
fn time_rules_use_the_wall_clock_given() {
    let door = Door::new(1);
    let cases = [
        (Some(NOW + 7 * DAY - 1), Status::Granted),
        (Some(NOW + 7 * DAY), Status::ToolExpired),
        (Some(NOW - DAY - 1), Status::ToolNotYetValid),
        (Some(NOW - DAY), Status::Granted),
        (None, Status::ClockUnknown),
    ];
    for (wall, expected) in cases {
        let (issued, frame) = door.challenge(9, 0);
        let (request, keys, nonce) = phone_request(0, &door_key(), &frame, tool(0), "front-door");
        let d = decide(&door.set, Some(&issued), &request, 1, wall);
        assert_eq!(d.status, expected, "wall {wall:?}");
        assert_eq!(d.effects.open.is_some(), expected.is_granted());
        let result = read_reply(d, &keys, &nonce);
        assert_eq!(result.status, expected);
        assert!(result.authenticated);
    }
}

#[test]
fn replayed_request_is_refused() {
    let door = Door::new(2);
    let (issued, frame) = door.challenge(1, 0);
    let (request, _, _) = phone_request(1, &door_key(), &frame, tool(1), "front-door");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 1, Some(NOW)).status,
        Status::Granted
    );
    // The connection's challenge was taken by the first write: nothing left to answer.
    assert_eq!(
        decide(&door.set, None, &request, 2, Some(NOW)).status,
        Status::NonceInvalid
    );
    // A later challenge on any connection: the hint no longer matches.
    let (later, _) = door.challenge(2, 3);
    let d = decide(&door.set, Some(&later), &request, 3, Some(NOW));
    assert_eq!(d.status, Status::UnknownTool);
    assert!(!d.authenticated());
}

#[test]
fn request_made_for_another_connection_is_refused() {
    let door = Door::new(2);
    let (_mine, frame_a) = door.challenge(1, 0);
    let (theirs, _) = door.challenge(2, 0);
    let (request, _, _) = phone_request(0, &door_key(), &frame_a, tool(0), "front-door");
    assert_eq!(
        decide(&door.set, Some(&theirs), &request, 1, Some(NOW)).status,
        Status::UnknownTool
    );
}

#[test]
fn expired_challenge_is_refused() {
    let door = Door::new(1);
    let (issued, frame) = door.challenge(1, 100);
    let (request, _, _) = phone_request(0, &door_key(), &frame, tool(0), "front-door");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 130, Some(NOW)).status,
        Status::Granted
    );
    let d = decide(&door.set, Some(&issued), &request, 131, Some(NOW));
    assert_eq!(d.status, Status::NonceInvalid);
    // The plain reply names the connection's nonce so the phone recognises it.
    let reply = d.reply(Status::NonceInvalid, None);
    assert_eq!(reply.as_bytes().len(), ResultFrame::PLAIN_LEN);
    assert_eq!(&reply.as_bytes()[2..18], &[1u8; 16]);
}

#[test]
fn tampered_requests_are_refused() {
    let door = Door::new(2);
    let (issued, frame) = door.challenge(1, 0);
    let (request, keys, nonce) = phone_request(1, &door_key(), &frame, tool(1), "front-door");
    for i in 0..request.len() {
        let mut bad = request;
        bad[i] ^= 0x01;
        let d = decide(&door.set, Some(&issued), &bad, 1, Some(NOW));
        let expected = match i {
            0 => Status::Unsupported,
            1 => Status::Malformed,
            2..=9 => Status::UnknownTool,
            _ => Status::BadTag,
        };
        assert_eq!(d.status, expected, "byte {i}");
        assert!(!d.authenticated());
        let reply = d.reply(expected, Some(NOW));
        let seen = ResultFrame::open(reply.as_bytes(), &keys, &nonce).unwrap();
        assert!(!seen.authenticated);
        assert_eq!(seen.status, expected);
    }
    assert_eq!(
        decide(&door.set, Some(&issued), &request[..82], 1, Some(NOW)).status,
        Status::Malformed
    );
    assert_eq!(
        decide(&door.set, Some(&issued), &[], 1, Some(NOW)).status,
        Status::Malformed
    );
}

#[test]
fn a_tool_for_another_door_is_refused() {
    let mut door = Door::new(0);
    // Phone 5 holds a grant, but for another door; this door holds grants for others.
    let other_door = [0xee; 16];
    let _ = door
        .gateway
        .snapshot(other_door, 1, &[grant(5, other_door, "front-door", 1)]);
    let mut others = grants(3, 1);
    others.push(grant(6, DOOR_ID, "front-door", 1));
    let snapshot = door.gateway.snapshot(DOOR_ID, 1, &others);
    door.set
        .apply(&snapshot, &door.gateway.public(), &door_key())
        .unwrap();
    let (issued, frame) = door.challenge(1, 0);
    let (request, _, _) = phone_request(5, &door_key(), &frame, tool(5), "front-door");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 0, Some(NOW)).status,
        Status::UnknownTool
    );
}

#[test]
fn endpoint_and_tool_must_be_this_phones() {
    let door = Door::new(3);
    let (issued, frame) = door.challenge(1, 0);
    let (request, keys, nonce) = phone_request(0, &door_key(), &frame, tool(0), "garage");
    let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
    assert_eq!(d.status, Status::EndpointDenied);
    assert!(d.effects.open.is_none());
    assert_eq!(read_reply(d, &keys, &nonce).status, Status::EndpointDenied);
    // Phone 0 naming phone 1's tool id: only its own grants count.
    let (issued, frame) = door.challenge(2, 0);
    let (request, keys, nonce) = phone_request(0, &door_key(), &frame, tool(1), "front-door");
    let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
    assert_eq!(d.status, Status::UnknownTool);
    let seen = read_reply(d, &keys, &nonce);
    assert!(seen.authenticated);
    assert_eq!(seen.status, Status::UnknownTool);
}

#[test]
fn two_endpoints_for_one_phone() {
    let mut door = Door::new(0);
    let both = [
        grant(0, DOOR_ID, "front-door", 2),
        grant(0, DOOR_ID, "garage", 2),
    ];
    let snapshot = door.gateway.snapshot(DOOR_ID, 2, &both);
    let applied = door
        .set
        .apply(&snapshot, &door.gateway.public(), &door_key())
        .unwrap();
    assert_eq!((applied.grants, applied.new_keys), (2, 1));
    for endpoint in ["front-door", "garage"] {
        let (issued, frame) = door.challenge(3, 0);
        let (request, _, _) = phone_request(0, &door_key(), &frame, tool(0), endpoint);
        let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
        assert_eq!(d.effects.open.unwrap().as_str(), endpoint);
    }
}

#[test]
fn revocation_by_snapshot_applies_to_the_next_request_and_survives_a_challenge_in_flight() {
    let mut door = Door::new(3);
    let (issued, frame) = door.challenge(1, 0);
    let (request, _, _) = phone_request(1, &door_key(), &frame, tool(1), "front-door");
    // Phone 1 revoked: epoch 2, its grant gone, the others re-issued.
    let remaining = [
        grant(0, DOOR_ID, "front-door", 2),
        grant(2, DOOR_ID, "front-door", 2),
    ];
    let snapshot = door.gateway.snapshot(DOOR_ID, 2, &remaining);
    let applied = door
        .set
        .apply(&snapshot, &door.gateway.public(), &door_key())
        .unwrap();
    assert_eq!(applied.new_keys, 0, "known phones keep their shared secret");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 1, Some(NOW)).status,
        Status::UnknownTool
    );
    // The others still open, with a challenge issued before the change too.
    let (request, _, _) = phone_request(2, &door_key(), &frame, tool(2), "front-door");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 1, Some(NOW)).status,
        Status::Granted
    );
}

#[test]
fn forged_stale_and_foreign_snapshots_are_never_stored() {
    let mut door = Door::new(2);
    let before: Vec<_> = door.set.grants().copied().collect();
    let gateway = door.gateway.public();

    let mut forged = door.gateway.snapshot(DOOR_ID, 1, &grants(4, 1));
    let n = forged.len();
    forged[n - 100] ^= 1; // inside the last grant
    assert_eq!(
        door.set.apply(&forged, &gateway, &door_key()),
        Err(Error::BadSignature)
    );

    let mut impostor = Gateway::new();
    impostor.key = latchkey_proto::v2::ed25519_dalek::SigningKey::from_bytes(&[0x45; 32]);
    impostor.version = 100;
    let foreign_signer = impostor.snapshot(DOOR_ID, 1, &grants(4, 1));
    assert_eq!(
        door.set.apply(&foreign_signer, &gateway, &door_key()),
        Err(Error::BadSignature)
    );

    let other_node = door.gateway.snapshot([0xee; 16], 1, &[]);
    assert_eq!(
        door.set.apply(&other_node, &gateway, &door_key()),
        Err(Error::WrongNode)
    );

    // An old snapshot replayed (version 1, already applied).
    let mut replay_gateway = Gateway::new();
    let replayed = replay_gateway.snapshot(DOOR_ID, 1, &grants(2, 1));
    assert!(matches!(
        door.set.apply(&replayed, &gateway, &door_key()),
        Err(Error::StaleVersion {
            stored: 1,
            received: 1
        })
    ));

    // Newer version, older epoch.
    let bumped = door.gateway.snapshot(DOOR_ID, 5, &grants(1, 5));
    door.set.apply(&bumped, &gateway, &door_key()).unwrap();
    let older_epoch = door.gateway.snapshot(DOOR_ID, 4, &grants(2, 4));
    assert!(matches!(
        door.set.apply(&older_epoch, &gateway, &door_key()),
        Err(Error::StaleEpoch {
            stored: 5,
            received: 4
        })
    ));
    // Only the one good snapshot (the gateway's fourth) was ever stored.
    assert_eq!(door.set.len(), 1);
    assert_eq!(door.set.version(), 4);
    assert_eq!(before.len(), 2);
}

#[test]
fn capacity_is_bounded() {
    let door = Door::new(GRANT_CAPACITY as u32);
    assert_eq!(door.set.len(), GRANT_CAPACITY);
    let mut too_many = grants(GRANT_CAPACITY as u32, 1);
    too_many.push(grant(GRANT_CAPACITY as u32, DOOR_ID, "front-door", 1));
    let mut out = vec![0u8; latchkey_proto::v2::snapshot_len(too_many.len())];
    let header = latchkey_proto::v2::SnapshotHeader {
        node_id: DOOR_ID,
        version: 9,
        epoch: 1,
        issued_at: NOW,
    };
    assert_eq!(
        latchkey_proto::v2::encode_snapshot(&header, &too_many, &door.gateway.key, &mut out),
        Err(Error::TooManyGrants(GRANT_CAPACITY + 1))
    );
    // The last phone of a full door opens.
    let (issued, frame) = door.challenge(7, 0);
    let last = GRANT_CAPACITY as u32 - 1;
    let (request, _, _) = phone_request(last, &door_key(), &frame, tool(last), "front-door");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 0, Some(NOW)).status,
        Status::Granted
    );
}

#[test]
fn grants_survive_a_restart_from_the_stored_snapshot() {
    let mut gateway = Gateway::new();
    let snapshot = gateway.snapshot(DOOR_ID, 1, &grants(3, 1));
    let mut first = GrantSet::new(DOOR_ID);
    first
        .apply(&snapshot, &gateway.public(), &door_key())
        .unwrap();
    // What a node persists is the snapshot bytes; after a restart it applies them again.
    let stored = snapshot.clone();
    drop(first);
    let mut restarted = GrantSet::new(DOOR_ID);
    restarted
        .apply(&stored, &gateway.public(), &door_key())
        .unwrap();
    let (issued, frame) = IssuedChallenge::issue(&restarted, [4; 16], 0, None);
    let (request, _, _) = phone_request(1, &door_key(), &frame, tool(1), "front-door");
    assert_eq!(
        decide(&restarted, Some(&issued), &request, 0, Some(NOW)).status,
        Status::Granted
    );
}

#[test]
fn phone_refuses_forged_and_foreign_results() {
    let door = Door::new(1);
    let (issued, frame) = door.challenge(1, 0);
    let (request, keys, nonce) = phone_request(0, &door_key(), &frame, tool(0), "front-door");
    let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
    let reply = d.reply(Status::Granted, Some(NOW));
    let bytes = reply.as_bytes();
    // Someone else's attempt (another nonce): not ours.
    assert_eq!(
        ResultFrame::open(bytes, &keys, &[2; 16]),
        Err(Error::NonceMismatch)
    );
    // Any flipped bit: forged.
    for i in 18..bytes.len() {
        let mut bad = bytes.to_vec();
        bad[i] ^= 0x80;
        assert_eq!(
            ResultFrame::open(&bad, &keys, &nonce),
            Err(Error::Decrypt),
            "byte {i}"
        );
    }
    // A plain result may never grant.
    let mut plain = ResultFrame::plain(Status::UnknownTool, &nonce).unwrap();
    plain[18] = Status::Granted.code();
    assert_eq!(
        ResultFrame::open(&plain, &keys, &nonce),
        Err(Error::UnsignedGrant)
    );
    assert_eq!(
        ResultFrame::plain(Status::Granted, &nonce),
        Err(Error::UnsignedGrant)
    );
}

#[test]
fn cached_secrets_spare_the_ecdh_after_a_restart() {
    let mut gateway = Gateway::new();
    let snapshot = gateway.snapshot(DOOR_ID, 1, &grants(3, 1));
    let mut first = GrantSet::new(DOOR_ID);
    assert_eq!(
        first
            .apply(&snapshot, &gateway.public(), &door_key())
            .unwrap()
            .new_keys,
        3
    );
    let cache: Vec<([u8; 65], [u8; 32])> = first.shared_secrets().map(|(k, z)| (*k, *z)).collect();
    let mut restarted = GrantSet::new(DOOR_ID);
    let applied = restarted
        .apply_with(&snapshot, &gateway.public(), &door_key(), |key| {
            cache.iter().find(|(k, _)| k == key).map(|(_, z)| *z)
        })
        .unwrap();
    assert_eq!(applied.new_keys, 0);
    let (issued, frame) = IssuedChallenge::issue(&restarted, [4; 16], 0, Some(NOW));
    let (request, _, _) = phone_request(2, &door_key(), &frame, tool(2), "front-door");
    assert_eq!(
        decide(&restarted, Some(&issued), &request, 0, Some(NOW)).status,
        Status::Granted
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes written as a request, on a live or stale challenge: `decide` answers, and
        /// never grants without a grant's keys.
        #[test]
        fn decide_on_any_bytes(
            tail in proptest::collection::vec(any::<u8>(), 0..100),
            header in any::<bool>(),
            mono in 0u64..40,
            wall in proptest::option::of(any::<u64>()),
        ) {
            static DOOR: std::sync::OnceLock<Door> = std::sync::OnceLock::new();
            let door = DOOR.get_or_init(|| Door::new(4));
            let (issued, _) = door.challenge(3, 0);
            let mut frame = if header { vec![2, 2] } else { Vec::new() };
            frame.extend_from_slice(&tail);
            let d = decide(&door.set, Some(&issued), &frame, mono, wall);
            prop_assert!(!d.status.is_granted());
            prop_assert!(!d.authenticated());
            let status = d.status;
            let reply = d.reply(status, wall);
            prop_assert_eq!(reply.as_bytes().len(), ResultFrame::PLAIN_LEN);
        }
    }
}

#[test]
fn a_request_that_decrypts_to_a_bad_body_is_malformed_and_sealed() {
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use latchkey_proto::v2::{
        parse_public_key, public_key_bytes, Challenge, PeerSecret, GCM_IV, REQUEST_BODY_LEN,
    };
    let door = Door::new(2);
    let (issued, frame) = door.challenge(1, 0);
    let challenge = Challenge::decode(&frame).unwrap();
    let door_public = public_key_bytes(&door_key().public_key());
    assert!(parse_public_key(&door_public).is_ok());
    let secret = PeerSecret::derive(&v2_support::key(1), &door_public, &DOOR_ID).unwrap();
    let keys = secret.session(&challenge.nonce, &DOOR_ID);
    let mut body = [0u8; REQUEST_BODY_LEN];
    body[..16].copy_from_slice(&tool(1));
    body[24] = 1;
    body[25] = b'a';
    body[REQUEST_BODY_LEN - 1] = 7; // non-zero padding
    let mut request = vec![2, 2];
    request.extend_from_slice(&secret.hint(&challenge.nonce));
    let mut aad = request.clone();
    aad.extend_from_slice(&challenge.nonce);
    let cipher = aes_gcm::Aes256Gcm::new(&(*keys.to_door()).into());
    let tag = cipher
        .encrypt_inout_detached(&GCM_IV.into(), &aad, body.as_mut_slice().into())
        .unwrap();
    request.extend_from_slice(&body);
    request.extend_from_slice(&tag);
    let d = decide(&door.set, Some(&issued), &request, 0, Some(NOW));
    assert_eq!(d.status, Status::Malformed);
    assert!(d.authenticated());
    assert_eq!(
        read_reply(d, &keys, &challenge.nonce).status,
        Status::Malformed
    );
}

#[test]
fn the_gateway_cannot_sign_a_snapshot_nodes_would_refuse() {
    let gateway = Gateway::new();
    let header = latchkey_proto::v2::SnapshotHeader {
        node_id: DOOR_ID,
        version: 1,
        epoch: 1,
        issued_at: NOW,
    };
    let mut out = vec![0u8; latchkey_proto::v2::snapshot_len(2)];
    let mut empty = grant(0, DOOR_ID, "front-door", 1);
    empty.expires = empty.not_before;
    let mut bad_key = grant(0, DOOR_ID, "front-door", 1);
    bad_key.phone_key[64] ^= 1;
    let cases = [
        (vec![empty], Error::EmptyValidity),
        (vec![bad_key], Error::BadPublicKey),
        (
            vec![grant(0, DOOR_ID, "a", 1), grant(0, DOOR_ID, "a", 1)],
            Error::DuplicateGrant,
        ),
        (vec![grant(0, [1; 16], "a", 1)], Error::WrongNode),
        (vec![grant(0, DOOR_ID, "a", 2)], Error::EpochMismatch),
    ];
    for (grants, expected) in cases {
        assert_eq!(
            latchkey_proto::v2::encode_snapshot(&header, &grants, &gateway.key, &mut out),
            Err(expected)
        );
    }
    let set = GrantSet::new(DOOR_ID);
    assert_eq!(
        format!("{set:?}"),
        "GrantSet { version: 0, epoch: 0, issued_at: 0, grants: 0, .. }"
    );
}

#[test]
fn an_inserted_grant_opens_until_the_next_snapshot_and_a_bad_one_changes_nothing() {
    let mut door = Door::new(2);
    // A challenge issued before the insert: its hints are recomputed for the new grant.
    let (issued, frame) = door.challenge(3, 0);
    let vehicle = grant(7, DOOR_ID, "vehicle", 1);
    let before = door.set.clone();
    for (bad, why) in [
        (grant(7, [0xee; 16], "vehicle", 1), Error::WrongNode),
        (
            grant(7, DOOR_ID, "vehicle", 0),
            Error::StaleEpoch {
                stored: 1,
                received: 0,
            },
        ),
        (
            latchkey_proto::v2::Grant {
                expires: vehicle.not_before,
                ..vehicle
            },
            Error::EmptyValidity,
        ),
        (
            latchkey_proto::v2::Grant {
                phone_key: [4; 65],
                ..vehicle
            },
            Error::BadPublicKey,
        ),
    ] {
        assert_eq!(door.set.insert(bad, &door_key()), Err(why));
        assert_eq!(door.set.len(), before.len());
    }
    let applied = door.set.insert(vehicle, &door_key()).unwrap();
    assert_eq!((applied.grants, applied.new_keys), (3, 1));
    assert_eq!((door.set.version(), door.set.epoch()), (1, 1));
    let (request, _, _) = phone_request(7, &door_key(), &frame, tool(7), "vehicle");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 0, Some(NOW)).status,
        Status::Granted
    );
    // The same (tool, endpoint) again replaces it; the phone's secret is kept.
    let longer = latchkey_proto::v2::Grant {
        expires: NOW + 30 * DAY,
        ..vehicle
    };
    let applied = door.set.insert(longer, &door_key()).unwrap();
    assert_eq!((applied.grants, applied.new_keys), (3, 0));
    // A newer snapshot without it replaces the whole set.
    let snapshot = door.gateway.snapshot(DOOR_ID, 1, &grants(2, 1));
    door.set
        .apply(&snapshot, &door.gateway.public(), &door_key())
        .unwrap();
    let (issued, frame) = door.challenge(4, 0);
    let (request, _, _) = phone_request(7, &door_key(), &frame, tool(7), "vehicle");
    assert_eq!(
        decide(&door.set, Some(&issued), &request, 0, Some(NOW)).status,
        Status::UnknownTool
    );
}

#[test]
fn a_full_set_takes_no_inserted_grant() {
    let mut door = Door::new(GRANT_CAPACITY as u32);
    let extra = grant(GRANT_CAPACITY as u32, DOOR_ID, "vehicle", 1);
    assert_eq!(
        door.set.insert(extra, &door_key()),
        Err(Error::TooManyGrants(GRANT_CAPACITY + 1))
    );
    // Replacing a held grant is still possible.
    let held = grant(0, DOOR_ID, "front-door", 1);
    assert!(door.set.insert(held, &door_key()).is_ok());
    assert_eq!(door.set.len(), GRANT_CAPACITY);
}
