#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Endpoint nodes (CONTRACT §6, docs/NODES.md) against the real daemon on loopback: tokens,
//! registration, the node session, doors on nodes. The node is scripted from NODES.md.

mod common;
#[path = "support/node.rs"]
mod node;

use std::time::Duration;

use common::{Gateway, T0};
use futures_util::SinkExt;
use latchkey::config::{ActionConfig, EndpointConfig};
use node::{Answer, HANG};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// An admin socket, live from now on, seeing `node.*` and `access.*`.
async fn admin_socket(gw: &Gateway) -> node::Ws {
    let mut req = gw.ws_url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", gw.admin_token)).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let hello = node::recv(&mut ws).await;
    node::send(
        &mut ws,
        json!({"type":"subscribe","topics":["node.*","access.*"]}),
    )
    .await;
    node::send(&mut ws, json!({"type":"resume","since":hello["seq"]})).await;
    ws
}

/// The next event on an admin socket whose topic is `topic` (others are skipped).
async fn event(ws: &mut node::Ws, topic: &str) -> Value {
    loop {
        let f = node::recv(ws).await;
        if f["type"] == "event" && f["topic"] == topic {
            return f["data"].clone();
        }
    }
}

async fn api_get(gw: &Gateway, http: &reqwest::Client, path: &str) -> Value {
    http.get(gw.url(path))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn open(gw: &Gateway, http: &reqwest::Client, endpoint: &str) -> (u16, Value) {
    let r = http
        .post(gw.url(&format!("/api/endpoints/{endpoint}/open")))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn tokens_expire_refresh_and_redeem_once() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let (base, admin) = (gw.base.as_str(), gw.admin_token.as_str());

    let t1 = node::new_token(&http, base, admin, "Front door").await;
    assert_eq!(t1["expires_in"], 600);
    assert_eq!(t1["expires_at"], "2026-01-13T10:50:00Z");
    let id = t1["node_id"].as_str().unwrap().to_owned();
    assert!(t1["token"].as_str().unwrap().starts_with("prov_"));
    let pending = api_get(&gw, &http, &format!("/api/v0/nodes/{id}")).await;
    assert_eq!(pending["state"], "pending");
    assert_eq!(pending["name"], "Front door");

    // Refresh for the same node: same id, the old token is void.
    let r = node::token_request(&http, base, admin, json!({ "node_id": id })).await;
    assert_eq!(r.status(), 201);
    let t2: Value = r.json().await.unwrap();
    assert_eq!(t2["node_id"], id.as_str());
    assert_ne!(t2["token"], t1["token"]);
    let r = node::register(&http, base, &id, t1["token"].as_str().unwrap(), "door").await;
    assert_eq!(r.status(), 401);
    assert_eq!(code(&r.json().await.unwrap()), "PROVISIONING_TOKEN_INVALID");

    // Unknown token, wrong node id for a real token, malformed fields.
    let r = node::register(&http, base, &id, "prov_nope", "door").await;
    assert_eq!(r.status(), 401);
    assert_eq!(code(&r.json().await.unwrap()), "PROVISIONING_TOKEN_INVALID");
    let r = http
        .post(gw.url("/api/v0/nodes/register"))
        .json(&json!({"node_id": id, "provisioning_token": t2["token"], "pubkey": "BAAA", "kind": "door", "firmware": "1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(code(&body), "BAD_REQUEST");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("pubkey"));
    let r = http
        .post(gw.url("/api/v0/nodes/register"))
        .json(&json!({"node_id": id, "provisioning_token": t2["token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The refreshed token works once.
    let r = node::register(&http, base, &id, t2["token"].as_str().unwrap(), "door").await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    assert!(reg["node_key"].as_str().unwrap().starts_with("node_"));
    assert_eq!(reg["gateway_id"], gw.state.gateway_id.as_str());
    assert_eq!(reg["ws_url"], gw.ws_url());
    let pk = data_encoding::BASE64
        .decode(reg["gateway_pubkey"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(pk.len(), 32);
    let r = node::register(&http, base, &id, t2["token"].as_str().unwrap(), "door").await;
    assert_eq!(r.status(), 410);
    assert_eq!(code(&r.json().await.unwrap()), "PROVISIONING_TOKEN_USED");
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{id}")).await;
    assert_eq!(n["state"], "registered");
    assert_eq!(n["kind"], "door");
    assert_eq!(n["endpoint"], "front-door");
    assert_eq!(n["online"], false);
    let listed = api_get(&gw, &http, "/api/nodes").await;
    assert!(!listed
        .to_string()
        .contains(reg["node_key"].as_str().unwrap()));

    // A registered node gets no new token; an unknown one is 404.
    let r = node::token_request(&http, base, admin, json!({ "node_id": id })).await;
    assert_eq!(r.status(), 400);
    let other = "0b8f4c1e-7d3a-4a55-9a4e-5e0f2f1e9c10";
    let r = node::token_request(&http, base, admin, json!({ "node_id": other })).await;
    assert_eq!(r.status(), 404);

    // Expiry on the injected clock: 10 minutes.
    let t3 = node::new_token(&http, base, admin, "Garage").await;
    gw.clock.advance(600);
    let id3 = t3["node_id"].as_str().unwrap();
    let r = node::register(&http, base, id3, t3["token"].as_str().unwrap(), "door").await;
    assert_eq!(r.status(), 410);
    assert_eq!(code(&r.json().await.unwrap()), "PROVISIONING_TOKEN_EXPIRED");

    // Names follow the contract; only the admin gets tokens.
    let r = node::token_request(&http, base, admin, json!({ "name": "evil\u{202e}txt" })).await;
    assert_eq!(r.status(), 400);
    let r = http
        .post(gw.url("/api/v0/provisioning/token"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // An empty body is an empty request.
    let r = http
        .post(gw.url("/api/v0/provisioning/token"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn fifty_racing_registrations_have_one_winner() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let t = node::new_token(&http, &gw.base, &gw.admin_token, "Race").await;
    let (id, token) = (
        t["node_id"].as_str().unwrap().to_owned(),
        t["token"].as_str().unwrap().to_owned(),
    );
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (http, base, id, token) = (http.clone(), gw.base.clone(), id.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            node::register(&http, &base, &id, &token, "door")
                .await
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 410),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn token_guessing_is_throttled_per_address() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let id = "0b8f4c1e-7d3a-4a55-9a4e-5e0f2f1e9c10";
    for _ in 0..10 {
        let r = node::register(&http, &gw.base, id, "prov_guess", "door").await;
        assert_eq!(r.status(), 401);
    }
    let r = node::register(&http, &gw.base, id, "prov_guess", "door").await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(code(&r.json().await.unwrap()), "RATE_LIMITED");
}

#[tokio::test]
async fn node_session_opens_its_door_and_is_cut_off_when_revoked() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let mut admin = admin_socket(&gw).await;
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Front door").await;
    assert_eq!(creds.endpoint, "front-door");
    assert_eq!(
        event(&mut admin, "node.registered").await["nodeId"],
        creds.node_id.as_str()
    );

    // Bad credentials are refused before any upgrade.
    let e = node::connect(&gw.ws_url(), "node_unknown")
        .await
        .unwrap_err();
    assert_eq!(node::refused_status(&e), Some(401));

    let (ws, hello) = node::session(&creds).await;
    assert_eq!(hello["nodeId"], creds.node_id.as_str());
    assert_eq!(hello["gatewayId"], gw.state.gateway_id.as_str());
    assert_eq!(hello["now"], T0);
    assert_eq!(
        event(&mut admin, "node.online").await["nodeId"],
        creds.node_id.as_str()
    );
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{}", creds.node_id)).await;
    assert_eq!(n["online"], true);
    assert!(n["last_seen"].is_string());

    // The door appears among the endpoints and a test open goes through the node.
    let eps = api_get(&gw, &http, "/api/endpoints").await;
    assert_eq!(eps["endpoints"][0]["id"], "front-door");
    assert_eq!(eps["endpoints"][0]["nodeId"], creds.node_id.as_str());
    // A phone learns the node's door from `GET /api/me` like any other endpoint.
    let phone = gw.pair(&http, "Pixel 7").await;
    let me: Value = http
        .get(gw.url("/api/me"))
        .header(
            "Authorization",
            format!("Device {}", phone["deviceKey"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["endpoints"],
        json!([{"id": "front-door", "name": "Front door"}])
    );
    let (task, mut commands) = node::serve(ws, Answer::Ok);
    let (status, body) = open(&gw, &http, "front-door").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "GRANTED");
    let cmd = commands.recv().await.unwrap();
    assert_eq!(cmd["command"], "unlock");
    assert_eq!(cmd["pulse_ms"], 3000);
    assert!(cmd["id"].as_u64().unwrap() > 0);
    let c = event(&mut admin, "node.command").await;
    assert_eq!(c["ok"], true);
    assert_eq!(c["endpoint"], "front-door");
    assert_eq!(c["commandId"], cmd["id"]);
    let g = event(&mut admin, "access.granted").await;
    assert_eq!(g["endpoint"], "front-door");
    assert_eq!(g["transport"], "admin");

    // Revoked: the socket closes with 4403 at once, the node is refused after.
    let r = http
        .post(gw.url(&format!("/api/nodes/{}/revoke", creds.node_id)))
        .bearer_auth(&gw.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let closed = tokio::time::timeout(HANG, task).await.unwrap().unwrap();
    assert_eq!(closed, Some(4403));
    assert_eq!(
        event(&mut admin, "node.revoked").await["nodeId"],
        creds.node_id.as_str()
    );
    assert_eq!(event(&mut admin, "node.offline").await["reason"], "revoked");
    let e = node::connect(&creds.ws_url, &creds.node_key)
        .await
        .unwrap_err();
    assert_eq!(node::refused_status(&e), Some(403));
    // A revoked door is no endpoint any more.
    let (status, body) = open(&gw, &http, "front-door").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_newer_session_replaces_the_older_with_4409() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let mut admin = admin_socket(&gw).await;
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Back door").await;
    let (mut first, _) = node::session(&creds).await;
    event(&mut admin, "node.online").await;
    let (second, _) = node::session(&creds).await;
    assert_eq!(node::close_code(&mut first).await, Some(4409));
    assert_eq!(
        event(&mut admin, "node.offline").await["reason"],
        "replaced"
    );
    event(&mut admin, "node.online").await;
    // The newer session is the one that gets commands.
    let (_task, mut commands) = node::serve(second, Answer::Ok);
    let (status, _) = open(&gw, &http, "back-door").await;
    assert_eq!(status, 200);
    assert!(commands.recv().await.is_some());
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{}", creds.node_id)).await;
    assert_eq!(n["online"], true);
}

#[tokio::test]
async fn offline_silent_or_refusing_nodes_fail_the_door_with_the_reason() {
    let gw = Gateway::start().await;
    gw.state
        .nodes
        .set_timings(Duration::from_secs(20), Duration::from_millis(300));
    let http = reqwest::Client::new();
    let mut admin = admin_socket(&gw).await;
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Side door").await;

    // Offline: at once.
    let (status, body) = open(&gw, &http, "side-door").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(code(&body), "ACTION_FAILED");
    assert_eq!(body["error"]["message"], "node is offline");
    let d = event(&mut admin, "access.denied").await;
    assert_eq!(d["reason"], "ACTION_FAILED");
    assert_eq!(d["detail"], "node is offline");

    // Silent: after the (shortened) bound.
    let (ws, _) = node::session(&creds).await;
    event(&mut admin, "node.online").await;
    let (task, mut commands) = node::serve(ws, Answer::Silent);
    let (status, body) = open(&gw, &http, "side-door").await;
    assert_eq!(status, 502, "{body}");
    assert!(commands.recv().await.is_some(), "the node got the command");
    // The command's outcome is recorded first, then the door's decision.
    let c = event(&mut admin, "node.command").await;
    assert_eq!(c["ok"], false);
    assert_eq!(c["error"], "TIMEOUT");
    let d = event(&mut admin, "access.denied").await;
    assert_eq!(d["detail"], "node did not answer within 300 ms");
    task.abort();
    event(&mut admin, "node.offline").await;

    // Refusing: the node's code in the reason.
    let (ws, _) = node::session(&creds).await;
    event(&mut admin, "node.online").await;
    let (_task, _commands) = node::serve(ws, Answer::Refuse("HARDWARE"));
    let (status, body) = open(&gw, &http, "side-door").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["message"], "node refused: HARDWARE");
    assert_eq!(event(&mut admin, "node.command").await["error"], "HARDWARE");
}

#[tokio::test]
async fn a_node_that_stops_answering_pings_goes_offline() {
    let gw = Gateway::start().await;
    gw.state
        .nodes
        .set_timings(Duration::from_millis(100), Duration::from_secs(5));
    let http = reqwest::Client::new();
    let mut admin = admin_socket(&gw).await;
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Shed").await;
    // Connected, then never read again: no pong goes back.
    let (_ws, _) = node::session(&creds).await;
    event(&mut admin, "node.online").await;
    let off = event(&mut admin, "node.offline").await;
    assert_eq!(off["reason"], "timeout");
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{}", creds.node_id)).await;
    assert_eq!(n["online"], false);
    let (status, body) = open(&gw, &http, "shed").await;
    assert_eq!(status, 502, "{body}");
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_session_stays() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Porch").await;
    let (mut ws, _) = node::session(&creds).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    let e = node::recv(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "BAD_FRAME");
    ws.send(Message::Text("x".repeat(20 * 1024).into()))
        .await
        .unwrap();
    assert_eq!(node::recv(&mut ws).await["code"], "BAD_FRAME");
    // Unknown types are ignored; the session still works.
    node::send(&mut ws, json!({"type":"telemetry","temp":21})).await;
    let (_task, mut commands) = node::serve(ws, Answer::Ok);
    let (status, _) = open(&gw, &http, "porch").await;
    assert_eq!(status, 200);
    assert!(commands.next_or_none().await);
}

/// `recv` with a hang guard, as a bool.
trait NextOrNone {
    async fn next_or_none(&mut self) -> bool;
}

impl NextOrNone for tokio::sync::mpsc::UnboundedReceiver<Value> {
    async fn next_or_none(&mut self) -> bool {
        tokio::time::timeout(HANG, self.recv())
            .await
            .ok()
            .flatten()
            .is_some()
    }
}

#[tokio::test]
async fn configured_node_endpoints_and_rename() {
    let http = reqwest::Client::new();
    // The node id is not known before the gateway makes it: start, provision, restart with
    // a config naming it.
    let gw = Gateway::start().await;
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Gate").await;
    let dir = gw.stop().await;
    let node_id = creds.node_id.clone();
    let gw = Gateway::start_in(dir, T0, move |c| {
        c.endpoints = vec![EndpointConfig {
            id: "yard".into(),
            name: Some("Yard gate".into()),
            devices: None,
            action: ActionConfig::Node {
                node_id,
                pulse_ms: 1500,
            },
        }];
    })
    .await;
    let eps = api_get(&gw, &http, "/api/endpoints").await;
    let ids: Vec<_> = eps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["yard", "gate"]);
    // The node finds the gateway again (its port is new after the restart).
    let creds = node::Creds {
        ws_url: gw.ws_url(),
        ..creds
    };
    let (ws, _) = node::session(&creds).await;
    let (_task, mut commands) = node::serve(ws, Answer::Ok);
    let (status, _) = open(&gw, &http, "yard").await;
    assert_eq!(status, 200);
    assert_eq!(commands.recv().await.unwrap()["pulse_ms"], 1500);

    // Rename: the endpoint id is editable, unique, and may not take a configured one.
    let patch = |body: Value| {
        http.patch(gw.url(&format!("/api/nodes/{}", creds.node_id)))
            .bearer_auth(&gw.admin_token)
            .json(&body)
            .send()
    };
    let r = patch(json!({ "endpoint": "yard" })).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = patch(json!({ "endpoint": "Bad Id" })).await.unwrap();
    assert_eq!(r.status(), 400);
    let r = patch(json!({ "name": "Garden gate", "endpoint": "garden" }))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n: Value = r.json().await.unwrap();
    assert_eq!(n["name"], "Garden gate");
    assert_eq!(n["endpoint"], "garden");
    let (status, _) = open(&gw, &http, "garden").await;
    assert_eq!(status, 200);
    let (status, _) = open(&gw, &http, "gate").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_node_reconnects_after_a_gateway_restart() {
    let gw = Gateway::start().await;
    let http = reqwest::Client::new();
    let creds = node::provisioned(&http, &gw.base, &gw.admin_token, "Cellar").await;
    let (ws, _) = node::session(&creds).await;
    let (task, _commands) = node::serve(ws, Answer::Ok);
    let dir = gw.stop().await;
    assert_eq!(
        tokio::time::timeout(HANG, task).await.unwrap().unwrap(),
        Some(1001)
    );
    let gw = Gateway::start_in(dir, T0 + 60, |_| {}).await;
    let http = reqwest::Client::new();
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{}", creds.node_id)).await;
    assert_eq!(n["online"], false, "offline until it reconnects");
    // The node reconnects with the key it stored (the port is new after a restart).
    let ws_url = gw.ws_url();
    let mut ws = node::connect(&ws_url, &creds.node_key)
        .await
        .expect("upgrade");
    let hello = node::recv(&mut ws).await;
    assert_eq!(hello["now"], T0 + 60);
    let n = api_get(&gw, &http, &format!("/api/v0/nodes/{}", creds.node_id)).await;
    assert_eq!(n["online"], true);
    let (_task, mut commands) = node::serve(ws, Answer::Ok);
    let (status, _) = open(&gw, &http, "cellar").await;
    assert_eq!(status, 200);
    assert!(commands.recv().await.is_some());
}
