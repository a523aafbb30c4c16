//! D-Bus round trip of the BLE door service through the BlueZ stand-in (issue 4 figure; goal
//! p99 ≤ 5 ms), and ATT operations per unlock (goal ≤ 3).
//!
//! Starts a private bus, the stand-in and the real gateway in-process (BLE on, one endpoint
//! with the `none` action), pairs one phone, then repeats a full unlock: read the challenge,
//! write the auth frame, wait for the result notification. It reports the time from sending
//! `WriteValue` to receiving the result's `PropertiesChanged` — which covers the D-Bus hops,
//! bluer's dispatch, the decision with its SQLite commits and the notification — as p50/p99.
//!
//! `cargo run --release --example ble_roundtrip [-- ITERATIONS]` (default 2000).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use latchkey::clock::{Clock, ManualClock};
use latchkey::config::{ActionConfig, BleMode, Config, EndpointConfig};
use latchkey::pairing::{self, DeviceInfo};
use latchkey_bluez_standin::phone::Phone;
use latchkey_proto::{ResultFrame, Status, UuidText, AUTH_UUID, CHALLENGE_UUID, RESULT_UUID};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
    let adapter = shared.new_adapter().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_768_300_800);
    let mut config = Config::for_test(dir.path(), clock.clone());
    config.ble = BleMode::On;
    config.ble_adapter = Some(adapter.name().to_owned());
    config.endpoints = vec![EndpointConfig {
        id: "front".into(),
        name: None,
        devices: None,
        action: ActionConfig::None,
    }];
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let state = latchkey::build_state(config, listener.local_addr().unwrap().port()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(latchkey::serve(state.clone(), listener, async move {
        let _ = stop_rx.await;
    }));
    adapter
        .wait_application(0, Duration::from_secs(10))
        .await
        .expect("the gateway registers");

    let now = clock.now();
    let info = DeviceInfo::validate("bench phone", "mobile").unwrap();
    let paired = state
        .store
        .write_blocking(|tx| {
            let t = pairing::create_token(tx, now, 300).unwrap();
            Ok(pairing::redeem(tx, &state.master, t.token.expose(), &info, now).unwrap())
        })
        .unwrap();
    let mut phone = Phone::new(
        paired.device_id.to_bytes(),
        paired.totp_secret.expose().to_vec(),
    )
    .unwrap();

    let (challenge, auth, result) = (
        UuidText(CHALLENGE_UUID).to_string(),
        UuidText(AUTH_UUID).to_string(),
        UuidText(RESULT_UUID).to_string(),
    );
    let link = adapter.connect("42:42:42:42:42:42", 185).await.unwrap();
    link.subscribe(&result).await.unwrap();
    let mut first_unlock_ops = 0;
    let mut write_to_result = Vec::with_capacity(iterations);
    let mut unlock = Vec::with_capacity(iterations);
    let mut reads = Vec::with_capacity(iterations);
    for i in 0..iterations + 50 {
        clock.advance(30);
        let t_start = Instant::now();
        let c = link.read(&challenge, 0).await.unwrap();
        let attempt = phone
            .answer(&c, u64::try_from(clock.now()).unwrap(), "front")
            .unwrap();
        let t_write = Instant::now();
        let t_read = t_write - t_start;
        link.write(&auth, &attempt.frame).await.unwrap();
        let r = link
            .notification(&result, Duration::from_secs(5))
            .await
            .expect("a result");
        let t_end = Instant::now();
        let v = ResultFrame::verify(&r, phone.keys(), &attempt.nonce, &attempt.tag()).unwrap();
        assert_eq!(v.result.status, Status::Granted);
        if i == 0 {
            first_unlock_ops = link.att_ops();
        }
        if i >= 50 {
            // The first 50 warm caches and SQLite's statement cache.
            write_to_result.push(t_end - t_write);
            unlock.push(t_end - t_start);
            reads.push(t_read);
        }
    }
    let later = f64::from(link.att_ops() - first_unlock_ops) / (iterations + 49) as f64;

    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e3
    };
    println!("iterations: {iterations}");
    println!(
        "WriteValue -> result notification: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pct(&mut write_to_result, 0.50),
        pct(&mut write_to_result, 0.99),
        pct(&mut write_to_result, 1.0)
    );
    println!(
        "ReadValue (challenge), for scale:  p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut reads, 0.50),
        pct(&mut reads, 0.99)
    );
    println!(
        "read challenge + write + result:   p50 {:.3} ms, p99 {:.3} ms",
        pct(&mut unlock, 0.50),
        pct(&mut unlock, 0.99)
    );
    println!(
        "ATT operations per unlock: {first_unlock_ops} on a fresh connection \
         (subscribe Result, read Challenge, write Auth); {later:.0} for each further one"
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}
