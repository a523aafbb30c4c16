#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reference phone's door protocol version 2 (issue 10, spec D): `latchkey phone` as a
//! child process, on the stand-in's simulated radio, against test doors (a GATT application
//! deciding with `latchkey_proto::v2`, tests/support/v2door.rs) and a fake gateway serving
//! spec A's `/device/register` and `/device/refresh`; and version 1 at the real gateway.

mod common;
#[path = "support/phone.rs"]
mod phone;
#[path = "support/v2door.rs"]
mod v2door;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use latchkey_bluez_standin::{Adapter, Withhold};
use latchkey_phone::Credentials;
use latchkey_proto::v2::Status;
use serde_json::Value;

use phone::Out;
use v2door::{Behaviour, FakeGateway, Kind, TestDoor};

const WEEK: u64 = 7 * 86_400;

/// A phone adapter in `area`, and the bus its processes use.
async fn phone_radio(area: &str) -> (Adapter, String) {
    let shared = latchkey_bluez_standin::shared().unwrap();
    let a = shared.new_adapter().await.unwrap();
    a.set_area(area);
    a.set_powered(true);
    (a, shared.bus.address.clone())
}

/// `phone unlock --adapter A --json ARGS…`: the output and its JSON line.
async fn unlock(bus: &str, creds: &Path, adapter: &Adapter, args: &[&str]) -> (Out, Value) {
    phone::on_radio(bus, creds, adapter, "unlock", args).await
}

fn assert_granted_v2(out: &Out, json: &Value, kind: &str, id: &str) {
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["protocol"], 2, "{json}");
    assert_eq!(json["door"]["kind"], kind, "{json}");
    assert_eq!(json["door"]["id"], id, "{json}");
    assert_eq!(json["attOps"], 3, "{json}");
}

/// No secret of the phone (device key, TOTP secret, phone key) in `text`.
fn assert_no_secrets(creds: &Credentials, text: &str) {
    phone::assert_no_secrets(creds, text);
    if let Some(k) = &creds.phone_key {
        assert!(!text.contains(k.expose()), "the phone key leaked:\n{text}");
    }
}

/// One node door of "front-door" in `area`, a fake gateway for it, and a phone's
/// credentials for that gateway (no key, no tool yet).
struct OneNode {
    radio: Adapter,
    bus: String,
    node: TestDoor,
    gw: FakeGateway,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl OneNode {
    async fn start(area: &str) -> OneNode {
        let (radio, bus) = phone_radio(area).await;
        let signing = v2door::signing_key();
        let node = TestDoor::start(Kind::Node, area, signing.verifying_key()).await;
        let gw = FakeGateway::start(signing, vec![node.core.clone()], "front-door", WEEK).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.json");
        v2door::write_credentials(&path, gw.addr, &"ab".repeat(16));
        OneNode {
            radio,
            bus,
            node,
            gw,
            path,
            _dir: dir,
        }
    }

    async fn unlock(&self, args: &[&str]) -> (Out, Value) {
        unlock(&self.bus, &self.path, &self.radio, args).await
    }

    /// Unlocks and asserts that the node opened with a verified version-2 result.
    async fn opens(&self, args: &[&str]) -> Out {
        let (out, json) = self.unlock(args).await;
        assert_granted_v2(&out, &json, "node", &self.node.core.name);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_once_refreshes_only_within_the_threshold_and_opens_a_node() {
    let f = OneNode::start("v2-register").await;

    // No key, no tool: the phone makes a key, registers it, then opens the node.
    let (out, json) = f.unlock(&[]).await;
    assert_granted_v2(&out, &json, "node", &f.node.core.name);
    assert_eq!(json["endpoint"], "front-door");
    assert_eq!((f.gw.registered(), f.gw.refreshed()), (1, 0));
    let creds = Credentials::load(&f.path).unwrap();
    let tool = creds.access_tool.clone().expect("the tool is stored");
    assert!(creds.phone_key.is_some());
    assert_eq!(tool.endpoints[0].doors[0].door_id.len(), 32);
    let mode = std::fs::metadata(&f.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_no_secrets(&creds, &out.all());

    // A week left, threshold 2 days: nothing to do at the gateway.
    f.opens(&["front-door"]).await;
    assert_eq!((f.gw.registered(), f.gw.refreshed()), (1, 0));

    // Within the threshold: refreshed, the same tool with a new expiry.
    let within = (WEEK + 60).to_string();
    let out = f.opens(&["--refresh-within", &within]).await;
    assert_eq!((f.gw.registered(), f.gw.refreshed()), (1, 1));
    let after = Credentials::load(&f.path).unwrap().access_tool.unwrap();
    assert_eq!(after.access_tool_id, tool.access_tool_id);
    assert!(after.expires_at() >= tool.expires_at());
    assert_no_secrets(&creds, &out.all());
    assert_eq!(f.node.core.decisions(), [Status::Granted; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gateway_down_the_stored_tool_still_opens_the_node() {
    let f = OneNode::start("v2-offline").await;
    f.opens(&[]).await;

    // The gateway is gone, and its address now belongs to something that accepts
    // connections and never answers: the refresh gives up (3 s) and the unlock goes on.
    f.gw.stop();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut creds = Credentials::load(&f.path).unwrap();
    creds.gateway_port = silent.local_addr().unwrap().port();
    creds.save(&f.path).unwrap();
    let within = (WEEK + 60).to_string();
    let out = f.opens(&["--refresh-within", &within]).await;
    assert!(
        out.stderr.contains("access tool not refreshed"),
        "{}",
        out.stderr
    );
    // And with nothing listening at all.
    drop(silent);
    f.opens(&["--refresh-within", &within]).await;
    assert_eq!(f.gw.refreshed(), 0);
    assert_eq!(
        Credentials::load(&f.path).unwrap().access_tool,
        creds.access_tool,
        "the stored tool is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_that_do_not_verify_are_never_success() {
    let f = OneNode::start("v2-forged").await;
    f.opens(&[]).await;

    for behaviour in [Behaviour::PlainGranted, Behaviour::ForgedSealed] {
        f.node.core.set_behaviour(behaviour);
        let (out, json) = f.unlock(&["--timeouts", "10,10,10,2"]).await;
        assert_ne!(out.code, 0, "{behaviour:?}: {}", out.all());
        assert_eq!(json["granted"], false, "{behaviour:?}: {json}");
        assert_eq!(json["code"], "TIMEOUT_SERVER", "{behaviour:?}: {json}");
        assert!(
            json["message"].as_str().unwrap().contains("did not verify"),
            "{behaviour:?}: {json}"
        );
    }
    // The door did decide GRANTED each time: only its answers were not the door's own.
    assert_eq!(f.node.core.decisions(), [Status::Granted; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_is_chosen_by_its_advertisement() {
    let area = "v2-choice";
    let (radio, bus) = phone_radio(area).await;
    let signing = v2door::signing_key();
    let node = TestDoor::start(Kind::Node, area, signing.verifying_key()).await;
    let gateway = TestDoor::start(Kind::Gateway, area, signing.verifying_key()).await;
    let gw = FakeGateway::start(
        signing,
        vec![node.core.clone(), gateway.core.clone()],
        "front-door",
        WEEK,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("phone.json");
    v2door::write_credentials(&path, gw.addr, &gateway.core.name);

    // Both heard: the node wins.
    let (out, json) = unlock(&bus, &path, &radio, &[]).await;
    assert_granted_v2(&out, &json, "node", &node.core.name);
    // The gateway's own door, by choice: version 2 too (its GATT database offers it).
    let (out, json) = unlock(&bus, &path, &radio, &["--door", "gateway"]).await;
    assert_granted_v2(&out, &json, "gateway", &gateway.core.name);
    assert!(json["gateway"]["address"].is_string(), "{json}");
    // A node by its id.
    let (out, json) = unlock(&bus, &path, &radio, &["--door", &node.core.name]).await;
    assert_granted_v2(&out, &json, "node", &node.core.name);
    // With the node out of range, `auto` settles for the gateway.
    node.adapter.withhold(Withhold::Device, true);
    let (out, json) = unlock(&bus, &path, &radio, &["--door", "auto"]).await;
    assert_granted_v2(&out, &json, "gateway", &gateway.core.name);
    node.adapter.withhold(Withhold::Device, false);
    // A node the tool does not list: refused before the radio is touched.
    let other = uuid::Uuid::new_v4().to_string();
    let (out, json) = unlock(&bus, &path, &radio, &["--door", &other]).await;
    assert_ne!(out.code, 0);
    assert_eq!(json["code"], "NO_DOOR", "{json}");
    assert_eq!(node.core.decisions(), [Status::Granted; 2]);
    assert_eq!(gateway.core.decisions(), [Status::Granted; 2]);
    assert_eq!(gw.registered(), 1);
}

/// At the real gateway: `phone pair` registers the phone's key, so the next unlock speaks
/// version 2 to the gateway's own door; a phone without a tool (its gateway unreachable over
/// HTTP, so it cannot register one now) still opens over version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_at_the_gateway_after_pairing_and_version_1_without_a_tool() {
    let dir = tempfile::tempdir().unwrap();
    let opened = dir.path().join("opened");
    let f = phone::Field::start("v2-fallback", vec![phone::door("front-door", &opened)]).await;
    let t = f.gw.pair_token(&reqwest::Client::new()).await;
    let path = dir.path().join("phone.json");
    let paired = phone::phone(
        Some(&f.bus),
        &path,
        &["pair", "--payload", t["qrPayload"].as_str().unwrap()],
    )
    .await;
    assert_eq!(paired.code, 0, "{}", paired.all());
    let creds = Credentials::load(&path).unwrap();
    assert!(creds.phone_key.is_some() && creds.access_tool.is_some());

    let (out, json) = unlock(&f.bus, &path, &f.phone, &[]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["protocol"], 2, "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["door"]["kind"], "gateway", "{json}");
    assert_eq!(json["door"]["id"], creds.gateway_id.as_str(), "{json}");

    // No tool, and nothing answers at the stored address: version 1, over the radio alone.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut without = creds.clone();
    without.access_tool = None;
    without.gateway_port = closed.local_addr().unwrap().port();
    drop(closed);
    without.save(&path).unwrap();
    let (out, json) = unlock(&f.bus, &path, &f.phone, &[]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["protocol"], 1, "{json}");
    assert_eq!(json["door"]["kind"], "gateway", "{json}");
    let events = f.access_events().await;
    let protocols: Vec<Value> = events.iter().map(|(_, d)| d["protocol"].clone()).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(protocols[0], 2, "{events:?}");
}
