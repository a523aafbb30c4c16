#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End to end on loopback with real processes' code: the real daemon (in-process, as every test
//! here) and the real `latchkey-node` binary. The admin makes a provisioning token, the node is
//! provisioned through its AP API (with a wrong Wi-Fi password first), registers, comes online,
//! the admin opens its door (the stand-in relay pulses), and a revocation cuts it off for good.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::{node_binary, poll, relay_pulse, Gateway};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn admin_token_to_provisioned_node_to_open_door_to_revoked() {
    let binary = tokio::task::spawn_blocking(node_binary).await.unwrap();
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();

    let t: Value = http
        .post(gw.url("/api/v0/provisioning/token"))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"name": "Front door", "room": "hall", "household_id": "home"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node_id = t["node_id"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let wifi = dir.path().join("wifi.json");
    std::fs::write(&wifi, r#"[{"ssid":"HomeWifi","password":"right-pass"}]"#).unwrap();
    let relay = dir.path().join("relay.log");
    let mut child = tokio::process::Command::new(&binary)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--ap-listen", "127.0.0.1:0", "--wifi-sim"])
        .arg(&wifi)
        .arg("--relay-sim")
        .arg(&relay)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // No test browses mDNS on the host's network.
        .env("LATCHKEY_MDNS", "off")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push_str(&(l + "\n"));
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ap = poll("the node's AP API address", async || {
        let line = out.next_line().await.unwrap()?;
        line.strip_prefix("ap_api=").map(str::to_owned)
    })
    .await;

    let provision = async |password: &str| {
        http.post(format!("{ap}/api/v1/provision"))
            .json(&json!({
                "wifi_ssid": "HomeWifi", "wifi_password": password, "room": "hall",
                "command_center_url": gw.base, "household_id": "home",
                "node_id": node_id, "provisioning_token": t["token"],
            }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let info = async || -> Option<Value> {
        http.get(format!("{ap}/api/v1/info"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    };
    assert_eq!(provision("wrong-pass").await, 202);
    let failed = poll("wifi_failed", async || {
        info().await.filter(|v| v["state"] == "wifi_failed")
    })
    .await;
    assert_eq!(failed["error"]["code"], "WIFI_WRONG_PASSWORD");
    assert_eq!(provision("right-pass").await, 202);

    // What a provisioning app polls after switching back to home Wi-Fi.
    let node = poll("the node online at the gateway", async || {
        let v: Value = http
            .get(gw.url(&format!("/api/v0/nodes/{node_id}")))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["online"] == true).then_some(v)
    })
    .await;
    assert_eq!(node["kind"], "door");
    assert_eq!(node["firmware"], "0.1.0");
    assert_eq!(node["state"], "registered");
    let endpoint = node["endpoint"].as_str().unwrap().to_owned();

    // The admin opens the node's door: the gateway's unlock reaches the node's relay.
    let r = http
        .post(gw.url(&format!("/api/endpoints/{endpoint}/open")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "GRANTED");
    assert!(relay_pulse(&relay).await >= 3_000);

    // Revoked: the session closes with 4403 and the node stops for good.
    let r = http
        .post(gw.url(&format!("/api/nodes/{node_id}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    poll("the node revoked", async || {
        log.lock().unwrap().contains("→ revoked").then_some(())
    })
    .await;
    let log = log.lock().unwrap().clone();
    for secret in ["right-pass", "wrong-pass", t["token"].as_str().unwrap()] {
        assert!(!log.contains(secret), "a secret in the node's log");
    }
}
