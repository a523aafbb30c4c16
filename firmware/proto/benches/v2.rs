//! Version-2 costs (issue 10 figures; docs/PROTOCOL.md "Version 2", "Costs"):
//! - per unlock, door side, shared secrets precomputed, 256 grants: the challenge (one hint per
//!   grant) and the request (hint match over 256 + HKDF + AES-GCM decrypt + result encrypt);
//! - once per grant: ECDH + hint key; a signed grant's Ed25519 verification;
//! - a 256-grant cache refresh: its size, its verification, applying it.
//!
//! `cargo bench -p latchkey-proto --features alloc --bench v2`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/v2_support/mod.rs"]
mod v2_support;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use latchkey_proto::v2::{
    decide, public_key_bytes, to_base64, verify_snapshot, GrantSet, IssuedChallenge, PeerSecret,
    SignedGrant, GRANT_CAPACITY,
};
use v2_support::{door_key, grants, key, phone_request, tool, Gateway, DOOR_ID, NOW};

const N: u32 = GRANT_CAPACITY as u32;

fn full_door() -> (Gateway, GrantSet, Vec<u8>) {
    let mut gateway = Gateway::new();
    let snapshot = gateway.snapshot(DOOR_ID, 1, &grants(N, 1));
    let mut set = GrantSet::new(DOOR_ID);
    set.apply(&snapshot, &gateway.public(), &door_key())
        .unwrap();
    (gateway, set, snapshot)
}

fn unlock(c: &mut Criterion) {
    let (_, set, _) = full_door();
    let nonce = [0x5c; 16];
    let (issued, frame) = IssuedChallenge::issue(&set, nonce, 0, Some(NOW));
    // The last grant: the hint scan goes through all 256.
    let last = N - 1;
    let (request, _, _) = phone_request(last, &door_key(), &frame, tool(last), "front-door");
    assert!(decide(&set, Some(&issued), &request, 1, Some(NOW))
        .status
        .is_granted());

    let mut g = c.benchmark_group("v2_unlock_256_grants");
    g.bench_function("door_challenge_hints", |b| {
        b.iter(|| IssuedChallenge::issue(&set, nonce, 0, Some(NOW)))
    });
    let one = PeerSecret::from_shared(&[7; 32], &DOOR_ID);
    let keyed = one.hint_mac();
    g.bench_function("one_hint_keyed_once", |b| b.iter(|| keyed.hint(&nonce)));
    g.bench_function("one_hint_keying_each_time", |b| b.iter(|| one.hint(&nonce)));
    g.bench_function("door_request_decide_and_reply", |b| {
        b.iter(|| {
            let d = decide(&set, Some(&issued), &request, 1, Some(NOW));
            let status = d.status;
            d.reply(status, Some(NOW))
        })
    });
    let door = public_key_bytes(&door_key().public_key());
    let phone_secret = PeerSecret::derive(&key(last), &door, &DOOR_ID).unwrap();
    g.bench_function("phone_request_secret_cached", |b| {
        b.iter(|| {
            let keys = phone_secret.session(&nonce, &DOOR_ID);
            let hint = phone_secret.hint(&nonce);
            let body = latchkey_proto::v2::RequestBody {
                tool_id: tool(last),
                phone_time: NOW,
                endpoint: latchkey_proto::v2::EndpointId::new("front-door").unwrap(),
            };
            latchkey_proto::v2::Request::seal(&body, &keys, &hint, &nonce).unwrap()
        })
    });
    g.finish();
}

fn per_grant(c: &mut Criterion) {
    let gateway = Gateway::new();
    let door = door_key();
    let phone = public_key_bytes(&key(7).public_key());
    let signed = grants(8, 1)[7].sign(&gateway.key);
    let public = gateway.public();
    let mut g = c.benchmark_group("v2_per_grant");
    g.bench_function("ecdh_and_hint_key", |b| {
        b.iter(|| PeerSecret::derive(&door, &phone, &DOOR_ID).unwrap())
    });
    g.bench_function("signed_grant_verify", |b| {
        b.iter(|| SignedGrant::verify(&signed, &public).unwrap())
    });
    g.finish();
}

fn refresh(c: &mut Criterion) {
    let (mut gateway, set, snapshot) = full_door();
    let mut b64 = vec![0u8; snapshot.len() * 4 / 3 + 4];
    let text_len = to_base64(&snapshot, &mut b64).unwrap().len();
    println!(
        "snapshot of {N} grants: {} bytes, {text_len} characters of base64; \
         in memory per grant: Grant {} B, PeerSecret {} B, HintMac {} B",
        snapshot.len(),
        std::mem::size_of::<latchkey_proto::v2::Grant>(),
        std::mem::size_of::<PeerSecret>(),
        std::mem::size_of::<latchkey_proto::v2::HintMac>(),
    );
    let public = gateway.public();
    let next = gateway.snapshot(DOOR_ID, 1, &grants(N, 1));
    let mut g = c.benchmark_group("v2_refresh_256_grants");
    g.bench_function("verify_snapshot", |b| {
        b.iter(|| verify_snapshot(&snapshot, &public, &DOOR_ID).unwrap().len())
    });
    // The usual refresh: every phone already known, no ECDH.
    g.bench_function("apply_known_phones", |b| {
        b.iter_batched(
            || set.clone(),
            |mut s| s.apply(&next, &public, &door_key()).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.sample_size(10);
    // First sync (or a restart without cached secrets): 256 ECDH.
    g.bench_function("apply_all_new_phones", |b| {
        b.iter(|| {
            let mut s = GrantSet::new(DOOR_ID);
            s.apply(&snapshot, &public, &door_key()).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, unlock, per_grant, refresh);
criterion_main!(benches);
