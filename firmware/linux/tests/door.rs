#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real `latchkey-node` as a door (NODES.md §8): on the BlueZ stand-in, with the scripted
//! gateway, a phone (a simulated central) opens it with protocol v2 while the gateway is gone,
//! and the decision is uploaded, marked offline, when the gateway returns. One test in its own
//! process: the node child inherits the process's private bus.

mod common;
mod v2_phone;

use common::{online, Gateway, Node};
use latchkey_bluez_standin::Standin;
use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::{
    door_tag, encode_snapshot, from_base64, parse_secret_key, public_key_bytes, snapshot_len,
    to_base64, vectors, EndpointId, Grant, SnapshotHeader, Status,
};
use serde_json::json;
use v2_phone::{node_id, V2Phone, WAIT};

/// Inside the scripted gateway's hello time (1_764_237_600) and a week after.
const ISSUED: u64 = 1_764_237_000;
const PHONE: V2Phone = V2Phone {
    secret: [0x11; 32],
    tool: [0xa1; 16],
};

/// The gateway's `grants` frame: the phone's tool opens `front-door` on this node.
fn grants_frame() -> String {
    let phone = parse_secret_key(&PHONE.secret).unwrap();
    let grant = Grant {
        tool_id: PHONE.tool,
        node_id: node_id(),
        endpoint: EndpointId::new("front-door").unwrap(),
        not_before: ISSUED,
        expires: ISSUED + 7 * 86_400,
        epoch: 0,
        phone_key: public_key_bytes(&phone.public_key()),
    };
    let header = SnapshotHeader {
        node_id: node_id(),
        version: 1,
        epoch: 0,
        issued_at: ISSUED,
    };
    let mut bytes = vec![0; snapshot_len(1)];
    let key = SigningKey::from_bytes(&vectors::GATEWAY_SEED);
    let len = encode_snapshot(&header, &[grant], &key, &mut bytes).unwrap();
    let mut text = vec![0; len.div_ceil(3) * 4];
    let snapshot = to_base64(&bytes[..len], &mut text).unwrap();
    json!({"type":"grants","snapshot":snapshot,"pulse_ms":1500}).to_string()
}

/// The phone's unlock of `front-door` on `hci0`.
async fn unlock(
    hci0: &latchkey_bluez_standin::Adapter,
    door_key: &[u8],
    addr: &str,
) -> (Status, bool) {
    PHONE
        .unlock(hci0, door_key, addr, "front-door", ISSUED)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_opens_the_node_with_the_gateway_gone_and_the_decision_is_uploaded_on_its_return() {
    let bus = latchkey_bluez_standin::private_bus().unwrap();
    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    let mut gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The child inherits DBUS_SYSTEM_BUS_ADDRESS: the stand-in's bus.
    let node = Node::start(dir.path(), &["--ble-adapter", "hci0"]).await;
    let pubkey = node.info().await["pubkey"].as_str().unwrap().to_owned();
    let mut door_key = [0u8; 65];
    from_base64(&pubkey, &mut door_key).unwrap();
    online(&node, &gw).await;

    // Registered: the door advertises its tag; the gateway hands it the phone's grant.
    let adv = hci0.wait_advertisement(0, WAIT).await.unwrap();
    let mut mfr = vec![0x02];
    mfr.extend_from_slice(&door_tag(&node_id()));
    assert_eq!(adv.manufacturer_data.get(&0xFFFF), Some(&mfr));
    gw.send(common::Out::Text(grants_frame()));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":1,"ok":true,"grants":1})
    );

    // The gateway goes away; the phone opens the door all the same.
    gw.stop().await;
    node.wait_log("node online → offline").await;
    assert_eq!(
        unlock(&hci0, &door_key, "10:00:00:00:00:01").await,
        (Status::Granted, true)
    );
    assert!(node.relay_log().contains("on "), "{}", node.relay_log());

    // The gateway is back: the offline decision is uploaded, and only once acknowledged.
    let gw = gw.resume().await;
    let (session, decisions) = gw.next_of("decisions").await;
    assert_eq!(session, 2);
    let entries = decisions["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{decisions}");
    let e = &entries[0];
    assert_eq!(
        (&e["seq"], &e["status"], &e["endpoint"], &e["offline"]),
        (
            &json!(1),
            &json!("GRANTED"),
            &json!("front-door"),
            &json!(true)
        )
    );
    assert_eq!(e["toolId"], "a1a1a1a1-a1a1-a1a1-a1a1-a1a1a1a1a1a1");
    assert!(e["doorTime"].as_u64().unwrap() >= ISSUED);
    assert_eq!(decisions["lost"], 0);
    gw.send(common::Out::Text(
        json!({"type":"decisions_ack","upTo":1}).to_string(),
    ));

    // Online, the next decision goes up at once, as online.
    assert_eq!(
        unlock(&hci0, &door_key, "10:00:00:00:00:02").await,
        (Status::Granted, true)
    );
    let (_, decisions) = gw.next_of("decisions").await;
    assert_eq!(decisions["entries"][0]["seq"], 2);
    assert_eq!(decisions["entries"][0]["offline"], false);
    node.kill().await;
}
