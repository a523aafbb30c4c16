//! The real `latchkey-node` process against a scripted gateway on 127.0.0.1: the AP API,
//! provisioning with a wrong Wi-Fi password retried, registration, unlock through the stand-in
//! relay, reconnects, 4403, restarts and factory reset.

// Test helpers fail loudly; clippy's allow-*-in-tests only covers #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;

use common::{online, Gateway, Node, Out, BAD_TOKEN, NODE_ID, NODE_KEY, TOKEN};
use serde_json::{json, Value};

fn pulses(relay_log: &str) -> Vec<(String, u64)> {
    relay_log
        .lines()
        .map(|l| {
            let (w, t) = l.split_once(' ').unwrap();
            (w.to_owned(), t.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn ap_api_wrong_password_retry_registration_and_unlock() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    assert!(node.stdout.contains("setup code: "), "{}", node.stdout);

    let info = node.info().await;
    assert_eq!(info["state"], "unprovisioned");
    assert_eq!(info["kind"], "door");
    assert!(info.get("node_id").is_none());
    let pubkey = info["pubkey"].as_str().unwrap().to_owned();
    assert_eq!(pubkey.len(), 88, "65 bytes in standard base64");

    let nets: Value = reqwest::get(node.url("/api/v1/networks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        nets,
        json!({"networks":[{"ssid":"HomeWifi","rssi":-40,"secure":true},{"ssid":"Cafe","rssi":-70,"secure":false}]})
    );

    // A wrong Wi-Fi password: accepted (the node cannot know before trying), then wifi_failed.
    let r = node.provision(&gw, "wrong-pass", TOKEN).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["node_id"], NODE_ID);
    let failed = node.wait_state("wifi_failed").await;
    assert_eq!(failed["error"]["code"], "WIFI_WRONG_PASSWORD");
    assert_eq!(failed["pubkey"], pubkey.as_str());
    assert!(gw.state.registrations.lock().unwrap().is_empty());

    // The corrected request, without a reset.
    let (session, status) = online(&node, &gw).await;
    assert_eq!(session, 1);
    assert_eq!(status["kind"], "door");
    assert_eq!(status["relay"], "idle");
    let regs = gw.state.registrations.lock().unwrap().clone();
    assert_eq!(
        regs,
        [
            json!({"node_id": NODE_ID, "provisioning_token": TOKEN, "pubkey": pubkey,
                "kind": "door", "firmware": "0.1.0"})
        ]
    );
    assert_eq!(
        gw.state.auth_headers.lock().unwrap().clone(),
        [format!("Node {NODE_KEY}")]
    );
    // Registered: the AP API is closed.
    assert!(reqwest::get(node.url("/api/v1/info")).await.is_err());

    gw.send(Out::Text(
        json!({"type":"command","id":7,"command":"unlock","pulse_ms":300}).to_string(),
    ));
    let (_, result) = gw.next_of("result").await;
    assert_eq!(result, json!({"type":"result","id":7,"ok":true}));
    let (_, active) = gw.next_of("status").await;
    assert_eq!(active["relay"], "active");
    let (_, idle) = gw.next_of("status").await;
    assert_eq!(idle["relay"], "idle");
    let p = pulses(&node.relay_log());
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!((p[0].0.as_str(), p[1].0.as_str()), ("on", "off"));
    assert!(p[1].1 - p[0].1 >= 300, "{p:?}");

    gw.send(Out::Text(
        json!({"type":"command","id":8,"command":"unlock","pulse_ms":50}).to_string(),
    ));
    let (_, result) = gw.next_of("result").await;
    assert_eq!(
        result,
        json!({"type":"result","id":8,"ok":false,"error":"BAD_COMMAND"})
    );
    gw.send(Out::Text(
        json!({"type":"command","id":9,"command":"launch"}).to_string(),
    ));
    let (_, result) = gw.next_of("result").await;
    assert_eq!(result["error"], "UNSUPPORTED");
    assert_eq!(pulses(&node.relay_log()).len(), 2);

    let log = node.log();
    for secret in ["right-pass", "wrong-pass", TOKEN, NODE_KEY] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

#[tokio::test]
async fn bad_requests_and_a_refused_token_are_recoverable() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--kind", "vehicle"]).await;

    let r = reqwest::Client::new()
        .post(node.url("/api/v1/provision"))
        .body(r#"{"wifi_ssid":"HomeWifi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["error"]["code"], "BAD_REQUEST");

    for (size, json) in [(3_000, true), (20_000, false)] {
        let r = reqwest::Client::new()
            .post(node.url("/api/v1/provision"))
            .body(vec![b' '; size])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{size} bytes");
        if json {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "PAYLOAD_TOO_LARGE");
        }
    }

    // A client that connects and says nothing does not hold the AP API.
    let idle = tokio::net::TcpStream::connect(node.ap.trim_start_matches("http://"))
        .await
        .unwrap();
    assert_eq!(node.info().await["state"], "unprovisioned");
    // Served while the idle connection was still open (picoserve had not closed it yet).
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.try_read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    drop(idle);

    let r = node.provision(&gw, "right-pass", BAD_TOKEN).await;
    assert_eq!(r.status(), 202);
    let failed = node.wait_state("register_failed").await;
    assert_eq!(failed["error"]["code"], "PROVISIONING_TOKEN_INVALID");
    assert_eq!(failed["node_id"], NODE_ID);

    let (_, status) = online(&node, &gw).await;
    assert_eq!(status["kind"], "vehicle");
    assert_eq!(gw.state.registrations.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn survives_gateway_restart_and_its_own_restart_then_factory_reset() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    let pubkey = node.info().await["pubkey"].clone();
    online(&node, &gw).await;

    // The gateway goes away and comes back on the same port: the node reconnects by itself.
    let gw = gw.restart().await;
    let (session, _) = gw.next_of("status").await;
    assert_eq!(session, 2);
    node.wait_log("reconnecting in").await;

    // Power cut and reboot: the stored credentials take it straight back online.
    node.kill().await;
    let node = Node::start(dir.path(), &[]).await;
    assert!(!node.stdout.contains("setup code"), "printed once only");
    let (session, _) = gw.next_of("status").await;
    assert_eq!(session, 3);
    assert!(node.log().contains("node starts offline"));
    assert!(
        node.log().contains("wifi: joining HomeWifi"),
        "rejoins its stored network"
    );
    assert!(reqwest::get(node.url("/api/v1/info")).await.is_err());
    assert_eq!(gw.state.registrations.lock().unwrap().len(), 1);

    // Factory reset: unprovisioned again, with a new key pair; the label stays.
    node.kill().await;
    let node = Node::start(dir.path(), &["--factory-reset"]).await;
    let info = node.wait_state("unprovisioned").await;
    assert_ne!(info["pubkey"], pubkey);
    assert!(info.get("node_id").is_none());
    let label = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey-node"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("label")
        .output()
        .unwrap();
    let text = String::from_utf8(label.stdout).unwrap();
    assert!(text.contains("setup code: ") && text.contains("latchkey-setup-"));
}

#[tokio::test]
async fn close_4403_means_revoked_for_good() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    online(&node, &gw).await;

    gw.state.revoked.store(true, Ordering::SeqCst);
    gw.send(Out::Close(4403));
    node.wait_log("→ revoked").await;
    // The revocation is stored: after a reboot the node stays revoked and never dials.
    node.kill().await;
    let node = Node::start(dir.path(), &[]).await;
    node.wait_log("node revoked by the gateway").await;
    assert!(node.log().contains("node starts revoked"));
    assert_eq!(gw.state.sessions.load(Ordering::SeqCst), 1);
    assert_eq!(gw.state.auth_headers.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_403_at_connect_is_revocation_too() {
    let gw = Gateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]).await;
    online(&node, &gw).await;
    // Revoked while the node was away: its reconnect is refused with 403.
    gw.state.revoked.store(true, Ordering::SeqCst);
    let _gw = gw.restart().await;
    node.wait_log("node offline → revoked").await;
}
