//! Frame verification cost on the gateway (issue 4 figure; goal ≤ 100 µs per frame).
//!
//! Against a real SQLite registry (WAL, 100 paired devices) and the real master key:
//! - `evaluate`: PROTOCOL.md §7.2 steps 1–10 for a granted frame — peer and device lockout
//!   lookups, the device row, unsealing its TOTP secret (XChaCha20-Poly1305), HKDF key
//!   derivation, the tag, TOTP over three steps, the endpoint — read-only;
//! - `decide`: the same inside a write transaction that records the accepted TOTP step and
//!   commits, as the gateway does for every frame.
//!
//! `cargo bench --bench verify` (figures in docs/PERFORMANCE.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use latchkey::access::challenge::Taken;
use latchkey::access::endpoint::Endpoints;
use latchkey::access::verify::{decide, evaluate, Attempt, SqlLedger};
use latchkey::config::{ActionConfig, EndpointConfig};
use latchkey::crypto::MasterKey;
use latchkey::pairing::{self, DeviceInfo};
use latchkey::store::Store;
use latchkey_proto::{hotp, totp_step, AuthFrame, AuthRequest, DeviceKeys, Status};

const T0: i64 = 1_768_300_800;
const PEER: &str = "/org/bluez/hci0/dev_12_34_56_78_9A_BC";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    master: MasterKey,
    endpoints: Endpoints,
    device_id: [u8; 16],
    secret: Vec<u8>,
    keys: DeviceKeys,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::from_bytes([7; 32]);
        let store = Store::open(&dir.path().join("latchkey.db"), &master).unwrap();
        let info = DeviceInfo::validate("bench phone", "mobile").unwrap();
        let mut last = None;
        for _ in 0..100 {
            last = Some(
                store
                    .write_blocking(|tx| {
                        let t = pairing::create_token(tx, T0, 300).unwrap();
                        Ok(pairing::redeem(tx, &master, t.token.expose(), &info, T0).unwrap())
                    })
                    .unwrap(),
            );
        }
        let paired = last.unwrap();
        let device_id = paired.device_id.to_bytes();
        let secret = paired.totp_secret.expose().to_vec();
        let keys = DeviceKeys::derive(&secret, &device_id).unwrap();
        let endpoints = Endpoints::from_config(&[EndpointConfig {
            id: "front-door".into(),
            name: None,
            devices: None,
            action: ActionConfig::None,
        }]);
        Self {
            _dir: dir,
            store,
            master,
            endpoints,
            device_id,
            secret,
            keys,
        }
    }

    fn frame(&self, now: i64, nonce: [u8; 16]) -> Vec<u8> {
        let mut out = [0u8; AuthFrame::MAX_LEN];
        let n = AuthFrame::encode(
            &AuthRequest {
                device_id: self.device_id,
                totp: hotp(&self.secret, totp_step(now as u64)),
                timestamp: now as u64,
                endpoint: "front-door",
            },
            &self.keys,
            &nonce,
            &mut out,
        )
        .unwrap();
        out[..n].to_vec()
    }
}

fn verify(c: &mut Criterion) {
    let fx = Fixture::new();
    let mut group = c.benchmark_group("ble_frame");

    let nonce = [0x5a; 16];
    let frame = fx.frame(T0, nonce);
    group.bench_function("evaluate", |b| {
        b.iter(|| {
            let v = fx
                .store
                .read_blocking(|conn| {
                    evaluate(
                        &Attempt {
                            frame: &frame,
                            peer: PEER,
                            nonce: Taken {
                                live: Some(nonce),
                                last: Some(nonce),
                            },
                            now: T0,
                        },
                        &mut SqlLedger {
                            conn,
                            master: &fx.master,
                        },
                        &fx.endpoints,
                    )
                })
                .unwrap();
            assert_eq!(v.status, Status::Granted);
        })
    });

    // Each decision uses up a TOTP step, so every iteration is 30 s later.
    let now = Cell::new(T0);
    group.bench_function("decide_and_commit", |b| {
        b.iter_batched(
            || {
                now.set(now.get() + 30);
                (now.get(), fx.frame(now.get(), nonce))
            },
            |(t, frame)| {
                let v = fx
                    .store
                    .write_blocking(|tx| {
                        decide(
                            tx,
                            &fx.master,
                            &fx.endpoints,
                            &Attempt {
                                frame: &frame,
                                peer: PEER,
                                nonce: Taken {
                                    live: Some(nonce),
                                    last: Some(nonce),
                                },
                                now: t,
                            },
                        )
                    })
                    .unwrap();
                assert_eq!(v.status, Status::Granted);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
