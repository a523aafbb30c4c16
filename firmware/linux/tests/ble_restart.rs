#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Living with BlueZ: the radio starts without error when there is no bluetoothd and no
//! adapter, comes up when they appear, and registers again after bluetoothd restarts (live
//! connections end with it). One test in its own process, because it owns the bus's
//! `org.bluez` and makes it come and go.

mod ble_support;

use latchkey_bluez_standin::Standin;
use latchkey_node::ble::{BleConfig, BleState, BluezRadio};
use latchkey_node_core::board::{DoorEvent, DoorRadio};
use latchkey_proto::v2::CHALLENGE_UUID;

use ble_support::{serve, uuid, CHALLENGE, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_without_bluez_then_up_and_up_again_after_a_restart() {
    let bus = latchkey_bluez_standin::private_bus().unwrap();

    // No bluetoothd on the bus: starting is no error, the door is just off.
    let mut radio = BluezRadio::new(BleConfig::new(None, "n"));
    let mut state = radio.state();
    radio.start([1, 2, 3, 4, 5], false).await.unwrap();
    let off = tokio::time::timeout(WAIT, state.wait_for(|s| matches!(s, BleState::Off(_))))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(
        matches!(&off, BleState::Off(r) if r.contains("listing adapters")),
        "{off:?}"
    );

    // bluetoothd comes, still without an adapter; then one is plugged in.
    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    hci0.wait_application(0, WAIT).await.unwrap();
    let adv = hci0.wait_advertisement(0, WAIT).await.unwrap();
    assert_eq!(
        adv.manufacturer_data.get(&0xFFFF),
        Some(&vec![2, 1, 2, 3, 4, 5])
    );

    let mut door = serve(radio);
    let link = hci0.connect("10:00:00:00:00:01", 185).await.unwrap();
    assert_eq!(
        link.read(&uuid(CHALLENGE_UUID), 0).await.unwrap(),
        CHALLENGE
    );
    let conn = match door.event().await {
        DoorEvent::ReadChallenge { conn } => conn,
        e => panic!("{e:?}"),
    };

    // bluetoothd restarts: everything it held is gone, the connection with it.
    bluez.stop().await.unwrap();
    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    hci0.wait_application(0, WAIT).await.unwrap();
    hci0.wait_advertisement(0, WAIT).await.unwrap();
    assert_eq!(door.event().await, DoorEvent::Disconnected { conn });
    let up = BleState::Up("hci0".into());
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == up))
        .await
        .unwrap()
        .unwrap();

    // The new registration serves.
    let link = hci0.connect("10:00:00:00:00:01", 185).await.unwrap();
    assert_eq!(
        link.read(&uuid(CHALLENGE_UUID), 0).await.unwrap(),
        CHALLENGE
    );
    assert!(matches!(
        door.event().await,
        DoorEvent::ReadChallenge { .. }
    ));
}
