//! Version 2 property tests: no frame, grant or snapshot input panics a decoder, and encode →
//! decode round-trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::{
    encode_snapshot, from_base64, parse_secret_key, public_key_bytes, snapshot_len, to_base64,
    verify_snapshot, Challenge, EndpointId, Grant, PeerSecret, Request, RequestBody, ResultFrame,
    SignedGrant, SnapshotHeader, Status, KIND_CHALLENGE, KIND_PLAIN_RESULT, KIND_REQUEST,
    KIND_SEALED_RESULT, KIND_SIGNED_GRANT, KIND_SNAPSHOT, VERSION,
};
use proptest::prelude::*;

fn gateway() -> SigningKey {
    SigningKey::from_bytes(&[0x44; 32])
}

fn secret() -> PeerSecret {
    PeerSecret::from_shared(&[7; 32], &[1; 16])
}

/// Arbitrary bytes, often behind a valid header for `kind` so that parsing goes deep.
fn bytes_for(kind: u8, max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(move |mut v| {
            v.splice(0..0, [VERSION, kind]);
            v
        }),
    ]
}

fn grant_strategy() -> impl Strategy<Value = Grant> {
    (
        any::<[u8; 16]>(),
        "[a-z0-9_-]{0,32}",
        0u64..u64::MAX - 1,
        1u64..u64::MAX,
        any::<u32>(),
        1u32..1000,
    )
        .prop_map(|(tool_id, endpoint, start, span, epoch, key)| {
            let mut scalar = [0x3c; 32];
            scalar[28..].copy_from_slice(&key.to_be_bytes());
            Grant {
                tool_id,
                node_id: [9; 16],
                endpoint: EndpointId::new(&endpoint).unwrap(),
                not_before: start,
                expires: start.saturating_add(span).max(start + 1),
                epoch,
                phone_key: public_key_bytes(&parse_secret_key(&scalar).unwrap().public_key()),
            }
        })
        .prop_filter("non-empty validity", |g| g.not_before < g.expires)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frame_decoders_never_panic(
        c in bytes_for(KIND_CHALLENGE, 60),
        r in bytes_for(KIND_REQUEST, 100),
        s in bytes_for(KIND_SEALED_RESULT, 60),
        p in bytes_for(KIND_PLAIN_RESULT, 30),
    ) {
        let _ = Challenge::decode(&c);
        let keys = secret().session(&[0; 16], &[1; 16]);
        let _ = Request::hint(&r);
        // Without the keys nothing random decrypts.
        prop_assert!(Request::open(&r, &keys, &[0; 16]).is_err());
        prop_assert!(ResultFrame::open(&s, &keys, &[0; 16]).map_or(true, |v| !v.authenticated));
        if let Ok(v) = ResultFrame::open(&p, &keys, &[0; 16]) {
            prop_assert!(!v.authenticated);
            prop_assert!(!v.status.is_granted());
        }
    }

    #[test]
    fn grant_and_snapshot_decoders_never_panic(
        g in proptest::collection::vec(any::<u8>(), 0..200),
        sg in bytes_for(KIND_SIGNED_GRANT, 240),
        snap in bytes_for(KIND_SNAPSHOT, 600),
        count in 0u16..=300,
        text in "[A-Za-z0-9+/=]{0,80}",
    ) {
        let _ = Grant::decode(&g);
        let key = gateway().verifying_key();
        prop_assert!(SignedGrant::verify(&sg, &key).is_err());
        prop_assert!(verify_snapshot(&snap, &key, &[9; 16]).is_err());
        // A count field that disagrees with the length, or is over capacity.
        let mut header = snap.clone();
        header.resize(40, 0);
        header[38..40].copy_from_slice(&count.to_be_bytes());
        prop_assert!(verify_snapshot(&header, &key, &[9; 16]).is_err());
        let mut out = [0u8; 64];
        let _ = from_base64(&text, &mut out);
    }

    #[test]
    fn challenge_round_trip(door_id in any::<[u8; 16]>(), nonce in any::<[u8; 16]>(), t in any::<u64>()) {
        let c = Challenge { door_id, nonce, door_time: t };
        prop_assert_eq!(Challenge::decode(&c.to_bytes()), Ok(c));
    }

    #[test]
    fn request_round_trip_and_tamper(
        tool_id in any::<[u8; 16]>(),
        phone_time in any::<u64>(),
        endpoint in "[a-z0-9_-]{0,32}",
        nonce in any::<[u8; 16]>(),
        index in 0usize..Request::LEN,
        flip in 1u8..=255,
    ) {
        let s = secret();
        let keys = s.session(&nonce, &[1; 16]);
        let body = RequestBody { tool_id, phone_time, endpoint: EndpointId::new(&endpoint).unwrap() };
        let frame = Request::seal(&body, &keys, &s.hint(&nonce), &nonce).unwrap();
        prop_assert_eq!(Request::hint(&frame), Ok(s.hint(&nonce)));
        prop_assert_eq!(Request::open(&frame, &keys, &nonce), Ok(body));
        let mut bad = frame;
        bad[index] ^= flip;
        prop_assert!(Request::open(&bad, &keys, &nonce).is_err());
        let mut other_nonce = nonce;
        other_nonce[0] ^= flip;
        prop_assert!(Request::open(&frame, &keys, &other_nonce).is_err());
    }

    #[test]
    fn result_round_trip(code in 0u8..20, door_time in any::<u64>(), nonce in any::<[u8; 16]>()) {
        let Ok(status) = Status::try_from(code) else { return Ok(()); };
        let keys = secret().session(&nonce, &[1; 16]);
        let sealed = ResultFrame::seal(status, Some(door_time), &keys, &nonce).unwrap();
        let v = ResultFrame::open(&sealed, &keys, &nonce).unwrap();
        prop_assert_eq!(v.status, status);
        prop_assert!(v.authenticated);
        prop_assert_eq!(v.door_time, (door_time != 0).then_some(door_time));
        if !status.is_granted() {
            let plain = ResultFrame::plain(status, &nonce).unwrap();
            let v = ResultFrame::open(&plain, &keys, &nonce).unwrap();
            prop_assert_eq!(v.status, status);
            prop_assert!(!v.authenticated);
        }
    }

    #[test]
    fn grant_round_trips(grant in grant_strategy()) {
        prop_assert_eq!(Grant::decode(&grant.to_bytes()), Ok(grant));
        let key = gateway();
        let signed = grant.sign(&key);
        prop_assert_eq!(SignedGrant::verify(&signed, &key.verifying_key()), Ok(grant));
        let mut text = [0u8; 400];
        let text = to_base64(&signed, &mut text).unwrap().to_owned();
        let mut back = [0u8; SignedGrant::LEN];
        prop_assert_eq!(from_base64(&text, &mut back).unwrap(), &signed[..]);
    }

    #[test]
    fn snapshot_round_trips_and_any_flip_is_refused(
        grants in proptest::collection::vec(grant_strategy(), 0..4),
        version in any::<u64>(),
        index in any::<prop::sample::Index>(),
    ) {
        // Distinct (tool, endpoint) pairs, one epoch: what a gateway sends.
        let mut grants = grants;
        for (i, g) in grants.iter_mut().enumerate() {
            g.tool_id[0] = i as u8;
            g.epoch = 7;
        }
        let header = SnapshotHeader { node_id: [9; 16], version, epoch: 7, issued_at: 1 };
        let key = gateway();
        let mut out = vec![0u8; snapshot_len(grants.len())];
        encode_snapshot(&header, &grants, &key, &mut out).unwrap();
        let v = verify_snapshot(&out, &key.verifying_key(), &[9; 16]).unwrap();
        prop_assert_eq!(v.header, header);
        prop_assert_eq!(v.grants().collect::<Vec<_>>(), grants);
        let i = index.index(out.len());
        out[i] ^= 0x01;
        prop_assert!(verify_snapshot(&out, &key.verifying_key(), &[9; 16]).is_err());
    }
}
