#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End to end, with real processes on loopback: an admin token → `latchkey phone add-node` →
//! the real `latchkey-node`'s AP API (stand-in Wi-Fi) → the node registers at the gateway →
//! online. The first attempt has the wrong Wi-Fi password: the command says so and how to run
//! again, and the second run, for the same node id, succeeds without a factory reset.

mod common;
#[path = "support/phone.rs"]
mod phone;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use common::{node_binary, Gateway};
use latchkey::clock::SystemClock;
use phone::{latchkey, run, HANG};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `latchkey-node` unprovisioned with the stand-in Wi-Fi; returns it and its AP URL.
async fn start_node(dir: &Path) -> (tokio::process::Child, String) {
    let wifi = dir.join("wifi.json");
    std::fs::write(
        &wifi,
        r#"[{"ssid":"HomeWifi","password":"right-pass-1","rssi":-40},{"ssid":"Cafe","rssi":-70}]"#,
    )
    .unwrap();
    let binary = tokio::task::spawn_blocking(node_binary).await.unwrap();
    let mut child = tokio::process::Command::new(binary)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--ap-listen", "127.0.0.1:0", "--wifi-sim"])
        .arg(&wifi)
        .arg("--relay-sim")
        .arg(dir.join("relay.log"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn latchkey-node");
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
    (child, ap)
}

fn add_node(
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

async fn admin_get(gw: &Gateway, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(gw.url(path))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_provisions_a_linux_node_that_comes_online() {
    // The phone checks expiry against its own clock: the gateway runs on the same one.
    let gw = Gateway::start_with(|c| c.clock = Arc::new(SystemClock)).await;
    let dir = tempfile::tempdir().unwrap();
    let (_node, ap) = start_node(dir.path()).await;

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-pass-1\n").unwrap();
    let out = run(add_node(&gw, &ap, &wrong, None)).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let reason = out.reason();
    assert!(
        reason.starts_with(
            "latchkey: WIFI_FAILED: the node could not join \"HomeWifi\": WIFI_WRONG_PASSWORD"
        ),
        "{}",
        out.all()
    );
    assert!(!out.all().contains("wrong-pass-1") && !out.all().contains(&gw.admin_token));
    let node_id = reason
        .split("--node-id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the message names the node id to continue with")
        .to_owned();

    let right = dir.path().join("right");
    std::fs::write(&right, "right-pass-1\n").unwrap();
    let out = run(add_node(&gw, &ap, &right, Some(&node_id))).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(out.stdout.trim(), node_id, "the node id alone on stdout");
    assert!(out.stderr.contains("is online"), "{}", out.stderr);
    assert!(!out.all().contains("right-pass-1") && !out.all().contains("prov_"));

    // The gateway agrees: registered, online, with what the phone sent.
    let v = admin_get(&gw, &format!("/api/v0/nodes/{node_id}")).await;
    assert_eq!(v["state"], "registered", "{v}");
    assert_eq!(v["online"], true, "{v}");
    assert_eq!(v["room"], "Hall", "{v}");
    assert_eq!(v["name"], "Front door", "{v}");
    assert_eq!(v["kind"], "door", "{v}");
    let all = admin_get(&gw, "/api/nodes").await;
    assert_eq!(
        all["nodes"].as_array().unwrap().len(),
        1,
        "one node, not one per attempt: {all}"
    );
}
