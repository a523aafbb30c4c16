//! `latchkey serve --ble auto|on` as a process, against a system bus without BlueZ, a BlueZ
//! without an adapter, and no bus at all (CONTRACT §1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use latchkey_bluez_standin::{PrivateBus, Standin};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(ble: &str, bus: &str, dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([
            "serve",
            "--ble",
            ble,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data-dir")
        // A subdirectory: latchkey makes it 0700 (it refuses a data dir others can open).
        .arg(dir.join("data"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
        .env("LATCHKEY_LOG", "info")
        // No test multicasts on the host's network.
        .env("LATCHKEY_MDNS", "off")
        .env_remove("LATCHKEY_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the process to exit; returns its status and stderr.
fn exited(mut child: Child) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("latchkey did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn healthy(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            return r.status() == 200;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn terminate(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// `--ble on` without what it needs: exit 1 with a one-line reason as the last line.
fn fails_with(bus: &str, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = exited(serve("on", bus, dir.path(), free_port()));
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("latchkey: BLE was required (--ble on) but is not available: "),
        "{err}"
    );
    assert!(last.contains(want), "{last}");
}

#[test]
fn ble_on_fails_fast_without_a_bus_or_bluez() {
    fails_with("unix:path=/nonexistent/latchkey-test-bus", "system D-Bus");
    let bus = PrivateBus::start().unwrap();
    fails_with(&bus.address, "org.bluez is not on the system D-Bus");
}

#[tokio::test]
async fn ble_on_fails_without_an_adapter_and_auto_waits_for_one() {
    let bus = PrivateBus::start().unwrap();
    let bluez = Standin::start(&bus.address).await.unwrap();
    let address = bus.address.clone();
    tokio::task::spawn_blocking(move || fails_with(&address, "no Bluetooth adapter"))
        .await
        .unwrap();

    // auto: runs without the adapter, and registers once it appears.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = serve("auto", &bus.address, dir.path(), port);
    assert!(healthy(port).await);
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    let app = hci0
        .wait_application(0, Duration::from_secs(10))
        .await
        .expect("auto mode registers when an adapter appears");
    assert_eq!(app.services.len(), 2, "door service v1 and v2");
    terminate(&child);
    let (code, err) = tokio::task::spawn_blocking(move || exited(child))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("BLE is off for now: BlueZ has no Bluetooth adapter"),
        "{err}"
    );
}

#[tokio::test]
async fn ble_auto_without_bluez_runs_and_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = serve(
        "auto",
        "unix:path=/nonexistent/latchkey-test-bus",
        dir.path(),
        port,
    );
    assert!(healthy(port).await);
    terminate(&child);
    let (code, err) = tokio::task::spawn_blocking(move || exited(child))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("BLE is off").count(), 1, "{err}");
    assert!(err.contains("system D-Bus"), "{err}");
}
