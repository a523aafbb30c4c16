#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The reference phone's vehicle pairing (issue 12 spec §3): `latchkey phone pair-vehicle` and
//! `phone unlock --vehicle` as child processes, on the stand-in's simulated radio, against a
//! test vehicle (tests/support/v2door.rs: the door service and the Vehicle pairing service,
//! deciding with `latchkey_proto::v2::pairing`) and a fake gateway serving spec §2's pairing
//! sessions, which never pushes to the vehicle: what the vehicle knows, it learnt over BLE.
//! And once against the real daemon, the test vehicle registered there as a node of kind
//! `vehicle`, with its node session's snapshots. With every part real (the gateway,
//! `latchkey-node --kind vehicle`, the phone): tests/vehicle_e2e.rs.

mod common;
#[path = "support/node.rs"]
mod node;
#[path = "support/phone.rs"]
mod phone;
#[path = "support/v2door.rs"]
mod v2door;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use latchkey_bluez_standin::{Adapter, Withhold};
use latchkey_phone::Credentials;
use latchkey_proto::v2::{pairing, Status};
use serde_json::Value;

use phone::Out;
use v2door::{Behaviour, FakeGateway, GwMode, Kind, SessionState, TestDoor};

const MONTH: u64 = 30 * 86_400;

/// A vehicle in `area`, a fake gateway for it, a phone adapter in range and the phone's
/// credentials for that gateway (no key, no tool yet).
struct Garage {
    radio: Adapter,
    bus: String,
    vehicle: TestDoor,
    gw: FakeGateway,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Garage {
    async fn start(area: &str) -> Garage {
        let shared = latchkey_bluez_standin::shared().unwrap();
        let radio = shared.new_adapter().await.unwrap();
        radio.set_area(area);
        radio.set_powered(true);
        let signing = v2door::signing_key();
        let vehicle = TestDoor::start(Kind::Vehicle, area, signing.verifying_key()).await;
        let gw = FakeGateway::with_vehicle(signing, vehicle.core.clone(), MONTH).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phone.json");
        v2door::write_credentials(&path, gw.addr, &"ab".repeat(16));
        Garage {
            radio,
            bus: shared.bus.address.clone(),
            vehicle,
            gw,
            path,
            _dir: dir,
        }
    }

    fn id(&self) -> &str {
        &self.vehicle.core.name
    }

    async fn run(&self, command: &str, args: &[&str]) -> (Out, Value) {
        run(&self.bus, &self.path, &self.radio, command, args).await
    }

    async fn pair(&self, args: &[&str]) -> (Out, Value) {
        let mut all = vec![self.id()];
        all.extend_from_slice(args);
        self.run("pair-vehicle", &all).await
    }

    /// A pairing that fails with `code` at stage `last` (the step before `error`).
    async fn fails(&self, args: &[&str], code: &str, last: &str) -> Value {
        let (out, json) = self.pair(args).await;
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(
            out.reason().starts_with(&format!("latchkey: {code}: ")),
            "{}",
            out.all()
        );
        assert_eq!(json["step"], "error", "{json}");
        assert_eq!(json["error"]["code"], code, "{json}");
        let steps = json["steps"].as_array().unwrap();
        assert_eq!(steps[steps.len() - 2], last, "{json}");
        assert!(json["result"].is_null(), "{json}");
        assert!(stored_keys(&self.path).is_empty());
        assert!(
            out.stderr.contains("latchkey: pair-vehicle: error"),
            "{}",
            out.stderr
        );
        json
    }
}

/// `phone COMMAND --adapter A --json ARGS…`, then seed 000's cleanup whatever the outcome:
/// the phone's radio idle, nothing merely abandoned.
async fn run(
    bus: &str,
    path: &Path,
    radio: &Adapter,
    command: &str,
    args: &[&str],
) -> (Out, Value) {
    phone::on_radio(bus, path, radio, command, args).await
}

fn stored_keys(path: &Path) -> Vec<latchkey_phone::vehicle::VehicleKey> {
    Credentials::load(path).unwrap().vehicle_keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_pairing_stores_the_key_that_opens_the_vehicle_offline() {
    let g = Garage::start("veh-story").await;

    let (out, json) = g.pair(&["--yes"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let steps: Vec<&str> = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "idle",
            "scanning",
            "deviceSelected",
            "connecting",
            "challenge",
            "registering",
            "completing",
            "completed"
        ]
    );
    for s in &steps {
        assert!(
            out.stderr
                .contains(&format!("latchkey: pair-vehicle: {s}\n")),
            "{}",
            out.stderr
        );
    }
    // Seed 000's PairingContext.
    assert_eq!(json["step"], "completed", "{json}");
    assert_eq!(json["vehicleId"], g.id(), "{json}");
    assert!(json["device"]["id"].is_string(), "{json}");
    assert!(json["device"]["rssi"].is_i64(), "{json}");
    let challenge = data_encoding::BASE64
        .decode(json["challenge"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(challenge.len(), pairing::CHALLENGE_LEN);
    assert!(json["sessionId"].is_string(), "{json}");
    assert!(json["error"].is_null(), "{json}");
    let key_id = json["result"]["keyId"].as_str().unwrap().to_owned();
    assert_eq!(json["result"]["endpoint"], "vehicle", "{json}");

    // Both sides: the session completed and not cancelled, the vehicle holds the grant.
    assert_eq!(g.gw.sessions(), [SessionState::Completed]);
    assert_eq!(g.gw.deletes(), 0);
    assert_eq!(g.vehicle.core.pairings(), 1);
    let key_bytes = uuid::Uuid::parse_str(&key_id).unwrap().into_bytes();
    assert_eq!(g.vehicle.core.grant_tools(), [key_bytes]);
    // Listed and stored, 0600, no secret printed.
    let keys = stored_keys(&g.path);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, key_id);
    let mode = std::fs::metadata(&g.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let creds = Credentials::load(&g.path).unwrap();
    phone::assert_no_secrets(&creds, &out.all());
    assert!(!out
        .all()
        .contains(creds.phone_key.as_ref().unwrap().expose()));

    // The upkeep refreshes the vehicle key through /device/refresh like the general tool.
    let within = (MONTH + 3600).to_string();
    let (out, json) = g
        .run(
            "unlock",
            &["--vehicle", g.id(), "--refresh-within", &within],
        )
        .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(g.gw.key_refreshes(), 1);
    let refreshed = stored_keys(&g.path);
    assert!(
        refreshed[0].expires_at() > keys[0].expires_at(),
        "{refreshed:?}"
    );

    // The gateway gone: the vehicle opens with the stored key (version 2, endpoint vehicle).
    g.gw.stop();
    let (out, json) = g.run("unlock", &["--vehicle", g.id()]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["verified"], true, "{json}");
    assert_eq!(json["protocol"], 2, "{json}");
    assert_eq!(json["endpoint"], "vehicle", "{json}");
    assert_eq!(json["door"]["kind"], "node", "{json}");
    assert_eq!(json["door"]["id"], g.id(), "{json}");
    assert_eq!(g.vehicle.core.decisions(), [Status::Granted; 2]);

    // A vehicle the phone holds no key for: refused before the radio is touched.
    let other = uuid::Uuid::new_v4().to_string();
    let (out, json) = g.run("unlock", &["--vehicle", &other]).await;
    assert_ne!(out.code, 0);
    assert_eq!(json["code"], "NO_DOOR", "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stage_times_out_with_its_code_and_cleans_up() {
    let g = Garage::start("veh-timeouts").await;
    let quick = ["--yes", "--timeouts", "1,1,1,1"];
    let a = &g.vehicle.adapter;

    a.withhold(Withhold::Device, true);
    g.fails(&quick, "TIMEOUT_SCAN", "scanning").await;
    a.withhold(Withhold::Device, false);

    a.withhold(Withhold::Connection, true);
    g.fails(&quick, "TIMEOUT_CONNECT", "connecting").await;
    a.withhold(Withhold::Connection, false);

    a.withhold(Withhold::Challenge, true);
    g.fails(&quick, "TIMEOUT_CHALLENGE", "challenge").await;
    a.withhold(Withhold::Challenge, false);
    // No session was opened before the gateway was involved.
    assert!(g.gw.sessions().is_empty());

    // The gateway stalls on completion: the session is cancelled on the way out.
    g.gw.set_mode(GwMode::StallComplete);
    let json = g.fails(&quick, "TIMEOUT_SERVER", "registering").await;
    assert!(json["sessionId"].is_string(), "{json}");
    assert_eq!(json["cancelled"], true, "{json}");
    assert_eq!(g.gw.sessions(), [SessionState::Cancelled]);
    assert_eq!(g.gw.deletes(), 1);
    assert_eq!(g.gw.keys_issued(), 0);
    assert_eq!(g.vehicle.core.pairings(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_or_yes_key_issuance_is_declined() {
    let g = Garage::start("veh-declined").await;
    // stdin is not a terminal (the harness gives /dev/null) and there is no --yes.
    let json = g.fails(&[], "DECLINED", "challenge").await;
    assert!(json["challenge"].is_string(), "{json}");
    assert!(json["sessionId"].is_null(), "{json}");
    assert!(g.gw.sessions().is_empty(), "no session was created");
    assert_eq!(g.gw.deletes(), 0);
    assert_eq!(g.vehicle.core.pairings(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_the_link_the_gateway_or_the_vehicle() {
    let g = Garage::start("veh-refused").await;

    // A link whose MTU cannot carry the response in one write: refused before the gateway.
    g.radio.set_att_mtu(150);
    let json = g.fails(&["--yes"], "PROTOCOL", "connecting").await;
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("ATT MTU is 150, below the 154"), "{json}");
    assert!(g.gw.sessions().is_empty());
    g.radio.set_att_mtu(185); // what phones request (PROTOCOL.md §3)

    // The gateway answers 410: SERVER with its code, and the session is cancelled.
    g.gw.set_mode(GwMode::Expired);
    let json = g.fails(&["--yes"], "SERVER", "registering").await;
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("PAIRING_SESSION_EXPIRED"), "{json}");
    assert_eq!(g.gw.sessions(), [SessionState::Cancelled]);
    assert_eq!(g.gw.deletes(), 1);

    // The vehicle refuses the gateway's response: VEHICLE_REFUSED, and DELETE is sent (the
    // completed session answers 410, PROTOCOL.md §27.2).
    g.gw.set_mode(GwMode::Honest);
    g.vehicle.core.set_behaviour(Behaviour::RefusePairing);
    let json = g.fails(&["--yes"], "VEHICLE_REFUSED", "completing").await;
    assert!(json["sessionId"].is_string(), "{json}");
    assert_eq!(json["cancelled"], false, "{json}");
    assert_eq!(g.gw.deletes(), 2);
    assert_eq!(g.gw.keys_issued(), 1);
    assert!(g.vehicle.core.grant_tools().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pairing_cancels_its_session() {
    let g = Garage::start("veh-interrupted").await;
    g.gw.set_mode(GwMode::StallComplete);
    let mut c = phone::latchkey(Some(&g.bus));
    c.arg("phone")
        .args(["pair-vehicle", g.id(), "--yes", "--json"])
        .args(["--adapter", g.radio.name()])
        .arg("--credentials")
        .arg(&g.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    // Waits until the phone is inside the stalled completion, so it holds a session id to
    // cancel (a hang guard, not a timer).
    let asked = tokio::time::timeout(phone::HANG, async {
        while g.gw.completions() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(asked.is_ok(), "no pairing session was opened");
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let o = tokio::time::timeout(phone::HANG, child.wait_with_output())
        .await
        .expect("the phone hung after SIGINT")
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    let json: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["error"]["code"], "CANCELLED", "{json}");
    assert_eq!(json["cancelled"], true, "{json}");
    assert_eq!(g.gw.sessions(), [SessionState::Cancelled]);
    assert_eq!(g.gw.deletes(), 1);
    let r = g.radio.radio();
    assert!(r.is_idle(), "the phone's radio: {r:?}");
    assert_eq!(r.stats.abandoned_sessions, 0, "{r:?}");
}

/// The real daemon on the system clock (the phone and the vehicles use it too), with no
/// endpoint: the phone opens no door, its tool names the gateway's door key only as
/// `gatewayDoor`, and that is enough to pair a vehicle.
async fn real_gateway() -> common::Gateway {
    common::Gateway::start_with(|c| {
        c.endpoints = Vec::new();
        c.clock = std::sync::Arc::new(latchkey::clock::SystemClock);
    })
    .await
}

/// The next snapshot of a vehicle's node session, applied to the test vehicle.
async fn apply_next(ws: &mut node::Ws, vehicle: &TestDoor) {
    let frame = node::recv(ws).await;
    assert_eq!(frame["type"], "grants", "{frame}");
    let bytes = data_encoding::BASE64
        .decode(frame["snapshot"].as_str().unwrap().as_bytes())
        .unwrap();
    vehicle.core.apply(&bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_through_the_real_gateway_and_opens_the_vehicle_with_it_stopped() {
    use latchkey::clock::{Clock, SystemClock};
    let area = "veh-real";
    let shared = latchkey_bluez_standin::shared().unwrap();
    let radio = shared.new_adapter().await.unwrap();
    radio.set_area(area);
    radio.set_powered(true);
    let gw = real_gateway().await;
    let http = reqwest::Client::new();

    // The vehicle registers its own key as a node of kind vehicle, then keeps its session.
    let key = v2door::random_key();
    let public = latchkey_proto::v2::public_key_bytes(&key.public_key());
    let t = node::new_token(&http, &gw.base, &gw.admin_token, "Car").await;
    let node_id = t["node_id"].as_str().unwrap().to_owned();
    let r = http
        .post(gw.url("/api/v0/nodes/register"))
        .json(&serde_json::json!({
            "node_id": node_id, "provisioning_token": t["token"],
            "pubkey": data_encoding::BASE64.encode(&public), "kind": "vehicle", "firmware": "0.1.0",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let gateway_key: [u8; 32] = data_encoding::BASE64
        .decode(reg["gateway_pubkey"].as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let gateway_key = latchkey_proto::v2::gateway_key(&gateway_key).unwrap();
    let id = uuid::Uuid::parse_str(&node_id).unwrap().into_bytes();
    let vehicle = TestDoor::registered_vehicle(area, id, key, gateway_key).await;
    let mut ws = node::connect(
        reg["ws_url"].as_str().unwrap(),
        reg["node_key"].as_str().unwrap(),
    )
    .await
    .expect("upgrade");
    assert_eq!(node::recv(&mut ws).await["type"], "hello");
    node::send(
        &mut ws,
        serde_json::json!({"type":"status","kind":"vehicle","firmware":"0.1.0","relay":"idle","uptime":5}),
    )
    .await;
    apply_next(&mut ws, &vehicle).await;

    // The phone pairs with the gateway, then with the vehicle.
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = phone::pair(&gw, dir.path(), "car phone", SystemClock.now()).await;
    let (out, json) = run(
        &shared.bus.address,
        &path,
        &radio,
        "pair-vehicle",
        &[&node_id, "--yes"],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["step"], "completed", "{json}");
    let key_id = json["result"]["keyId"].as_str().unwrap().to_owned();
    assert_eq!(
        vehicle.core.pairings(),
        1,
        "the vehicle accepted the gateway's response"
    );
    let key_bytes = uuid::Uuid::parse_str(&key_id).unwrap().into_bytes();
    assert_eq!(vehicle.core.grant_tools(), [key_bytes], "held from BLE");
    let keys = stored_keys(&path);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].key_id, key_id);
    assert_eq!(keys[0].vehicle_id, node_id);
    let creds = Credentials::load(&path).unwrap();
    assert_eq!(keys[0].device_id, creds.device_id);
    let tool = creds.access_tool.as_ref().unwrap();
    assert!(
        tool.endpoints.is_empty() && tool.gateway_door.is_some(),
        "{tool:?}"
    );
    phone::assert_no_secrets(&creds, &out.all());

    // The online vehicle's next snapshot carries the key too; then the gateway goes away.
    apply_next(&mut ws, &vehicle).await;
    assert_eq!(vehicle.core.grant_tools(), [key_bytes]);
    drop(ws);
    let _data = gw.stop().await;
    let (out, json) = run(
        &shared.bus.address,
        &path,
        &radio,
        "unlock",
        &["--vehicle", &node_id],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(json["status"], "GRANTED", "{json}");
    assert_eq!(json["protocol"], 2, "{json}");
    assert_eq!(json["endpoint"], "vehicle", "{json}");
    assert_eq!(vehicle.core.decisions(), [Status::Granted]);
}
