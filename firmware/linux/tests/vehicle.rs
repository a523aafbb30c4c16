#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real `latchkey-node --kind vehicle` on the BlueZ stand-in (issue 12): a phone reads the
//! Pairing Challenge, writes the gateway's pairing response for it, and then opens the vehicle
//! with protocol v2 (endpoint `vehicle`) from the key alone: the scripted gateway never sends a
//! snapshot. The key survives a restart. One test in its own process: the node child inherits
//! the process's private bus.

mod common;
mod v2_phone;

use common::{online, Gateway, Node};
use latchkey_bluez_standin::Standin;
use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::pairing::{
    PairingChallenge, PairingResponse, CHALLENGE_UUID, ENDPOINT, RESPONSE_UUID, SERVICE_UUID,
};
use latchkey_proto::v2::{from_base64, parse_secret_key, public_key_bytes, vectors, Status};
use v2_phone::{node_id, uuid, V2Phone, WAIT};

/// Inside the scripted gateway's hello time (1_764_237_600).
const ISSUED: u64 = 1_764_237_000;
const PHONE: V2Phone = V2Phone {
    secret: [0x11; 32],
    tool: [0xb2; 16],
};

/// The node's P-256 public key, from its AP API.
async fn node_key(node: &Node) -> [u8; 65] {
    let pubkey = node.info().await["pubkey"].as_str().unwrap().to_owned();
    let mut key = [0u8; 65];
    from_base64(&pubkey, &mut key).unwrap();
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_pairs_with_the_vehicle_over_ble_then_opens_it_with_its_new_key() {
    let bus = latchkey_bluez_standin::private_bus().unwrap();
    let bluez = Standin::start(&bus.address).await.unwrap();
    let hci0 = bluez.add_adapter("hci0").await.unwrap();
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--kind", "vehicle", "--ble-adapter", "hci0"];
    let node = Node::start(dir.path(), &args).await;
    let vehicle_key = node_key(&node).await;
    online(&node, &gw).await;
    let app = hci0.wait_application(0, WAIT).await.unwrap();
    assert!(app.services.iter().any(|s| s.uuid == uuid(SERVICE_UUID)));

    // The phone has no key yet.
    assert_eq!(
        PHONE
            .unlock(&hci0, &vehicle_key, "10:00:00:00:00:01", ENDPOINT, ISSUED)
            .await,
        (Status::UnknownTool, false)
    );

    // Pairing: the challenge is the vehicle's, signed with the key it registered.
    let link = hci0.connect("10:00:00:00:00:02", 185).await.unwrap();
    let frame = link.read(&uuid(CHALLENGE_UUID), 0).await.unwrap();
    let challenge = PairingChallenge::verify(&frame, &vehicle_key).unwrap();
    assert_eq!(challenge.vehicle_id, node_id());
    assert!(challenge.timestamp >= ISSUED, "the vehicle knows the time");
    let phone = parse_secret_key(&PHONE.secret).unwrap();
    let response = PairingResponse {
        nonce: challenge.nonce,
        key_id: PHONE.tool,
        not_before: ISSUED,
        expires: ISSUED + 30 * 86_400,
        epoch: 0,
        phone_key: public_key_bytes(&phone.public_key()),
    };
    let gateway = SigningKey::from_bytes(&vectors::GATEWAY_SEED);
    // Signed by another key: refused, and the nonce is still there for the real one.
    let forged = response.sign(&node_id(), &SigningKey::from_bytes(&[9; 32]));
    assert!(link.write(&uuid(RESPONSE_UUID), &forged).await.is_err());
    let signed = response.sign(&node_id(), &gateway);
    link.write(&uuid(RESPONSE_UUID), &signed).await.unwrap();
    // Once only.
    assert!(link.write(&uuid(RESPONSE_UUID), &signed).await.is_err());
    link.disconnect().await.unwrap();
    node.wait_log("pairing: vehicle key b2b2b2b2-b2b2-b2b2-b2b2-b2b2b2b2b2b2 accepted")
        .await;

    // The new key opens the vehicle.
    assert_eq!(
        PHONE
            .unlock(&hci0, &vehicle_key, "10:00:00:00:00:03", ENDPOINT, ISSUED)
            .await,
        (Status::Granted, true)
    );
    assert!(node.relay_log().contains("on "), "{}", node.relay_log());

    // Power cut: the key is still there once the gateway has said the time again.
    let seen = hci0.registrations();
    node.kill().await;
    let node = Node::start(dir.path(), &args).await;
    node.wait_log("door: 1 stored grants re-applied (0 ECDH)")
        .await;
    node.wait_log("node offline → online").await;
    hci0.wait_application(seen, WAIT).await.unwrap();
    assert_eq!(
        PHONE
            .unlock(&hci0, &vehicle_key, "10:00:00:00:00:04", ENDPOINT, ISSUED)
            .await,
        (Status::Granted, true)
    );
    node.kill().await;
}
