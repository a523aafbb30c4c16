//! Vehicle keys, the gateway side (issue 12; CONTRACT §6, PROTOCOL.md §27) against the real
//! daemon on loopback: a fake vehicle node provisioned with kind `vehicle` through the real API
//! (holding its own P-256 key to sign pairing challenges with `latchkey_proto::v2::pairing`),
//! a phone with its registered key doing the pairing-session HTTP, and the vehicle's session
//! receiving its signed snapshot. Time rules run on the manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "support/node.rs"]
mod node;

use common::{Gateway, T0};
use data_encoding::{BASE64, HEXLOWER};
use latchkey::config::{ActionConfig, EndpointConfig};
use latchkey_proto::v2::pairing::{self, PairingChallenge, PairingResponse};
use latchkey_proto::v2::{self, EndpointId, PublicKeyBytes};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A phone: its pairing answer (device key) and its registered P-256 key.
struct Phone {
    dev: Value,
    secret: p256::SecretKey,
    pubkey: PublicKeyBytes,
    /// The gateway's door key, from the register answer.
    gateway_door: PublicKeyBytes,
}

/// A vehicle node: its credentials, its own P-256 key, the gateway's Ed25519 key.
struct Vehicle {
    creds: node::Creds,
    secret: p256::SecretKey,
    gateway_key: ed25519_dalek::VerifyingKey,
}

impl Vehicle {
    fn door_id(&self) -> [u8; 16] {
        *uuid::Uuid::parse_str(&self.creds.node_id)
            .unwrap()
            .as_bytes()
    }

    fn hex(&self) -> String {
        HEXLOWER.encode(&self.door_id())
    }

    /// A challenge as the vehicle would answer a read: a fresh nonce, `timestamp`.
    fn challenge(&self, nonce: u8, timestamp: u64) -> Vec<u8> {
        PairingChallenge {
            vehicle_id: self.door_id(),
            nonce: [nonce; 16],
            timestamp,
        }
        .sign(&self.secret)
        .to_vec()
    }
}

fn t0() -> u64 {
    u64::try_from(T0).unwrap()
}

async fn start_gateway() -> Gateway {
    Gateway::start_with(|c| {
        // An endpoint, so that the tool answer names the gateway's door (and its key).
        c.endpoints = vec![EndpointConfig {
            id: "front".into(),
            name: None,
            devices: None,
            action: ActionConfig::None,
        }];
    })
    .await
}

/// A node of `kind` registered with its own key (seeded by `seed`).
async fn provision(
    gw: &Gateway,
    http: &reqwest::Client,
    name: &str,
    kind: &str,
    seed: u8,
) -> Vehicle {
    let secret = v2::parse_secret_key(&[seed; 32]).unwrap();
    let pk = v2::public_key_bytes(&secret.public_key());
    let t = node::new_token(http, &gw.base, &gw.admin_token, name).await;
    let node_id = t["node_id"].as_str().unwrap().to_owned();
    let r = http
        .post(gw.url("/api/v0/nodes/register"))
        .json(&json!({
            "node_id": node_id,
            "provisioning_token": t["token"],
            "pubkey": BASE64.encode(&pk),
            "kind": kind,
            "firmware": "0.1.0",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let gk: [u8; 32] = BASE64
        .decode(reg["gateway_pubkey"].as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    Vehicle {
        creds: node::Creds {
            node_id,
            node_key: reg["node_key"].as_str().unwrap().to_owned(),
            ws_url: reg["ws_url"].as_str().unwrap().to_owned(),
            endpoint: String::new(),
        },
        secret,
        gateway_key: v2::gateway_key(&gk).unwrap(),
    }
}

async fn vehicle(gw: &Gateway, http: &reqwest::Client, seed: u8) -> Vehicle {
    provision(gw, http, "Car", "vehicle", seed).await
}

async fn send(
    gw: &Gateway,
    http: &reqwest::Client,
    method: reqwest::Method,
    path: &str,
    device_key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http
        .request(method, gw.url(path))
        .header("authorization", format!("Device {device_key}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn key(p: &Phone) -> &str {
    p.dev["deviceKey"].as_str().unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// Pairs a phone and registers its key (seed `seed`).
async fn phone(gw: &Gateway, http: &reqwest::Client, name: &str, seed: u8) -> Phone {
    let dev = gw.pair(http, name).await;
    let secret = v2::parse_secret_key(&[seed; 32]).unwrap();
    let pubkey = v2::public_key_bytes(&secret.public_key());
    let (status, tool) = send(
        gw,
        http,
        reqwest::Method::POST,
        "/device/register",
        dev["deviceKey"].as_str().unwrap(),
        Some(json!({
            "pubkey": BASE64.encode(&pubkey),
            "hash": HEXLOWER.encode(&Sha256::digest(pubkey)),
        })),
    )
    .await;
    assert_eq!(status, 201, "{tool}");
    let gateway_door = tool["endpoints"][0]["doors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "gateway")
        .map(|d| {
            BASE64
                .decode(d["pubkey"].as_str().unwrap().as_bytes())
                .unwrap()
        })
        .unwrap()
        .try_into()
        .unwrap();
    Phone {
        dev,
        secret,
        pubkey,
        gateway_door,
    }
}

/// `POST /pairing-sessions` for `frame` at `v`.
async fn start(
    gw: &Gateway,
    http: &reqwest::Client,
    p: &Phone,
    v: &Vehicle,
    frame: &[u8],
) -> (u16, Value) {
    let body = json!({
        "vehicleId": v.creds.node_id,
        "deviceId": v.hex(),
        "nonce": BASE64.encode(frame),
        "rssi": -60,
    });
    start_body(gw, http, p, body).await
}

async fn start_body(gw: &Gateway, http: &reqwest::Client, p: &Phone, body: Value) -> (u16, Value) {
    send(
        gw,
        http,
        reqwest::Method::POST,
        "/pairing-sessions",
        key(p),
        Some(body),
    )
    .await
}

fn session_bytes(session: &Value) -> [u8; 16] {
    *uuid::Uuid::parse_str(session["sessionId"].as_str().unwrap())
        .unwrap()
        .as_bytes()
}

/// The completion body `signer` makes for `session` over `frame` (sealed with `sealer`'s key).
fn completion(sealer: &Phone, signer: &Phone, session: &Value, frame: &[u8]) -> Value {
    let sid = session_bytes(session);
    let sealed = pairing::seal_approval(&sealer.secret, &sealer.gateway_door, &sid, frame).unwrap();
    let sig = pairing::sign_completion(&signer.secret, &sid, frame, &sealed);
    json!({"encryptedResponse": BASE64.encode(&sealed), "signature": BASE64.encode(&sig)})
}

async fn complete_body(
    gw: &Gateway,
    http: &reqwest::Client,
    p: &Phone,
    session: &Value,
    body: Value,
) -> (u16, Value) {
    let path = format!(
        "/pairing-sessions/{}/complete",
        session["sessionId"].as_str().unwrap()
    );
    send(gw, http, reqwest::Method::POST, &path, key(p), Some(body)).await
}

async fn complete(
    gw: &Gateway,
    http: &reqwest::Client,
    p: &Phone,
    session: &Value,
    frame: &[u8],
) -> (u16, Value) {
    complete_body(gw, http, p, session, completion(p, p, session, frame)).await
}

/// start + complete: the completion answer.
async fn pair_vehicle(
    gw: &Gateway,
    http: &reqwest::Client,
    p: &Phone,
    v: &Vehicle,
    nonce: u8,
) -> Value {
    // A vehicle that does not know the time (timestamp 0).
    let frame = v.challenge(nonce, 0);
    let (status, s) = start(gw, http, p, v, &frame).await;
    assert_eq!(status, 201, "{s}");
    let (status, done) = complete(gw, http, p, &s, &frame).await;
    assert_eq!(status, 200, "{done}");
    done
}

async fn keys(gw: &Gateway, http: &reqwest::Client, p: &Phone, query: &str) -> Value {
    let (status, v) = send(
        gw,
        http,
        reqwest::Method::GET,
        &format!("/device/keys{query}"),
        key(p),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v["keys"].clone()
}

/// A verified snapshot: (version, epoch, grants).
type Snap = (u64, u32, Vec<v2::Grant>);

fn verify(frame: &Value, v: &Vehicle) -> Snap {
    assert_eq!(frame["type"], "grants", "{frame}");
    let bytes = BASE64
        .decode(frame["snapshot"].as_str().unwrap().as_bytes())
        .unwrap();
    let s = v2::verify_snapshot(&bytes, &v.gateway_key, &v.door_id()).expect("a valid snapshot");
    (s.header.version, s.header.epoch, s.grants().collect())
}

/// The vehicle's session (NODES.md §4 with `kind: vehicle`) and its first snapshot.
async fn session(v: &Vehicle) -> (node::Ws, Snap) {
    let mut ws = node::connect(&v.creds.ws_url, &v.creds.node_key)
        .await
        .expect("upgrade");
    let hello = node::recv(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    node::send(
        &mut ws,
        json!({"type":"status","kind":"vehicle","firmware":"0.1.0","relay":"idle","uptime":5}),
    )
    .await;
    let first = node::recv(&mut ws).await;
    let snap = verify(&first, v);
    (ws, snap)
}

async fn grants(ws: &mut node::Ws, v: &Vehicle) -> Snap {
    verify(&node::recv(ws).await, v)
}

fn tool_id(key_id: &Value) -> [u8; 16] {
    *uuid::Uuid::parse_str(key_id.as_str().unwrap())
        .unwrap()
        .as_bytes()
}

#[tokio::test]
async fn a_completed_pairing_issues_a_key_the_vehicle_verifies_and_receives() {
    let gw = start_gateway().await;
    let http = reqwest::Client::new();
    let v = vehicle(&gw, &http, 0x51).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let (mut ws, (v0, e0, g0)) = session(&v).await;
    assert!(g0.is_empty());

    let frame = v.challenge(7, t0() - 30);
    let (status, s) = start(&gw, &http, &p, &v, &frame).await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["expiresAt"], "2026-01-13T10:41:00Z", "60 s");
    let (status, done) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!(status, 200, "{done}");

    let k = &done["key"];
    let fields: Vec<&str> = k.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        fields,
        [
            "keyId",
            "vehicleId",
            "deviceId",
            "issuedOn",
            "expiresOn",
            "endpoint",
            "doorId",
            "pubkey"
        ]
    );
    assert_eq!(k["vehicleId"], v.creds.node_id.as_str());
    assert_eq!(k["deviceId"], p.dev["deviceId"]);
    assert_eq!(k["endpoint"], "vehicle");
    assert_eq!(k["doorId"], v.hex());
    assert_eq!(
        k["pubkey"],
        BASE64.encode(&v2::public_key_bytes(&v.secret.public_key()))
    );
    assert_eq!(k["issuedOn"], "2026-01-13T10:40:00Z");
    assert_eq!(k["expiresOn"], "2026-02-12T10:40:00Z", "30 days by default");

    // The BLE payload is what the vehicle verifies under its gateway_pubkey.
    let payload = BASE64
        .decode(done["bleResponsePayload"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(payload.len(), pairing::RESPONSE_LEN);
    let r = PairingResponse::verify(&payload, &v.door_id(), &v.gateway_key).expect("verifies");
    assert_eq!(r.nonce, [7; 16]);
    assert_eq!(r.key_id, tool_id(&k["keyId"]));
    assert_eq!(r.phone_key, p.pubkey);
    assert_eq!((r.not_before, r.expires), (t0(), t0() + 2_592_000));
    assert_eq!(r.epoch, e0);
    // Under another vehicle's id it does not.
    assert!(PairingResponse::verify(&payload, &[0; 16], &v.gateway_key).is_err());

    // The vehicle's next snapshot holds the key's grant: what the response's grant says.
    let (v1, e1, g1) = grants(&mut ws, &v).await;
    assert!(v1 > v0);
    assert_eq!(e1, e0);
    assert_eq!(g1, vec![r.grant(&v.door_id()).unwrap()]);
    assert_eq!(g1[0].endpoint, EndpointId::new("vehicle").unwrap());

    // Listed, for that vehicle and in all; /api/me too.
    assert_eq!(
        keys(&gw, &http, &p, &format!("?vehicleId={}", v.creds.node_id)).await,
        json!([k])
    );
    assert_eq!(keys(&gw, &http, &p, "").await, json!([k]));
    assert_eq!(
        keys(&gw, &http, &p, &format!("?vehicleId={}", uuid::Uuid::nil())).await,
        json!([])
    );
    let (_, me) = send(&gw, &http, reqwest::Method::GET, "/api/me", key(&p), None).await;
    assert_eq!(me["vehicleKeys"], json!([k]));
    assert_ne!(me["accessTool"]["accessToolId"], k["keyId"]);

    // The audit log: started, completed; the key issued, naming its vehicle.
    let pairing: Vec<Value> = gw
        .events("vehicle.pairing")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(pairing.len(), 2);
    assert_eq!(
        pairing[0],
        json!({"sessionId": s["sessionId"], "vehicleId": v.creds.node_id,
               "deviceId": p.dev["deviceId"], "rssi": -60, "state": "started"})
    );
    assert_eq!(pairing[1]["state"], "completed");
    assert_eq!(pairing[1]["keyId"], k["keyId"]);
    let issued = gw
        .events("device.tool")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["accessToolId"] == k["keyId"])
        .unwrap();
    assert_eq!(issued["action"], "issued");
    assert_eq!(issued["vehicleId"], v.creds.node_id.as_str());

    // A refresh (as the phone's upkeep does) extends the key by its own lifetime, and the
    // vehicle's snapshot follows.
    gw.clock.advance(3600);
    let (status, fresh) = send(
        &gw,
        &http,
        reqwest::Method::POST,
        "/device/refresh",
        key(&p),
        Some(json!({"accessToolId": k["keyId"]})),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["keyId"], k["keyId"]);
    assert_eq!(fresh["expiresOn"], "2026-02-12T11:40:00Z");
    let (_, e2, g2) = grants(&mut ws, &v).await;
    assert_eq!(e2, e0);
    assert_eq!(g2[0].expires, t0() + 3600 + 2_592_000);

    // Re-pairing the same vehicle voids the previous key: the snapshot swaps it, epoch + 1,
    // and the new response carries that epoch.
    let again = pair_vehicle(&gw, &http, &p, &v, 8).await;
    assert_ne!(again["key"]["keyId"], k["keyId"]);
    let (_, e3, g3) = grants(&mut ws, &v).await;
    assert_eq!(e3, e0 + 1);
    assert_eq!(g3.len(), 1);
    assert_eq!(g3[0].tool_id, tool_id(&again["key"]["keyId"]));
    let payload = BASE64
        .decode(again["bleResponsePayload"].as_str().unwrap().as_bytes())
        .unwrap();
    let r = PairingResponse::verify(&payload, &v.door_id(), &v.gateway_key).unwrap();
    assert_eq!(r.epoch, e3);
    assert_eq!(keys(&gw, &http, &p, "").await, json!([again["key"]]));
    node::bye(&mut ws).await;
}

#[tokio::test]
async fn replayed_foreign_and_stale_challenges_are_refused() {
    let gw = start_gateway().await;
    let http = reqwest::Client::new();
    let v = vehicle(&gw, &http, 0x51).await;
    let other = vehicle(&gw, &http, 0x52).await;
    let door = provision(&gw, &http, "Front door", "door", 0x53).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let q = phone(&gw, &http, "iPhone", 0x22).await;

    let frame = v.challenge(1, 0);
    assert_eq!(start(&gw, &http, &p, &v, &frame).await.0, 201);
    // The same challenge again, by the same or another phone: refused.
    for who in [&p, &q] {
        let (status, e) = start(&gw, &http, who, &v, &frame).await;
        assert_eq!((status, code(&e)), (400, "BAD_REQUEST"), "{e}");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("challenge already used"));
    }

    let bad = |status: u16, e: &Value, field: &str| {
        assert_eq!((status, code(e)), (400, "BAD_REQUEST"), "{e}");
        let m = e["error"]["message"].as_str().unwrap();
        assert!(m.contains(field), "{m}");
    };
    // Signed by another vehicle, presented for this one.
    let foreign = other.challenge(2, t0());
    let (status, e) = start(&gw, &http, &q, &v, &foreign).await;
    bad(status, &e, "nonce");
    // Signed by this vehicle's key but naming another vehicle.
    let mut named = PairingChallenge {
        vehicle_id: other.door_id(),
        nonce: [3; 16],
        timestamp: t0(),
    };
    let (status, e) = start(&gw, &http, &q, &v, &named.sign(&v.secret)).await;
    bad(status, &e, "nonce");
    // deviceId must be the vehicle's (and the challenge's).
    named.vehicle_id = v.door_id();
    let good = named.sign(&v.secret);
    let body = json!({"vehicleId": v.creds.node_id, "deviceId": other.hex(),
                      "nonce": BASE64.encode(&good), "rssi": -60});
    let (status, e) = start_body(&gw, &http, &q, body).await;
    bad(status, &e, "deviceId");
    // Tampered, truncated, not base64.
    let mut tampered = good;
    tampered[40] ^= 1;
    let (status, e) = start(&gw, &http, &q, &v, &tampered).await;
    bad(status, &e, "nonce");
    let (status, e) = start(&gw, &http, &q, &v, &good[..105]).await;
    bad(status, &e, "nonce");
    let body =
        json!({"vehicleId": v.creds.node_id, "deviceId": v.hex(), "nonce": "%%", "rssi": -60});
    let (status, e) = start_body(&gw, &http, &q, body).await;
    bad(status, &e, "nonce");
    // rssi: an integer within −127..20.
    for rssi in [json!(21), json!(-128), json!("x"), json!(1.5)] {
        let body = json!({"vehicleId": v.creds.node_id, "deviceId": v.hex(),
                          "nonce": BASE64.encode(&good), "rssi": rssi});
        let (status, e) = start_body(&gw, &http, &q, body).await;
        bad(status, &e, "rssi");
    }

    // Stale: more than 120 s off the gateway's clock, either way; 120 s is fine.
    for (nonce, ts) in [(4, t0() - 121), (5, t0() + 121)] {
        let (status, e) = start(&gw, &http, &q, &v, &v.challenge(nonce, ts)).await;
        bad(status, &e, "stale");
    }
    assert_eq!(
        start(&gw, &http, &q, &v, &v.challenge(6, t0() - 120))
            .await
            .0,
        201
    );

    // A door node is not a vehicle; nor is an unknown or malformed id.
    let door_frame = PairingChallenge {
        vehicle_id: door.door_id(),
        nonce: [9; 16],
        timestamp: 0,
    }
    .sign(&door.secret);
    let (status, e) = start(&gw, &http, &q, &door, &door_frame).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");
    for id in [uuid::Uuid::nil().to_string(), "car".into()] {
        let body =
            json!({"vehicleId": id, "deviceId": v.hex(), "nonce": BASE64.encode(&good), "rssi": 0});
        let (status, e) = start_body(&gw, &http, &q, body).await;
        assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");
    }
    // A revoked vehicle neither.
    let r = http
        .post(gw.url(&format!("/api/nodes/{}/revoke", other.creds.node_id)))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, e) = start(&gw, &http, &q, &other, &other.challenge(10, t0())).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");

    // A device without a phone key is told to register one first.
    let bare = gw.pair(&http, "Bare").await;
    let body = json!({"vehicleId": v.creds.node_id, "deviceId": v.hex(),
                      "nonce": BASE64.encode(&v.challenge(11, 0)), "rssi": -60});
    let (status, e) = send(
        &gw,
        &http,
        reqwest::Method::POST,
        "/pairing-sessions",
        bare["deviceKey"].as_str().unwrap(),
        Some(body),
    )
    .await;
    assert_eq!((status, code(&e)), (400, "BAD_REQUEST"), "{e}");
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("register a phone key first"));
    // Nothing was issued through any of this.
    assert!(gw
        .events("device.tool")
        .await
        .iter()
        .all(|(_, d)| d.get("vehicleId").is_none()));
}

#[tokio::test]
async fn sessions_expire_complete_once_and_refuse_forgeries() {
    let gw = start_gateway().await;
    let http = reqwest::Client::new();
    let v = vehicle(&gw, &http, 0x51).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let q = phone(&gw, &http, "iPhone", 0x22).await;

    // Expired: 60 s later the session is gone (manual clock).
    let frame = v.challenge(1, 0);
    let (_, s) = start(&gw, &http, &p, &v, &frame).await;
    gw.clock.advance(60);
    let (status, e) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!((status, code(&e)), (410, "PAIRING_SESSION_EXPIRED"), "{e}");

    // Another device's session is unknown to it.
    let frame = v.challenge(2, 0);
    let (_, s) = start(&gw, &http, &p, &v, &frame).await;
    let (status, e) = complete(&gw, &http, &q, &s, &frame).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");
    let path = format!("/pairing-sessions/{}", s["sessionId"].as_str().unwrap());
    let (status, e) = send(&gw, &http, reqwest::Method::DELETE, &path, key(&q), None).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");
    let unknown = json!({"sessionId": uuid::Uuid::nil().to_string()});
    let (status, e) = complete(&gw, &http, &p, &unknown, &frame).await;
    assert_eq!((status, code(&e)), (404, "NOT_FOUND"), "{e}");

    // Signed by another device's key (sealed with it too, or with the owner's): 403, and
    // the session is still there for its owner.
    for body in [
        completion(&q, &q, &s, &frame),
        completion(&p, &q, &s, &frame),
    ] {
        let (status, e) = complete_body(&gw, &http, &p, &s, body).await;
        assert_eq!((status, code(&e)), (403, "FORBIDDEN"), "{e}");
    }
    // A ciphertext that does not open (the signature over it is the owner's): 403.
    let sid = session_bytes(&s);
    let mut sealed = pairing::seal_approval(&p.secret, &p.gateway_door, &sid, &frame).unwrap();
    sealed[0] ^= 1;
    let sig = pairing::sign_completion(&p.secret, &sid, &frame, &sealed);
    let body =
        json!({"encryptedResponse": BASE64.encode(&sealed), "signature": BASE64.encode(&sig)});
    let (status, e) = complete_body(&gw, &http, &p, &s, body).await;
    assert_eq!((status, code(&e)), (403, "FORBIDDEN"), "{e}");
    // An approval of another challenge: 403.
    let other_frame = v.challenge(99, 0);
    let sealed = pairing::seal_approval(&p.secret, &p.gateway_door, &sid, &other_frame).unwrap();
    let sig = pairing::sign_completion(&p.secret, &sid, &frame, &sealed);
    let body =
        json!({"encryptedResponse": BASE64.encode(&sealed), "signature": BASE64.encode(&sig)});
    let (status, e) = complete_body(&gw, &http, &p, &s, body).await;
    assert_eq!((status, code(&e)), (403, "FORBIDDEN"), "{e}");
    // Bad base64 and lengths: 400.
    for body in [
        json!({"encryptedResponse": "%%", "signature": "AA=="}),
        json!({"encryptedResponse": BASE64.encode(&[0u8; 48]), "signature": BASE64.encode(&[0u8; 64])}),
        json!({"encryptedResponse": BASE64.encode(&[0u8; 49]), "signature": BASE64.encode(&[0u8; 63])}),
        json!({"signature": BASE64.encode(&[0u8; 64])}),
    ] {
        let (status, e) = complete_body(&gw, &http, &p, &s, body.clone()).await;
        assert_eq!((status, code(&e)), (400, "BAD_REQUEST"), "{body} {e}");
    }
    assert!(keys(&gw, &http, &p, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    assert!(keys(&gw, &http, &q, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());

    // The owner completes: 20 at once give exactly one key.
    let answers =
        futures_util::future::join_all((0..20).map(|_| complete(&gw, &http, &p, &s, &frame))).await;
    let ok = answers.iter().filter(|(st, _)| *st == 200).count();
    let used = answers
        .iter()
        .filter(|(st, e)| *st == 410 && code(e) == "PAIRING_SESSION_USED")
        .count();
    assert_eq!((ok, used), (1, 19), "{answers:?}");
    assert_eq!(keys(&gw, &http, &p, "").await.as_array().unwrap().len(), 1);
    // A second completion later: 410 used.
    let (status, e) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!((status, code(&e)), (410, "PAIRING_SESSION_USED"));
    // Cancelling it afterwards (the vehicle refused the response): the key it issued is voided.
    let (status, c) = send(&gw, &http, reqwest::Method::DELETE, &path, key(&p), None).await;
    assert_eq!((status, c["cancelled"].clone()), (200, json!(true)), "{c}");
    assert!(keys(&gw, &http, &p, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let (status, e) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!((status, code(&e)), (410, "PAIRING_SESSION_USED"));

    // Cancel: 200 (twice), then completing is 410; the event says cancelled.
    gw.clock.advance(61);
    let frame = v.challenge(3, 0);
    let (_, s) = start(&gw, &http, &p, &v, &frame).await;
    let path = format!("/pairing-sessions/{}", s["sessionId"].as_str().unwrap());
    for _ in 0..2 {
        let (status, c) = send(&gw, &http, reqwest::Method::DELETE, &path, key(&p), None).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c, json!({"sessionId": s["sessionId"], "cancelled": true}));
    }
    let (status, e) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!((status, code(&e)), (410, "PAIRING_SESSION_USED"));
    let states: Vec<(Value, Value)> = gw
        .events("vehicle.pairing")
        .await
        .into_iter()
        .map(|(_, d)| (d["sessionId"].clone(), d["state"].clone()))
        .collect();
    assert_eq!(
        states
            .iter()
            .filter(|(id, _)| *id == s["sessionId"])
            .collect::<Vec<_>>(),
        [
            &(s["sessionId"].clone(), json!("started")),
            &(s["sessionId"].clone(), json!("cancelled"))
        ]
    );

    // Five forgeries consume a session.
    let frame = v.challenge(4, 0);
    let (_, s) = start(&gw, &http, &p, &v, &frame).await;
    for _ in 0..5 {
        let (status, _) = complete_body(&gw, &http, &p, &s, completion(&q, &q, &s, &frame)).await;
        assert_eq!(status, 403);
    }
    let (status, e) = complete(&gw, &http, &p, &s, &frame).await;
    assert_eq!((status, code(&e)), (410, "PAIRING_SESSION_USED"));
    // Nothing issued (the one key it had was voided by the cancel above).
    assert!(keys(&gw, &http, &p, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn revocations_reach_the_vehicle_and_the_admin_sees_keys() {
    let gw = start_gateway().await;
    let http = reqwest::Client::new();
    let v = vehicle(&gw, &http, 0x51).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let q = phone(&gw, &http, "iPhone", 0x22).await;
    let kp = pair_vehicle(&gw, &http, &p, &v, 1).await["key"].clone();
    let kq = pair_vehicle(&gw, &http, &q, &v, 2).await["key"].clone();
    let (mut ws, (_, e0, g0)) = session(&v).await;
    assert_eq!(g0.len(), 2);

    // The admin list: both, with names.
    let list: Value = http
        .get(gw.url("/api/vehicle-keys"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = list["keys"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let mut first = kp.clone();
    first["deviceName"] = json!("Pixel");
    first["vehicleName"] = json!("Car");
    assert!(list.contains(&first), "{list:?}");
    let r = http
        .get(gw.url("/api/vehicle-keys"))
        .header("authorization", format!("Device {}", key(&p)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "admin only");

    // Admin revoke: the key is void, the vehicle's snapshot drops it with a new epoch.
    let path = format!("/api/vehicle-keys/{}/revoke", kq["keyId"].as_str().unwrap());
    let r = http
        .post(gw.url(&path))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"keyId": kq["keyId"], "revoked": true}));
    let (_, e1, g1) = grants(&mut ws, &v).await;
    assert_eq!(e1, e0 + 1);
    assert_eq!(g1.len(), 1);
    assert_eq!(g1[0].tool_id, tool_id(&kp["keyId"]));
    assert!(keys(&gw, &http, &q, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let voided = gw
        .events("device.tool")
        .await
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["accessToolId"] == kq["keyId"] && d["action"] == "voided")
        .unwrap();
    assert_eq!(voided["vehicleId"], v.creds.node_id.as_str());
    // A voided key cannot be refreshed; an unknown one cannot be revoked.
    let (status, _) = send(
        &gw,
        &http,
        reqwest::Method::POST,
        "/device/refresh",
        key(&q),
        Some(json!({"accessToolId": kq["keyId"]})),
    )
    .await;
    assert_eq!(status, 404);
    let r = http
        .post(gw.url(&format!("/api/vehicle-keys/{}/revoke", uuid::Uuid::nil())))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Revoking the device voids its key: the snapshot is empty, epoch + 1.
    let r = http
        .post(gw.url(&format!(
            "/api/devices/{}/revoke",
            p.dev["deviceId"].as_str().unwrap()
        )))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, e2, g2) = grants(&mut ws, &v).await;
    assert_eq!(e2, e1 + 1);
    assert!(g2.is_empty());
    let list: Value = http
        .get(gw.url("/api/vehicle-keys"))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["keys"], json!([]));
    node::bye(&mut ws).await;
}

#[tokio::test]
async fn five_sessions_a_minute_per_device() {
    let gw = start_gateway().await;
    let http = reqwest::Client::new();
    let v = vehicle(&gw, &http, 0x51).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let q = phone(&gw, &http, "iPhone", 0x22).await;
    for n in 0..5 {
        assert_eq!(start(&gw, &http, &p, &v, &v.challenge(n, 0)).await.0, 201);
    }
    let (status, e) = start(&gw, &http, &p, &v, &v.challenge(5, 0)).await;
    assert_eq!((status, code(&e)), (429, "RATE_LIMITED"), "{e}");
    // Per device: another phone is not held back.
    assert_eq!(start(&gw, &http, &q, &v, &v.challenge(6, 0)).await.0, 201);
    gw.clock.advance(61);
    assert_eq!(start(&gw, &http, &p, &v, &v.challenge(7, 0)).await.0, 201);
}

fn cookie(resp: &reqwest::Response, name: &str) -> String {
    let v = resp
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .expect("cookie");
    v.split(';').next().unwrap().to_owned()
}

fn csrf_in(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("page has a csrf field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// The nodes page lists a vehicle's keys with their count and a revoke button that needs the
/// session's CSRF token.
#[tokio::test]
async fn the_nodes_page_lists_a_vehicles_keys_and_revokes_one() {
    const PASSWORD: &str = "correct horse battery staple";
    let gw = start_gateway().await;
    let now = gw.state.now();
    gw.state
        .store
        .write_blocking(|tx| Ok(latchkey::admin::set_password(tx, PASSWORD, now)))
        .unwrap()
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let v = vehicle(&gw, &http, 0x51).await;
    let p = phone(&gw, &http, "Pixel", 0x11).await;
    let k = pair_vehicle(&gw, &http, &p, &v, 1).await["key"].clone();
    let key_id = k["keyId"].as_str().unwrap();

    let page = http.get(gw.url("/login")).send().await.unwrap();
    let login_cookie = cookie(&page, "latchkey_login");
    let csrf = csrf_in(&page.text().await.unwrap());
    let r = http
        .post(gw.url("/login"))
        .header(reqwest::header::COOKIE, login_cookie)
        .form(&[("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = cookie(&r, "latchkey_session");
    let nodes_page = || async {
        http.get(gw.url("/nodes"))
            .header(reqwest::header::COOKIE, &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let html = nodes_page().await;
    assert!(
        html.contains(&format!(
            r#"<tr class="vehicle-keys" data-vehicle-id="{}">"#,
            v.creds.node_id
        )),
        "{html}"
    );
    assert!(html.contains(r#"<span class="key-count">1</span> live vehicle key"#));
    assert!(html.contains(&format!(r#"<li data-key-id="{key_id}">Pixel "#)));
    let action = format!("/nodes/keys/{key_id}/revoke");
    assert!(html.contains(&format!(r#"action="{action}""#)));
    let csrf = csrf_in(&html);

    // Without the CSRF token: refused, nothing voided.
    let r = http
        .post(gw.url(&action))
        .header(reqwest::header::COOKIE, &session)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(keys(&gw, &http, &p, "").await.as_array().unwrap().len(), 1);
    // With it: voided, back to the page, which shows none.
    let r = http
        .post(gw.url(&action))
        .header(reqwest::header::COOKIE, &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[reqwest::header::LOCATION], "/nodes");
    assert!(keys(&gw, &http, &p, "")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let html = nodes_page().await;
    assert!(html.contains(r#"<span class="key-count">0</span> live vehicle keys"#));
    assert!(!html.contains(key_id));
    let voided = gw
        .events("device.tool")
        .await
        .into_iter()
        .any(|(_, d)| d["accessToolId"] == k["keyId"] && d["action"] == "voided");
    assert!(voided);
}
