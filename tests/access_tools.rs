//! Offline access, the gateway side (issue 10; CONTRACT §6, PROTOCOL.md §13–§26, NODES.md §5),
//! against the real daemon on loopback: access tools over HTTP, the signed grants a node
//! receives on its session (a node scripted from NODES.md with tokio-tungstenite), its decision
//! uploads, and the gateway's own version-2 door on the BlueZ stand-in with a phone doing
//! PROTOCOL.md §21 with `latchkey_proto::v2`. Time rules run on the manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/daemon.rs"]
mod daemon;
#[path = "support/door.rs"]
mod door;
#[path = "support/node.rs"]
mod node;

use common::{Gateway, T0};
use data_encoding::{BASE64, HEXLOWER};
use latchkey_proto::v2::{self, EndpointId, PeerSecret, Request, RequestBody, ResultFrame, Status};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A phone's P-256 key pair from a fixed scalar, with `pubkey` and `hash` as register takes them.
struct PhoneKey {
    secret: p256::SecretKey,
    pubkey: String,
    hash: String,
}

fn phone_key(seed: u8) -> PhoneKey {
    let secret = v2::parse_secret_key(&[seed; 32]).unwrap();
    let pk = v2::public_key_bytes(&secret.public_key());
    PhoneKey {
        secret,
        pubkey: BASE64.encode(&pk),
        hash: HEXLOWER.encode(&Sha256::digest(pk)),
    }
}

async fn post(
    gw: &Gateway,
    http: &reqwest::Client,
    path: &str,
    device_key: &str,
    body: Value,
) -> (u16, Value) {
    let r = http
        .post(gw.url(path))
        .header("authorization", format!("Device {device_key}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn register(gw: &Gateway, http: &reqwest::Client, dev: &Value, k: &PhoneKey) -> (u16, Value) {
    let key = dev["deviceKey"].as_str().unwrap();
    post(
        gw,
        http,
        "/device/register",
        key,
        json!({"pubkey": k.pubkey, "hash": k.hash}),
    )
    .await
}

async fn refresh(gw: &Gateway, http: &reqwest::Client, dev: &Value, tool: &Value) -> (u16, Value) {
    let key = dev["deviceKey"].as_str().unwrap();
    post(
        gw,
        http,
        "/device/refresh",
        key,
        json!({"accessToolId": tool}),
    )
    .await
}

async fn me(gw: &Gateway, http: &reqwest::Client, dev: &Value) -> Value {
    http.get(gw.url("/api/me"))
        .header(
            "authorization",
            format!("Device {}", dev["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn revoke(gw: &Gateway, http: &reqwest::Client, dev: &Value) {
    let id = dev["deviceId"].as_str().unwrap();
    let r = http
        .post(gw.url(&format!("/api/devices/{id}/revoke")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn register_refresh_retry_new_key_and_me() {
    let gw = Gateway::start_with(|c| {
        c.endpoints = vec![door::endpoint("front", None)];
    })
    .await;
    let http = reqwest::Client::new();
    let dev = gw.pair(&http, "Pixel").await;
    assert_eq!(me(&gw, &http, &dev).await["accessTool"], Value::Null);

    let k = phone_key(0x11);
    let (status, tool) = register(&gw, &http, &dev, &k).await;
    assert_eq!(status, 201, "{tool}");
    let id = tool["accessToolId"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::try_parse(&id).is_ok());
    assert_eq!(tool["devicePubKey"], k.pubkey.as_str());
    assert_eq!(tool["issuedOn"], "2026-01-13T10:40:00Z");
    assert_eq!(
        tool["expiresOn"], "2026-01-20T10:40:00Z",
        "7 days by default"
    );
    let eps = tool["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0]["id"], "front");
    let doors = eps[0]["doors"].as_array().unwrap();
    assert_eq!(
        doors.len(),
        1,
        "a config endpoint opens at the gateway's door only"
    );
    assert_eq!(doors[0]["kind"], "gateway");
    assert_eq!(doors[0]["doorId"], gw.state.gateway_id.as_str());
    let door_key = BASE64
        .decode(doors[0]["pubkey"].as_str().unwrap().as_bytes())
        .unwrap();
    assert!(v2::parse_public_key(&door_key).is_ok());
    assert_eq!(
        tool["gatewayDoor"], doors[0],
        "the gateway's door, also on its own"
    );
    let keys: Vec<&str> = tool
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "accessToolId",
            "devicePubKey",
            "issuedOn",
            "expiresOn",
            "endpoints",
            "gatewayDoor"
        ]
    );
    assert_eq!(me(&gw, &http, &dev).await["accessTool"], tool);

    // An idempotent retry a day later: the same tool, extended as a refresh would.
    gw.clock.advance(86_400);
    let (status, again) = register(&gw, &http, &dev, &k).await;
    assert_eq!(status, 201);
    assert_eq!(again["accessToolId"], id.as_str());
    assert_eq!(again["issuedOn"], "2026-01-13T10:40:00Z");
    assert_eq!(again["expiresOn"], "2026-01-21T10:40:00Z");

    // Refresh: 200, now + lifetime; never earlier than it was. An expired tool refreshes too.
    gw.clock.advance(10 * 86_400);
    let (status, fresh) = refresh(&gw, &http, &dev, &json!(id)).await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["accessToolId"], id.as_str());
    assert_eq!(fresh["expiresOn"], "2026-01-31T10:40:00Z");

    // A new key voids the old tool and issues another.
    let k2 = phone_key(0x22);
    let (status, second) = register(&gw, &http, &dev, &k2).await;
    assert_eq!(status, 201);
    assert_ne!(second["accessToolId"], id.as_str());
    assert_eq!(second["devicePubKey"], k2.pubkey.as_str());
    let (status, gone) = refresh(&gw, &http, &dev, &json!(id)).await;
    assert_eq!((status, code(&gone)), (404, "NOT_FOUND"));
    assert_eq!(me(&gw, &http, &dev).await["accessTool"], second);

    let actions: Vec<(String, String)> = gw
        .events("device.tool")
        .await
        .into_iter()
        .map(|(_, d)| {
            (
                d["action"].as_str().unwrap().to_owned(),
                d["accessToolId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let second_id = second["accessToolId"].as_str().unwrap().to_owned();
    assert_eq!(
        actions,
        [
            ("issued".into(), id.clone()),
            ("refreshed".into(), id.clone()),
            ("refreshed".into(), id.clone()),
            ("voided".into(), id.clone()),
            ("issued".into(), second_id),
        ]
    );
}

#[tokio::test]
async fn bad_requests_revoked_devices_and_other_devices_tools() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let dev = gw.pair(&http, "Pixel").await;
    let other = gw.pair(&http, "iPhone").await;
    let key = dev["deviceKey"].as_str().unwrap();
    let k = phone_key(0x11);

    let off_curve = BASE64.encode(&[4u8; 65]);
    let off_hash = HEXLOWER.encode(&Sha256::digest([4u8; 65]));
    let short = BASE64.encode(&[4u8; 33]);
    let short_hash = HEXLOWER.encode(&Sha256::digest([4u8; 33]));
    let mut wrong = k.hash.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    for (body, field) in [
        (json!({"pubkey": "%%%", "hash": k.hash}), "pubkey"),
        (json!({"pubkey": short, "hash": short_hash}), "pubkey"),
        (json!({"pubkey": off_curve, "hash": off_hash}), "pubkey"),
        (json!({"pubkey": k.pubkey, "hash": wrong}), "hash"),
        (
            json!({"pubkey": k.pubkey, "hash": k.hash.to_uppercase()}),
            "hash",
        ),
        (json!({"pubkey": k.pubkey}), "hash"),
    ] {
        let (status, e) = post(&gw, &http, "/device/register", key, body.clone()).await;
        assert_eq!((status, code(&e)), (400, "BAD_REQUEST"), "{body}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "{msg}");
        assert!(
            !msg.contains(&wrong) && !msg.contains(&k.pubkey),
            "never echoes: {msg}"
        );
    }
    let big = json!({"pubkey": "A".repeat(5000), "hash": k.hash});
    let (status, e) = post(&gw, &http, "/device/register", key, big).await;
    assert_eq!((status, code(&e)), (413, "PAYLOAD_TOO_LARGE"));
    let (status, e) = post(&gw, &http, "/device/register", "dev_nope", json!({})).await;
    assert_eq!((status, code(&e)), (401, "UNAUTHORIZED"));

    // Another device's tool, an unknown one: 404.
    let (_, theirs) = register(&gw, &http, &other, &phone_key(0x33)).await;
    let (status, e) = refresh(&gw, &http, &dev, &theirs["accessToolId"]).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"));
    let (status, e) = refresh(
        &gw,
        &http,
        &dev,
        &json!("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"),
    )
    .await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"));

    // Revoked: 403 on both, and its tool is void.
    let (_, mine) = register(&gw, &http, &dev, &k).await;
    revoke(&gw, &http, &dev).await;
    let (status, e) = register(&gw, &http, &dev, &k).await;
    assert_eq!((status, code(&e)), (403, "DEVICE_REVOKED"));
    let (status, e) = refresh(&gw, &http, &dev, &mine["accessToolId"]).await;
    assert_eq!((status, code(&e)), (403, "DEVICE_REVOKED"));
    let voided = gw.events("device.tool").await;
    let last = &voided.last().unwrap().1;
    assert_eq!(last["action"], "voided");
    assert_eq!(last["accessToolId"], mine["accessToolId"]);
}

#[tokio::test]
async fn ten_concurrent_registers_give_one_live_tool_then_the_limit() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let dev = gw.pair(&http, "Pixel").await;
    let k = phone_key(0x11);
    let answers =
        futures_util::future::join_all((0..10).map(|_| register(&gw, &http, &dev, &k))).await;
    let mut ids: Vec<&str> = answers
        .iter()
        .map(|(s, v)| {
            assert_eq!(*s, 201, "{v}");
            v["accessToolId"].as_str().unwrap()
        })
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one live tool: {ids:?}");
    let issued = gw
        .events("device.tool")
        .await
        .iter()
        .filter(|(_, d)| d["action"] == "issued")
        .count();
    assert_eq!(issued, 1);
    // 10 a minute for register and refresh together.
    let (status, e) = refresh(&gw, &http, &dev, &json!(ids[0])).await;
    assert_eq!((status, code(&e)), (429, "RATE_LIMITED"));
    gw.clock.advance(61);
    assert_eq!(refresh(&gw, &http, &dev, &json!(ids[0])).await.0, 200);
}

/// A registered door node with its `gateway_pubkey`.
struct Fake {
    creds: node::Creds,
    gateway_key: ed25519_dalek::VerifyingKey,
}

async fn fake_node(gw: &Gateway, http: &reqwest::Client) -> Fake {
    let t = node::new_token(http, &gw.base, &gw.admin_token, "Front door").await;
    let node_id = t["node_id"].as_str().unwrap().to_owned();
    let r = node::register(
        http,
        &gw.base,
        &node_id,
        t["token"].as_str().unwrap(),
        "door",
    )
    .await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let pk: [u8; 32] = BASE64
        .decode(reg["gateway_pubkey"].as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    Fake {
        creds: node::Creds {
            node_id,
            node_key: reg["node_key"].as_str().unwrap().to_owned(),
            ws_url: reg["ws_url"].as_str().unwrap().to_owned(),
            endpoint: "front-door".into(),
        },
        gateway_key: v2::gateway_key(&pk).unwrap(),
    }
}

/// A verified snapshot: (version, epoch, issued_at, grants).
type Snap = (u64, u32, u64, Vec<v2::Grant>);

/// A `grants` frame, verified as a node does (signature under `gateway_pubkey`, its id).
fn verify(frame: &Value, f: &Fake) -> Snap {
    assert_eq!(frame["type"], "grants", "{frame}");
    let bytes = BASE64
        .decode(frame["snapshot"].as_str().unwrap().as_bytes())
        .unwrap();
    let door_id = *uuid::Uuid::parse_str(&f.creds.node_id).unwrap().as_bytes();
    let v = v2::verify_snapshot(&bytes, &f.gateway_key, &door_id).expect("a valid snapshot");
    (
        v.header.version,
        v.header.epoch,
        v.header.issued_at,
        v.grants().collect(),
    )
}

/// The session's first snapshot (right after `hello`).
async fn session(f: &Fake) -> (node::Ws, Snap, Value) {
    let (ws, _, frame) = node::session_with_grants(&f.creds).await;
    let snap = verify(&frame, f);
    (ws, snap, frame)
}

/// The next `grants` frame, verified.
async fn grants(ws: &mut node::Ws, f: &Fake) -> Snap {
    verify(&node::recv(ws).await, f)
}

#[tokio::test]
async fn a_node_gets_signed_grants_after_hello_and_after_every_change() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let f = fake_node(&gw, &http).await;
    let (mut ws, (v0, e0, _, g0), frame) = session(&f).await;
    assert!(g0.is_empty());
    assert_eq!(frame["pulse_ms"], 3000);
    assert!(
        v0 >= u64::try_from(T0).unwrap() * 1000,
        "version starts at the time in ms"
    );

    // A phone registers: the node's snapshot gains its grant for the node's endpoint.
    let dev = gw.pair(&http, "Pixel").await;
    let k = phone_key(0x11);
    let (_, tool) = register(&gw, &http, &dev, &k).await;
    let node_door = &tool["endpoints"][0]["doors"][0];
    assert_eq!(node_door["kind"], "node");
    assert_eq!(node_door["nodeId"], f.creds.node_id.as_str());
    assert_eq!(node_door["doorId"], f.creds.node_id.replace('-', ""));
    assert_eq!(node_door["pubkey"], node::PUBKEY);
    let (v1, e1, issued, g1) = grants(&mut ws, &f).await;
    assert!(v1 > v0);
    assert_eq!(e1, e0);
    assert_eq!(issued, u64::try_from(T0).unwrap());
    assert_eq!(g1.len(), 1);
    let g = &g1[0];
    let tool_id = *uuid::Uuid::parse_str(tool["accessToolId"].as_str().unwrap())
        .unwrap()
        .as_bytes();
    assert_eq!(g.tool_id, tool_id);
    assert_eq!(g.endpoint, EndpointId::new("front-door").unwrap());
    assert_eq!(
        (g.not_before, g.expires),
        (1_768_300_800, 1_768_300_800 + 604_800)
    );
    assert_eq!(BASE64.encode(&g.phone_key), k.pubkey);

    // The node applies it: the nodes API shows what it applied.
    node::send(
        &mut ws,
        json!({"type":"grants_ack","version":v1,"ok":true,"grants":1}),
    )
    .await;
    let applied = common::poll("the ack recorded", async || {
        let n: Value = http
            .get(gw.url(&format!("/api/v0/nodes/{}", f.creds.node_id)))
            .bearer_auth(&gw.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (n["grants"]["applied"] == json!(v1)).then_some(n["grants"].clone())
    })
    .await;
    assert_eq!(applied, json!({"version": v1, "count": 1, "applied": v1}));

    // A refresh: a new snapshot, same epoch, a later expiry.
    gw.clock.advance(3600);
    refresh(&gw, &http, &dev, &tool["accessToolId"]).await;
    let (v2_, e2, _, g2) = grants(&mut ws, &f).await;
    assert!(v2_ > v1);
    assert_eq!(e2, e1);
    assert_eq!(g2[0].expires, 1_768_300_800 + 3600 + 604_800);

    // Renaming the node's endpoint: the grant moves to the new id, and the old one is void.
    let r = http
        .patch(gw.url(&format!("/api/nodes/{}", f.creds.node_id)))
        .bearer_auth(&gw.admin_token)
        .json(&json!({"endpoint": "porch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (v3, e3, _, g3) = grants(&mut ws, &f).await;
    assert!(v3 > v2_);
    assert_eq!(e3, e2 + 1);
    assert_eq!(g3.len(), 1);
    assert_eq!(g3[0].endpoint, EndpointId::new("porch").unwrap());

    // Revoking the device removes the grant and raises the epoch.
    revoke(&gw, &http, &dev).await;
    let (v4, e4, _, g4) = grants(&mut ws, &f).await;
    assert!(v4 > v3);
    assert_eq!(e4, e3 + 1);
    assert!(g4.is_empty());
    node::bye(&mut ws).await;
}

/// Time rules on the manual clock: a tool that expired stays a day (a node whose clock runs a
/// little behind says `TOOL_EXPIRED`), then leaves the next snapshot without raising the
/// epoch (nothing was revoked).
#[tokio::test]
async fn expired_tools_leave_the_snapshot_a_day_later_without_a_new_epoch() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let f = fake_node(&gw, &http).await;
    let old = gw.pair(&http, "Old phone").await;
    register(&gw, &http, &old, &phone_key(0x11)).await;
    let (mut ws, (_, e0, _, g0), _) = session(&f).await;
    assert_eq!(g0.len(), 1);

    // 7 days and 23 hours later the old tool has expired, but less than a day ago.
    gw.clock.advance(604_800 + 23 * 3600);
    let new = gw.pair(&http, "New phone").await;
    register(&gw, &http, &new, &phone_key(0x22)).await;
    let (_, e1, _, g1) = grants(&mut ws, &f).await;
    assert_eq!((g1.len(), e1), (2, e0));

    // Another two hours: it is a day past its expiry, and gone at the next change.
    gw.clock.advance(2 * 3600);
    register(&gw, &http, &new, &phone_key(0x22)).await;
    let (_, e2, _, g2) = grants(&mut ws, &f).await;
    assert_eq!((g2.len(), e2), (1, e0));
    assert_eq!(BASE64.encode(&g2[0].phone_key), phone_key(0x22).pubkey);
}

#[tokio::test]
async fn a_cli_revoke_reaches_the_node() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let f = fake_node(&gw, &http).await;
    let dev = gw.pair(&http, "Pixel").await;
    register(&gw, &http, &dev, &phone_key(0x11)).await;
    let (mut ws, (_, e0, _, g0), _) = session(&f).await;
    assert_eq!(g0.len(), 1);

    // `latchkey devices revoke` in its own process, on the running gateway's data dir.
    let dir = gw.dir.path().to_owned();
    let id = dev["deviceId"].as_str().unwrap().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        daemon::run(
            &dir,
            &[
                "--data-dir",
                dir.to_str().unwrap(),
                "devices",
                "revoke",
                &id,
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", daemon::stderr(&out));
    let (_, e1, _, g1) = grants(&mut ws, &f).await;
    assert!(g1.is_empty());
    assert_eq!(e1, e0 + 1);
}

#[tokio::test]
async fn decisions_become_access_events_exactly_once() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let f = fake_node(&gw, &http).await;
    let dev = gw.pair(&http, "Pixel").await;
    let (_, tool) = register(&gw, &http, &dev, &phone_key(0x11)).await;
    let (mut ws, _, _) = session(&f).await;

    let frame = json!({"type":"decisions","lost":2,"unrecognised":5,"entries":[
        {"seq":1,"status":"GRANTED","toolId":tool["accessToolId"],"endpoint":"front-door",
         "phoneTime":1768300812u64,"doorTime":1768300800u64,"offline":true},
        {"seq":2,"status":"UNKNOWN_TOOL","toolId":null,"endpoint":null,"phoneTime":null,
         "doorTime":null,"offline":true}]});
    node::send(&mut ws, frame.clone()).await;
    let ack = node::recv(&mut ws).await;
    assert_eq!(ack, json!({"type":"decisions_ack","upTo":2}));
    // A resend (the ack was lost): acknowledged again, nothing recorded twice.
    node::send(&mut ws, frame).await;
    assert_eq!(
        node::recv(&mut ws).await,
        json!({"type":"decisions_ack","upTo":2})
    );

    let access = gw.events("access.").await;
    assert_eq!(access.len(), 2, "{access:?}");
    assert_eq!(access[0].0, "access.granted");
    assert_eq!(
        access[0].1,
        json!({"deviceId": dev["deviceId"], "deviceName": "Pixel", "endpoint": "front-door",
               "reason": "GRANTED", "transport": "ble", "protocol": 2, "door": "node",
               "nodeId": f.creds.node_id, "toolId": tool["accessToolId"], "offline": true,
               "seq": 1, "doorTime": 1768300800u64, "phoneTime": 1768300812u64})
    );
    assert_eq!(access[1].0, "access.denied");
    assert_eq!(access[1].1["reason"], "UNKNOWN_TOOL");
    assert_eq!(access[1].1["deviceId"], Value::Null);
    let lost = gw.events("node.decisions_lost").await;
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].1, json!({"nodeId": f.creds.node_id, "count": 2}));
    let strangers = gw.events("node.unrecognised").await;
    assert_eq!(
        strangers.len(),
        1,
        "once, not again for the resend: {strangers:?}"
    );
    assert_eq!(
        strangers[0].1,
        json!({"nodeId": f.creds.node_id, "count": 5})
    );

    // Malformed entries: BAD_FRAME, nothing recorded, the session stays.
    for bad in [
        json!({"type":"decisions","entries":[{"seq":3,"status":"OPEN","offline":true}]}),
        json!({"type":"decisions","entries":[{"seq":0,"status":"GRANTED","offline":true}]}),
        json!({"type":"decisions","entries":[{"seq":4,"status":"GRANTED"}]}),
        json!({"type":"decisions","entries":[{"seq":5,"status":"GRANTED","toolId":"x","offline":true}]}),
    ] {
        node::send(&mut ws, bad).await;
        let e = node::recv(&mut ws).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("BAD_FRAME")),
            "{e}"
        );
    }
    node::send(
        &mut ws,
        json!({"type":"decisions","entries":[
        {"seq":3,"status":"TOOL_EXPIRED","toolId":tool["accessToolId"],"endpoint":"front-door",
         "phoneTime":1,"doorTime":2,"offline":false}]}),
    )
    .await;
    assert_eq!(node::recv(&mut ws).await["upTo"], 3);
    assert_eq!(gw.events("access.").await.len(), 3);
}

fn v2_uuid(u: u128) -> String {
    door::uuid(u)
}

/// A connection to the gateway's v2 service, subscribed to its Result.
async fn v2_link(d: &door::Door, address: &str) -> latchkey_bluez_standin::Link {
    let link = d.adapter.connect(address, 185).await.expect("connect");
    link.subscribe(&v2_uuid(v2::RESULT_UUID)).await.unwrap();
    link
}

/// Reads a challenge (one ATT operation) and checks it is the gateway's door's.
async fn v2_challenge(d: &door::Door, link: &latchkey_bluez_standin::Link) -> v2::Challenge {
    let c = link.read(&v2_uuid(v2::CHALLENGE_UUID), 0).await.unwrap();
    let challenge = v2::Challenge::decode(&c).unwrap();
    let door_id = latchkey::grants::snapshot::gateway_door_id(&d.gw.state.gateway_id);
    assert_eq!(challenge.door_id, door_id);
    assert_eq!(challenge.door_time, d.now());
    challenge
}

/// The phone's request for `challenge` (PROTOCOL.md §21 step 4), with its session keys.
fn v2_request(
    d: &door::Door,
    challenge: &v2::Challenge,
    key: &p256::SecretKey,
    door_key: &[u8],
    tool_id: [u8; 16],
    endpoint: &str,
) -> ([u8; Request::LEN], v2::SessionKeys) {
    let secret = PeerSecret::derive(key, door_key, &challenge.door_id).unwrap();
    let keys = secret.session(&challenge.nonce, &challenge.door_id);
    let body = RequestBody {
        tool_id,
        phone_time: d.now(),
        endpoint: EndpointId::new(endpoint).unwrap(),
    };
    let hint = secret.hint(&challenge.nonce);
    (
        Request::seal(&body, &keys, &hint, &challenge.nonce).unwrap(),
        keys,
    )
}

/// Writes `frame` and returns the first Result notification carrying `nonce` (BlueZ notifies
/// every subscriber; a phone skips the others).
async fn v2_write(link: &latchkey_bluez_standin::Link, frame: &[u8], nonce: &[u8; 16]) -> Vec<u8> {
    link.drain_notifications().await;
    link.write(&v2_uuid(v2::REQUEST_UUID), frame).await.unwrap();
    loop {
        let r = link
            .notification(&v2_uuid(v2::RESULT_UUID), door::WAIT)
            .await
            .expect("a result");
        if r.get(2..18) == Some(&nonce[..]) {
            return r;
        }
    }
}

/// One v2 unlock at the gateway's door (PROTOCOL.md §21): read the challenge, seal the request,
/// write it, open the result.
async fn unlock_v2(
    d: &door::Door,
    address: &str,
    key: &p256::SecretKey,
    door_key: &[u8],
    tool_id: [u8; 16],
    endpoint: &str,
) -> v2::VerifiedResult {
    let link = v2_link(d, address).await;
    let challenge = v2_challenge(d, &link).await;
    let (frame, keys) = v2_request(d, &challenge, key, door_key, tool_id, endpoint);
    let r = v2_write(&link, &frame, &challenge.nonce).await;
    ResultFrame::open(&r, &keys, &challenge.nonce).expect("the door's answer")
}

#[tokio::test]
async fn the_gateways_own_door_speaks_v2() {
    let nobody = "00000000-0000-4000-8000-000000000000".to_owned();
    let d = door::Door::start(vec![
        door::endpoint("front", None),
        door::endpoint("garage", Some(vec![nobody])),
    ])
    .await;
    // Both services in the GATT database; the advertisement stays version 1's.
    let services: Vec<String> = d.app.services.iter().map(|s| s.uuid.clone()).collect();
    assert_eq!(
        services,
        [
            door::uuid(latchkey_proto::SERVICE_UUID),
            door::uuid(v2::SERVICE_UUID)
        ]
    );
    let flags = |u| d.app.characteristic(&door::uuid(u)).unwrap().flags.clone();
    assert_eq!(flags(v2::CHALLENGE_UUID), ["read", "notify"]);
    assert_eq!(flags(v2::REQUEST_UUID), ["write"]);
    assert_eq!(flags(v2::RESULT_UUID), ["notify"]);

    let dev = d.gw.pair(&d.http, "Pixel").await;
    let k = phone_key(0x11);
    let (_, tool) = register(&d.gw, &d.http, &dev, &k).await;
    let gateway_door = &tool["endpoints"][0]["doors"][0];
    assert_eq!(gateway_door["kind"], "gateway");
    let door_key = BASE64
        .decode(gateway_door["pubkey"].as_str().unwrap().as_bytes())
        .unwrap();
    let tool_id = *uuid::Uuid::parse_str(tool["accessToolId"].as_str().unwrap())
        .unwrap()
        .as_bytes();

    let phone = "AA:00:00:00:00:01";
    let attempt = async |address, key, endpoint| {
        unlock_v2(&d, address, key, &door_key, tool_id, endpoint).await
    };
    let r = attempt(phone, &k.secret, "front").await;
    assert_eq!(
        (r.status, r.authenticated, r.door_time),
        (Status::Granted, true, Some(d.now()))
    );
    let r = attempt(phone, &k.secret, "garage").await;
    assert_eq!((r.status, r.authenticated), (Status::EndpointDenied, true));
    // A phone without a tool: no grant's hint matches, a plain answer.
    let stranger = phone_key(0x44);
    let r = attempt("AA:00:00:00:00:02", &stranger.secret, "front").await;
    assert_eq!((r.status, r.authenticated), (Status::UnknownTool, false));

    let events = d.access_events().await;
    let reasons: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["GRANTED", "ENDPOINT_DENIED", "UNKNOWN_TOOL"]);
    assert_eq!(events[0].0, "access.granted");
    let e = &events[0].1;
    assert_eq!(
        (
            &e["protocol"],
            &e["door"],
            &e["offline"],
            &e["deviceId"],
            &e["toolId"],
            &e["endpoint"]
        ),
        (
            &json!(2),
            &json!("gateway"),
            &json!(false),
            &dev["deviceId"],
            &tool["accessToolId"],
            &json!("front")
        )
    );
    assert_eq!(events[2].1["deviceId"], Value::Null);

    // Single-use and 30 s (the manual clock): a replayed request and one answering a challenge
    // older than 30 s are refused with a plain NONCE_INVALID.
    let link = v2_link(&d, phone).await;
    let challenge = v2_challenge(&d, &link).await;
    let (frame, keys) = v2_request(&d, &challenge, &k.secret, &door_key, tool_id, "front");
    let r = v2_write(&link, &frame, &challenge.nonce).await;
    let r = ResultFrame::open(&r, &keys, &challenge.nonce).unwrap();
    assert_eq!(r.status, Status::Granted);
    let replayed = v2_write(&link, &frame, &[0; 16]).await;
    assert_eq!(
        replayed,
        ResultFrame::plain(Status::NonceInvalid, &[0; 16]).unwrap()
    );
    let challenge = v2_challenge(&d, &link).await;
    let (frame, _) = v2_request(&d, &challenge, &k.secret, &door_key, tool_id, "front");
    d.gw.clock.advance(31);
    let late = v2_write(&link, &frame, &challenge.nonce).await;
    assert_eq!(
        late,
        ResultFrame::plain(Status::NonceInvalid, &challenge.nonce).unwrap()
    );

    // Revoked: the next attempt no longer finds the grant.
    revoke(&d.gw, &d.http, &dev).await;
    let r = attempt(phone, &k.secret, "front").await;
    assert_eq!((r.status, r.authenticated), (Status::UnknownTool, false));
}
