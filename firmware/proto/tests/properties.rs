//! Property tests: decoders never panic on any input, and encode → decode round-trips.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use latchkey_proto::{
    hotp, totp_step, verify_tag, verify_totp, AuthFrame, AuthRequest, Challenge, DeviceKeys,
    ResultFrame, Status, KIND_AUTH, KIND_CHALLENGE, KIND_RESULT, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn keys_strategy() -> impl Strategy<Value = DeviceKeys> {
    (
        proptest::collection::vec(any::<u8>(), 16..64),
        any::<[u8; 16]>(),
    )
        .prop_map(|(secret, id)| DeviceKeys::derive(&secret, &id).unwrap())
}

/// Arbitrary bytes, often starting with a valid header for `kind` so parsing goes deep.
fn frame_bytes(kind: u8) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..160),
        proptest::collection::vec(any::<u8>(), 0..120).prop_map(move |mut v| {
            v.splice(0..0, [PROTOCOL_VERSION, kind]);
            v
        }),
    ]
}

proptest! {
    #[test]
    fn challenge_decode_never_panics(bytes in frame_bytes(KIND_CHALLENGE)) {
        let _ = Challenge::decode(&bytes);
    }

    #[test]
    fn auth_decode_never_panics(bytes in frame_bytes(KIND_AUTH)) {
        if let Ok(frame) = AuthFrame::decode(&bytes) {
            prop_assert_eq!(bytes.len(), frame.signed.len() + 32);
        }
        let keys = DeviceKeys::from_raw([1; 32], [2; 32]);
        prop_assert!(!verify_tag(&keys, &[0; 16], &bytes));
    }

    #[test]
    fn result_decode_never_panics(bytes in frame_bytes(KIND_RESULT)) {
        let _ = ResultFrame::decode(&bytes);
        let keys = DeviceKeys::from_raw([1; 32], [2; 32]);
        if let Ok(v) = ResultFrame::verify(&bytes, &keys, &[0; 16], &[0; 32]) {
            // Only an unsigned denial can pass without the key.
            prop_assert!(!v.authenticated);
            prop_assert!(!v.result.status.is_granted());
        }
    }

    #[test]
    fn challenge_round_trip(nonce in any::<[u8; 16]>(), gateway_time in any::<u64>()) {
        let c = Challenge { nonce, gateway_time };
        prop_assert_eq!(Challenge::decode(&c.to_bytes()), Ok(c));
    }

    #[test]
    fn auth_round_trip(
        keys in keys_strategy(),
        nonce in any::<[u8; 16]>(),
        device_id in any::<[u8; 16]>(),
        totp in 0u32..1_000_000,
        timestamp in any::<u64>(),
        endpoint in "[a-z0-9_-]{0,32}",
    ) {
        let request = AuthRequest { device_id, totp, timestamp, endpoint: &endpoint };
        let mut buf = [0u8; AuthFrame::MAX_LEN];
        let n = AuthFrame::encode(&request, &keys, &nonce, &mut buf).unwrap();
        prop_assert_eq!(n, request.frame_len());
        let frame = AuthFrame::decode(&buf[..n]).unwrap();
        prop_assert_eq!(frame.request, request);
        prop_assert_eq!(frame.nonce, nonce);
        prop_assert!(frame.tag_valid(&keys));
        prop_assert!(verify_tag(&keys, &nonce, &buf[..n]));
    }

    #[test]
    fn auth_tamper_detected(
        keys in keys_strategy(),
        nonce in any::<[u8; 16]>(),
        endpoint in "[a-z0-9_-]{0,32}",
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let request = AuthRequest { device_id: [7; 16], totp: 1, timestamp: 2, endpoint: &endpoint };
        let mut buf = [0u8; AuthFrame::MAX_LEN];
        let n = AuthFrame::encode(&request, &keys, &nonce, &mut buf).unwrap();
        buf[index.index(n)] ^= flip;
        prop_assert!(!verify_tag(&keys, &nonce, &buf[..n]));
    }

    #[test]
    fn result_round_trip(
        keys in keys_strategy(),
        code in 0u8..13,
        retry_after in any::<u16>(),
        nonce in any::<[u8; 16]>(),
        auth_tag in any::<[u8; 32]>(),
    ) {
        let status = Status::try_from(code).unwrap();
        let r = ResultFrame { status, retry_after, nonce };
        let mut buf = [0u8; ResultFrame::LEN];
        r.encode_signed(&keys, &auth_tag, &mut buf).unwrap();
        let v = ResultFrame::verify(&buf, &keys, &nonce, &auth_tag).unwrap();
        prop_assert_eq!(v.result, r);
        prop_assert!(v.authenticated);
        if !status.is_granted() {
            r.encode_unsigned(&mut buf).unwrap();
            let v = ResultFrame::verify(&buf, &keys, &nonce, &auth_tag).unwrap();
            prop_assert_eq!(v.result, r);
            prop_assert!(!v.authenticated);
        }
    }

    #[test]
    fn totp_window(secret in proptest::collection::vec(any::<u8>(), 16..40), now in 30u64..u64::MAX / 2, delta in -1i64..=1) {
        let step = totp_step(now).checked_add_signed(delta).unwrap();
        let found = verify_totp(&secret, hotp(&secret, step), now, 1).unwrap();
        // The oldest matching step is returned; it is in the window and at most `step`.
        prop_assert!(found <= step);
        prop_assert!(found + 1 >= totp_step(now));
    }
}
