#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 10 end to end, every part a real process or the real daemon: the gateway (BLE on an
//! adapter of the BlueZ stand-in), the real `latchkey-node` (its door service v2 through bluer on
//! another adapter, its relay a file) and `latchkey phone` on a third, all three in radio range.
//!
//! The phone registers its key at the gateway; the node receives the signed grants; then, with
//! the gateway **stopped**, the phone opens the node's door and the node decides alone. The node
//! restarts without the gateway and still holds the grant (its sealed `CLOCK_UNKNOWN` answer
//! proves it: only a phone whose grant matched gets a sealed result). When the gateway comes back,
//! both offline decisions reach its audit log exactly once. A revoked device is refused by the
//! online node at once.

mod common;
#[path = "support/door.rs"]
mod door;
#[path = "support/linux_node.rs"]
mod linux_node;
#[path = "support/phone.rs"]
mod phone;

use std::path::Path;
use std::sync::Arc;

use common::{poll, Gateway};
use door::Door;
use latchkey::clock::{Clock, SystemClock};
use phone::Out;
use serde_json::Value;

const AREA: &str = "offline-access";

/// `phone unlock --door DOOR` on the phone's adapter.
async fn unlock(r: &linux_node::Radios, creds: &Path, door: &str) -> (Out, Value) {
    phone::on_radio(&r.bus, creds, &r.phone, "unlock", &["--door", door]).await
}

/// The `access.*` events the node decided, oldest first.
async fn node_decisions(gw: &Gateway) -> Vec<(String, Value)> {
    gw.events("access.")
        .await
        .into_iter()
        .filter(|(_, d)| d["door"] == "node")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_opens_with_the_gateway_stopped_and_reports_once_it_returns() {
    // The system clock everywhere: the phone and the node check times against it.
    let d = Door::start_with(vec![], |c| c.clock = Arc::new(SystemClock)).await;
    let r = linux_node::radios(AREA, &d.adapter).await;

    // A door node, added with `phone add-node`, with BLE on its own adapter.
    let dir = tempfile::tempdir().unwrap();
    let ble = linux_node::Ble {
        bus: &r.bus,
        adapter: r.node.name(),
    };
    let mut node = linux_node::start(dir.path(), Some(&ble)).await;
    let node_id = linux_node::add(&d.gw, &node, dir.path()).await;
    let relay = dir.path().join("relay.log");

    // A phone pairs; its first unlock (online, at the gateway's own door) registers its key.
    let (creds, _) = phone::pair(&d.gw, dir.path(), "phone", SystemClock.now()).await;
    let (out, json) = unlock(&r, &creds, "gateway").await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["protocol"], 2, "the gateway speaks version 2: {json}");
    assert_eq!(json["door"]["kind"], "gateway", "{json}");
    linux_node::wait_pulses(&relay, 1).await;
    linux_node::grants_applied(&d.gw, &node_id, 1).await;

    // The gateway stops. The node decides alone.
    let Door { gw, adapter, .. } = d;
    let addr = gw.addr;
    let data = gw.stop().await;
    let (out, json) = unlock(&r, &creds, "node").await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["door"]["kind"], "node", "{json}");
    assert_eq!(json["door"]["id"], node_id.as_str(), "{json}");
    linux_node::wait_pulses(&relay, 2).await;

    // The node restarts, still without the gateway: it keeps its grants but has no wall time.
    node.kill().await.unwrap();
    let _ = node.wait().await;
    let node = linux_node::start(dir.path(), Some(&ble)).await;
    let (out, json) = unlock(&r, &creds, "node").await;
    assert_eq!(json["status"], "CLOCK_UNKNOWN", "{}", out.all());
    assert_eq!(
        json["verified"], true,
        "a sealed answer: the grant survived the restart: {json}"
    );
    linux_node::assert_pulses(&relay, 2);

    // The gateway returns (same data dir, same port): both decisions reach its log, once.
    let gw = Gateway::start_in(data, 0, |c| {
        c.clock = Arc::new(SystemClock);
        c.listen = addr;
        door::ble_on(c, &adapter, vec![]);
    })
    .await;
    let decisions = poll("the offline decisions are recorded", async || {
        let v = node_decisions(&gw).await;
        (v.len() >= 2).then_some(v)
    })
    .await;
    assert_eq!(decisions.len(), 2, "{decisions:?}");
    let (topic, granted) = &decisions[0];
    assert_eq!(topic, "access.granted", "{granted}");
    assert_eq!(granted["offline"], true, "{granted}");
    assert_eq!(granted["nodeId"], node_id.as_str(), "{granted}");
    assert_eq!(granted["protocol"], 2, "{granted}");
    assert_eq!(granted["reason"], "GRANTED", "{granted}");
    assert!(granted["deviceId"].is_string(), "{granted}");
    let (topic, unknown) = &decisions[1];
    assert_eq!(topic, "access.denied", "{unknown}");
    assert_eq!(unknown["reason"], "CLOCK_UNKNOWN", "{unknown}");
    assert_eq!(unknown["offline"], true, "{unknown}");
    assert!(
        granted["seq"].as_u64() < unknown["seq"].as_u64(),
        "{decisions:?}"
    );

    // Exactly once: the node reconnects to a restarted gateway and nothing is recorded twice.
    let data = gw.stop().await;
    let gw = Gateway::start_in(data, 0, |c| {
        c.clock = Arc::new(SystemClock);
        c.listen = addr;
        door::ble_on(c, &adapter, vec![]);
    })
    .await;
    let g = linux_node::grants_applied(&gw, &node_id, 1).await;
    assert!(g["version"].as_u64().is_some(), "{g}");

    // Online, the node decides too, and the decision is recorded as online.
    let (out, json) = unlock(&r, &creds, "node").await;
    assert_eq!(json["status"], "GRANTED", "{}", out.all());
    linux_node::wait_pulses(&relay, 3).await;
    let decisions = poll("the online decision is recorded", async || {
        let v = node_decisions(&gw).await;
        (v.len() >= 3).then_some(v)
    })
    .await;
    assert_eq!(decisions.len(), 3, "no duplicates: {decisions:?}");
    assert_eq!(decisions[2].1["offline"], false, "{decisions:?}");

    // Revocation reaches the online node at once: the very next attempt is refused.
    let device = decisions[0].1["deviceId"].as_str().unwrap().to_owned();
    let revoke = reqwest::Client::new()
        .post(gw.url(&format!("/api/devices/{device}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let revoked_at = std::time::Instant::now();
    linux_node::grants_applied(&gw, &node_id, 0).await;
    println!(
        "the node applied the snapshot without the revoked tool {} ms after the revoke answered",
        revoked_at.elapsed().as_millis()
    );
    let (out, json) = unlock(&r, &creds, "node").await;
    assert_eq!(json["status"], "UNKNOWN_TOOL", "{}", out.all());
    linux_node::assert_pulses(&relay, 3);
    drop(node);
}
