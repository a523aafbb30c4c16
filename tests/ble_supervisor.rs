//! Living with BlueZ: the daemon registers again by itself when bluetoothd restarts or the
//! adapter disappears and comes back, and reads NTP state from timedated. One test in its own
//! process, because it owns the bus's `org.bluez` and makes it come and go.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/door.rs"]
mod door;

use std::time::Duration;

use latchkey::clock::Clock;
use latchkey::config::BleMode;
use latchkey_bluez_standin::{Adapter, Standin};
use latchkey_proto::Status;

use door::*;

/// A stand-in for systemd-timedated that says the clock is not synchronized.
struct Timedate;

#[zbus::interface(name = "org.freedesktop.timedate1")]
impl Timedate {
    #[zbus(property, name = "NTPSynchronized")]
    fn ntp_synchronized(&self) -> bool {
        false
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "timed out waiting until {what}");
}

/// A phone opens the door through `adapter`.
async fn opens(
    gw: &common::Gateway,
    adapter: &Adapter,
    phone: &mut latchkey_bluez_standin::phone::Phone,
    addr: &str,
) {
    let link = adapter.connect(addr, 185).await.unwrap();
    link.subscribe(&result()).await.unwrap();
    gw.clock.advance(30);
    let now = u64::try_from(gw.clock.now()).unwrap();
    let (_, r) = unlock(&link, phone, now, "front").await;
    assert_eq!(status_of(&r), Status::Granted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_after_bluetoothd_restarts_and_the_adapter_returns() {
    let bus = latchkey_bluez_standin::private_bus().unwrap();
    let _timedate = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .serve_at("/org/freedesktop/timedate1", Timedate)
        .unwrap()
        .name("org.freedesktop.timedate1")
        .unwrap()
        .build()
        .await
        .unwrap();

    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    let gw = common::Gateway::start_with(|c| {
        c.ble = BleMode::On; // no adapter named: hci0 is the default
        c.endpoints = vec![endpoint("front", None)];
    })
    .await;
    hci0.wait_application(0, WAIT).await.unwrap();
    let http = reqwest::Client::new();
    let mut phone = phone_from(&gw.pair(&http, "phone").await);
    opens(&gw, &hci0, &mut phone, "10:00:00:00:00:01").await;
    assert_eq!(
        gw.state
            .ble
            .registrations
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let ntp_unsynced =
        || gw.state.clock_trust.assess(gw.clock.now()).ntp == latchkey::clocktrust::NtpSync::No;
    until("timedated's NTPSynchronized=false is read", ntp_unsynced).await;

    // bluetoothd exits ...
    bluez.stop().await.unwrap();
    until("the daemon notices", || !gw.state.ble.is_up()).await;
    // ... and starts again, exporting its adapter a moment later.
    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    hci0.wait_application(0, WAIT).await.unwrap();
    hci0.wait_advertisement(0, WAIT).await.unwrap();
    until("it is up again", || gw.state.ble.is_up()).await;
    opens(&gw, &hci0, &mut phone, "10:00:00:00:00:02").await;

    // The adapter is unplugged and plugged back in.
    bluez.remove_adapter("hci0").await.unwrap();
    until("the daemon notices the adapter went", || {
        !gw.state.ble.is_up()
    })
    .await;
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    hci0.wait_application(0, WAIT).await.unwrap();
    until("it is up again", || gw.state.ble.is_up()).await;
    opens(&gw, &hci0, &mut phone, "10:00:00:00:00:03").await;

    // With no adapter configured, losing hci0 while hci1 is present moves the service there.
    let hci1 = bluez.add_adapter("hci1").await.unwrap();
    bluez.remove_adapter("hci0").await.unwrap();
    hci1.wait_application(0, WAIT).await.unwrap();
    until("it is up on hci1", || {
        gw.state.ble.get()
            == latchkey::ble::BleState::Up {
                adapter: "hci1".into(),
            }
    })
    .await;
    opens(&gw, &hci1, &mut phone, "10:00:00:00:00:04").await;

    let m = reqwest::Client::new()
        .get(gw.url("/metrics"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "latchkey_ble_registrations_total"), Some(4.0));
    assert_eq!(metric(&m, "latchkey_ble_up"), Some(1.0));
    assert_eq!(metric(&m, "latchkey_clock_ntp_synchronized"), Some(0.0));
    gw.stop().await;
}
