//! The door's grants over the real session (NODES.md §5.1, §8): the real `latchkey-node`
//! verifies, acknowledges and refuses the gateway's signed snapshots, takes the largest one
//! (256 grants, a ~51 KB frame), and keeps what it applied across its own restart.

// Test helpers fail loudly; clippy's allow-*-in-tests only covers #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{online, Gateway, Node, Out, NODE_ID};
use latchkey_proto::v2::ed25519_dalek::SigningKey;
use latchkey_proto::v2::{
    encode_snapshot, parse_secret_key, public_key_bytes, snapshot_len, to_base64, vectors,
    EndpointId, Grant, SnapshotHeader,
};
use serde_json::json;

const ISSUED: u64 = 1_764_237_000;

/// A `grants` frame of `count` grants (one phone, so the node does one ECDH), signed by `key`.
fn grants_frame(key: &SigningKey, version: u64, count: u128) -> String {
    let node_id = u128::from_str_radix(&NODE_ID.replace('-', ""), 16)
        .unwrap()
        .to_be_bytes();
    let phone = public_key_bytes(&parse_secret_key(&[0x11; 32]).unwrap().public_key());
    let grants: Vec<Grant> = (0..count)
        .map(|i| Grant {
            tool_id: i.to_be_bytes(),
            node_id,
            endpoint: EndpointId::new("front-door").unwrap(),
            not_before: ISSUED,
            expires: ISSUED + 7 * 86_400,
            epoch: 0,
            phone_key: phone,
        })
        .collect();
    let header = SnapshotHeader {
        node_id,
        version,
        epoch: 0,
        issued_at: ISSUED,
    };
    let mut bytes = vec![0; snapshot_len(grants.len())];
    let len = encode_snapshot(&header, &grants, key, &mut bytes).unwrap();
    let mut text = vec![0; len.div_ceil(3) * 4];
    let snapshot = to_base64(&bytes[..len], &mut text).unwrap();
    json!({"type":"grants","snapshot":snapshot,"pulse_ms":2000}).to_string()
}

#[tokio::test]
async fn grants_are_verified_acknowledged_and_kept_across_a_restart() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    online(&node, &gw).await;
    let gateway = SigningKey::from_bytes(&vectors::GATEWAY_SEED);

    gw.send(Out::Text(grants_frame(&gateway, 5, 1)));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":5,"ok":true,"grants":1})
    );
    // Signed by another key: refused, nothing kept (the next good one is still above 5).
    gw.send(Out::Text(grants_frame(
        &SigningKey::from_bytes(&[9; 32]),
        6,
        1,
    )));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":6,"ok":false,"error":"BAD_SNAPSHOT"})
    );
    // The largest snapshot a node keeps, in one frame over the old 16 KiB cap.
    let big = grants_frame(&gateway, 7, 256);
    assert!(big.len() > 51_000 && big.len() < 64 * 1024, "{}", big.len());
    gw.send(Out::Text(big));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":7,"ok":true,"grants":256})
    );

    // Power cut: the node re-applies its stored snapshot, so version 7 again is a replay.
    node.kill().await;
    let node = Node::start(dir.path(), &[]).await;
    node.wait_log("door: 256 stored grants re-applied (0 ECDH)")
        .await;
    let (session, _) = gw.next_of("status").await;
    assert_eq!(session, 2);
    gw.send(Out::Text(grants_frame(&gateway, 7, 1)));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":7,"ok":false,"error":"STALE"})
    );
    gw.send(Out::Text(grants_frame(&gateway, 8, 0)));
    let (_, ack) = gw.next_of("grants_ack").await;
    assert_eq!(
        ack,
        json!({"type":"grants_ack","version":8,"ok":true,"grants":0})
    );
    node.kill().await;
}
