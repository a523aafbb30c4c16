#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! End to end, with real processes on loopback: an admin token → `latchkey phone add-node` →
//! the real `latchkey-node`'s AP API (stand-in Wi-Fi) → the node registers at the gateway →
//! online. The first attempt has the wrong Wi-Fi password: the command says so and how to run
//! again, and the second run, for the same node id, succeeds without a factory reset. Then the
//! whole chain of issue 9: a phone opens that node's door over the gateway's BLE service (the
//! BlueZ stand-in's simulated radio), the real node's relay pulses, and the audit log has both
//! the grant and the node's command outcome.

mod common;
#[path = "support/door.rs"]
mod door;
#[path = "support/linux_node.rs"]
mod linux_node;
#[path = "support/phone.rs"]
mod phone;

use std::sync::Arc;

use common::{relay_pulse, Gateway};
use door::{unlock, Door};
use latchkey::clock::{Clock, SystemClock};
use latchkey_proto::Status;
use linux_node::add_node_command;
use phone::run;
use serde_json::Value;

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
    let node = linux_node::start(dir.path(), None).await;
    let ap = &node.ap;

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "wrong-pass-1\n").unwrap();
    let out = run(add_node_command(&gw, ap, &wrong, None)).await;
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
    let out = run(add_node_command(&gw, ap, &right, Some(&node_id))).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(out.stdout.trim(), node_id, "the node id alone on stdout");
    assert!(out.stderr.contains("is online"), "{}", out.stderr);
    assert!(!out.all().contains("right-pass-1") && !out.all().contains("prov_"));

    // The gateway agrees: registered, online, with what the phone sent.
    let v = linux_node::status(&gw, &node_id).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_opens_the_door_of_a_node_added_by_add_node_over_ble() {
    // BLE on an adapter of the stand-in; no [[endpoint]], so the node's door is the only one.
    // The system clock: the phone process checks the token's expiry against it.
    let d = Door::start_with(vec![], |c| c.clock = Arc::new(SystemClock)).await;
    let dir = tempfile::tempdir().unwrap();
    let node = linux_node::start(dir.path(), None).await;
    let ap = &node.ap;
    let password = dir.path().join("password");
    std::fs::write(&password, "right-pass-1\n").unwrap();
    let out = run(add_node_command(&d.gw, ap, &password, None)).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let node_id = out.stdout.trim().to_owned();
    let node = linux_node::status(&d.gw, &node_id).await;
    assert_eq!(node["online"], true, "{node}");
    let endpoint = node["endpoint"]
        .as_str()
        .expect("a door node has an endpoint");
    assert_eq!(endpoint, "front-door", "from its name");

    let (mut phone, paired) = d.pair("phone").await;
    let link = d.connect("99:00:00:00:00:03").await;
    let now = u64::try_from(SystemClock.now()).unwrap();
    let (attempt, result) = unlock(&link, &mut phone, now, endpoint).await;
    let verified = phone.verify(&result, &attempt).unwrap();
    assert_eq!(verified.result.status, Status::Granted);

    // The real node's relay line: on for the endpoint's pulse, then off.
    let on_ms = relay_pulse(&dir.path().join("relay.log")).await;
    assert!(on_ms >= 3_000, "on for {on_ms} ms");

    let access = d.access_events().await;
    assert_eq!(access.len(), 1, "{access:?}");
    let (topic, data) = &access[0];
    assert_eq!(topic, "access.granted");
    assert_eq!(data["endpoint"], endpoint, "{data}");
    assert_eq!(data["deviceId"], paired["deviceId"], "{data}");
    assert_eq!(data["transport"], "ble", "{data}");
    let commands = d.gw.events("node.command").await;
    assert_eq!(commands.len(), 1, "{commands:?}");
    let data = &commands[0].1;
    assert_eq!(data["nodeId"], node_id.as_str(), "{data}");
    assert_eq!(data["endpoint"], endpoint, "{data}");
    assert_eq!(data["command"], "unlock", "{data}");
    assert_eq!(data["ok"], true, "{data}");
}
