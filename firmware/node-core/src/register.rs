//! Registration (NODES.md §3.2): the node redeems its provisioning token once at
//! `POST {command_center_url}/api/v0/nodes/register` and gets its credentials.
//!
//! [`request_body`] builds the request; [`interpret`] turns each answer into what the node does:
//! store the credentials (201), give up with the gateway's code (401, 410, 400: the token or the
//! request will not get better by retrying), or retry later (429 after `Retry-After`, 5xx and
//! network failures after a backoff, at most [`MAX_ATTEMPTS`] times).

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::backoff::Backoff;
use crate::board::{HttpResponse, NetError};
use crate::provision::ProvisionRequest;
use crate::storage::Credentials;
use crate::Kind;

/// Path of the registration endpoint.
pub const PATH: &str = "/api/v0/nodes/register";
/// Largest answer body the node reads.
pub const MAX_ANSWER: usize = 4096;
/// Attempts (network failures, 5xx, 429) before the node gives up with `GATEWAY_UNREACHABLE`.
pub const MAX_ATTEMPTS: u32 = 5;
/// Longest `Retry-After` the node honours before giving up instead.
pub const MAX_RETRY_AFTER_S: u32 = 60;
/// The code the node reports when it never got an answer.
pub const UNREACHABLE: &str = "GATEWAY_UNREACHABLE";
/// The code the node reports when the 201 answer is unusable.
pub const BAD_ANSWER: &str = "BAD_ANSWER";

#[derive(Serialize)]
struct Request<'a> {
    node_id: &'a str,
    provisioning_token: &'a str,
    pubkey: &'a str,
    kind: &'a str,
    firmware: &'a str,
}

/// The registration URL for a provisioning request.
pub fn url(req: &ProvisionRequest) -> String {
    let mut u = req.command_center_url.clone();
    u.push_str(PATH);
    u
}

/// The request body (holds the token: zeroized when dropped).
pub fn request_body(req: &ProvisionRequest, pubkey: &str, kind: Kind) -> Zeroizing<Vec<u8>> {
    let body = Request {
        node_id: &req.node_id,
        provisioning_token: &req.provisioning_token,
        pubkey,
        kind: kind.as_str(),
        firmware: crate::FIRMWARE_VERSION,
    };
    // Serializing plain strings cannot fail; an empty body would be refused as BAD_REQUEST.
    Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default())
}

#[derive(Deserialize)]
struct Answer {
    node_key: Zeroizing<String>,
    gateway_id: String,
    gateway_pubkey: String,
    ws_url: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    #[serde(default)]
    message: String,
}

/// What to do after an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Registered: store these before anything else.
    Registered(Credentials),
    /// Refused for good: `register_failed` with the gateway's code and message.
    Refused {
        /// The gateway's error code (`PROVISIONING_TOKEN_USED`, …) or [`BAD_ANSWER`].
        code: String,
        /// Its message.
        message: String,
    },
    /// Try again after this many milliseconds (429 with `Retry-After`), or after the backoff.
    Retry {
        /// The gateway's `Retry-After`, in milliseconds, if it gave one.
        after_ms: Option<u32>,
    },
}

/// Interprets the gateway's answer to a registration request.
pub fn interpret(req: &ProvisionRequest, answer: &HttpResponse) -> Outcome {
    match answer.status {
        201 => match serde_json::from_slice::<Answer>(&answer.body) {
            Ok(a) if valid_answer(&a) => Outcome::Registered(Credentials {
                node_id: req.node_id.clone(),
                node_key: a.node_key,
                gateway_id: a.gateway_id,
                gateway_pubkey: a.gateway_pubkey,
                ws_url: a.ws_url,
                room: req.room.clone(),
                wifi_ssid: req.wifi_ssid.clone(),
                wifi_password: req.wifi_password.clone(),
                revoked: false,
            }),
            _ => Outcome::Refused {
                code: String::from(BAD_ANSWER),
                message: String::from("the gateway's registration answer is malformed"),
            },
        },
        429 => Outcome::Retry {
            after_ms: answer
                .retry_after
                .map(|s| s.min(MAX_RETRY_AFTER_S).saturating_mul(1000)),
        },
        500..=599 => Outcome::Retry { after_ms: None },
        status => match serde_json::from_slice::<ErrorBody>(&answer.body) {
            Ok(e) if e.error.code.len() <= 64 && e.error.message.len() <= 256 => Outcome::Refused {
                code: e.error.code,
                message: e.error.message,
            },
            _ => Outcome::Refused {
                code: String::from(BAD_ANSWER),
                message: alloc::format!("the gateway answered {status}"),
            },
        },
    }
}

/// What the node does next in a registration attempt series.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Registered: store these credentials.
    Registered(Credentials),
    /// Give up: `register_failed` with this code and message.
    Failed {
        /// The gateway's code, [`BAD_ANSWER`] or [`UNREACHABLE`].
        code: String,
        /// Its message.
        message: String,
    },
    /// Wait this many milliseconds, then post again.
    Wait(u32),
}

/// The retry rule: at most [`MAX_ATTEMPTS`] posts; network failures, 5xx and 429 wait the
/// gateway's `Retry-After` or the session backoff (1 s, 2 s, 4 s, … ±20 %) between them.
#[derive(Debug, Default)]
pub struct Attempts {
    made: u32,
    backoff: Backoff,
}

impl Attempts {
    /// Takes the result of one post (`random` jitters the wait).
    pub fn next(
        &mut self,
        req: &ProvisionRequest,
        answer: Result<&HttpResponse, NetError>,
        random: u32,
    ) -> Step {
        self.made += 1;
        let after_ms = match answer.map(|a| interpret(req, a)) {
            Ok(Outcome::Registered(c)) => return Step::Registered(c),
            Ok(Outcome::Refused { code, message }) => return Step::Failed { code, message },
            Ok(Outcome::Retry { after_ms }) => after_ms,
            Err(NetError) => None,
        };
        if self.made >= MAX_ATTEMPTS {
            return Step::Failed {
                code: String::from(UNREACHABLE),
                message: String::from("the gateway did not answer"),
            };
        }
        Step::Wait(after_ms.unwrap_or_else(|| self.backoff.next_delay_ms(random)))
    }
}

/// A session URL the node will dial: `ws://` or `wss://`, bounded, printable ASCII.
pub fn ws_url_ok(url: &str) -> bool {
    (url.starts_with("ws://") || url.starts_with("wss://"))
        && url.len() <= crate::provision::MAX_URL
        && url.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_answer(a: &Answer) -> bool {
    let key_ok = a.node_key.len() == 48
        && a.node_key.starts_with("node_")
        && a.node_key
            .bytes()
            .skip(5)
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    key_ok
        && ws_url_ok(&a.ws_url)
        && !a.gateway_id.is_empty()
        && a.gateway_id.len() <= 64
        && a.gateway_pubkey.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "node_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn req() -> ProvisionRequest {
        crate::provision::fixture::request("secret-pass")
    }

    fn answer(status: u16, body: serde_json::Value) -> HttpResponse {
        HttpResponse {
            status,
            retry_after: None,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn the_request_has_exactly_the_contracts_fields() {
        let body = request_body(&req(), "BPUB", Kind::Vehicle);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "node_id": "550e8400-e29b-41d4-a716-446655440000",
                "provisioning_token": "prov_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "pubkey": "BPUB", "kind": "vehicle", "firmware": crate::FIRMWARE_VERSION,
            })
        );
        assert_eq!(url(&req()), "http://10.0.0.2:8080/api/v0/nodes/register");
    }

    #[test]
    fn created_gives_credentials() {
        let a = answer(
            201,
            serde_json::json!({"node_key": KEY, "gateway_id": "gw", "gateway_pubkey": "PK",
                "ws_url": "ws://10.0.0.2:8080/ws", "extra": 1}),
        );
        let Outcome::Registered(c) = interpret(&req(), &a) else {
            panic!("not registered")
        };
        assert_eq!(c.node_key.as_str(), KEY);
        assert_eq!(c.ws_url, "ws://10.0.0.2:8080/ws");
        assert_eq!(c.room, "kitchen");
        assert_eq!(c.wifi_ssid, "HomeWifi");
        assert_eq!(c.wifi_password.as_str(), "secret-pass");
    }

    #[test]
    fn a_malformed_created_answer_is_refused_not_stored() {
        for body in [
            serde_json::json!({"node_key": "nope", "gateway_id": "gw", "gateway_pubkey": "PK", "ws_url": "ws://x/ws"}),
            serde_json::json!({"node_key": KEY, "gateway_id": "gw", "gateway_pubkey": "PK", "ws_url": "http://x/ws"}),
            serde_json::json!({"node_key": KEY}),
        ] {
            assert!(matches!(
                interpret(&req(), &answer(201, body)),
                Outcome::Refused { code, .. } if code == BAD_ANSWER
            ));
        }
    }

    #[test]
    fn token_errors_are_final_with_the_gateways_code() {
        for (status, code) in [
            (401, "PROVISIONING_TOKEN_INVALID"),
            (410, "PROVISIONING_TOKEN_EXPIRED"),
            (410, "PROVISIONING_TOKEN_USED"),
            (400, "BAD_REQUEST"),
        ] {
            let a = answer(
                status,
                serde_json::json!({"error": {"code": code, "message": "m"}}),
            );
            assert_eq!(
                interpret(&req(), &a),
                Outcome::Refused {
                    code: code.into(),
                    message: "m".into()
                }
            );
        }
        let garbage = HttpResponse {
            status: 404,
            retry_after: None,
            body: b"<html>".to_vec(),
        };
        assert!(
            matches!(interpret(&req(), &garbage), Outcome::Refused { code, .. } if code == BAD_ANSWER)
        );
    }

    #[test]
    fn five_unanswered_posts_then_gateway_unreachable() {
        let mut a = Attempts::default();
        let mid = crate::backoff::JITTER_PERCENT;
        let steps: Vec<Step> = (0..5).map(|_| a.next(&req(), Err(NetError), mid)).collect();
        assert_eq!(
            steps[..4],
            [
                Step::Wait(1_000),
                Step::Wait(2_000),
                Step::Wait(4_000),
                Step::Wait(8_000)
            ]
        );
        assert!(matches!(&steps[4], Step::Failed { code, .. } if code == UNREACHABLE));
    }

    #[test]
    fn retry_after_is_honoured_and_a_refusal_stops_at_once() {
        let mut a = Attempts::default();
        let mut limited = answer(429, serde_json::json!({"error": {"code": "RATE_LIMITED"}}));
        limited.retry_after = Some(3);
        assert_eq!(a.next(&req(), Ok(&limited), 0), Step::Wait(3_000));
        let used = answer(
            410,
            serde_json::json!({"error": {"code": "PROVISIONING_TOKEN_USED", "message": "m"}}),
        );
        assert!(matches!(
            a.next(&req(), Ok(&used), 0),
            Step::Failed { code, .. } if code == "PROVISIONING_TOKEN_USED"
        ));
    }

    #[test]
    fn rate_limits_and_server_errors_are_retried() {
        let mut a = answer(429, serde_json::json!({"error": {"code": "RATE_LIMITED"}}));
        a.retry_after = Some(7);
        assert_eq!(
            interpret(&req(), &a),
            Outcome::Retry {
                after_ms: Some(7_000)
            }
        );
        a.retry_after = Some(3_600);
        assert_eq!(
            interpret(&req(), &a),
            Outcome::Retry {
                after_ms: Some(60_000)
            }
        );
        assert_eq!(
            interpret(&req(), &answer(503, serde_json::json!({}))),
            Outcome::Retry { after_ms: None }
        );
    }
}
