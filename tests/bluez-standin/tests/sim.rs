#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `bluez-sim` as a process: it starts a private bus, owns `org.bluez` there with its
//! adapters, and exports the `org.latchkey.Sim1` controls; like bluetoothd it ends the
//! discovery session of a client that leaves the bus.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

async fn status(conn: &zbus::Connection, adapter: &str) -> HashMap<String, OwnedValue> {
    conn.call_method(
        Some("org.bluez"),
        "/org/latchkey/sim",
        Some("org.latchkey.Sim1"),
        "Status",
        &(adapter,),
    )
    .await
    .unwrap()
    .body()
    .deserialize()
    .unwrap()
}

fn get<T: TryFrom<OwnedValue>>(s: &HashMap<String, OwnedValue>, k: &str) -> T {
    T::try_from(s[k].try_clone().unwrap())
        .ok()
        .unwrap_or_else(|| panic!("{k}"))
}

async fn adapter_call(conn: &zbus::Connection, method: &str) -> zbus::Result<zbus::Message> {
    conn.call_method(
        Some("org.bluez"),
        "/org/bluez/hci1",
        Some("org.bluez.Adapter1"),
        method,
        &(),
    )
    .await
}

#[tokio::test]
async fn runs_as_a_process_with_its_controls_on_the_bus() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bluez-sim"))
        .args(["--adapter", "hci0", "--adapter", "hci1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut address = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    let address = address.trim().to_owned();
    assert!(address.starts_with("unix:"), "{address:?}");

    let conn = zbus::connection::Builder::address(address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let objects = zbus::fdo::ObjectManagerProxy::builder(&conn)
        .destination("org.bluez")
        .unwrap()
        .path("/")
        .unwrap()
        .build()
        .await
        .unwrap()
        .get_managed_objects()
        .await
        .unwrap();
    for hci in ["/org/bluez/hci0", "/org/bluez/hci1"] {
        let ifaces = objects
            .iter()
            .find(|(p, _)| p.as_str() == hci)
            .map(|(_, i)| i)
            .unwrap_or_else(|| panic!("{hci} missing"));
        let adapter = ifaces
            .iter()
            .find(|(n, _)| n.as_str() == "org.bluez.Adapter1")
            .map(|(_, props)| props)
            .unwrap();
        let powered = adapter
            .iter()
            .find(|(k, _)| *k == "Powered")
            .map(|(_, v)| bool::try_from(v.try_clone().unwrap()).unwrap());
        assert_eq!(powered, Some(true), "{hci}");
    }
    assert!(!get::<bool>(&status(&conn, "hci1").await, "discovering"));

    // A client starts discovering and leaves the bus without stopping.
    let client = zbus::connection::Builder::address(address.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    adapter_call(&client, "StartDiscovery").await.unwrap();
    let again = adapter_call(&client, "StartDiscovery").await.unwrap_err();
    assert!(
        matches!(&again, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.bluez.Error.InProgress"),
        "{again:?}"
    );
    let s = status(&conn, "hci1").await;
    assert!(get::<bool>(&s, "discovering"));
    client.close().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let s = loop {
        let s = status(&conn, "hci1").await;
        if !get::<bool>(&s, "discovering") || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!get::<bool>(&s, "discovering"), "bluetoothd ends it");
    assert_eq!(get::<u32>(&s, "abandoned_sessions"), 1);
    assert_eq!(get::<u32>(&s, "connections"), 0);

    // The controls check what they are told.
    let bad = conn
        .call_method(
            Some("org.bluez"),
            "/org/latchkey/sim",
            Some("org.latchkey.Sim1"),
            "Withhold",
            &("hci0", "everything", true),
        )
        .await
        .unwrap_err();
    assert!(format!("{bad:?}").contains("InvalidArgs"), "{bad:?}");
    conn.call_method(
        Some("org.bluez"),
        "/org/latchkey/sim",
        Some("org.latchkey.Sim1"),
        "Withhold",
        &("hci0", "connection", true),
    )
    .await
    .unwrap();

    // SIGTERM: a clean exit.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGTERM);
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
