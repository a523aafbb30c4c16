//! systemd integration: the unit file passes `systemd-analyze verify`, the example config is
//! valid, and the daemon speaks sd_notify (READY=1, WATCHDOG=1, STOPPING=1).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/daemon.rs"]
mod daemon;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemon::{command, Daemon};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo("systemd/latchkey.service")).unwrap();
    for directive in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=latchkey",
        "StateDirectory=latchkey",
        "StateDirectoryMode=0700",
        "RuntimeDirectory=latchkey",
        "RuntimeDirectoryMode=0750",
        "LoadCredential=latchkey.key:/etc/latchkey/latchkey.key",
        "Environment=LATCHKEY_CONFIG=/etc/latchkey/latchkey.toml",
        "ExecStart=/usr/local/bin/latchkey serve",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "MemoryDenyWriteExecute=yes",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(
            unit.contains(directive),
            "latchkey.service lacks {directive:?}"
        );
    }

    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is not installed: `apt-get install systemd` (.ci/run does)");
    };
    assert!(out.status.success());
    // Verify a copy whose ExecStart names the binary just built, so the check does not depend
    // on /usr/local/bin/latchkey existing on this machine.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("latchkey.service");
    let unit = unit.replace(
        "ExecStart=/usr/local/bin/latchkey ",
        &format!("ExecStart={} ", daemon::bin()),
    );
    std::fs::write(&copy, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("latchkey.service"))
        .collect();
    assert!(complaints.is_empty(), "{text}");
}

#[test]
fn the_example_config_is_valid() {
    let data = tempfile::tempdir().unwrap();
    let conf = repo("systemd/latchkey.toml");
    let out = command(
        data.path(),
        &[
            "--config",
            conf.to_str().unwrap(),
            "--data-dir",
            data.path().join("d").to_str().unwrap(),
            "devices",
            "list",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next datagram on the notify socket.
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_daemon_notifies_ready_and_pings_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(daemon::START_TIMEOUT)).unwrap();

    let mut c = command(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--ble", "off"],
    );
    c.arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000");
    let d = Daemon::start(c);

    let first = next(&sock);
    assert!(
        first.lines().any(|l| l == "READY=1"),
        "first message: {first:?}"
    );
    // Ready means serving.
    let r = reqwest::get(d.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    // Then watchdog pings (every 100 ms here), each after a database round trip.
    for _ in 0..3 {
        let m = next(&sock);
        assert!(m.lines().any(|l| l == "WATCHDOG=1"), "{m:?}");
    }

    let (status, _) = d.terminate(Duration::from_secs(5));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    // The process is gone, so everything it sent is queued: STOPPING=1 is among it.
    sock.set_nonblocking(true).unwrap();
    let mut rest = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        rest.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{rest:?}"
    );
}
