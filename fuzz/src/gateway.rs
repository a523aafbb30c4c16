//! The gateway, fed where a LAN client's bytes arrive: WebSocket text frames (a phone's and a
//! node's, as their sessions parse them), the configuration file, and the HTTP API's bodies —
//! the last through the real router, on a real (encrypted) registry in a temporary directory,
//! so a body that parses goes on through validation and the handler.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use latchkey::clock::ManualClock;
use latchkey::config::{Config, Overrides};
use tower::ServiceExt as _;

/// A phone's frame (`ws::frames`) and a node's (`ws::node`).
pub fn ws(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = latchkey::ws::frames::parse(text);
        let _ = latchkey::ws::node::parse_frame(text);
    }
}

/// The TOML configuration file, resolved and validated as `serve` does at start.
pub fn config(data: &[u8]) {
    let Some(dir) = scratch() else {
        return;
    };
    let path = dir.join("latchkey.toml");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let over = Overrides {
        data_dir: Some(dir.join("data")),
        config: Some(path),
        listen: None,
        ble: None,
    };
    if let Ok(config) = Config::resolve(&over) {
        let _ = config.validate();
    }
}

/// One HTTP request through the router. Byte 0 picks the route (the low bits) and whether the
/// literal `TOKEN` in the body becomes a fresh pairing or provisioning token (bit 7), so the
/// fuzzer reaches what lies behind a valid token; the rest is the body.
pub fn http(data: &[u8]) {
    let _ = request(data);
}

/// [`http`], with the answer's status and body (`None` when the gateway could not start).
pub fn request(data: &[u8]) -> Option<(u16, Vec<u8>)> {
    let gw = gateway()?;
    let (&pick, body) = data.split_first()?;
    let (method, path, auth) = &ROUTES[usize::from(pick & 0x7f) % ROUTES.len()];
    let mut body = body.to_vec();
    if pick & 0x80 != 0 {
        let token = match *path {
            "/api/v0/nodes/register" => gw.mint("/api/v0/provisioning/token", "provisioningToken"),
            _ => gw.mint("/api/pair-tokens", "pairToken"),
        };
        if let Some(token) = token {
            body = replace(&body, b"TOKEN", token.as_bytes());
        }
    }
    // Rate limits are per minute: a minute per request keeps them from answering everything.
    gw.clock.advance(61);
    gw.send(method.clone(), path, *auth, body)
}

#[derive(Clone, Copy)]
enum Auth {
    None,
    Admin,
    Device,
}

const NODE: &str = "/api/nodes/550e8400-e29b-41d4-a716-446655440000";
const ROUTES: &[(Method, &str, Auth)] = &[
    (Method::POST, "/api/pair", Auth::None),
    (Method::POST, "/api/pair-tokens", Auth::Admin),
    (Method::POST, "/api/v0/provisioning/token", Auth::Admin),
    (Method::POST, "/api/v0/nodes/register", Auth::None),
    (Method::PATCH, NODE, Auth::Admin),
    (Method::POST, "/api/endpoints/front-door/open", Auth::Admin),
    (Method::POST, "/device/register", Auth::Device),
    (Method::POST, "/device/refresh", Auth::Device),
    (Method::POST, "/pairing-sessions", Auth::Device),
    (
        Method::POST,
        "/pairing-sessions/550e8400-e29b-41d4-a716-446655440000/complete",
        Auth::Device,
    ),
    (Method::POST, "/login", Auth::None),
    (Method::GET, "/api/me", Auth::Device),
];

struct Gateway {
    rt: tokio::runtime::Runtime,
    app: Router,
    clock: Arc<ManualClock>,
    admin: String,
    device: String,
}

impl Gateway {
    fn send(
        &self,
        method: Method,
        path: &str,
        auth: Auth,
        body: Vec<u8>,
    ) -> Option<(u16, Vec<u8>)> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .header(
                header::CONTENT_TYPE,
                if path == "/login" {
                    "application/x-www-form-urlencoded"
                } else {
                    "application/json"
                },
            );
        req = match auth {
            Auth::None => req,
            Auth::Admin => req.header(header::AUTHORIZATION, format!("Bearer {}", self.admin)),
            Auth::Device => req.header(header::AUTHORIZATION, format!("Device {}", self.device)),
        };
        // What the listener adds for every connection: the peer's address (rate limits key on it).
        let mut req = req.body(Body::from(body)).ok()?;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [192, 168, 1, 9],
                50_000,
            ))));
        self.rt.block_on(async {
            let res = self.app.clone().oneshot(req).await.ok()?;
            let status = res.status().as_u16();
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.ok()?;
            Some((status, bytes.to_vec()))
        })
    }

    /// A fresh token from `path` (admin), read from the answer's `field`.
    fn mint(&self, path: &str, field: &str) -> Option<String> {
        let (_, body) = self.send(Method::POST, path, Auth::Admin, b"{}".to_vec())?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some(v.get(field)?.as_str()?.to_owned())
    }
}

fn gateway() -> Option<&'static Gateway> {
    static GATEWAY: OnceLock<Option<Gateway>> = OnceLock::new();
    GATEWAY.get_or_init(start).as_ref()
}

/// A gateway on a new registry: an admin token, and one paired phone for the device routes.
fn start() -> Option<Gateway> {
    let dir = scratch()?.join("gateway");
    let clock = ManualClock::new(1_767_225_600);
    let config = Config::for_test(&dir, clock.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let state = latchkey::build_state(config, 8080).ok()?;
    let (_, admin) = state
        .store
        .write_blocking(|tx| {
            latchkey::admin::create_token(tx, "fuzz", 1_767_225_600)
                .map_err(|_| latchkey::store::StoreError::Corrupt("admin token"))
        })
        .ok()?;
    let app = latchkey::web::router(state, Router::new());
    let mut gw = Gateway {
        rt,
        app,
        clock,
        admin: admin.expose().to_owned(),
        device: String::new(),
    };
    let token = gw.mint("/api/pair-tokens", "pairToken")?;
    let pair =
        format!(r#"{{"pairToken":"{token}","deviceInfo":{{"name":"fuzz","type":"phone"}}}}"#);
    let (_, body) = gw.send(Method::POST, "/api/pair", Auth::None, pair.into_bytes())?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    gw.device = v.get("deviceKey")?.as_str()?.to_owned();
    Some(gw)
}

/// This process's scratch directory (AFL++ runs a target in many processes one after another;
/// each removes its own at exit, [`cleanup`]).
fn scratch() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("latchkey-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    })
    .clone()
}

/// Removes the scratch directory; the AFL binaries call it when their loop ends.
pub fn cleanup() {
    if let Some(dir) = scratch() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}
