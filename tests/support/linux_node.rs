//! The real `latchkey-node` as a child process: the stand-in Wi-Fi, a relay that writes its
//! switching to a file, BLE on an adapter of the BlueZ stand-in or off; and `phone add-node`
//! provisioning it at a gateway.
#![allow(dead_code)]

use std::path::Path;
use std::process::Stdio;

use latchkey_bluez_standin::Adapter;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::common::{node_binary, poll, Gateway};
use super::phone::{latchkey, run, HANG};

/// Where the node's door radio is: the stand-in's bus and one of its adapters.
pub struct Ble<'a> {
    pub bus: &'a str,
    pub adapter: &'a str,
}

/// Two more adapters of the shared stand-in, a node's and a phone's (powered), in radio range
/// of `gateway` (all three in `area`), and the bus their processes use.
pub struct Radios {
    pub bus: String,
    pub node: Adapter,
    pub phone: Adapter,
}

pub async fn radios(area: &str, gateway: &Adapter) -> Radios {
    let shared = latchkey_bluez_standin::shared().expect("private bus and stand-in");
    gateway.set_area(area);
    let node = shared.new_adapter().await.expect("adapter");
    node.set_area(area);
    let phone = shared.new_adapter().await.expect("adapter");
    phone.set_area(area);
    phone.set_powered(true);
    Radios {
        bus: shared.bus.address.clone(),
        node,
        phone,
    }
}

/// Waits until the node is online and has applied the gateway's newest snapshot, of `count`
/// grants; returns its `grants` state.
pub async fn grants_applied(gw: &Gateway, node_id: &str, count: u64) -> Value {
    poll("the node applied its grants", async || {
        let v = status(gw, node_id).await;
        let g = v["grants"].clone();
        (g["applied"] == g["version"] && g["count"] == count && v["online"] == true).then_some(g)
    })
    .await
}

/// A running node and the URL of its setup access point's API.
pub struct Node {
    pub child: tokio::process::Child,
    pub ap: String,
}

impl Node {
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.child.kill().await
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

/// Starts `latchkey-node` on the state in `dir` (unprovisioned the first time), its Wi-Fi the
/// stand-in with `HomeWifi` (password `right-pass-1`), its relay `dir/relay.log`.
pub async fn start(dir: &Path, ble: Option<&Ble<'_>>) -> Node {
    start_with(dir, ble, &[]).await
}

/// [`start`] with more arguments (e.g. `--kind vehicle`).
pub async fn start_with(dir: &Path, ble: Option<&Ble<'_>>, extra: &[&str]) -> Node {
    let wifi = dir.join("wifi.json");
    std::fs::write(
        &wifi,
        r#"[{"ssid":"HomeWifi","password":"right-pass-1","rssi":-40},{"ssid":"Cafe","rssi":-70}]"#,
    )
    .unwrap();
    let binary = tokio::task::spawn_blocking(node_binary).await.unwrap();
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--ap-listen", "127.0.0.1:0", "--wifi-sim"])
        .arg(&wifi)
        .arg("--relay-sim")
        .arg(dir.join("relay.log"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // No test browses mDNS on the host's network.
        .env("LATCHKEY_MDNS", "off")
        .kill_on_drop(true);
    match ble {
        Some(b) => {
            cmd.env("DBUS_SYSTEM_BUS_ADDRESS", b.bus)
                .args(["--ble-adapter", b.adapter]);
        }
        // Never the machine's own bluetoothd.
        None => {
            cmd.env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/latchkey-test",
            );
        }
    }
    let mut child = cmd.spawn().expect("spawn latchkey-node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ap = tokio::time::timeout(HANG, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the node exited");
            if let Some(a) = line.strip_prefix("ap_api=") {
                return a.to_owned();
            }
        }
    })
    .await
    .expect("the node never said where its AP API is");
    // Keep reading so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node { child, ap }
}

/// `latchkey phone add-node` for the node at `ap`, as "Front door" in the "Hall".
pub fn add_node_command(
    gw: &Gateway,
    ap: &str,
    password_file: &Path,
    node_id: Option<&str>,
) -> tokio::process::Command {
    let mut c = latchkey(None);
    c.args(["phone", "add-node", "--gateway", &gw.base, "--node-url", ap])
        .args([
            "--room",
            "Hall",
            "--name",
            "Front door",
            "--ssid",
            "HomeWifi",
        ])
        .arg("--wifi-password-file")
        .arg(password_file)
        .args(["--timeout", "30"])
        .env("LATCHKEY_ADMIN_TOKEN", &gw.admin_token);
    if let Some(id) = node_id {
        c.args(["--node-id", id]);
    }
    c
}

/// Provisions `node` at `gw` with the right Wi-Fi password; returns its node id once online.
pub async fn add(gw: &Gateway, node: &Node, dir: &Path) -> String {
    let password = dir.join("password");
    std::fs::write(&password, "right-pass-1\n").unwrap();
    let out = run(add_node_command(gw, &node.ap, &password, None)).await;
    assert_eq!(out.code, 0, "{}", out.all());
    out.stdout.trim().to_owned()
}

/// The relay file's `(word, ms)` lines.
fn relay_lines(file: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (word, ms) = l.split_once(' ').expect("`on|off <ms>`");
            (word.to_owned(), ms.parse().expect("milliseconds"))
        })
        .collect()
}

/// Waits until the relay has completed `n` pulses (on, then off) in all.
pub async fn wait_pulses(file: &Path, n: usize) {
    poll("the relay pulsed", async || {
        (relay_lines(file).len() >= 2 * n).then_some(())
    })
    .await;
    assert_pulses(file, n);
}

/// The relay has pulsed exactly `n` times, each an `on` then an `off`.
pub fn assert_pulses(file: &Path, n: usize) {
    let lines = relay_lines(file);
    assert_eq!(lines.len(), 2 * n, "{lines:?}");
    for pair in lines.chunks(2) {
        assert!(
            pair[0].0 == "on" && pair[1].0 == "off" && pair[1].1 >= pair[0].1,
            "{lines:?}"
        );
    }
}

/// The gateway's view of a node (`GET /api/v0/nodes/{id}`).
pub async fn status(gw: &Gateway, node_id: &str) -> Value {
    let r = reqwest::Client::new()
        .get(gw.url(&format!("/api/v0/nodes/{node_id}")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}
