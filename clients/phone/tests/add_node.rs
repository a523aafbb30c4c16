#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Seed 004's seven unit tests for the mobile flow, and the `add-node` command's own flow,
//! against an HTTP stand-in (a small axum server on 127.0.0.1:0 that serves both the gateway's
//! provisioning API and a node's AP API and records what it was sent).

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use latchkey_phone::cli::AddNodeArgs;
use latchkey_phone::clock::{rfc3339, unix_now};
use latchkey_phone::provisioning::{
    AddNodeError, GatewayApi, NodeAp, Provisioning, WifiChoice, REFRESH_MARGIN_SECS,
};
use latchkey_phone::secret::SecretString;
use serde_json::{json, Value};

const ADMIN: &str = "adm_test-admin-token";
const NODE_ID: &str = "550e8400-e29b-41d4-a716-446655440000";

/// A request the gateway side was sent.
#[derive(Debug, Clone)]
struct TokenCall {
    authorization: String,
    content_type: String,
    path: &'static str,
    body: Value,
}

#[derive(Default)]
struct Inner {
    token_calls: Mutex<Vec<TokenCall>>,
    provisions: Mutex<Vec<Value>>,
    /// Status the token endpoint answers (201 when 0).
    token_status: AtomicU32,
    issued: AtomicU32,
    /// Unix time the stand-in gateway issues tokens at (its clock).
    now: AtomicI64,
    /// What the node's info says after a provision: "online" (the gateway then shows it
    /// online), "wifi_failed", or "register_failed:CODE".
    after_provision: Mutex<String>,
    /// The node's state as its info (and, once "online", the gateway) shows it.
    state: Mutex<String>,
    /// The gateway's node status answers 401 (the admin token was revoked meanwhile).
    status_refused: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct StandIn {
    url: String,
    inner: Arc<Inner>,
}

impl StandIn {
    async fn start() -> StandIn {
        let inner = Arc::new(Inner::default());
        inner.now.store(unix_now(), Ordering::SeqCst);
        *inner.after_provision.lock().unwrap() = "online".into();
        *inner.state.lock().unwrap() = "unprovisioned".into();
        let app = Router::new()
            .route("/api/v0/provisioning/token", post(token))
            .route("/api/v0/nodes/{id}", get(node_status))
            .route("/api/v1/info", get(info))
            .route("/api/v1/networks", get(networks))
            .route("/api/v1/provision", post(provision))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        StandIn { url, inner }
    }

    fn gateway(&self) -> GatewayApi {
        GatewayApi::new(&self.url, SecretString::new(ADMIN.into())).unwrap()
    }

    fn node(&self) -> NodeAp {
        NodeAp::new(&self.url).unwrap()
    }

    fn flow(&self) -> Provisioning {
        Provisioning::new(self.gateway(), "house-1".into(), "kitchen".into(), None)
    }

    fn token_calls(&self) -> Vec<TokenCall> {
        self.inner.token_calls.lock().unwrap().clone()
    }

    fn provisions(&self) -> Vec<Value> {
        self.inner.provisions.lock().unwrap().clone()
    }

    fn answer_tokens_with(&self, status: u32) {
        self.inner.token_status.store(status, Ordering::SeqCst);
    }

    fn after_provision(&self, what: &str) {
        *self.inner.after_provision.lock().unwrap() = what.into();
    }

    fn args(&self, password_file: &std::path::Path) -> AddNodeArgs {
        AddNodeArgs {
            gateway: self.url.clone(),
            admin_token: ADMIN.into(),
            node_url: self.url.clone(),
            room: "kitchen".into(),
            name: Some("Back door".into()),
            household_id: "house-1".into(),
            ssid: Some("HomeWifi".into()),
            wifi_password_file: Some(password_file.to_owned()),
            command_center_url: None,
            node_id: None,
            timeout: 20,
        }
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn token(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    s.token_calls.lock().unwrap().push(TokenCall {
        authorization: header(&headers, "authorization"),
        content_type: header(&headers, "content-type"),
        path: "/api/v0/provisioning/token",
        body: body.clone(),
    });
    let status = s.token_status.load(Ordering::SeqCst);
    if status != 0 && status != 201 {
        let code = if status == 401 {
            "UNAUTHORIZED"
        } else {
            "INTERNAL"
        };
        return (
            StatusCode::from_u16(u16::try_from(status).unwrap()).unwrap(),
            Json(json!({"error": {"code": code, "message": "refused"}})),
        );
    }
    let n = s.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let node_id = body["node_id"].as_str().unwrap_or(NODE_ID).to_owned();
    let now = s.now.load(Ordering::SeqCst);
    (
        StatusCode::CREATED,
        Json(json!({
            "token": format!("prov_{n:043}"),
            "node_id": node_id,
            "expires_at": rfc3339(now + 600),
            "expires_in": 600,
        })),
    )
}

async fn node_status(
    State(s): State<Arc<Inner>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, StatusCode> {
    if s.status_refused.load(Ordering::SeqCst) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    let online = *s.state.lock().unwrap() == "online";
    Ok(Json(json!({
        "node_id": id, "name": "Back door", "room": "kitchen", "state":
        if online { "registered" } else { "pending" }, "online": online,
    })))
}

async fn info(State(s): State<Arc<Inner>>) -> Json<Value> {
    let state = s.state.lock().unwrap().clone();
    let mut v = json!({"state": state, "kind": "door", "firmware": "0.1.0", "pubkey": "BPUB"});
    if state == "wifi_failed" {
        v["error"] = json!({"code": "WIFI_WRONG_PASSWORD", "message": "wrong password"});
    }
    if let Some(code) = state.strip_prefix("register_failed:") {
        v["state"] = "register_failed".into();
        v["error"] = json!({"code": code, "message": "the gateway refused the token"});
    }
    Json(v)
}

async fn networks() -> Json<Value> {
    Json(json!({"networks": [
        {"ssid": "Cafe", "rssi": -60, "secure": false},
        {"ssid": "HomeWifi", "rssi": -40, "secure": true},
    ]}))
}

async fn provision(
    State(s): State<Arc<Inner>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    s.provisions.lock().unwrap().push(body.clone());
    let next = s.after_provision.lock().unwrap().clone();
    // A corrected request after a failure succeeds (the node needs no reset).
    let after = if s.provisions.lock().unwrap().len() > 1 {
        "online".to_owned()
    } else {
        next
    };
    *s.state.lock().unwrap() = after;
    (
        StatusCode::ACCEPTED,
        Json(json!({"success": true, "message": "accepted", "node_id": body["node_id"]})),
    )
}

fn wifi() -> WifiChoice {
    WifiChoice {
        ssid: "HomeWifi".into(),
        password: SecretString::new("correct horse".into()),
    }
}

// Seed 004, test 1: test_requestProvisioningToken_success.
#[tokio::test]
async fn token_request_success_without_node_id() {
    let s = StandIn::start().await;
    let mut flow = s.flow();
    let t = flow.fetch_token().await.unwrap();
    assert_eq!(t.node_id, NODE_ID);
    assert_eq!(t.token.expose(), format!("prov_{:043}", 1));
    let calls = s.token_calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c.path, "/api/v0/provisioning/token");
    assert_eq!(c.authorization, format!("Bearer {ADMIN}"));
    assert_eq!(c.content_type, "application/json");
    assert_eq!(
        c.body,
        json!({"household_id": "house-1", "room": "kitchen"})
    );
    assert!(c.body.get("node_id").is_none(), "a new token names no node");
}

// Seed 004, test 2: test_requestProvisioningToken_refresh.
#[tokio::test]
async fn token_refresh_sends_the_same_node_id() {
    let s = StandIn::start().await;
    let mut flow = s.flow();
    flow.fetch_token().await.unwrap();
    let t = flow.refresh_token().await.unwrap();
    assert_eq!(t.node_id, NODE_ID);
    let calls = s.token_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].body["node_id"], NODE_ID);
    assert_eq!(calls[1].body["household_id"], "house-1");
}

// Seed 004, test 3: test_requestProvisioningToken_auth_failure.
#[tokio::test]
async fn token_request_401_asks_to_log_in_again() {
    let s = StandIn::start().await;
    s.answer_tokens_with(401);
    let mut flow = s.flow();
    let e = flow.fetch_token().await.unwrap_err();
    assert!(matches!(e, AddNodeError::LoginRequired), "{e:?}");
    assert!(e.to_string().starts_with("Please log in again"), "{e}");
    assert!(!e.to_string().contains(ADMIN));
    assert!(flow.token().is_none());
}

// Seed 004, test 4: test_provision_includes_token_and_node_id.
#[tokio::test]
async fn provision_body_carries_token_and_node_id() {
    let s = StandIn::start().await;
    let mut flow = s.flow();
    let token = flow.fetch_token().await.unwrap().token.expose().to_owned();
    let id = flow
        .start_provisioning(&s.node(), &wifi(), "http://192.168.1.50:8080", unix_now())
        .await
        .unwrap();
    assert_eq!(id, NODE_ID);
    assert_eq!(
        s.provisions(),
        [json!({
            "wifi_ssid": "HomeWifi",
            "wifi_password": "correct horse",
            "room": "kitchen",
            "command_center_url": "http://192.168.1.50:8080",
            "household_id": "house-1",
            "node_id": NODE_ID,
            "provisioning_token": token,
        })]
    );
}

// Seed 004, test 5: test_useProvisioning_fetchToken_before_provision.
#[tokio::test]
async fn provisioning_needs_a_token_first() {
    let s = StandIn::start().await;
    let mut flow = s.flow();
    let e = flow
        .start_provisioning(&s.node(), &wifi(), &s.url, unix_now())
        .await
        .unwrap_err();
    assert!(matches!(e, AddNodeError::NotReady), "{e:?}");
    assert_eq!(
        e.to_string(),
        "Provisioning not ready. Please try again. (no provisioning token)"
    );
    assert!(
        s.provisions().is_empty(),
        "nothing reaches the node without a token"
    );
    flow.fetch_token().await.unwrap();
    flow.start_provisioning(&s.node(), &wifi(), &s.url, unix_now())
        .await
        .unwrap();
    assert_eq!(s.provisions().len(), 1);
}

// Seed 004, test 6: test_useProvisioning_token_error_handling.
#[tokio::test]
async fn token_error_blocks_provisioning() {
    let s = StandIn::start().await;
    s.answer_tokens_with(500);
    let mut flow = s.flow();
    let e = flow.fetch_token().await.unwrap_err();
    assert!(
        matches!(e, AddNodeError::TokenRefused { ref code, .. } if code == "INTERNAL"),
        "{e:?}"
    );
    let e = flow
        .start_provisioning(&s.node(), &wifi(), &s.url, unix_now())
        .await
        .unwrap_err();
    assert!(matches!(e, AddNodeError::NotReady), "{e:?}");

    // Not on the home network: the gateway does not answer at all.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut away = Provisioning::new(
        GatewayApi::new(&gone, SecretString::new(ADMIN.into())).unwrap(),
        String::new(),
        "kitchen".into(),
        None,
    );
    let e = away.fetch_token().await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Please connect to your home WiFi first"),
        "{e}"
    );
    let e = away
        .start_provisioning(&s.node(), &wifi(), &s.url, unix_now())
        .await
        .unwrap_err();
    assert!(matches!(e, AddNodeError::NotReady), "{e:?}");
    assert!(s.provisions().is_empty());
}

// Seed 004, test 7: test_useProvisioning_token_refresh.
#[tokio::test]
async fn expired_token_is_refreshed_for_the_same_node_before_sending() {
    let s = StandIn::start().await;
    let t0 = s.inner.now.load(Ordering::SeqCst);
    let mut flow = s.flow();
    let first = flow.fetch_token().await.unwrap().clone();
    // Fresh: sent as it is.
    flow.start_provisioning(&s.node(), &wifi(), &s.url, t0)
        .await
        .unwrap();
    assert_eq!(s.token_calls().len(), 1);
    // The user was slow: 10 minutes later the token is over; within the margin it counts as over.
    for past_expiry in [1, 1 - REFRESH_MARGIN_SECS] {
        let later = flow.token().unwrap().expires_at + past_expiry;
        s.inner.now.store(later, Ordering::SeqCst);
        let before = flow.token().unwrap().token.expose().to_owned();
        flow.start_provisioning(&s.node(), &wifi(), &s.url, later)
            .await
            .unwrap();
        let after = flow.token().unwrap().clone();
        assert_ne!(after.token.expose(), before, "a new token");
        assert_eq!(after.node_id, first.node_id, "the same node id");
        let calls = s.token_calls();
        assert_eq!(calls.last().unwrap().body["node_id"], first.node_id);
        let sent = s.provisions();
        assert_eq!(
            sent.last().unwrap()["provisioning_token"],
            after.token.expose()
        );
        assert_eq!(sent.last().unwrap()["node_id"], first.node_id);
    }
    // A refresh that fails says the token expired.
    s.answer_tokens_with(503);
    let late = flow.token().unwrap().expires_at + 1;
    let e = flow
        .start_provisioning(&s.node(), &wifi(), &s.url, late)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Provisioning token expired. Please try again."),
        "{e}"
    );
    assert_eq!(s.provisions().len(), 3, "an expired token is never sent");
}

fn password_file(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let p = dir.path().join("wifi");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn the_command_flow_reaches_online() {
    let s = StandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = latchkey_phone::add_node::run(s.args(&password_file(&dir, "correct horse\n")))
        .await
        .unwrap();
    assert_eq!(id, NODE_ID);
    let calls = s.token_calls();
    assert_eq!(
        calls[0].body,
        json!({"household_id": "house-1", "room": "kitchen", "name": "Back door"})
    );
    let sent = s.provisions();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0]["wifi_password"], "correct horse",
        "the file's first line, no newline"
    );
    assert_eq!(sent[0]["command_center_url"], s.url.as_str());
}

#[tokio::test]
async fn a_wrong_wifi_password_fails_with_a_way_to_retry() {
    let s = StandIn::start().await;
    s.after_provision("wifi_failed");
    let dir = tempfile::tempdir().unwrap();
    let e = latchkey_phone::add_node::run(s.args(&password_file(&dir, "not-the-password")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "WIFI_FAILED");
    let text = e.to_string();
    assert!(
        text.contains("WIFI_WRONG_PASSWORD") && text.contains(&format!("--node-id {NODE_ID}")),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");

    // Run again for the same node: a fresh token for its id, and the node takes it.
    let mut args = s.args(&password_file(&dir, "correct horse"));
    args.node_id = Some(NODE_ID.into());
    let id = latchkey_phone::add_node::run(args).await.unwrap();
    assert_eq!(id, NODE_ID);
    assert_eq!(s.token_calls()[1].body["node_id"], NODE_ID);
    assert_eq!(s.provisions().len(), 2);
}

#[tokio::test]
async fn a_token_that_expired_before_registration_is_replaced() {
    let s = StandIn::start().await;
    s.after_provision("register_failed:PROVISIONING_TOKEN_EXPIRED");
    let dir = tempfile::tempdir().unwrap();
    let id = latchkey_phone::add_node::run(s.args(&password_file(&dir, "correct horse")))
        .await
        .unwrap();
    assert_eq!(id, NODE_ID);
    let (calls, sent) = (s.token_calls(), s.provisions());
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].body["node_id"], NODE_ID);
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0]["provisioning_token"], sent[1]["provisioning_token"]);
}

#[tokio::test]
async fn a_rejected_token_and_bad_input_stop_the_flow() {
    let s = StandIn::start().await;
    s.after_provision("register_failed:PROVISIONING_TOKEN_USED");
    let dir = tempfile::tempdir().unwrap();
    let e = latchkey_phone::add_node::run(s.args(&password_file(&dir, "correct horse")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "PROVISIONING_REJECTED");
    assert!(
        e.to_string()
            .starts_with("Provisioning failed. Please try again."),
        "{e}"
    );

    let s = StandIn::start().await;
    let mut args = s.args(&password_file(&dir, "correct horse"));
    args.ssid = Some("Neighbour".into());
    let e = latchkey_phone::add_node::run(args).await.unwrap_err();
    assert_eq!(e.code(), "UNKNOWN_NETWORK");
    assert!(e.to_string().contains("\"HomeWifi\""), "{e}");
    let e = latchkey_phone::add_node::run(s.args(&password_file(&dir, "short")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "BAD_PASSWORD");
    assert!(s.provisions().is_empty());
}

#[tokio::test]
async fn a_refused_admin_token_ends_the_wait_at_once() {
    let s = StandIn::start().await;
    s.after_provision("joining");
    s.inner.status_refused.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let e = latchkey_phone::add_node::run(s.args(&password_file(&dir, "correct horse")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "LOGIN_REQUIRED", "{e}");
    assert_eq!(s.provisions().len(), 1);
}
