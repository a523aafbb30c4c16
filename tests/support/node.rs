//! A scripted endpoint node, written from docs/NODES.md alone (HTTP with reqwest, the session
//! with tokio-tungstenite): provisioning tokens, registration, the `/ws` session. Used by the
//! integration tests and by `examples/node_load.rs`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guards against a hang; never a pass/fail timer.
pub const HANG: Duration = Duration::from_secs(20);

/// A valid P-256 public key (the curve's generator), SEC1 uncompressed, standard base64.
pub const PUBKEY: &str =
    "BGsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT+NC4v4af5uO5+tKfA+eFivOM1drMV7Oy7ZAaDe/UfU=";

/// `POST /api/v0/provisioning/token` with `body`; the raw response.
pub async fn token_request(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    body: Value,
) -> reqwest::Response {
    try_token_request(http, base, admin, body)
        .await
        .expect("provisioning/token")
}

/// [`token_request`], with no answer as an error (a load tool that kills the gateway).
pub async fn try_token_request(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    body: Value,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/api/v0/provisioning/token"))
        .bearer_auth(admin)
        .json(&body)
        .send()
        .await
}

/// A fresh token for a new node: `{token, node_id, expires_at, expires_in}`.
pub async fn new_token(http: &reqwest::Client, base: &str, admin: &str, name: &str) -> Value {
    let r = token_request(http, base, admin, json!({ "name": name, "room": "Hall" })).await;
    assert_eq!(r.status(), 201);
    r.json().await.expect("json")
}

/// `POST /api/v0/nodes/register`; the raw response.
pub async fn register(
    http: &reqwest::Client,
    base: &str,
    node_id: &str,
    token: &str,
    kind: &str,
) -> reqwest::Response {
    try_register(http, base, node_id, token, kind)
        .await
        .expect("nodes/register")
}

/// [`register`], with no answer as an error.
pub async fn try_register(
    http: &reqwest::Client,
    base: &str,
    node_id: &str,
    token: &str,
    kind: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/api/v0/nodes/register"))
        .json(&json!({
            "node_id": node_id,
            "provisioning_token": token,
            "pubkey": PUBKEY,
            "kind": kind,
            "firmware": "0.1.0",
        }))
        .send()
        .await
}

/// What a registered node keeps.
#[derive(Debug, Clone)]
pub struct Creds {
    pub node_id: String,
    pub node_key: String,
    pub ws_url: String,
    pub endpoint: String,
}

/// A new door node, registered: its credentials and endpoint id.
pub async fn provisioned(http: &reqwest::Client, base: &str, admin: &str, name: &str) -> Creds {
    let t = new_token(http, base, admin, name).await;
    let node_id = t["node_id"].as_str().unwrap().to_owned();
    let r = register(http, base, &node_id, t["token"].as_str().unwrap(), "door").await;
    assert_eq!(r.status(), 201);
    let reg: Value = r.json().await.unwrap();
    let node: Value = http
        .get(format!("{base}/api/v0/nodes/{node_id}"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Creds {
        node_id,
        node_key: reg["node_key"].as_str().unwrap().to_owned(),
        ws_url: reg["ws_url"].as_str().unwrap().to_owned(),
        endpoint: node["endpoint"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Opens the node session (`Authorization: Node <key>`) at `ws_url`.
pub async fn connect(ws_url: &str, node_key: &str) -> Result<Ws, WsError> {
    let mut req = ws_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Node {node_key}")).unwrap(),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// The HTTP status of a refused upgrade.
pub fn refused_status(e: &WsError) -> Option<u16> {
    match e {
        WsError::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

/// The next JSON frame (pings are answered by tungstenite while we read). Panics on close.
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame; its code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let m = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("close in time");
        match m {
            Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// Connects and does what a node does first: read `hello`, send `status`. Returns hello. The
/// `grants` frame the gateway sends a door node right after `hello` is read and left aside.
pub async fn session(creds: &Creds) -> (Ws, Value) {
    let (ws, hello, _) = session_with_grants(creds).await;
    (ws, hello)
}

/// [`session`], returning the first `grants` frame too (NODES.md §5).
pub async fn session_with_grants(creds: &Creds) -> (Ws, Value, Value) {
    let mut ws = connect(&creds.ws_url, &creds.node_key)
        .await
        .expect("upgrade");
    let hello = recv(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    send(
        &mut ws,
        json!({"type":"status","kind":"door","firmware":"0.1.0","relay":"idle","uptime":5}),
    )
    .await;
    let grants = recv(&mut ws).await;
    assert_eq!(grants["type"], "grants", "{grants}");
    (ws, hello, grants)
}

/// How a scripted node answers commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// `{"ok":false,"error":CODE}`.
    Refuse(&'static str),
    /// Reads (so pings get pongs) but never answers.
    Silent,
}

/// Runs a node session in the background: every command is reported on the channel and
/// answered as `answer` says. Ends when the socket closes, with the close code.
pub fn serve(
    mut ws: Ws,
    answer: Answer,
) -> (
    tokio::task::JoinHandle<Option<u16>>,
    tokio::sync::mpsc::UnboundedReceiver<Value>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if v["type"] == "command" {
                        let id = v["id"].clone();
                        let _ = tx.send(v);
                        let reply = match answer {
                            Answer::Ok => json!({"type":"result","id":id,"ok":true}),
                            Answer::Refuse(code) => {
                                json!({"type":"result","id":id,"ok":false,"error":code})
                            }
                            Answer::Silent => continue,
                        };
                        if ws
                            .send(Message::Text(reply.to_string().into()))
                            .await
                            .is_err()
                        {
                            return None;
                        }
                    }
                }
                Ok(Message::Close(c)) => {
                    return c.map(|c| u16::from(c.code));
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    });
    (task, rx)
}

/// Closes a session politely (the node going away).
pub async fn bye(ws: &mut Ws) {
    let _ = ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }))
        .await;
}
