#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The node's BLE door on the BlueZ stand-in: [`BluezRadio`] registers on one adapter, a phone
//! on another adapter of the simulated radio scans, connects and runs the three ATT operations
//! of an unlock. A tiny loop plays the core: it answers challenge reads with a fixed value and
//! echoes each request as the result notification, so the test sees exactly what the radio
//! passes in and out.

mod ble_support;

use std::collections::HashSet;
use std::time::Duration;

use bluer::gatt::remote::{Characteristic, CharacteristicWriteRequest};
use bluer::gatt::WriteOp;
use bluer::{AdapterEvent, DiscoveryFilter, DiscoveryTransport, Uuid};
use futures_util::StreamExt;
use latchkey_bluez_standin::{Adapter, WriteOptions};
use latchkey_node::ble::{BleConfig, BluezRadio};
use latchkey_node_core::board::{DoorEvent, DoorRadio};
use latchkey_proto::v2::{
    door_tag, pairing, CHALLENGE_UUID, REQUEST_UUID, RESULT_UUID, SERVICE_UUID,
};

use ble_support::{serve, uuid, Door, CHALLENGE, WAIT};

const DOOR_ID: [u8; 16] = [0x3d; 16];

/// A node adapter and a phone adapter in a radio area of their own (tests run in parallel).
async fn field(area: &str) -> (Adapter, Adapter) {
    let shared = latchkey_bluez_standin::shared().unwrap();
    let node = shared.new_adapter().await.unwrap();
    let phone = shared.new_adapter().await.unwrap();
    node.set_area(area);
    phone.set_area(area);
    phone.set_powered(true);
    (node, phone)
}

/// The radio started on `node`, once its application and advertisement are registered.
async fn door_on(node: &Adapter, config: BleConfig) -> BluezRadio {
    radio_on(node, config, false).await
}

/// [`door_on`], with the vehicle pairing service when `pairing`.
async fn radio_on(node: &Adapter, config: BleConfig, pairing: bool) -> BluezRadio {
    let mut radio = BluezRadio::new(config);
    radio.start(door_tag(&DOOR_ID), pairing).await.unwrap();
    node.wait_application(0, WAIT).await.unwrap();
    node.wait_advertisement(0, WAIT).await.unwrap();
    radio
}

struct Chars {
    challenge: Characteristic,
    request: Characteristic,
    result: Characteristic,
}

async fn chars(device: &bluer::Device) -> Chars {
    for s in device.services().await.unwrap() {
        if s.uuid().await.unwrap() != Uuid::from_u128(SERVICE_UUID) {
            continue;
        }
        let (mut challenge, mut request, mut result) = (None, None, None);
        for c in s.characteristics().await.unwrap() {
            match c.uuid().await.unwrap().as_u128() {
                CHALLENGE_UUID => challenge = Some(c),
                REQUEST_UUID => request = Some(c),
                RESULT_UUID => result = Some(c),
                _ => {}
            }
        }
        return Chars {
            challenge: challenge.unwrap(),
            request: request.unwrap(),
            result: result.unwrap(),
        };
    }
    panic!("no door service v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_scans_connects_and_runs_an_unlock_exchange() {
    let (node, phone) = field("unlock").await;
    let radio = door_on(
        &node,
        BleConfig::new(Some(node.name().into()), "Front door"),
    )
    .await;

    // The advertisement as BlueZ got it: §16's node advertisement, 31 bytes, fast interval.
    let adv = node.state.current_adv().unwrap();
    assert_eq!(adv.kind, "peripheral");
    assert_eq!(adv.service_uuids, vec![uuid(SERVICE_UUID)]);
    let mut mfr = vec![0x02];
    mfr.extend_from_slice(&door_tag(&DOOR_ID));
    assert_eq!(adv.manufacturer_data.get(&0xFFFF), Some(&mfr));
    assert_eq!(adv.manufacturer_data.len(), 1);
    assert_eq!(adv.legacy_len(), 31);
    assert_eq!(adv.local_name.as_deref(), Some("Front door"));
    assert_eq!(
        (adv.min_interval_ms, adv.max_interval_ms),
        (Some(100), Some(150))
    );
    // The GATT database: v2 only, with §16's properties.
    let app = node.state.current_app().unwrap();
    let services: Vec<_> = app.services.iter().map(|s| s.uuid.clone()).collect();
    assert_eq!(services, vec![uuid(SERVICE_UUID)]);
    let flags = |u: u128| app.characteristic(&uuid(u)).unwrap().flags.clone();
    assert_eq!(flags(CHALLENGE_UUID), vec!["read", "notify"]);
    assert_eq!(flags(REQUEST_UUID), vec!["write"]);
    assert_eq!(flags(RESULT_UUID), vec!["notify"]);

    let mut door: Door = serve(radio);

    // The phone: a filtered scan finds the door by its UUID and `02 ‖ tag`.
    let session = bluer::Session::new().await.unwrap();
    let adapter = session.adapter(phone.name()).unwrap();
    adapter
        .set_discovery_filter(DiscoveryFilter {
            uuids: HashSet::from([Uuid::from_u128(SERVICE_UUID)]),
            transport: DiscoveryTransport::Le,
            ..Default::default()
        })
        .await
        .unwrap();
    let device = tokio::time::timeout(WAIT, async {
        let mut scan = adapter.discover_devices().await.unwrap();
        while let Some(ev) = scan.next().await {
            let AdapterEvent::DeviceAdded(addr) = ev else {
                continue;
            };
            let d = adapter.device(addr).unwrap();
            let uuids = d.uuids().await.unwrap().unwrap_or_default();
            let data = d.manufacturer_data().await.unwrap().unwrap_or_default();
            if uuids.contains(&Uuid::from_u128(SERVICE_UUID)) && data.get(&0xFFFF) == Some(&mfr) {
                return d;
            }
        }
        panic!("discovery ended");
    })
    .await
    .expect("the phone hears the door");

    device.connect().await.unwrap();
    let c = chars(&device).await;
    let mut results = c.result.notify().await.unwrap().boxed();
    assert_eq!(c.challenge.read().await.unwrap(), CHALLENGE);
    let frame: Vec<u8> = (0..83).collect();
    let with_response = CharacteristicWriteRequest {
        op_type: WriteOp::Request,
        ..Default::default()
    };
    c.request.write_ext(&frame, &with_response).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, results.next()).await.unwrap();
    assert_eq!(
        echoed,
        Some(frame.clone()),
        "the core's notification arrives"
    );

    // The core saw one connection: its read, its request, then its end.
    let conn = match door.event().await {
        DoorEvent::ReadChallenge { conn } => conn,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        door.event().await,
        DoorEvent::Request { conn, value: frame }
    );
    device.disconnect().await.unwrap();
    assert_eq!(door.event().await, DoorEvent::Disconnected { conn });
}

fn refused(e: latchkey_bluez_standin::Error, name: &str) {
    assert_eq!(e.dbus_name(), Some(name), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_writes_that_are_not_one_write_request_and_serves_read_blobs() {
    let (node, _) = field("refusals").await;
    let radio = door_on(&node, BleConfig::new(Some(node.name().into()), "n")).await;
    let mut door = serve(radio);
    // A large MTU, so the stand-in lets the long value through to the door.
    let link = node.connect("10:00:00:00:00:01", 517).await.unwrap();
    let (ch, req) = (uuid(CHALLENGE_UUID), uuid(REQUEST_UUID));

    // A read blob before any challenge: nothing to continue.
    refused(
        link.read(&ch, 10).await.unwrap_err(),
        "org.bluez.Error.InvalidOffset",
    );
    assert_eq!(link.read(&ch, 0).await.unwrap(), CHALLENGE);
    assert_eq!(link.read(&ch, 10).await.unwrap(), CHALLENGE[10..]);
    let conn = match door.event().await {
        DoorEvent::ReadChallenge { conn } => conn,
        other => panic!("{other:?}"),
    };

    let frame = [0x02u8; 83];
    let w = |kind: &'static str, offset: u16, prepare_authorize: bool| WriteOptions {
        offset,
        kind,
        prepare_authorize,
    };
    for (opts, error) in [
        (w("command", 0, false), "NotPermitted"),
        (w("reliable", 0, false), "NotPermitted"),
        (w("request", 0, true), "NotPermitted"),
        (w("request", 5, false), "InvalidOffset"),
    ] {
        let e = link
            .write_with(&req, &frame, opts.clone())
            .await
            .unwrap_err();
        refused(e, &format!("org.bluez.Error.{error}"));
    }
    refused(
        link.write(&req, &[0u8; 513]).await.unwrap_err(),
        "org.bluez.Error.InvalidValueLength",
    );
    // The largest write passes, and it is the first request the core hears of.
    link.write(&req, &[7u8; 512]).await.unwrap();
    assert_eq!(
        door.event().await,
        DoorEvent::Request {
            conn,
            value: vec![7u8; 512]
        }
    );

    // Another peer is another connection; each ends on its own.
    let other = node.connect("10:00:00:00:00:02", 185).await.unwrap();
    other.write(&req, &frame).await.unwrap();
    let second = match door.event().await {
        DoorEvent::Request { conn, .. } => conn,
        e => panic!("{e:?}"),
    };
    assert_ne!(second, conn);
    other.disconnect().await.unwrap();
    assert_eq!(door.event().await, DoorEvent::Disconnected { conn: second });
    link.disconnect().await.unwrap();
    assert_eq!(door.event().await, DoorEvent::Disconnected { conn });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_core_does_not_answer_reads_fail_and_requests_queue_up_to_a_bound() {
    let (node, _) = field("silent").await;
    let mut config = BleConfig::new(Some(node.name().into()), "n");
    config.read_timeout = Duration::from_millis(100);
    // Started, but nobody plays the core yet: no reply_read comes, no event is taken.
    let radio = door_on(&node, config).await;
    let link = node.connect("10:00:00:00:00:03", 185).await.unwrap();
    let e = link.read(&uuid(CHALLENGE_UUID), 0).await.unwrap_err();
    refused(e, "org.bluez.Error.Failed");

    // The unanswered read was withdrawn; 64 requests wait, the next is refused until the core
    // drains them.
    let req = uuid(REQUEST_UUID);
    for i in 0..64u8 {
        link.write(&req, &[i]).await.unwrap();
    }
    refused(
        link.write(&req, &[0xff]).await.unwrap_err(),
        "org.bluez.Error.InProgress",
    );
    let mut door = serve(radio);
    for i in 0..64u8 {
        assert!(matches!(door.event().await, DoorEvent::Request { value, .. } if value == [i]));
    }
    link.write(&req, &[0xfe]).await.unwrap();
    assert!(matches!(door.event().await, DoorEvent::Request { value, .. } if value == [0xfe]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_serves_the_pairing_service_and_answers_each_write_with_the_cores_verdict() {
    // A door: no pairing service.
    let (door_node, _) = field("pairing-door").await;
    let _door = door_on(
        &door_node,
        BleConfig::new(Some(door_node.name().into()), "n"),
    )
    .await;
    let app = door_node.wait_application(0, WAIT).await.unwrap();
    assert_eq!(app.services.len(), 1);
    assert!(app.characteristic(&uuid(pairing::CHALLENGE_UUID)).is_none());

    let (node, _) = field("pairing").await;
    let mut config = BleConfig::new(Some(node.name().into()), "n");
    config.write_timeout = Duration::from_millis(200);
    let radio = radio_on(&node, config, true).await;
    let app = node.wait_application(0, WAIT).await.unwrap();
    let services: HashSet<_> = app.services.iter().map(|s| s.uuid.clone()).collect();
    assert!(
        services.contains(&uuid(SERVICE_UUID)) && services.contains(&uuid(pairing::SERVICE_UUID))
    );
    let (ch, resp) = (uuid(pairing::CHALLENGE_UUID), uuid(pairing::RESPONSE_UUID));
    let response = app.characteristic(&resp).unwrap();
    assert_eq!(response.flags, vec!["write".to_owned()]);

    // The core silent: the write fails once the wait is over, and is withdrawn. (A response
    // is 151 bytes: it fits the Write Request at the MTU 185 phones ask for.)
    let link = node.connect("10:00:00:00:00:04", 185).await.unwrap();
    refused(
        link.write(&resp, &[1u8; pairing::RESPONSE_LEN])
            .await
            .unwrap_err(),
        "org.bluez.Error.Failed",
    );
    let mut door = serve(radio);
    assert_eq!(link.read(&ch, 0).await.unwrap(), CHALLENGE);
    assert_eq!(link.read(&ch, 40).await.unwrap(), CHALLENGE[40..]);
    let conn = match door.event().await {
        DoorEvent::PairingChallenge { conn } => conn,
        other => panic!("{other:?}"),
    };
    // Accepted: the ATT Write Response; refused: an error. Each write reached the core once.
    link.write(&resp, &[1u8; pairing::RESPONSE_LEN])
        .await
        .unwrap();
    refused(
        link.write(&resp, &[0u8; pairing::RESPONSE_LEN])
            .await
            .unwrap_err(),
        "org.bluez.Error.Failed",
    );
    for first in [1u8, 0] {
        assert_eq!(
            door.event().await,
            DoorEvent::PairingResponse {
                conn,
                value: vec![first; pairing::RESPONSE_LEN]
            }
        );
    }
    refused(
        link.write_with(
            &resp,
            &[1u8; pairing::RESPONSE_LEN],
            WriteOptions {
                offset: 0,
                kind: "command",
                prepare_authorize: false,
            },
        )
        .await
        .unwrap_err(),
        "org.bluez.Error.NotPermitted",
    );
    link.disconnect().await.unwrap();
    assert_eq!(door.event().await, DoorEvent::Disconnected { conn });
}
