//! Test harness: the real `latchkey-node` process, and a scripted gateway that speaks
//! docs/NODES.md (§3.2 registration, §5 session) on 127.0.0.1.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

pub const NODE_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
pub const TOKEN: &str = "prov_GoodGoodGoodGoodGoodGoodGoodGoodGoodGoodGoo";
pub const BAD_TOKEN: &str = "prov_BadBadBadBadBadBadBadBadBadBadBadBadBadBadB";
pub const NODE_KEY: &str = "node_KeyKeyKeyKeyKeyKeyKeyKeyKeyKeyKeyKeyKeyKeyK";
/// The gateway's Ed25519 public key: that of the PROTOCOL.md §24 vectors' seed (32 × `0x44`), so a
/// test signs snapshots with `latchkey_proto::v2::vectors::GATEWAY_SEED`.
pub const GATEWAY_PUBKEY: &str = "11l5O7wTooGagnx2rbb7qKSa7gB/SfLQmS2ZuCWtLEg=";
/// A guard against hangs, never a pass/fail timer.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What the gateway sends down the current session.
pub enum Out {
    Text(String),
    Close(u16),
}

pub struct GwState {
    pub used: AtomicBool,
    pub revoked: AtomicBool,
    pub registrations: Mutex<Vec<Value>>,
    pub auth_headers: Mutex<Vec<String>>,
    pub sessions: AtomicUsize,
    from_node_tx: mpsc::UnboundedSender<(usize, Value)>,
    from_node_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(usize, Value)>>,
    to_node_tx: mpsc::UnboundedSender<Out>,
    to_node_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Out>>,
    addr: Mutex<Option<SocketAddr>>,
    /// Bumped by `restart`: every open session drops its socket, as in a crash.
    kill: tokio::sync::watch::Sender<u32>,
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<GwState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start() -> Self {
        let (ftx, frx) = mpsc::unbounded_channel();
        let (ttx, trx) = mpsc::unbounded_channel();
        let state = Arc::new(GwState {
            used: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            registrations: Mutex::new(Vec::new()),
            auth_headers: Mutex::new(Vec::new()),
            sessions: AtomicUsize::new(0),
            from_node_tx: ftx,
            from_node_rx: tokio::sync::Mutex::new(frx),
            to_node_tx: ttx,
            to_node_rx: tokio::sync::Mutex::new(trx),
            addr: Mutex::new(None),
            kill: tokio::sync::watch::channel(0).0,
        });
        Self::serve(state, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn serve(state: Arc<GwState>, addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        *state.addr.lock().unwrap() = Some(addr);
        let app = Router::new()
            .route("/api/v0/nodes/register", post(register))
            .route("/ws", get(ws))
            .with_state(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the gateway (open sessions drop, as in a crash) and starts it again on the same port.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        self.resume().await
    }

    /// Stops the gateway: open sessions drop, as in a crash; connections are refused.
    pub async fn stop(&mut self) {
        self.state.kill.send_modify(|g| *g += 1);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again, on the same port, after [`Gateway::stop`].
    pub async fn resume(self) -> Self {
        Self::serve(self.state.clone(), self.addr).await
    }

    pub fn send(&self, out: Out) {
        self.state.to_node_tx.send(out).unwrap();
    }

    /// The next frame the node sent, with the number of its session (1, 2, …).
    pub async fn next_frame(&self) -> (usize, Value) {
        let mut rx = self.state.from_node_rx.lock().await;
        tokio::time::timeout(PATIENCE, rx.recv())
            .await
            .expect("the node sent nothing")
            .unwrap()
    }

    /// Skips frames until one of `type` arrives.
    pub async fn next_of(&self, kind: &str) -> (usize, Value) {
        loop {
            let (n, v) = self.next_frame().await;
            if v["type"] == kind {
                return (n, v);
            }
        }
    }
}

async fn register(State(s): State<Arc<GwState>>, Json(body): Json<Value>) -> Response {
    s.registrations.lock().unwrap().push(body.clone());
    let err = |status: StatusCode, code: &str| {
        (
            status,
            Json(json!({"error": {"code": code, "message": "scripted"}})),
        )
            .into_response()
    };
    if body["provisioning_token"] != TOKEN || body["node_id"] != NODE_ID {
        return err(StatusCode::UNAUTHORIZED, "PROVISIONING_TOKEN_INVALID");
    }
    if s.used.swap(true, Ordering::SeqCst) {
        return err(StatusCode::GONE, "PROVISIONING_TOKEN_USED");
    }
    let addr = s.addr.lock().unwrap().unwrap();
    (
        StatusCode::CREATED,
        Json(json!({
            "node_key": NODE_KEY,
            "gateway_id": "gw-test",
            "gateway_pubkey": GATEWAY_PUBKEY,
            "ws_url": format!("ws://{addr}/ws"),
        })),
    )
        .into_response()
}

async fn ws(State(s): State<Arc<GwState>>, headers: HeaderMap, up: WebSocketUpgrade) -> Response {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    s.auth_headers.lock().unwrap().push(auth.clone());
    if auth != format!("Node {NODE_KEY}") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if s.revoked.load(Ordering::SeqCst) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let n = s.sessions.fetch_add(1, Ordering::SeqCst) + 1;
    up.on_upgrade(move |socket| session(s, socket, n))
}

async fn session(s: Arc<GwState>, mut socket: WebSocket, n: usize) {
    let hello = json!({"type":"hello","nodeId":NODE_ID,"gatewayId":"gw-test","now":1_764_237_600});
    if socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut killed = s.kill.subscribe();
    let mut to_node = s.to_node_rx.lock().await;
    loop {
        tokio::select! {
            _ = killed.changed() => return,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let _ = s.from_node_tx.send((n, v));
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            out = to_node.recv() => match out {
                Some(Out::Text(t)) => {
                    if socket.send(Message::Text(t.into())).await.is_err() {
                        return;
                    }
                }
                Some(Out::Close(code)) => {
                    let _ = socket
                        .send(Message::Close(Some(CloseFrame { code, reason: "".into() })))
                        .await;
                    return;
                }
                None => return,
            },
        }
    }
}

/// Provisions a fresh node and waits for its first status frame.
pub async fn online(node: &Node, gw: &Gateway) -> (usize, Value) {
    assert_eq!(node.provision(gw, "right-pass", TOKEN).await.status(), 202);
    node.wait_log("register: registered").await;
    let status = gw.next_of("status").await;
    node.wait_log("node offline → online").await;
    status
}

/// A running `latchkey-node` process.
pub struct Node {
    child: tokio::process::Child,
    pub ap: String,
    pub dir: PathBuf,
    pub log: Arc<Mutex<String>>,
    pub stdout: String,
}

impl Node {
    /// Starts the node on `dir` (state, Wi-Fi list, relay log live there) with the stand-in Wi-Fi.
    pub async fn start(dir: &Path, extra: &[&str]) -> Self {
        let wifi = dir.join("wifi.json");
        if !wifi.exists() {
            std::fs::write(
                &wifi,
                r#"[{"ssid":"HomeWifi","password":"right-pass","rssi":-40},{"ssid":"Cafe","rssi":-70}]"#,
            )
            .unwrap();
        }
        let wifi = wifi.display().to_string();
        let mut args = vec!["--wifi-sim", wifi.as_str()];
        args.extend_from_slice(extra);
        Self::spawn(dir, &args, &[]).await
    }

    /// Starts the node with these arguments and environment (besides state dir, AP and relay).
    pub async fn spawn(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_latchkey-node"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--ap-listen", "127.0.0.1:0"])
            // No test browses mDNS on the host's network.
            .env("LATCHKEY_MDNS", "off")
            .envs(env.iter().copied())
            .arg("--relay-sim")
            .arg(dir.join("relay.log"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = String::new();
        let ap = tokio::time::timeout(PATIENCE, async {
            loop {
                let line = lines.next_line().await.unwrap().expect("node exited");
                stdout.push_str(&line);
                stdout.push('\n');
                if let Some(a) = line.strip_prefix("ap_api=") {
                    return a.to_owned();
                }
            }
        })
        .await
        .expect("no ap_api line");
        Self {
            child,
            ap,
            dir: dir.to_owned(),
            log,
            stdout,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.ap, path)
    }

    pub async fn info(&self) -> Value {
        reqwest::get(self.url("/api/v1/info"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls `GET /api/v1/info` until `state` is reached.
    pub async fn wait_state(&self, state: &str) -> Value {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(r) = reqwest::get(self.url("/api/v1/info")).await {
                    if let Ok(v) = r.json::<Value>().await {
                        if v["state"] == state {
                            return v;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never reached {state}; log:\n{}", self.log()))
    }

    /// Waits until the node's log has a line containing `needle`.
    pub async fn wait_log(&self, needle: &str) {
        tokio::time::timeout(PATIENCE, async {
            while !self.log().contains(needle) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in log:\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn provision(&self, gw: &Gateway, password: &str, token: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/api/v1/provision"))
            .json(&json!({
                "wifi_ssid": "HomeWifi",
                "wifi_password": password,
                "room": "hall",
                "command_center_url": gw.url(),
                "household_id": "house-1",
                "node_id": NODE_ID,
                "provisioning_token": token,
            }))
            .send()
            .await
            .unwrap()
    }

    pub fn relay_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }

    /// Kills the process (no shutdown: as a power cut).
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}
