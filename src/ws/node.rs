//! One endpoint node's session on `/ws` (docs/NODES.md §5): `hello` with the gateway's time,
//! the node's `status`, `command`s from the hub answered by `result`s, and liveness by
//! WebSocket pings (every 20 s; two missed and the node is offline).
//!
//! One task owns the socket and waits on everything at once: the node's frames, commands from
//! the hub, the ping ticker, revocation (the hub's watcher of the event log), replacement by a
//! newer session of the same node (close 4409), and shutdown (1001). A revoked node is closed
//! with 4403 at once.
//! The session marks the node online once it is the node's only session (a session it replaced
//! has recorded its `node.offline` first), and offline with the reason when it ends.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::session::{close, BadFrames};
use crate::grants::{self, decisions, decisions::Entry};
use crate::nodes::{self, hub::Attached, NodeId, OfflineReason};
use crate::state::AppState;

/// NODES.md §5: a frame over 16 KiB gets `BAD_FRAME`; past 64 KiB the socket closes (1009).
const MAX_FRAME: usize = 16 * 1024;
const MAX_MESSAGE: usize = 64 * 1024;
/// A node session is small: little to buffer either way.
const READ_BUFFER: usize = 2 * 1024;
const WRITE_BUFFER: usize = 4 * 1024;
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// A write that makes no progress for this long: the node stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take to get out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a new session waits for the one it replaced to record its end.
const REPLACE_WAIT: Duration = Duration::from_secs(5);
const MISSED_PONGS: u32 = 2;
/// Commands in flight on one session; beyond that new ones are refused as busy.
const MAX_PENDING: usize = 64;
/// `last_seen` is written at most once a minute while connected.
const LAST_SEEN_EVERY: i64 = 60;
/// Close code for a session replaced by a newer one of the same node.
pub const REPLACED: u16 = 4409;

pub fn upgrade(
    ws: WebSocketUpgrade,
    state: AppState,
    id: NodeId,
    tracked: TaskTrackerToken,
) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            serve(socket, state, id).await;
            drop(tracked);
        })
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Gone,
    Timeout,
    Replaced,
    Shutdown,
    Revoked,
    Close(u16, &'static str),
}

impl Stop {
    fn reason(self) -> OfflineReason {
        match self {
            Stop::Timeout => OfflineReason::Timeout,
            Stop::Replaced => OfflineReason::Replaced,
            Stop::Shutdown => OfflineReason::Shutdown,
            Stop::Revoked => OfflineReason::Revoked,
            Stop::Gone | Stop::Close(..) => OfflineReason::Closed,
        }
    }
}

/// A node's frame (NODES.md §5).
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeFrame {
    Status {
        #[serde(default)]
        firmware: Option<String>,
    },
    Result {
        id: u64,
        ok: bool,
        #[serde(default)]
        error: Option<String>,
    },
    /// The node applied (or refused) a `grants` snapshot.
    GrantsAck {
        version: u64,
        ok: bool,
        #[serde(default)]
        grants: Option<u64>,
        #[serde(default)]
        error: Option<String>,
    },
    /// Its decision log, oldest first.
    Decisions {
        entries: Vec<DecisionEntry>,
        #[serde(default)]
        lost: u64,
        #[serde(default)]
        unrecognised: u64,
    },
    /// Unknown types are ignored (forward compatibility).
    #[serde(other)]
    Other,
}

/// Parses one text frame from a node (the fuzz target `gateway_ws` calls it too).
pub fn parse_frame(text: &str) -> Result<NodeFrame, serde_json::Error> {
    serde_json::from_str(text)
}

/// One entry of a `decisions` frame as sent (checked by `grants::decisions::Entry::check`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionEntry {
    seq: u64,
    status: String,
    tool_id: Option<String>,
    endpoint: Option<String>,
    phone_time: Option<u64>,
    door_time: Option<u64>,
    offline: bool,
}

fn text(v: serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(v.to_string()))
}

fn bad_frame(message: &str) -> Message {
    text(json!({ "type": "error", "code": "BAD_FRAME", "message": message }))
}

/// A node's error code as we record it: upper-case words, bounded; anything else is `INVALID`.
fn error_code(e: Option<String>) -> String {
    match e {
        Some(c)
            if !c.is_empty()
                && c.len() <= 32
                && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
        {
            c
        }
        Some(_) => "INVALID".into(),
        None => "UNKNOWN".into(),
    }
}

struct Session {
    state: AppState,
    id: NodeId,
    socket: WebSocket,
    attached: Attached,
    pending: HashMap<u64, oneshot::Sender<Option<String>>>,
    outstanding: u32,
    online: bool,
    firmware: Option<String>,
    last_touch: i64,
    bad: BadFrames,
    /// Version of the last `grants` frame sent on this session.
    grants_sent: Option<u64>,
}

async fn serve(socket: WebSocket, state: AppState, id: NodeId) {
    // Attached before the revocation check, so a revoke in between is still seen.
    let attached = state.nodes.attach(&id);
    let mut s = Session {
        state,
        id,
        socket,
        attached,
        pending: HashMap::new(),
        outstanding: 0,
        online: false,
        firmware: None,
        last_touch: 0,
        bad: BadFrames::new(),
        grants_sent: None,
    };
    let stop = s.run().await;
    s.finish(stop).await;
}

impl Session {
    async fn run(&mut self) -> Result<(), Stop> {
        if let Some(prev) = self.attached.previous.take() {
            // The older session closes with 4409 and records its end before this one begins.
            let _ = tokio::time::timeout(REPLACE_WAIT, prev.closed()).await;
        }
        let (id, now) = (self.id.clone(), self.state.now());
        let revoked = self
            .state
            .store
            .write(move |tx| {
                let revoked = nodes::get(tx, &id)?.is_none_or(|n| n.revoked);
                if !revoked {
                    nodes::set_online(tx, &id, now)?;
                }
                Ok(revoked)
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "node session: cannot record online");
                Stop::Close(close::ERROR, "internal error")
            })?;
        if revoked {
            return Err(Stop::Revoked);
        }
        self.online = true;
        self.last_touch = now;
        tracing::info!(node_id = %self.id, "node online");
        let hello = json!({
            "type": "hello",
            "nodeId": self.id,
            "gatewayId": self.state.gateway_id,
            "now": now,
        });
        self.send(text(hello)).await?;
        self.push_grants().await?;

        let every = self.state.nodes.ping_every();
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shutdown = self.state.shutdown.clone();
        let replaced = self.attached.replaced.clone();
        let revoked = self.attached.revoked.clone();
        let grants = self.attached.grants.clone();
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Stop::Shutdown),
                _ = revoked.cancelled() => return Err(Stop::Revoked),
                _ = replaced.cancelled() => return Err(Stop::Replaced),
                c = self.attached.commands.recv() => match c {
                    Some(c) => self.on_command(c).await?,
                    // The hub let go of this session: a newer one took its place.
                    None => return Err(Stop::Replaced),
                },
                _ = grants.notified() => self.push_grants().await?,
                _ = ticker.tick() => self.heartbeat().await?,
                m = self.socket.recv() => self.on_message(m).await?,
            }
        }
    }

    async fn send(&mut self, m: Message) -> Result<(), Stop> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::Gone),
            Err(_) => Err(Stop::Close(close::POLICY, "too slow")),
        }
    }

    /// Sends the node's snapshot when it is not the one this session sent last (always once
    /// after `hello`); re-signs it first if the registry changed (`grants::snapshot::refresh`).
    async fn push_grants(&mut self) -> Result<(), Stop> {
        let (id, st) = (self.id.clone(), self.state.clone());
        let (now, now_ms) = (self.state.now(), self.state.clock.now_ms());
        let snapshot = self
            .state
            .store
            .write(move |tx| {
                Ok(grants::snapshot::refresh(
                    tx,
                    &st.master,
                    &st.config.endpoints,
                    &id,
                    now,
                    now_ms,
                ))
            })
            .await;
        let snapshot = match snapshot {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(node_id = %self.id, error = %e, "cannot build a node's grants");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(node_id = %self.id, error = %e, "cannot build a node's grants");
                return Ok(());
            }
        };
        if self.grants_sent == Some(snapshot.version) {
            return Ok(());
        }
        let frame = json!({
            "type": "grants",
            "snapshot": data_encoding::BASE64.encode(&snapshot.bytes),
            "pulse_ms": snapshot.pulse_ms,
        });
        self.send(text(frame)).await?;
        self.grants_sent = Some(snapshot.version);
        tracing::debug!(
            node_id = %self.id,
            version = snapshot.version,
            epoch = snapshot.epoch,
            grants = snapshot.count,
            "grants sent"
        );
        Ok(())
    }

    async fn on_grants_ack(&mut self, version: u64, ok: bool, count: u64, error: Option<String>) {
        if !ok {
            // Logged, not audited (NODES.md §5): the node keeps its previous grants.
            tracing::warn!(
                node_id = %self.id,
                version,
                error = %error_code(error),
                "the node refused its grants"
            );
            return;
        }
        let id = self.id.clone();
        let r = self
            .state
            .store
            .write(move |tx| grants::snapshot::record_ack(tx, &id, version, count))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not record a node's grants ack");
        }
    }

    /// Records a `decisions` frame and acknowledges it; `Err` is the `BAD_FRAME` message.
    async fn on_decisions(
        &mut self,
        entries: Vec<DecisionEntry>,
        counts: decisions::Counts,
    ) -> Result<Result<(), &'static str>, Stop> {
        let checked: Result<Vec<Entry>, _> = entries
            .into_iter()
            .map(|e| {
                Entry::check(
                    e.seq,
                    &e.status,
                    e.tool_id.as_deref(),
                    e.endpoint.as_deref(),
                    e.phone_time,
                    e.door_time,
                    e.offline,
                )
            })
            .collect();
        let checked = match checked.and_then(|c| decisions::check_batch(&c).map(|()| c)) {
            Ok(c) => c,
            Err(m) => return Ok(Err(m)),
        };
        let (id, now_ms) = (self.id.clone(), self.state.clock.now_ms());
        let recorded = self
            .state
            .store
            .write(move |tx| decisions::record(tx, &id, &checked, counts, now_ms))
            .await;
        match recorded {
            Ok(up_to) => {
                self.send(text(json!({ "type": "decisions_ack", "upTo": up_to })))
                    .await?;
                Ok(Ok(()))
            }
            // Not acknowledged: the node sends them again on its next session.
            Err(e) => {
                tracing::warn!(node_id = %self.id, error = %e, "could not record decisions");
                Ok(Ok(()))
            }
        }
    }

    async fn on_command(&mut self, c: nodes::hub::Command) -> Result<(), Stop> {
        self.pending.retain(|_, r| !r.is_closed());
        if self.pending.len() >= MAX_PENDING {
            let _ = c.reply.send(Some("BUSY".into()));
            return Ok(());
        }
        let frame = json!({
            "type": "command",
            "id": c.id,
            "command": c.command,
            "pulse_ms": c.pulse_ms,
        });
        self.pending.insert(c.id, c.reply);
        self.send(text(frame)).await
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        if self.outstanding >= MISSED_PONGS {
            return Err(Stop::Timeout);
        }
        self.outstanding += 1;
        self.send(Message::Ping(Default::default())).await?;
        self.pending.retain(|_, r| !r.is_closed());
        let now = self.state.now();
        if now - self.last_touch >= LAST_SEEN_EVERY {
            self.last_touch = now;
            let id = self.id.clone();
            let r = self
                .state
                .store
                .write(move |tx| nodes::touch_last_seen(tx, &id, now))
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not record a node's last_seen");
            }
        }
        Ok(())
    }

    async fn on_message(&mut self, m: Option<Result<Message, axum::Error>>) -> Result<(), Stop> {
        let msg = match m {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                return Err(match super::session::violation(&e) {
                    Some((code, reason)) => Stop::Close(code, reason),
                    None => Stop::Gone,
                })
            }
            None => return Err(Stop::Gone),
        };
        // Any frame at all is a sign of life.
        self.outstanding = 0;
        let problem = match msg {
            Message::Text(t) if t.len() > MAX_FRAME => Some("frame over 16 KiB"),
            Message::Text(t) => match parse_frame(t.as_str()) {
                Ok(f) => self.on_frame(f).await?,
                Err(_) => Some("not a valid frame (JSON object with a known type's fields)"),
            },
            Message::Binary(_) => Some("frames are JSON text"),
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => return Err(Stop::Gone),
        };
        if let Some(message) = problem {
            if !self.bad.take() {
                return Err(Stop::Close(close::POLICY, "too many bad frames"));
            }
            self.send(bad_frame(message)).await?;
        }
        Ok(())
    }

    /// Handles a well-formed frame; `Ok(Some(message))` when its content is not acceptable.
    async fn on_frame(&mut self, f: NodeFrame) -> Result<Option<&'static str>, Stop> {
        match f {
            NodeFrame::GrantsAck {
                version,
                ok,
                grants,
                error,
            } => {
                self.on_grants_ack(version, ok, grants.unwrap_or(0), error)
                    .await;
            }
            NodeFrame::Decisions {
                entries,
                lost,
                unrecognised,
            } => {
                let counts = decisions::Counts { lost, unrecognised };
                return Ok(self.on_decisions(entries, counts).await?.err());
            }
            NodeFrame::Result { id, ok, error } => {
                // A late answer (after the gateway gave up) finds nobody waiting.
                if let Some(reply) = self.pending.remove(&id) {
                    let _ = reply.send((!ok).then(|| error_code(error)));
                }
            }
            NodeFrame::Status { firmware } => {
                let valid = firmware.filter(|f| {
                    !f.is_empty() && f.len() <= 32 && f.bytes().all(|b| b.is_ascii_graphic())
                });
                if let Some(fw) = valid {
                    if self.firmware.as_deref() != Some(fw.as_str()) {
                        self.firmware = Some(fw.clone());
                        let id = self.id.clone();
                        let r = self
                            .state
                            .store
                            .write(move |tx| nodes::record_firmware(tx, &id, &fw))
                            .await;
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "could not record a node's firmware");
                        }
                    }
                }
            }
            NodeFrame::Other => {}
        }
        Ok(None)
    }

    /// Says goodbye with the right close code and records the node offline.
    async fn finish(mut self, stop: Result<(), Stop>) {
        let stop = stop.err().unwrap_or(Stop::Gone);
        let close_with = match stop {
            Stop::Gone => None,
            Stop::Timeout => Some((close::ERROR, "ping timeout")),
            Stop::Replaced => Some((REPLACED, "replaced by a newer session")),
            Stop::Shutdown => Some((close::GOING_AWAY, "gateway shutting down")),
            Stop::Revoked => Some((close::REVOKED, "revoked")),
            Stop::Close(code, reason) => Some((code, reason)),
        };
        if let Some((code, reason)) = close_with {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tokio::time::timeout(CLOSE_GRACE, self.socket.send(frame)).await;
        }
        self.state.nodes.detach(&self.id, self.attached.serial);
        // Whoever waits on a command here learns now that no answer comes.
        self.pending.clear();
        if self.online {
            let (id, now, reason) = (self.id.clone(), self.state.now(), stop.reason());
            let r = self
                .state
                .store
                .write(move |tx| nodes::set_offline(tx, &id, reason, now))
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not record a node offline");
            }
            tracing::info!(node_id = %self.id, reason = reason.as_str(), "node offline");
        }
        // Dropping the session (and its command receiver) tells a replacing session we are done.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_leniently() {
        let f: NodeFrame =
            serde_json::from_str(r#"{"type":"result","id":7,"ok":false,"error":"HARDWARE","x":1}"#)
                .unwrap();
        assert!(matches!(
            f,
            NodeFrame::Result {
                id: 7,
                ok: false,
                ..
            }
        ));
        let f: NodeFrame = serde_json::from_str(r#"{"type":"telemetry","v":1}"#).unwrap();
        assert!(matches!(f, NodeFrame::Other));
        let f: NodeFrame =
            serde_json::from_str(r#"{"type":"status","kind":"door","relay":"idle"}"#).unwrap();
        assert!(matches!(f, NodeFrame::Status { firmware: None }));
        assert!(serde_json::from_str::<NodeFrame>(r#"{"type":"result","id":"x"}"#).is_err());
        assert_eq!(error_code(Some("HARDWARE".into())), "HARDWARE");
        assert_eq!(error_code(Some("<script>".into())), "INVALID");
        assert_eq!(error_code(None), "UNKNOWN");
    }
}
