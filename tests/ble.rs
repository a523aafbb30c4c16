//! The BLE door service end to end through a real D-Bus: the gateway daemon registers its
//! GATT application with a BlueZ stand-in on a private bus, and simulated phones read
//! challenges, write auth frames and receive results as bluetoothd would deliver them.
//! Time rules run on the gateway's manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/door.rs"]
mod door;
#[path = "support/node.rs"]
mod node;

use latchkey::clock::Clock;
use latchkey::config::ActionConfig;
use latchkey::config::EndpointConfig;
use latchkey_bluez_standin::WriteOptions;
use latchkey_proto::{Challenge, Status, SERVICE_UUID};
use rand::{Rng, SeedableRng};

use door::*;

#[tokio::test]
async fn registers_the_service_and_advertises() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    assert!(d.adapter.powered(), "the gateway powers the adapter on");

    let app = &d.app;
    // Version 1's service first; version 2's (tests/access_tools.rs) after it.
    assert_eq!(app.services.len(), 2);
    assert_eq!(app.services[0].uuid, uuid(SERVICE_UUID));
    assert!(app.services[0].primary);
    let flags = |u: String| {
        let c = app.characteristic(&u).expect("characteristic");
        assert_eq!(c.service, app.services[0].path);
        c.flags.clone()
    };
    assert_eq!(flags(challenge()), ["read", "notify"]);
    assert_eq!(flags(auth()), ["write"]);
    assert_eq!(flags(result()), ["notify"]);

    let adv = d.adapter.wait_advertisement(0, WAIT).await.unwrap();
    assert_eq!(adv.kind, "peripheral");
    assert_eq!(adv.service_uuids, [uuid(SERVICE_UUID)]);
    assert_eq!(adv.local_name.as_deref(), Some("latchkey-test"));
    // The gateway's short id, within the 31 bytes of legacy advertising (the stand-in refuses
    // more), and a fast advertising interval.
    let ours = latchkey_proto::adv_data(&d.gw.state.gateway_id).to_vec();
    assert_eq!(
        adv.manufacturer_data,
        [(latchkey_proto::ADV_COMPANY_ID, ours)]
            .into_iter()
            .collect()
    );
    assert_eq!(adv.legacy_len(), 31);
    assert_eq!(
        (adv.min_interval_ms, adv.max_interval_ms),
        (Some(100), Some(150))
    );
    assert_eq!(adv.owner, app.owner);

    let m = d.metrics().await;
    assert_eq!(metric(&m, "latchkey_ble_up"), Some(1.0));
    assert_eq!(metric(&m, "latchkey_ble_registrations_total"), Some(1.0));
    assert_eq!(metric(&m, "latchkey_clock_ntp_synchronized"), Some(-1.0));
}

#[tokio::test]
async fn require_encryption_sets_bluez_security_flags() {
    let d = Door::start_with(vec![endpoint("front", None)], |c| {
        c.ble_require_encryption = true
    })
    .await;
    let sorted = |u: String| {
        let mut f = d.app.characteristic(&u).unwrap().flags.clone();
        f.sort();
        f
    };
    assert_eq!(
        sorted(challenge()),
        ["encrypt-authenticated-read", "notify", "read"]
    );
    assert_eq!(sorted(auth()), ["encrypt-authenticated-write", "write"]);
}

#[tokio::test]
async fn a_grant_runs_the_command_and_is_signed_in_three_att_operations() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("opened");
    let script = format!(
        "printf '%s %s %s' \"$LATCHKEY_ENDPOINT\" \"$LATCHKEY_DEVICE_ID\" \"$LATCHKEY_DEVICE_NAME\" > '{}'",
        file.display()
    );
    let front = EndpointConfig {
        id: "front".into(),
        name: Some("Front door".into()),
        devices: None,
        action: ActionConfig::Command {
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            timeout_secs: 5,
        },
    };
    let d = Door::start(vec![front]).await;
    let (mut phone, answer) = d.pair("Ana's phone").await;
    let mut events = d.gw.state.bus.subscribe();

    let link = d.connect("11:22:33:44:55:01").await;
    let (attempt, result) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(link.att_ops(), 3, "subscribe, read challenge, write auth");

    let verified = phone.verify(&result, &attempt).expect("a genuine result");
    assert!(verified.authenticated);
    assert_eq!(verified.result.status, Status::Granted);
    assert_eq!(verified.result.nonce, attempt.nonce);

    let device_id = answer["deviceId"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("front {device_id} Ana's phone")
    );

    // The decision is in the log, and on the live bus the WebSocket fans out.
    let evs = d.access_events().await;
    assert_eq!(evs.len(), 1);
    let (topic, data) = &evs[0];
    assert_eq!(topic, "access.granted");
    assert_eq!(data["deviceId"], device_id);
    assert_eq!(data["deviceName"], "Ana's phone");
    assert_eq!(data["endpoint"], "front");
    assert_eq!(data["reason"], "GRANTED");
    assert_eq!(data["peer"], link.path);
    let live = tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.unwrap();
            if ev.topic.starts_with("access.") {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(live.topic, "access.granted");

    // The empty endpoint id is the default (first) endpoint; the next step is accepted.
    let (attempt, result) = unlock(&link, &mut phone, d.now(), "").await;
    let v = phone.verify(&result, &attempt).unwrap();
    assert_eq!(v.result.status, Status::Granted);

    let m = d.metrics().await;
    assert_eq!(metric(&m, "latchkey_access_granted_total"), Some(2.0));
}

/// Asserts one attempt's answer: status, whether it is signed, and the event's reason.
async fn expect(
    d: &Door,
    phone: &latchkey_bluez_standin::phone::Phone,
    attempt: Option<&latchkey_bluez_standin::phone::Attempt>,
    result: &[u8],
    want: Status,
    signed: bool,
) {
    assert_eq!(status_of(result), want);
    assert_eq!(!unsigned(result), signed, "{want}: signed?");
    if let (true, Some(a)) = (signed, attempt) {
        let v = phone.verify(result, a).expect("verifies");
        assert!(v.authenticated);
        assert_eq!(v.result.status, want);
    }
    let evs = d.access_events().await;
    let (topic, data) = evs.last().expect("an event");
    assert_eq!(topic, "access.denied");
    assert_eq!(data["reason"], want.as_str());
}

#[tokio::test]
async fn every_denial_reason() {
    let d = Door::start(vec![
        endpoint("front", None),
        endpoint("vault", Some(vec![])),
    ])
    .await;
    let now = d.now();

    // UNKNOWN_DEVICE: a well-formed frame from a device nobody paired (unsigned).
    let mut stranger =
        latchkey_bluez_standin::phone::Phone::new([0x42; 16], b"01234567890123456789".to_vec())
            .unwrap();
    let link = d.connect("22:00:00:00:00:01").await;
    let (a, r) = unlock(&link, &mut stranger, now, "front").await;
    expect(&d, &stranger, Some(&a), &r, Status::UnknownDevice, false).await;
    assert_eq!(
        r[5..21],
        a.nonce,
        "the nonce tells phones whose answer it is"
    );

    // MALFORMED and UNSUPPORTED (unsigned; the nonce field is the connection's last one).
    let c = read_challenge(&link).await;
    let r = write_and_wait(&link, &[1, 2, 0, 0]).await;
    expect(&d, &stranger, None, &r, Status::Malformed, false).await;
    assert_eq!(r[5..21], Challenge::decode(&c).unwrap().nonce);
    let r = write_and_wait(&link, &[2; 89]).await;
    expect(&d, &stranger, None, &r, Status::Unsupported, false).await;

    // REVOKED (signed: the gateway still holds the key).
    let (mut p, answer) = d.pair("revoked").await;
    d.revoke(answer["deviceId"].as_str().unwrap()).await;
    let link = d.connect("22:00:00:00:00:02").await;
    let (a, r) = unlock(&link, &mut p, now, "front").await;
    expect(&d, &p, Some(&a), &r, Status::Revoked, true).await;

    let (mut p, _) = d.pair("phone").await;
    let link = d.connect("22:00:00:00:00:03").await;

    // BAD_TOTP: a code two steps ahead.
    let c = Challenge::decode(&read_challenge(&link).await).unwrap();
    let step = latchkey_proto::totp_step(now);
    let attempt = latchkey_bluez_standin::phone::Attempt {
        frame: p.frame(&c.nonce, p.code(step + 2), now, "front").unwrap(),
        nonce: c.nonce,
        step: step + 2,
    };
    let r = write_and_wait(&link, &attempt.frame).await;
    expect(&d, &p, Some(&attempt), &r, Status::BadTotp, true).await;

    // CLOCK_SKEW: the phone's clock 301 s ahead.
    let c = Challenge::decode(&read_challenge(&link).await).unwrap();
    let attempt = latchkey_bluez_standin::phone::Attempt {
        frame: p.frame(&c.nonce, p.code(step), now + 301, "front").unwrap(),
        nonce: c.nonce,
        step,
    };
    let r = write_and_wait(&link, &attempt.frame).await;
    expect(&d, &p, Some(&attempt), &r, Status::ClockSkew, true).await;

    // ENDPOINT_DENIED: an unknown endpoint, then one this device may not use (each with a
    // new step: a step is recorded as used as soon as its code is accepted) ...
    for (ep, st) in [("back", step), ("vault", step + 1)] {
        let c = Challenge::decode(&read_challenge(&link).await).unwrap();
        let attempt = latchkey_bluez_standin::phone::Attempt {
            frame: p.frame(&c.nonce, p.code(st), now, ep).unwrap(),
            nonce: c.nonce,
            step: st,
        };
        let r = write_and_wait(&link, &attempt.frame).await;
        expect(&d, &p, Some(&attempt), &r, Status::EndpointDenied, true).await;
    }
    // ... so TOTP_REUSED for a step already used.
    let c = Challenge::decode(&read_challenge(&link).await).unwrap();
    let attempt = latchkey_bluez_standin::phone::Attempt {
        frame: p.frame(&c.nonce, p.code(step), now, "front").unwrap(),
        nonce: c.nonce,
        step,
    };
    let r = write_and_wait(&link, &attempt.frame).await;
    expect(&d, &p, Some(&attempt), &r, Status::TotpReused, true).await;

    // Five counted failures so far for this device: the next attempt is locked out.
    let (a, r) = unlock(&link, &mut p, now, "front").await;
    expect(&d, &p, Some(&a), &r, Status::LockedOut, true).await;
    let v = p.verify(&r, &a).unwrap();
    assert_eq!(v.result.retry_after, 60);

    // BAD_TAG, and the nonce rules, with a fresh device.
    let (mut q, _) = d.pair("other").await;
    let c = Challenge::decode(&read_challenge(&link).await).unwrap();
    let mut frame = q.frame(&c.nonce, q.code(step), now, "vault").unwrap();
    let last = frame.len() - 1;
    frame[last] ^= 0x80;
    let attempt = latchkey_bluez_standin::phone::Attempt {
        frame,
        nonce: c.nonce,
        step,
    };
    let r = write_and_wait(&link, &attempt.frame).await;
    // Signed under the device's key, but over the tag the phone actually sent.
    expect(&d, &q, Some(&attempt), &r, Status::BadTag, true).await;

    // NONCE_INVALID: no challenge read on this connection.
    let fresh = d.connect("22:00:00:00:00:04").await;
    let a = q
        .answer(
            &Challenge {
                nonce: [7; 16],
                gateway_time: now,
            }
            .to_bytes(),
            now,
            "front",
        )
        .unwrap();
    let r = write_and_wait(&fresh, &a.frame).await;
    expect(&d, &q, Some(&a), &r, Status::NonceInvalid, true).await;

    // NONCE_INVALID: a nonce issued to another connection.
    let theirs = read_challenge(&link).await;
    let a = q.answer(&theirs, now, "front").unwrap();
    let _ = read_challenge(&fresh).await;
    let r = write_and_wait(&fresh, &a.frame).await;
    expect(&d, &q, Some(&a), &r, Status::NonceInvalid, true).await;

    // NONCE_INVALID: expired (read, then 31 s pass on the gateway's clock).
    let c = read_challenge(&fresh).await;
    d.gw.clock.advance(31);
    let a = q.answer(&c, d.now(), "front").unwrap();
    let r = write_and_wait(&fresh, &a.frame).await;
    expect(&d, &q, Some(&a), &r, Status::NonceInvalid, true).await;

    let m = d.metrics().await;
    assert!(metric(&m, "latchkey_access_denied_total").unwrap() >= 13.0);
}

#[tokio::test]
async fn a_captured_frame_cannot_be_replayed() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("phone").await;
    let link = d.connect("33:00:00:00:00:01").await;
    let (attempt, granted) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&granted), Status::Granted);

    // The same bytes again, on the same connection: its nonce was used.
    let r = write_and_wait(&link, &attempt.frame).await;
    assert_eq!(status_of(&r), Status::NonceInvalid);

    // An attacker's own connection, with a fresh challenge read: the frame carries the
    // phone's old nonce.
    let evil = d.connect("33:00:00:00:00:66").await;
    let _ = read_challenge(&evil).await;
    let r = write_and_wait(&evil, &attempt.frame).await;
    assert_eq!(status_of(&r), Status::NonceInvalid);

    // Even re-signed over a fresh nonce (by the phone itself), the TOTP step is spent.
    let c = Challenge::decode(&read_challenge(&link).await).unwrap();
    let again = phone
        .frame(&c.nonce, phone.code(attempt.step), d.now(), "front")
        .unwrap();
    let r = write_and_wait(&link, &again).await;
    assert_eq!(status_of(&r), Status::TotpReused);

    // A captured result frame does not verify for another attempt.
    let (next, r) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    assert!(phone.verify(&granted, &next).is_err());
    let granted_events = d
        .access_events()
        .await
        .iter()
        .filter(|(t, _)| t == "access.granted")
        .count();
    assert_eq!(granted_events, 2);
}

#[tokio::test]
async fn disconnect_discards_the_nonce() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("phone").await;
    let link = d.connect("44:00:00:00:00:01").await;
    let c = read_challenge(&link).await;
    link.disconnect().await.unwrap();
    // The gateway learns of the disconnect from BlueZ's signal, on its own task.
    let seen = tokio::time::timeout(WAIT, async {
        while d
            .gw
            .state
            .ble
            .disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "the gateway saw the disconnect");
    // Reconnecting with the same address within 30 s: the old nonce is gone.
    let again = d.connect("44:00:00:00:00:01").await;
    let a = phone.answer(&c, d.now(), "front").unwrap();
    let r = write_and_wait(&again, &a.frame).await;
    assert_eq!(status_of(&r), Status::NonceInvalid);
}

#[tokio::test]
async fn lockout_expires_on_the_clock_and_survives_a_restart() {
    let shared = latchkey_bluez_standin::shared().unwrap();
    let adapter = shared.new_adapter().await.unwrap();
    let eps = vec![endpoint("front", None)];
    let gw = common::Gateway::start_with(|c| ble_on(c, &adapter, eps.clone())).await;
    let mut seen = 0;
    adapter.wait_application(seen, WAIT).await.unwrap();
    seen += 1;
    let http = reqwest::Client::new();
    let answer = gw.pair(&http, "phone").await;
    let mut phone = phone_from(&answer);
    let now = || u64::try_from(gw.clock.now()).unwrap();

    let link = adapter.connect("55:00:00:00:00:01", 185).await.unwrap();
    link.subscribe(&result()).await.unwrap();
    for i in 1..=5 {
        let c = Challenge::decode(&read_challenge(&link).await).unwrap();
        let bad = phone.frame(&c.nonce, 0, now(), "front").unwrap();
        let r = write_and_wait(&link, &bad).await;
        assert_eq!(status_of(&r), Status::BadTotp, "attempt {i}");
    }
    let (_, r) = unlock(&link, &mut phone, now(), "front").await;
    assert_eq!(status_of(&r), Status::LockedOut);
    gw.clock.advance(59);
    let (a, r) = unlock(&link, &mut phone, now(), "front").await;
    assert_eq!(phone.verify(&r, &a).unwrap().result.retry_after, 1);

    // Restart the daemon on the same data directory: the lock is still there.
    let t = gw.clock.now();
    let dir = gw.stop().await;
    let gw = common::Gateway::start_in(dir, t, |c| ble_on(c, &adapter, eps.clone())).await;
    adapter.wait_application(seen, WAIT).await.unwrap();
    let link = adapter.connect("55:00:00:00:00:01", 185).await.unwrap();
    link.subscribe(&result()).await.unwrap();
    let now = || u64::try_from(gw.clock.now()).unwrap();
    let (a, r) = unlock(&link, &mut phone, now(), "front").await;
    let v = phone.verify(&r, &a).unwrap();
    assert_eq!(
        (v.result.status, v.result.retry_after),
        (Status::LockedOut, 1)
    );

    // The lock ends at 60 s; a grant then resets the count.
    gw.clock.advance(31);
    let (_, r) = unlock(&link, &mut phone, now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    for _ in 0..4 {
        let c = Challenge::decode(&read_challenge(&link).await).unwrap();
        let bad = phone.frame(&c.nonce, 0, now(), "front").unwrap();
        assert_eq!(
            status_of(&write_and_wait(&link, &bad).await),
            Status::BadTotp
        );
    }
    gw.clock.advance(30);
    let (_, r) = unlock(&link, &mut phone, now(), "front").await;
    assert_eq!(
        status_of(&r),
        Status::Granted,
        "four failures after a grant do not lock"
    );
}

#[tokio::test]
async fn an_unknown_peer_is_locked_out_by_address() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let noisy = d.connect("66:00:00:00:00:01").await;
    for _ in 0..5 {
        let r = write_and_wait(&noisy, &[1, 2, 0xde, 0xad]).await;
        assert_eq!(status_of(&r), Status::Malformed);
    }
    let r = write_and_wait(&noisy, &[1, 2, 0xde, 0xad]).await;
    assert_eq!(status_of(&r), Status::LockedOut);
    assert!(unsigned(&r));
    assert_eq!(u16::from_be_bytes([r[3], r[4]]), 60);
    let (_, data) = d.access_events().await.pop().unwrap();
    assert_eq!(data["retryAfter"], 60);
    assert_eq!(data["peer"], noisy.path);

    // Another peer, and a paired phone, are unaffected.
    let (mut phone, _) = d.pair("phone").await;
    let quiet = d.connect("66:00:00:00:00:02").await;
    let (_, r) = unlock(&quiet, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    d.gw.clock.advance(60);
    let r = write_and_wait(&noisy, &[1, 2, 0xde, 0xad]).await;
    assert_eq!(status_of(&r), Status::Malformed, "the lock ended");
}

#[tokio::test]
async fn hostile_writes_of_every_length() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut n = 0u32;
    for len in 0..=200usize {
        for variant in 0..2 {
            // A peer of its own per write, and time for the gateway-wide budget to refill, so
            // that no lockout hides the decoder.
            n += 1;
            d.gw.clock
                .advance(latchkey::access::lockout::BUDGET_INTERVAL_SECS);
            let link = d
                .adapter
                .connect(&format!("77:00:00:00:{:02X}:{:02X}", n >> 8, n & 0xff), 517)
                .await
                .unwrap();
            link.subscribe(&result()).await.unwrap();
            let mut value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if variant == 1 && len >= 2 {
                // Past the header checks, into the field checks.
                value[0] = 1;
                value[1] = 2;
                if len > 46 {
                    value[46] = rng.random_range(0..=40);
                }
            }
            match link.write(&auth(), &value).await {
                Ok(()) => {
                    assert!(len <= 182, "a {len}-byte write was accepted");
                    let r = link.notification(&result(), WAIT).await.expect("a result");
                    let s = status_of(&r);
                    assert!(
                        matches!(
                            s,
                            Status::Malformed | Status::Unsupported | Status::UnknownDevice
                        ),
                        "{len} bytes: {s}"
                    );
                    assert!(unsigned(&r));
                }
                Err(e) => {
                    assert!(len > 182, "{len} bytes refused: {e}");
                    assert_eq!(e.dbus_name(), Some("org.bluez.Error.InvalidValueLength"));
                }
            }
        }
    }

    // What BlueZ-level options the gateway refuses, and how.
    let link = d.adapter.connect("77:00:00:00:FF:FF", 517).await.unwrap();
    link.subscribe(&result()).await.unwrap();
    let not_permitted = [
        WriteOptions {
            offset: 1,
            ..Default::default()
        },
        WriteOptions {
            kind: "command",
            ..Default::default()
        },
        WriteOptions {
            kind: "reliable",
            ..Default::default()
        },
        WriteOptions {
            prepare_authorize: true,
            ..Default::default()
        },
    ];
    for w in not_permitted {
        let e = link
            .write_with(&auth(), &[1, 2], w.clone())
            .await
            .unwrap_err();
        assert_eq!(e.dbus_name(), Some("org.bluez.Error.NotPermitted"), "{w:?}");
    }
    // Challenge reads honour the offset.
    let whole = read_challenge(&link).await;
    assert_eq!(whole.len(), Challenge::LEN);
    let rest = link.read(&challenge(), 20).await.unwrap();
    assert_eq!(rest, whole[20..]);
    assert!(link.read(&challenge(), 26).await.unwrap().is_empty());
    let e = link.read(&challenge(), 27).await.unwrap_err();
    assert_eq!(e.dbus_name(), Some("org.bluez.Error.InvalidOffset"));
    // Writing to a read-only characteristic is refused by bluer itself.
    assert!(link.write(&challenge(), &[0]).await.is_err());

    // The gateway still serves everyone else.
    let (mut phone, _) = d.pair("phone").await;
    let ok = d.connect("77:00:00:00:00:02").await;
    let (_, r) = unlock(&ok, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
}

#[tokio::test]
async fn challenges_are_fresh_per_read() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let link = d.connect("88:00:00:00:00:01").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let c = Challenge::decode(&read_challenge(&link).await).unwrap();
        assert_eq!(c.gateway_time, d.now());
        assert!(seen.insert(c.nonce), "a nonce repeated");
    }
}

#[tokio::test]
async fn an_action_failure_answers_action_failed_without_counting() {
    let failing = EndpointConfig {
        id: "broken".into(),
        name: None,
        devices: None,
        action: ActionConfig::Command {
            argv: vec!["/bin/false".into()],
            timeout_secs: 5,
        },
    };
    let node = EndpointConfig {
        id: "gate".into(),
        name: None,
        devices: None,
        action: ActionConfig::Node {
            node_id: "n1".into(),
            pulse_ms: 3000,
        },
    };
    let d = Door::start(vec![failing, node]).await;
    let (mut phone, _) = d.pair("phone").await;
    let link = d.connect("99:00:00:00:00:01").await;
    for i in 0..6 {
        d.gw.clock.advance(30);
        let ep = if i % 2 == 0 { "broken" } else { "gate" };
        let (a, r) = unlock(&link, &mut phone, d.now(), ep).await;
        let v = phone.verify(&r, &a).unwrap();
        assert_eq!(v.result.status, Status::ActionFailed, "attempt {i} ({ep})");
    }
    let (topic, data) = d.access_events().await.pop().unwrap();
    assert_eq!(
        (topic.as_str(), data["reason"].as_str()),
        ("access.denied", Some("ACTION_FAILED"))
    );
    // The reason is in the event: no node of that id is connected.
    assert_eq!(data["endpoint"], "gate");
    assert_eq!(data["detail"], "node is offline");
}

#[tokio::test]
async fn a_phone_opens_a_door_node_over_ble() {
    // No [[endpoint]]: the registered door node is the only (and so the default) endpoint.
    let d = Door::start(vec![]).await;
    let http = reqwest::Client::new();
    let creds = node::provisioned(&http, &d.gw.base, &d.gw.admin_token, "Front door").await;
    let (ws, _) = node::session(&creds).await;
    let (_task, mut commands) = node::serve(ws, node::Answer::Ok);
    let (mut phone, _) = d.pair("phone").await;
    let link = d.connect("99:00:00:00:00:02").await;
    d.gw.clock.advance(30);
    let (a, r) = unlock(&link, &mut phone, d.now(), "front-door").await;
    let v = phone.verify(&r, &a).unwrap();
    assert_eq!(v.result.status, Status::Granted);
    let cmd = commands.recv().await.unwrap();
    assert_eq!(cmd["command"], "unlock");
    assert_eq!(cmd["pulse_ms"], 3000);
    let (topic, data) = d.access_events().await.pop().unwrap();
    assert_eq!(topic, "access.granted");
    assert_eq!(data["endpoint"], "front-door");
}

#[tokio::test]
async fn phones_clocks_flag_a_wrong_gateway_clock() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("phone").await;
    let link = d.connect("aa:00:00:00:00:01").await;
    // The phones are right; the gateway's clock is 400 s slow. Their frames are authentic,
    // so the gateway learns from them even while it refuses them.
    let m = d.metrics().await;
    assert_eq!(metric(&m, "latchkey_clock_suspect"), Some(0.0));
    for _ in 0..3 {
        d.gw.clock.advance(30);
        let c = read_challenge(&link).await;
        let a = phone.answer(&c, d.now() + 400, "front").unwrap();
        let r = write_and_wait(&link, &a.frame).await;
        assert_eq!(status_of(&r), Status::ClockSkew);
    }
    let m = d.metrics().await;
    assert_eq!(metric(&m, "latchkey_clock_suspect"), Some(1.0));
    assert_eq!(
        metric(&m, "latchkey_clock_phone_offset_seconds"),
        Some(400.0)
    );

    let page = activity_page(&d).await;
    assert!(page.contains("400 s ahead of"), "{page}");
}

async fn activity_page(d: &Door) -> String {
    let now = d.gw.clock.now();
    let sid =
        d.gw.state
            .store
            .write(move |tx| Ok(latchkey::admin::create_session(tx, now)))
            .await
            .unwrap()
            .unwrap();
    let r = d
        .http
        .get(d.gw.url("/activity"))
        .header("cookie", format!("latchkey_session={}", sid.expose()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn the_activity_page_lists_decisions() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("Ana <script>").await;
    let link = d.connect("bb:00:00:00:00:01").await;
    let (_, r) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    let r = write_and_wait(&link, &[1, 2, 3]).await;
    assert_eq!(status_of(&r), Status::Malformed);

    let page = activity_page(&d).await;
    assert!(
        page.contains("GRANTED") && page.contains("MALFORMED"),
        "{page}"
    );
    assert!(
        page.contains("Ana &lt;script&gt;") || page.contains("Ana &#60;script&#62;"),
        "{page}"
    );
    assert!(!page.contains("Ana <script>"));
    assert!(page.contains("/static/activity.js"));
    assert!(page.contains("registered on"), "BLE state shown: {page}");

    // Without a session: to the login page.
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(d.gw.url("/activity"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next `event` frame on a WebSocket (other frames skipped).
async fn ws_event(ws: &mut Ws) -> serde_json::Value {
    ws_frame(ws, "event").await
}

/// The next frame of `kind` on a WebSocket (other frames skipped).
async fn ws_frame(ws: &mut Ws, kind: &str) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let f: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if f["type"] == kind {
                return f;
            }
        }
    }
}

#[tokio::test]
async fn decisions_reach_websocket_clients_live() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, answer) = d.pair("phone").await;
    let mut sockets = Vec::new();
    for auth in [
        format!("Bearer {}", d.gw.admin_token),
        format!("Device {}", answer["deviceKey"].as_str().unwrap()),
    ] {
        let mut req = d.gw.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", auth.parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        // After hello the session is live; decisions from here on are delivered.
        ws_frame(&mut ws, "hello").await;
        ws.send(Message::text(
            serde_json::json!({"type":"subscribe","topics":["access.*"]}).to_string(),
        ))
        .await
        .unwrap();
        sockets.push(ws);
    }
    let link = d.connect("cc:00:00:00:00:01").await;
    let (_, r) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    let r = write_and_wait(&link, &[1, 2, 3]).await;
    assert_eq!(status_of(&r), Status::Malformed);
    for ws in &mut sockets {
        let granted = ws_event(ws).await;
        assert_eq!(granted["topic"], "access.granted");
        assert_eq!(granted["data"]["deviceId"], answer["deviceId"]);
        assert_eq!(granted["data"]["endpoint"], "front");
    }
    // The malformed frame named no device: only the admin hears of it (CONTRACT §4, a phone
    // sees the decisions about itself).
    let denied = ws_event(&mut sockets[0]).await;
    assert_eq!(denied["topic"], "access.denied");
    assert_eq!(denied["data"]["reason"], "MALFORMED");
}

/// Reads a challenge and answers it with `phone`'s key and a made-up TOTP code (any number
/// of times, unlike [`unlock`], which never reuses a step).
async fn forge(
    link: &latchkey_bluez_standin::Link,
    phone: &latchkey_bluez_standin::phone::Phone,
    now: u64,
) -> (latchkey_bluez_standin::phone::Attempt, Vec<u8>) {
    let c = Challenge::decode(&read_challenge(link).await).unwrap();
    let a = latchkey_bluez_standin::phone::Attempt {
        frame: phone.frame(&c.nonce, 0, now, "front").unwrap(),
        nonce: c.nonce,
        step: 0,
    };
    let r = write_and_wait(link, &a.frame).await;
    (a, r)
}

#[tokio::test]
async fn a_stranger_cannot_lock_a_phone_out_in_its_name() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, answer) = d.pair("A").await;
    // The device id travels in clear; the stranger has it, but not the key.
    let stranger = latchkey_bluez_standin::phone::Phone::new(
        phone.device_id,
        b"not the secret, just as long".to_vec(),
    )
    .unwrap();
    let evil = d.connect("dd:00:00:00:00:66").await;
    for i in 0..20 {
        let (a, r) = forge(&evil, &stranger, d.now()).await;
        assert_eq!(r[5..21], a.nonce, "frame {i}: the frame's own nonce");
        if i < 5 {
            // Signed under A's key (the gateway has it), but counted against the peer.
            assert_eq!(status_of(&r), Status::BadTag, "frame {i}");
            assert!(!unsigned(&r));
        } else {
            assert_eq!(status_of(&r), Status::LockedOut, "frame {i}");
            assert!(unsigned(&r), "a peer lockout is never signed");
            assert_eq!(u16::from_be_bytes([r[3], r[4]]), 60);
        }
    }
    let (_, data) = d.access_events().await.pop().unwrap();
    assert_eq!(data["lockout"], "peer");
    assert_eq!(data["authenticated"], false);

    // A locked peer's frame answering no challenge of its own: the answer still carries the
    // frame's nonce, so the sender can tell it is the answer to its attempt.
    let frame = stranger.frame(&[0x5a; 16], 0, d.now(), "front").unwrap();
    let r = write_and_wait(&evil, &frame).await;
    assert_eq!(status_of(&r), Status::LockedOut);
    assert_eq!(r[5..21], [0x5a; 16]);

    // A is not locked out: from its own connection ...
    let own = d.connect("dd:00:00:00:00:01").await;
    let (a, r) = unlock(&own, &mut phone, d.now(), "front").await;
    let v = phone.verify(&r, &a).unwrap();
    assert_eq!(v.result.status, Status::Granted);
    // ... nor from the locked address itself (addresses can be spoofed; a key cannot).
    let (a, r) = unlock(&evil, &mut phone, d.now(), "front").await;
    assert_eq!(phone.verify(&r, &a).unwrap().result.status, Status::Granted);
    let granted = d
        .access_events()
        .await
        .into_iter()
        .filter(|(t, e)| t == "access.granted" && e["deviceId"] == answer["deviceId"])
        .count();
    assert_eq!(granted, 2);
}

#[tokio::test]
async fn a_grant_resets_the_peers_count() {
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("phone").await;
    // The same phone also holds credentials for a gateway this one does not know.
    let stale =
        latchkey_bluez_standin::phone::Phone::new([0x33; 16], b"01234567890123456789".to_vec())
            .unwrap();
    let link = d.connect("ee:00:00:00:00:01").await;
    for _ in 0..4 {
        let (_, r) = forge(&link, &stale, d.now()).await;
        assert_eq!(status_of(&r), Status::UnknownDevice);
    }
    let (_, r) = unlock(&link, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    // Counted from zero again: four more, and a fifth that locks.
    for i in 0..5 {
        let (_, r) = forge(&link, &stale, d.now()).await;
        assert_eq!(status_of(&r), Status::UnknownDevice, "after the grant, {i}");
    }
    let (_, r) = forge(&link, &stale, d.now()).await;
    assert_eq!(status_of(&r), Status::LockedOut);
}

#[tokio::test]
async fn frames_proving_nothing_have_a_gateway_wide_budget() {
    use latchkey::access::lockout::{BUDGET_BURST, BUDGET_INTERVAL_SECS};
    let d = Door::start(vec![endpoint("front", None)]).await;
    let (mut phone, _) = d.pair("phone").await;
    let junk = [1u8, 2, 0xde, 0xad];
    // An attacker rotating addresses: four frames per address, never a peer lockout.
    let mut sent = 0;
    let mut n = 0u32;
    while sent < BUDGET_BURST {
        n += 1;
        let link = d
            .connect(&format!("f0:00:00:00:{:02X}:{:02X}", n >> 8, n & 0xff))
            .await;
        for _ in 0..4.min(BUDGET_BURST - sent) {
            let r = write_and_wait(&link, &junk).await;
            assert_eq!(status_of(&r), Status::Malformed, "frame {sent}");
            sent += 1;
        }
    }
    let before = d.access_events().await.len();
    // Spent: whatever proves no key is shed, for everybody, unsigned, with one event.
    let fresh = d.connect("f1:00:00:00:00:01").await;
    for _ in 0..3 {
        let r = write_and_wait(&fresh, &junk).await;
        assert_eq!(status_of(&r), Status::LockedOut);
        assert!(unsigned(&r));
        assert_eq!(
            u16::from_be_bytes([r[3], r[4]]),
            u16::try_from(BUDGET_INTERVAL_SECS).unwrap()
        );
    }
    let events = d.access_events().await;
    assert_eq!(
        events.len(),
        before + 1,
        "one event for the run of shed frames"
    );
    assert_eq!(events[before].1["lockout"], "gateway");
    // A phone proving its key is not affected.
    let (_, r) = unlock(&fresh, &mut phone, d.now(), "front").await;
    assert_eq!(status_of(&r), Status::Granted);
    // One frame's worth refills in one interval.
    d.gw.clock.advance(BUDGET_INTERVAL_SECS);
    let r = write_and_wait(&fresh, &junk).await;
    assert_eq!(status_of(&r), Status::Malformed);
    let r = write_and_wait(&fresh, &junk).await;
    assert_eq!(status_of(&r), Status::LockedOut);
}

#[tokio::test]
async fn results_reach_every_subscriber_whatever_bluetoothd_calls() {
    // bluetoothd today calls StartNotify for every peer that subscribes; older versions for
    // the first only. StopNotify comes when the last one leaves, either way.
    for per_peer in [true, false] {
        let d = Door::start(vec![endpoint("front", None)]).await;
        d.adapter.set_start_notify_per_peer(per_peer);
        let (mut a, _) = d.pair("a").await;
        let (mut b, _) = d.pair("b").await;
        let la = d.connect("ab:00:00:00:00:01").await;
        let lb = d.connect("ab:00:00:00:00:02").await;
        let starts = if per_peer { 2 } else { 1 };
        assert_eq!(
            d.adapter.notify_calls(),
            (starts, 0),
            "per peer: {per_peer}"
        );
        for (link, phone) in [(&la, &mut a), (&lb, &mut b)] {
            let (at, r) = unlock(link, phone, d.now(), "front").await;
            assert_eq!(
                phone.verify(&r, &at).unwrap().result.status,
                Status::Granted
            );
        }
        // The first subscriber leaves; the other still hears its answer.
        la.disconnect().await.unwrap();
        assert_eq!(d.adapter.notify_calls(), (starts, 0));
        d.gw.clock.advance(30);
        let (at, r) = unlock(&lb, &mut b, d.now(), "front").await;
        assert_eq!(b.verify(&r, &at).unwrap().result.status, Status::Granted);
        // The last one leaves (StopNotify); a newcomer subscribes again and is answered.
        lb.unsubscribe(&result()).await.unwrap();
        assert_eq!(d.adapter.notify_calls(), (starts, 1));
        let lc = d.connect("ab:00:00:00:00:03").await;
        assert_eq!(d.adapter.notify_calls(), (starts + 1, 1));
        let (at, r) = unlock(&lc, &mut a, d.now(), "front").await;
        assert_eq!(a.verify(&r, &at).unwrap().result.status, Status::Granted);
    }
}
