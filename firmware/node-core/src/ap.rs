//! The setup access point's HTTP API (NODES.md §4, seed 004), one picoserve router for every
//! board. The rules are plain functions over [`ApShared`] ([`info`], [`networks`], [`provision`]),
//! unit-tested without HTTP; [`router`] only routes to them.
//!
//! - `GET /api/v1/info` → 200 `{"state","kind","firmware","pubkey","node_id"?,"error"?}`
//! - `GET /api/v1/networks` → 200 `{"networks":[{"ssid","rssi","secure"}]}` (the scan made
//!   before the access point opened: one radio cannot scan while serving)
//! - `POST /api/v1/provision` → 202 `{"success":true,"message","node_id"}`, or 400/409/413
//!   `{"success":false,"message","error":{"code","message"}}`
//!
//! The router is served only while [`Lifecycle::ap_open`]; the run loop drops connections
//! otherwise.

use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;

use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use picoserve::response::{Response, StatusCode};
use picoserve::routing::{get, post, PathRouter};
use serde::Serialize;

use crate::board::Network;
use crate::lifecycle::{Event, Lifecycle};
use crate::provision::{ProvisionError, ProvisionRequest};
use crate::Kind;

/// Most networks listed (strongest first).
pub const MAX_NETWORKS: usize = 32;
/// Connections served at once: an idle client (a phone's speculative preconnect) must not
/// hold the AP API for the whole read timeout. Each costs one [`HTTP_BUFFER`].
pub const WORKERS: usize = 2;
/// picoserve's per-connection buffer: the request head and body must fit (bodies above
/// [`crate::provision::MAX_BODY`] get 413).
pub const HTTP_BUFFER: usize = 4096;

/// What the AP API reads and changes; shared with the run loop in one `RefCell`.
#[derive(Debug)]
pub struct ApShared {
    /// The lifecycle machine.
    pub lifecycle: Lifecycle,
    /// The last scan.
    pub networks: Vec<Network>,
    /// What the node drives.
    pub kind: Kind,
    /// The node's public key (standard base64).
    pub pubkey: String,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
struct Info<'a> {
    state: &'static str,
    kind: &'static str,
    firmware: &'static str,
    pubkey: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDetail<'a>>,
}

/// `GET /api/v1/info`.
pub fn info(s: &ApShared) -> (u16, String) {
    let l = &s.lifecycle;
    let body = Info {
        state: l.state().as_str(),
        kind: s.kind.as_str(),
        firmware: crate::FIRMWARE_VERSION,
        pubkey: &s.pubkey,
        node_id: l.node_id(),
        error: l.failure().map(|f| ErrorDetail {
            code: &f.code,
            message: &f.message,
        }),
    };
    (200, to_json(&body))
}

#[derive(Serialize)]
struct NetworkOut<'a> {
    ssid: &'a str,
    rssi: i16,
    secure: bool,
}

#[derive(Serialize)]
struct Networks<'a> {
    networks: Vec<NetworkOut<'a>>,
}

/// `GET /api/v1/networks`.
pub fn networks(s: &ApShared) -> (u16, String) {
    let mut list: Vec<&Network> = s.networks.iter().collect();
    list.sort_by_key(|n| core::cmp::Reverse(n.rssi));
    let networks = list
        .into_iter()
        .take(MAX_NETWORKS)
        .map(|n| NetworkOut {
            ssid: &n.ssid,
            rssi: n.rssi,
            secure: n.secure,
        })
        .collect();
    (200, to_json(&Networks { networks }))
}

#[derive(Serialize)]
struct Accepted<'a> {
    success: bool,
    message: &'a str,
    node_id: &'a str,
}

#[derive(Serialize)]
struct Failed<'a> {
    success: bool,
    message: &'a str,
    error: ErrorDetail<'a>,
}

/// `POST /api/v1/provision`. On 202 the lifecycle is in `joining`; the caller wakes the run loop.
pub fn provision(s: &mut ApShared, body: &[u8]) -> (u16, String) {
    let req = match ProvisionRequest::parse(body) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = match e {
                ProvisionError::TooLarge => (413, "PAYLOAD_TOO_LARGE"),
                _ => (400, "BAD_REQUEST"),
            };
            let mut msg = String::new();
            let _ = core::fmt::write(&mut msg, format_args!("{e}"));
            return failed(status, code, &msg);
        }
    };
    let node_id = req.node_id.clone();
    match s.lifecycle.on(Event::Provision(req)) {
        Ok(_) => (
            202,
            to_json(&Accepted {
                success: true,
                message: "provisioning accepted; the node now joins the network and registers",
                node_id: &node_id,
            }),
        ),
        Err(refused) => {
            let mut msg = String::from("the node is not accepting provisioning (state ");
            msg.push_str(refused.0.as_str());
            msg.push(')');
            failed(409, "CONFLICT", &msg)
        }
    }
}

fn failed(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        to_json(&Failed {
            success: false,
            message,
            error: ErrorDetail { code, message },
        }),
    )
}

fn to_json(v: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn respond((status, body): (u16, String)) -> impl picoserve::response::IntoResponse {
    Response::new(StatusCode::new(status), body).with_header("Content-Type", "application/json")
}

/// The AP API router. `accepted` is signalled after each 202 so the run loop starts joining.
pub fn router<'a>(
    shared: &'a RefCell<ApShared>,
    accepted: &'a Signal<NoopRawMutex, ()>,
) -> picoserve::Router<impl PathRouter + 'a> {
    picoserve::Router::new()
        .route(
            "/api/v1/info",
            get(async move || respond(info(&shared.borrow()))),
        )
        .route(
            "/api/v1/networks",
            get(async move || respond(networks(&shared.borrow()))),
        )
        .route(
            "/api/v1/provision",
            post(async move |body: Vec<u8>| {
                let answer = provision(&mut shared.borrow_mut(), &body);
                if answer.0 == 202 {
                    accepted.signal(());
                }
                respond(answer)
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn shared() -> ApShared {
        ApShared {
            lifecycle: Lifecycle::boot(None),
            networks: alloc::vec![
                Network {
                    ssid: "Weak".into(),
                    rssi: -80,
                    secure: true
                },
                Network {
                    ssid: "HomeWifi".into(),
                    rssi: -40,
                    secure: true
                },
                Network {
                    ssid: "Cafe".into(),
                    rssi: -60,
                    secure: false
                },
            ],
            kind: Kind::Door,
            pubkey: "BPUB".into(),
        }
    }

    fn body(password: &str) -> Vec<u8> {
        crate::provision::fixture::body(password)
    }

    fn parse((status, text): (u16, String)) -> (u16, Value) {
        (status, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn info_of_a_fresh_node() {
        let (status, v) = parse(info(&shared()));
        assert_eq!(status, 200);
        assert_eq!(
            v,
            json!({"state":"unprovisioned","kind":"door","firmware":crate::FIRMWARE_VERSION,"pubkey":"BPUB"})
        );
    }

    #[test]
    fn networks_strongest_first() {
        let (_, v) = parse(networks(&shared()));
        let names: Vec<&str> = v["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["ssid"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["HomeWifi", "Cafe", "Weak"]);
        assert_eq!(
            v["networks"][1],
            json!({"ssid":"Cafe","rssi":-60,"secure":false})
        );
    }

    #[test]
    fn provision_answers_202_in_seed_004s_shape_then_409_while_joining() {
        let mut s = shared();
        let (status, v) = parse(provision(&mut s, &body("password1")));
        assert_eq!(status, 202);
        assert_eq!(v["success"], true);
        assert_eq!(v["node_id"], "550e8400-e29b-41d4-a716-446655440000");
        assert!(v["message"].is_string());
        let (_, i) = parse(info(&s));
        assert_eq!(i["state"], "joining");
        assert_eq!(i["node_id"], "550e8400-e29b-41d4-a716-446655440000");
        let (status, v) = parse(provision(&mut s, &body("password1")));
        assert_eq!(status, 409);
        assert_eq!(v["success"], false);
        assert_eq!(v["error"]["code"], "CONFLICT");
    }

    #[test]
    fn bad_requests_answer_400_and_never_echo_secrets() {
        let mut s = shared();
        let mut v: Value = serde_json::from_slice(&body("password1")).unwrap();
        v["wifi_password"] = "short".into();
        let (status, out) = provision(&mut s, v.to_string().as_bytes());
        assert_eq!(status, 400);
        assert!(!out.contains("short") && !out.contains("prov_"), "{out}");
        let (_, out) = parse((status, out));
        assert_eq!(out["error"]["code"], "BAD_REQUEST");
        assert_eq!(out["success"], false);
        assert!(out["message"].as_str().unwrap().contains("wifi_password"));
        let (status, out) = parse(provision(&mut s, &[b'{'; 3000]));
        assert_eq!(
            (status, &out["error"]["code"]),
            (413, &json!("PAYLOAD_TOO_LARGE"))
        );
        assert_eq!(s.lifecycle.state(), crate::lifecycle::State::Unprovisioned);
    }

    #[test]
    fn a_failure_shows_in_info_until_a_corrected_request() {
        let mut s = shared();
        provision(&mut s, &body("password1"));
        s.lifecycle
            .on(Event::WifiFailed(crate::board::WifiError::WrongPassword))
            .unwrap();
        let (_, i) = parse(info(&s));
        assert_eq!(i["state"], "wifi_failed");
        assert_eq!(i["error"]["code"], "WIFI_WRONG_PASSWORD");
        let (status, _) = provision(&mut s, &body("password2"));
        assert_eq!(status, 202);
    }
}
