#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Issue 12 end to end, every part real: the gateway (BLE on an adapter of the BlueZ stand-in),
//! the real `latchkey-node --kind vehicle` (its door and pairing services through bluer on
//! another adapter, its relay a file) and `latchkey phone` on a third.
//!
//! Seed 000's story: the phone pairs with the vehicle (`pair-vehicle --yes`: scanning →
//! … → completed), the key is listed for the phone and the admin, the vehicle opens for it with
//! the gateway **stopped** (the key reached the vehicle in the pairing response over BLE, and
//! in its snapshot), and an admin's revoke stops it opening the vehicle.

mod common;
#[path = "support/door.rs"]
mod door;
#[path = "support/linux_node.rs"]
mod linux_node;
#[path = "support/phone.rs"]
mod phone;

use std::sync::Arc;

use common::{poll, Gateway};
use door::Door;
use latchkey::clock::SystemClock;
use serde_json::Value;

const AREA: &str = "vehicle-e2e";

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str) -> Value {
    let r = reqwest::Client::new()
        .request(method, gw.url(path))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_a_vehicle_and_opens_it_with_the_gateway_stopped() {
    let d = Door::start_with(vec![], |c| c.clock = Arc::new(SystemClock)).await;
    let r = linux_node::radios(AREA, &d.adapter).await;
    let bus = r.bus.clone();

    // The vehicle: a node of kind vehicle, added with `phone add-node`.
    let dir = tempfile::tempdir().unwrap();
    let ble = linux_node::Ble {
        bus: &bus,
        adapter: r.node.name(),
    };
    let car = linux_node::start_with(dir.path(), Some(&ble), &["--kind", "vehicle"]).await;
    let vehicle_id = linux_node::add(&d.gw, &car, dir.path()).await;
    let status = linux_node::status(&d.gw, &vehicle_id).await;
    assert_eq!(status["kind"], "vehicle", "{status}");
    let relay = dir.path().join("relay.log");

    // The phone pairs with the gateway (its key registered), then with the vehicle.
    let t = d.gw.pair_token(&reqwest::Client::new()).await;
    let creds = dir.path().join("phone.json");
    let paired = phone::phone(
        Some(&bus),
        &creds,
        &["pair", "--payload", t["qrPayload"].as_str().unwrap()],
    )
    .await;
    assert_eq!(paired.code, 0, "{}", paired.all());
    let (out, ctx) = phone::on_radio(
        &bus,
        &creds,
        &r.phone,
        "pair-vehicle",
        &[&vehicle_id, "--yes"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(ctx["step"], "completed", "{ctx}");
    assert_eq!(ctx["vehicleId"], vehicle_id.as_str(), "{ctx}");
    assert!(ctx["sessionId"].is_string(), "{ctx}");
    let key_id = ctx["result"]["keyId"].as_str().expect("the key").to_owned();
    assert_eq!(ctx["result"]["endpoint"], "vehicle", "{ctx}");

    // Listed for the admin, and in the vehicle's snapshot.
    let keys = admin(&d.gw, reqwest::Method::GET, "/api/vehicle-keys").await;
    let listed: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["keyId"].as_str())
        .collect();
    assert_eq!(listed, [key_id.as_str()], "{keys}");
    linux_node::grants_applied(&d.gw, &vehicle_id, 1).await;
    let events = d.gw.events("vehicle.pairing").await;
    let states: Vec<&str> = events
        .iter()
        .filter_map(|(_, e)| e["state"].as_str())
        .collect();
    assert_eq!(states, ["started", "completed"], "{events:?}");

    // The gateway stops; the vehicle opens for the key, offline.
    let Door { gw, adapter, .. } = d;
    let addr = gw.addr;
    let data = gw.stop().await;
    let (out, json) = phone::on_radio(
        &bus,
        &creds,
        &r.phone,
        "unlock",
        &["--vehicle", &vehicle_id],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["protocol"], 2, "{json}");
    linux_node::wait_pulses(&relay, 1).await;

    // Back, the admin revokes the key: the vehicle stops opening for it.
    let gw = Gateway::start_in(data, 0, |c| {
        c.clock = Arc::new(SystemClock);
        c.listen = addr;
        door::ble_on(c, &adapter, vec![]);
    })
    .await;
    let granted = poll("the offline decision is recorded", async || {
        let v: Vec<(String, Value)> = gw
            .events("access.")
            .await
            .into_iter()
            .filter(|(_, d)| d["nodeId"] == vehicle_id.as_str())
            .collect();
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert_eq!(granted[0].1["endpoint"], "vehicle", "{granted:?}");
    assert_eq!(granted[0].1["offline"], true, "{granted:?}");
    admin(
        &gw,
        reqwest::Method::POST,
        &format!("/api/vehicle-keys/{key_id}/revoke"),
    )
    .await;
    linux_node::grants_applied(&gw, &vehicle_id, 0).await;
    let (out, json) = phone::on_radio(
        &bus,
        &creds,
        &r.phone,
        "unlock",
        &["--vehicle", &vehicle_id],
    )
    .await;
    assert_eq!(json["status"], "UNKNOWN_TOOL", "{}", out.all());
    linux_node::assert_pulses(&relay, 1);
    drop(car);
}
