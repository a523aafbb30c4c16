//! The gateway session (NODES.md §5), as a pure machine: frames in, frames and relay pulses out.
//!
//! ```text
//!            connect (Authorization: Node <key>)
//!                 │
//!                 ▼
//!   ┌──────── waiting for hello ──hello──▶ up ──┐ send status (again on every relay change)
//!   │               │                       │   │ command unlock → Pulse{id,ms} → result
//!   │               └──── any frame or ping ┴───┘ resets the 60 s liveness deadline
//!   ▼
//!  nothing received for 60 s ──▶ Close (reconnect after the backoff, see `backoff`)
//! ```
//!
//! The offline door's frames (NODES.md §5.1) pass through as effects: `grants` becomes
//! [`SessionEffect::Grants`] (the caller applies, persists and answers `grants_ack`),
//! `decisions_ack` becomes [`SessionEffect::DecisionsAck`]; the caller sends `decisions` frames
//! from its ring once the session is up. Gateway frames may be up to [`MAX_FRAME`] (64 KiB).
//!
//! The caller feeds [`SessionEvent`]s with the monotonic `now`, performs the returned
//! [`SessionEffect`]s, and sends [`SessionEvent::Tick`] at [`Session::next_deadline`]. A pulse's
//! outcome comes back as [`SessionEvent::PulseDone`], which answers the command.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::relay::{MAX_PULSE_MS, MIN_PULSE_MS};
use crate::time::{Instant, UnixTime, WallClock};
use crate::Kind;

/// A session that receives nothing (no frame, no ping) for this long is closed.
pub const LIVENESS_MS: u64 = 60_000;
/// Largest text frame the node accepts from the gateway (a `grants` frame of 256 grants is
/// 51,4xx bytes); the board's WebSocket caps incoming messages at this.
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest text frame the node sends (the gateway refuses node frames over 16 KiB).
pub const MAX_SEND_FRAME: usize = 16 * 1024;

/// Inputs of the session machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent<'a> {
    /// A text frame from the gateway.
    Text(&'a str),
    /// A ping, pong or other non-text frame: the gateway is alive.
    Activity,
    /// The relay went active (`true`) or idle.
    RelayChanged(bool),
    /// The relay pulse for command `id` was started (`Ok`) or the pin failed.
    PulseDone {
        /// The command's id.
        id: u64,
        /// Whether the relay could be driven.
        ok: bool,
    },
    /// Time passed.
    Tick,
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEffect {
    /// Send this text frame.
    Send(String),
    /// Pulse the relay for `ms`, then report [`SessionEvent::PulseDone`] for `id`.
    Pulse {
        /// The command's id.
        id: u64,
        /// Pulse length, already within 100–30000 ms.
        ms: u32,
    },
    /// Close the connection (liveness timeout) and reconnect after the backoff.
    Close,
    /// A `grants` frame: apply the snapshot (base64) and answer `grants_ack`
    /// ([`crate::grants::GrantStore::apply_frame`]).
    Grants {
        /// The snapshot, standard base64 (empty when the field was missing: refused).
        snapshot: String,
        /// The relay pulse for the node's own grants, as sent.
        pulse_ms: Option<u64>,
    },
    /// A `decisions_ack`: the gateway committed every decision up to this `seq`.
    DecisionsAck {
        /// The highest acknowledged `seq`.
        up_to: u64,
    },
}

/// A command refused before it reached the relay.
const UNSUPPORTED: &str = "UNSUPPORTED";
const BAD_COMMAND: &str = "BAD_COMMAND";
const HARDWARE: &str = "HARDWARE";

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    now: Option<UnixTime>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    command: Option<&'a str>,
    #[serde(default)]
    pulse_ms: Option<serde_json::Value>,
    // Owned: JSON may escape the base64 `/` as `\/`, which a borrowed `&str` cannot hold.
    #[serde(default)]
    snapshot: Option<String>,
    #[serde(default, rename = "upTo")]
    up_to: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Status<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "kind")]
    node_kind: &'static str,
    firmware: &'a str,
    relay: &'static str,
    uptime: u64,
}

#[derive(Serialize)]
struct CommandResult<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: u64,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// One session's state.
#[derive(Debug, Clone)]
pub struct Session {
    kind: Kind,
    last_rx: Instant,
    relay_active: bool,
    hello: bool,
    gateway_id: Option<String>,
}

impl Session {
    /// A session whose connection just opened at `now`; `relay_active` is the relay's state then.
    pub fn new(kind: Kind, relay_active: bool, now: Instant) -> Self {
        Self {
            kind,
            last_rx: now,
            relay_active,
            hello: false,
            gateway_id: None,
        }
    }

    /// When the caller must send [`SessionEvent::Tick`].
    pub fn next_deadline(&self) -> Instant {
        self.last_rx + LIVENESS_MS
    }

    /// Whether the gateway's hello has arrived.
    pub fn is_up(&self) -> bool {
        self.hello
    }

    /// The gateway id from the hello.
    pub fn gateway_id(&self) -> Option<&str> {
        self.gateway_id.as_deref()
    }

    /// Applies an event at monotonic `now`; `wall` learns the gateway's time from the hello.
    pub fn on(
        &mut self,
        event: SessionEvent<'_>,
        now: Instant,
        wall: &mut WallClock,
    ) -> Vec<SessionEffect> {
        match event {
            SessionEvent::Tick => {
                if now >= self.next_deadline() {
                    vec![SessionEffect::Close]
                } else {
                    Vec::new()
                }
            }
            SessionEvent::Activity => {
                self.last_rx = now;
                Vec::new()
            }
            SessionEvent::RelayChanged(active) => {
                if active == self.relay_active {
                    return Vec::new();
                }
                self.relay_active = active;
                if self.hello {
                    vec![self.status(now)]
                } else {
                    Vec::new()
                }
            }
            SessionEvent::PulseDone { id, ok } => {
                let error = (!ok).then_some(HARDWARE);
                vec![result(id, error)]
            }
            SessionEvent::Text(text) => {
                self.last_rx = now;
                if text.len() > MAX_FRAME {
                    log::warn!("gateway frame over {MAX_FRAME} bytes ignored");
                    return Vec::new();
                }
                self.frame(text, now, wall)
            }
        }
    }

    fn frame(&mut self, text: &str, now: Instant, wall: &mut WallClock) -> Vec<SessionEffect> {
        let Ok(f) = serde_json::from_str::<Incoming<'_>>(text) else {
            log::warn!("malformed gateway frame ignored");
            return Vec::new();
        };
        match f.kind {
            "hello" => {
                if let Some(t) = f.now {
                    wall.set(t, now);
                }
                self.hello = true;
                vec![self.status(now)]
            }
            "command" => self.command(&f),
            "grants" => vec![SessionEffect::Grants {
                snapshot: f.snapshot.unwrap_or_default(),
                pulse_ms: f.pulse_ms.as_ref().and_then(serde_json::Value::as_u64),
            }],
            "decisions_ack" => match f.up_to.as_ref().and_then(serde_json::Value::as_u64) {
                Some(up_to) => vec![SessionEffect::DecisionsAck { up_to }],
                None => {
                    log::warn!("decisions_ack without an upTo ignored");
                    Vec::new()
                }
            },
            // Unknown types are ignored (forward compatibility), as is the gateway's `error`.
            other => {
                log::debug!("gateway frame type {other} ignored");
                Vec::new()
            }
        }
    }

    fn command(&mut self, f: &Incoming<'_>) -> Vec<SessionEffect> {
        let Some(id) =
            f.id.as_ref()
                .and_then(serde_json::Value::as_u64)
                .filter(|&i| i > 0)
        else {
            // Without a usable id there is nothing to answer.
            log::warn!("gateway command without a positive id ignored");
            return Vec::new();
        };
        match f.command {
            Some("unlock") => {
                let ms = f
                    .pulse_ms
                    .as_ref()
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (MIN_PULSE_MS..=MAX_PULSE_MS).contains(m));
                match ms {
                    Some(ms) => vec![SessionEffect::Pulse { id, ms }],
                    None => vec![result(id, Some(BAD_COMMAND))],
                }
            }
            _ => vec![result(id, Some(UNSUPPORTED))],
        }
    }

    fn status(&self, now: Instant) -> SessionEffect {
        let s = Status {
            kind: "status",
            node_kind: self.kind.as_str(),
            firmware: crate::FIRMWARE_VERSION,
            relay: if self.relay_active { "active" } else { "idle" },
            uptime: now.as_millis() / 1000,
        };
        SessionEffect::Send(serde_json::to_string(&s).unwrap_or_default())
    }
}

fn result(id: u64, error: Option<&str>) -> SessionEffect {
    let r = CommandResult {
        kind: "result",
        id,
        ok: error.is_none(),
        error,
    };
    SessionEffect::Send(serde_json::to_string(&r).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn sent(effects: &[SessionEffect]) -> Vec<Value> {
        effects
            .iter()
            .filter_map(|e| match e {
                SessionEffect::Send(t) => Some(serde_json::from_str(t).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn up() -> (Session, WallClock) {
        let mut s = Session::new(Kind::Door, false, at(0));
        let mut wall = WallClock::default();
        s.on(
            SessionEvent::Text(r#"{"type":"hello","nodeId":"n","gatewayId":"g","now":1764237600}"#),
            at(2_000),
            &mut wall,
        );
        (s, wall)
    }

    #[test]
    fn hello_sets_wall_time_and_is_answered_with_status() {
        let mut s = Session::new(Kind::Door, false, at(0));
        let mut wall = WallClock::default();
        let fx = s.on(
            SessionEvent::Text(
                r#"{"type":"hello","nodeId":"n","gatewayId":"g","now":1764237600,"new":1}"#,
            ),
            at(12_345),
            &mut wall,
        );
        assert_eq!(
            sent(&fx),
            [
                json!({"type":"status","kind":"door","firmware":crate::FIRMWARE_VERSION,"relay":"idle","uptime":12})
            ]
        );
        assert!(s.is_up());
        assert_eq!(wall.now(at(12_345)), Some(1_764_237_600));
    }

    #[test]
    fn unlock_pulses_then_answers_ok_or_hardware() {
        let (mut s, mut wall) = up();
        let fx = s.on(
            SessionEvent::Text(r#"{"type":"command","id":42,"command":"unlock","pulse_ms":3000}"#),
            at(3_000),
            &mut wall,
        );
        assert_eq!(fx, [SessionEffect::Pulse { id: 42, ms: 3000 }]);
        let fx = s.on(
            SessionEvent::PulseDone { id: 42, ok: true },
            at(3_001),
            &mut wall,
        );
        assert_eq!(sent(&fx), [json!({"type":"result","id":42,"ok":true})]);
        let fx = s.on(
            SessionEvent::PulseDone { id: 43, ok: false },
            at(3_002),
            &mut wall,
        );
        assert_eq!(
            sent(&fx),
            [json!({"type":"result","id":43,"ok":false,"error":"HARDWARE"})]
        );
    }

    #[test]
    fn out_of_range_and_unknown_commands_are_refused_with_their_codes() {
        let (mut s, mut wall) = up();
        for (frame, code) in [
            (
                r#"{"type":"command","id":1,"command":"unlock","pulse_ms":99}"#,
                "BAD_COMMAND",
            ),
            (
                r#"{"type":"command","id":1,"command":"unlock","pulse_ms":30001}"#,
                "BAD_COMMAND",
            ),
            (
                r#"{"type":"command","id":1,"command":"unlock"}"#,
                "BAD_COMMAND",
            ),
            (
                r#"{"type":"command","id":1,"command":"unlock","pulse_ms":"3000"}"#,
                "BAD_COMMAND",
            ),
            (
                r#"{"type":"command","id":1,"command":"selfdestruct"}"#,
                "UNSUPPORTED",
            ),
        ] {
            let fx = s.on(SessionEvent::Text(frame), at(5_000), &mut wall);
            assert_eq!(
                sent(&fx),
                [json!({"type":"result","id":1,"ok":false,"error":code})],
                "{frame}"
            );
        }
        for edge in [100, 30_000] {
            let frame = alloc::format!(
                r#"{{"type":"command","id":2,"command":"unlock","pulse_ms":{edge}}}"#
            );
            let fx = s.on(SessionEvent::Text(&frame), at(5_000), &mut wall);
            assert_eq!(fx, [SessionEffect::Pulse { id: 2, ms: edge }]);
        }
    }

    #[test]
    fn malformed_unknown_and_idless_frames_are_ignored() {
        let (mut s, mut wall) = up();
        for frame in [
            "not json",
            r#"{"type":"future-thing","x":1}"#,
            r#"{"type":"command","command":"unlock","pulse_ms":3000}"#,
            r#"{"type":"command","id":0,"command":"unlock","pulse_ms":3000}"#,
            r#"{"type":"command","id":-5,"command":"unlock","pulse_ms":3000}"#,
            r#"{"type":"error","code":"BAD_FRAME","message":"m"}"#,
        ] {
            assert!(
                s.on(SessionEvent::Text(frame), at(5_000), &mut wall)
                    .is_empty(),
                "{frame}"
            );
        }
        let big = "x".repeat(MAX_FRAME + 1);
        assert!(s
            .on(SessionEvent::Text(&big), at(5_000), &mut wall)
            .is_empty());
    }

    #[test]
    fn relay_changes_are_reported_once_each_after_hello() {
        let mut s = Session::new(Kind::Vehicle, false, at(0));
        let mut wall = WallClock::default();
        // Before hello nothing is reported; the hello's status carries the state.
        assert!(s
            .on(SessionEvent::RelayChanged(true), at(1), &mut wall)
            .is_empty());
        let fx = s.on(SessionEvent::Text(r#"{"type":"hello"}"#), at(2), &mut wall);
        assert_eq!(sent(&fx)[0]["relay"], "active");
        assert!(!wall.is_known());
        assert!(s
            .on(SessionEvent::RelayChanged(true), at(3), &mut wall)
            .is_empty());
        let fx = s.on(SessionEvent::RelayChanged(false), at(4), &mut wall);
        assert_eq!(sent(&fx)[0]["relay"], "idle");
        assert_eq!(sent(&fx)[0]["kind"], "vehicle");
    }

    #[test]
    fn silence_for_sixty_seconds_closes_and_any_traffic_extends() {
        let (mut s, mut wall) = up();
        assert_eq!(s.next_deadline(), at(62_000));
        assert!(s.on(SessionEvent::Tick, at(61_999), &mut wall).is_empty());
        s.on(SessionEvent::Activity, at(50_000), &mut wall);
        assert_eq!(s.next_deadline(), at(110_000));
        assert!(s.on(SessionEvent::Tick, at(62_000), &mut wall).is_empty());
        s.on(SessionEvent::Text("{}"), at(100_000), &mut wall);
        assert_eq!(
            s.on(SessionEvent::Tick, at(160_000), &mut wall),
            [SessionEffect::Close]
        );
    }

    #[test]
    fn grants_and_decisions_ack_frames_become_effects_and_frames_up_to_64_kib_are_read() {
        let (mut s, mut wall) = up();
        let fx = s.on(
            SessionEvent::Text(r#"{"type":"grants","snapshot":"AhI\/+w==","pulse_ms":1500}"#),
            at(3_000),
            &mut wall,
        );
        assert_eq!(
            fx,
            [SessionEffect::Grants {
                snapshot: String::from("AhI/+w=="),
                pulse_ms: Some(1500)
            }]
        );
        let fx = s.on(
            SessionEvent::Text(r#"{"type":"decisions_ack","upTo":17}"#),
            at(3_000),
            &mut wall,
        );
        assert_eq!(fx, [SessionEffect::DecisionsAck { up_to: 17 }]);
        for bad in [
            r#"{"type":"decisions_ack"}"#,
            r#"{"type":"decisions_ack","upTo":-1}"#,
        ] {
            assert!(s
                .on(SessionEvent::Text(bad), at(3_000), &mut wall)
                .is_empty());
        }
        // A 60 KB grants frame is read; one over 64 KiB is not.
        let big = alloc::format!(r#"{{"type":"grants","snapshot":"{}"}}"#, "A".repeat(60_000));
        assert!(matches!(
            s.on(SessionEvent::Text(&big), at(3_000), &mut wall)[..],
            [SessionEffect::Grants { .. }]
        ));
        let huge = alloc::format!(
            r#"{{"type":"grants","snapshot":"{}"}}"#,
            "A".repeat(MAX_FRAME)
        );
        assert!(s
            .on(SessionEvent::Text(&huge), at(3_000), &mut wall)
            .is_empty());
    }
}
