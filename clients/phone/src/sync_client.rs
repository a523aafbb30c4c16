//! A client for the gateway's sync channel (`GET /ws`, CONTRACT §4), for phones and tools:
//! connects with a device key, reconnects with exponential backoff and jitter, and resumes from
//! the last event it handed out, so a caller sees every event once, in order, across drops.
//!
//! ```no_run
//! # async fn demo(key: latchkey_phone::secret::SecretString) -> Result<(), latchkey_phone::sync_client::SyncError> {
//! use latchkey_phone::sync_client::{Incoming, SyncClient};
//! let mut client = SyncClient::new("ws://192.168.1.42:8080/ws", key);
//! loop {
//!     match client.next().await? {
//!         Incoming::Event(ev) => println!("{} {}", ev.seq, ev.topic),
//!         Incoming::Reset { .. } => { /* refetch state over HTTP, then carry on */ }
//!     }
//! }
//! # }
//! ```
//!
//! Revocation (HTTP 403 on connect, or close code 4403) is terminal: `SyncError::Revoked`.
//! Keep calling `next()`: that is also what answers the gateway's pings.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::secret::SecretString;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The close code of a revoked device's sockets.
pub const CLOSE_REVOKED: u16 = 4403;
/// How long the gateway may take to say `hello` after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// One event, as the gateway sent it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SyncEvent {
    pub seq: i64,
    pub topic: String,
    /// RFC 3339.
    pub ts: String,
    pub data: Value,
}

/// What `next()` hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event(SyncEvent),
    /// Events after the last one seen are no longer retained: refetch whatever state is derived
    /// from them; the stream continues after `seq`.
    Reset {
        seq: i64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("this device has been revoked")]
    Revoked,
    #[error("the gateway does not accept this device key")]
    Unauthorized,
    #[error("gave up after {attempts} connection attempts: {last}")]
    GaveUp { attempts: u32, last: String },
    #[error("the gateway refused the publish: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("the connection dropped before the gateway acknowledged the publish")]
    Unacknowledged,
    #[error("not a usable gateway url: {0}")]
    Url(String),
}

/// Exponential backoff with jitter: attempt `n` waits a random time in `[d/2, d]`, where
/// `d = min(max, initial · 2ⁿ)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.initial.saturating_mul(factor).min(self.max);
        d.mul_f64(rand::random_range(0.5..=1.0))
    }
}

enum ServerFrame {
    Hello {
        device_id: Option<String>,
        seq: i64,
    },
    Event(SyncEvent),
    Reset {
        seq: i64,
    },
    Ack {
        id: Value,
        seq: i64,
    },
    Error {
        id: Option<Value>,
        code: String,
        message: String,
    },
}

/// Every field any server frame has, parsed in one pass (an internally tagged enum would
/// buffer each frame and parse it twice; this is the per-event hot path).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    seq: Option<i64>,
    topic: Option<String>,
    ts: Option<String>,
    data: Option<Value>,
    id: Option<Value>,
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "deviceId")]
    device_id: Option<String>,
}

fn parse_frame(text: &str) -> Option<ServerFrame> {
    let r: RawFrame<'_> = serde_json::from_str(text).ok()?;
    Some(match r.kind.as_ref() {
        "event" => ServerFrame::Event(SyncEvent {
            seq: r.seq?,
            topic: r.topic?,
            ts: r.ts.unwrap_or_default(),
            data: r.data.unwrap_or(Value::Null),
        }),
        "hello" => ServerFrame::Hello {
            device_id: r.device_id,
            seq: r.seq?,
        },
        "reset" => ServerFrame::Reset { seq: r.seq? },
        "ack" => ServerFrame::Ack {
            id: r.id.unwrap_or(Value::Null),
            seq: r.seq?,
        },
        "error" => ServerFrame::Error {
            id: r.id,
            code: r.code.unwrap_or_default(),
            message: r.message.unwrap_or_default(),
        },
        _ => return None,
    })
}

enum Attempt {
    Terminal(SyncError),
    Retry(String),
}

pub struct SyncClient {
    url: String,
    key: SecretString,
    topics: Option<Vec<String>>,
    since: Option<i64>,
    backoff: Backoff,
    max_attempts: Option<u32>,
    ws: Option<Socket>,
    queued: VecDeque<Incoming>,
    next_id: u64,
    device_id: Option<String>,
    /// Connection attempts that failed since the last good one.
    failures: u32,
    /// Whether a connection existed before (a reconnect waits before it dials).
    connected_before: bool,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("url", &self.url)
            .field("since", &self.since)
            .field("connected", &self.ws.is_some())
            .finish_non_exhaustive()
    }
}

impl SyncClient {
    /// A client for `url` (`ws://host:port/ws`); nothing is dialled until first used.
    pub fn new(url: impl Into<String>, device_key: SecretString) -> Self {
        Self {
            url: url.into(),
            key: device_key,
            topics: None,
            since: None,
            backoff: Backoff::default(),
            max_attempts: None,
            ws: None,
            queued: VecDeque::new(),
            next_id: 0,
            device_id: None,
            failures: 0,
            connected_before: false,
        }
    }

    /// Resume after `seq` (e.g. persisted from a previous run) instead of from now.
    pub fn since(mut self, seq: i64) -> Self {
        self.since = Some(seq);
        self
    }

    /// Only these topic patterns (`"door.*"`, exact topics, `"*"`).
    pub fn topics(mut self, patterns: Vec<String>) -> Self {
        self.topics = Some(patterns);
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Give up after this many consecutive failed attempts (default: never).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// The newest seq handed out (or the gateway's newest at first connect).
    pub fn last_seq(&self) -> Option<i64> {
        self.since
    }

    /// This device's id, as the gateway's `hello` named it.
    pub fn device_id(&self) -> Option<&str> {
        self.device_id.as_deref()
    }

    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    /// Connects now (with retries), so a bad key or a revoked device shows up at once.
    pub async fn connect(&mut self) -> Result<(), SyncError> {
        if self.ws.is_none() {
            self.reconnect().await?;
        }
        Ok(())
    }

    /// The next event (or reset), reconnecting and resuming as often as needed.
    pub async fn next(&mut self) -> Result<Incoming, SyncError> {
        loop {
            if let Some(x) = self.queued.pop_front() {
                return Ok(x);
            }
            if self.ws.is_none() {
                self.reconnect().await?;
            }
            match self.read_frame().await? {
                Some(ServerFrame::Event(ev)) => {
                    if let Some(x) = self.accept(ev) {
                        return Ok(x);
                    }
                }
                Some(ServerFrame::Reset { seq }) => {
                    self.since = Some(seq);
                    return Ok(Incoming::Reset { seq });
                }
                // Stale acks and errors, or a dropped connection (reconnects above).
                _ => {}
            }
        }
    }

    /// Publishes and waits for the gateway's `ack`; returns the event's seq. Events that
    /// arrive meanwhile are kept for `next()`. If the connection drops first the outcome is
    /// unknown (`Unacknowledged`): the event may or may not be in the log.
    pub async fn publish(&mut self, topic: &str, data: Value) -> Result<i64, SyncError> {
        self.connect().await?;
        self.next_id += 1;
        let id = self.next_id;
        let frame = json!({ "type": "publish", "id": id, "topic": topic, "data": data });
        let Some(ws) = self.ws.as_mut() else {
            return Err(SyncError::Unacknowledged);
        };
        if ws.send(Message::text(frame.to_string())).await.is_err() {
            self.ws = None;
            return Err(SyncError::Unacknowledged);
        }
        loop {
            match self.read_frame().await? {
                None => return Err(SyncError::Unacknowledged),
                Some(ServerFrame::Ack { id: got, seq }) if got == json!(id) => return Ok(seq),
                Some(ServerFrame::Error {
                    id: Some(got),
                    code,
                    message,
                }) if got == json!(id) => return Err(SyncError::Refused { code, message }),
                Some(ServerFrame::Event(ev)) => {
                    if let Some(x) = self.accept(ev) {
                        self.queued.push_back(x);
                    }
                }
                Some(ServerFrame::Reset { seq }) => {
                    self.since = Some(seq);
                    self.queued.push_back(Incoming::Reset { seq });
                }
                Some(_) => {}
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    fn accept(&mut self, ev: SyncEvent) -> Option<Incoming> {
        if self.since.is_some_and(|s| ev.seq <= s) {
            return None;
        }
        self.since = Some(ev.seq);
        Some(Incoming::Event(ev))
    }

    /// One frame from the open connection; `None` when it ended (it is then dropped).
    async fn read_frame(&mut self) -> Result<Option<ServerFrame>, SyncError> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(None);
        };
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(f) = parse_frame(t.as_str()) {
                        return Ok(Some(f));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.ws = None;
                    if frame.is_some_and(|f| u16::from(f.code) == CLOSE_REVOKED) {
                        return Err(SyncError::Revoked);
                    }
                    return Ok(None);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    self.ws = None;
                    return Ok(None);
                }
            }
        }
    }

    async fn reconnect(&mut self) -> Result<(), SyncError> {
        loop {
            if self.connected_before || self.failures > 0 {
                tokio::time::sleep(self.backoff.delay(self.failures)).await;
            }
            match self.connect_once().await {
                Ok(ws) => {
                    self.ws = Some(ws);
                    self.failures = 0;
                    self.connected_before = true;
                    return Ok(());
                }
                Err(Attempt::Terminal(e)) => return Err(e),
                Err(Attempt::Retry(last)) => {
                    self.failures = self.failures.saturating_add(1);
                    if self.max_attempts.is_some_and(|m| self.failures >= m) {
                        return Err(SyncError::GaveUp {
                            attempts: self.failures,
                            last,
                        });
                    }
                    tracing::debug!(attempt = self.failures, reason = %last, "sync: reconnecting");
                }
            }
        }
    }

    async fn connect_once(&mut self) -> Result<Socket, Attempt> {
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| Attempt::Terminal(SyncError::Url(e.to_string())))?;
        let mut auth = HeaderValue::from_str(&format!("Device {}", self.key.expose()))
            .map_err(|_| Attempt::Terminal(SyncError::Unauthorized))?;
        auth.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(1024 * 1024))
            .max_frame_size(Some(1024 * 1024));
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), false)
            .await
            .map_err(|e| match e {
                WsError::Http(resp) if resp.status() == StatusCode::UNAUTHORIZED => {
                    Attempt::Terminal(SyncError::Unauthorized)
                }
                WsError::Http(resp) if resp.status() == StatusCode::FORBIDDEN => {
                    Attempt::Terminal(SyncError::Revoked)
                }
                WsError::Http(resp) => Attempt::Retry(format!("HTTP {}", resp.status())),
                other => Attempt::Retry(other.to_string()),
            })?;
        let lost = |e: WsError| Attempt::Retry(e.to_string());
        if let Some(topics) = &self.topics {
            let f = json!({ "type": "subscribe", "topics": topics });
            ws.send(Message::text(f.to_string())).await.map_err(lost)?;
        }
        // Resume first thing, so the replay comes before any live event.
        if let Some(since) = self.since {
            let f = json!({ "type": "resume", "since": since });
            ws.send(Message::text(f.to_string())).await.map_err(lost)?;
        }
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            while let Some(m) = ws.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        if let Some(ServerFrame::Hello { device_id, seq }) = parse_frame(t.as_str())
                        {
                            return Ok((device_id, seq));
                        }
                    }
                    Ok(Message::Close(Some(f))) if u16::from(f.code) == CLOSE_REVOKED => {
                        return Err(Attempt::Terminal(SyncError::Revoked))
                    }
                    Ok(Message::Close(_)) => break,
                    Ok(_) => {}
                    Err(e) => return Err(lost(e)),
                }
            }
            Err(Attempt::Retry("closed before hello".into()))
        })
        .await
        .map_err(|_| Attempt::Retry("no hello from the gateway".into()))??;
        self.device_id = hello.0;
        if self.since.is_none() {
            // From now on: start live delivery without waiting for the gateway's hold.
            self.since = Some(hello.1);
            let f = json!({ "type": "resume", "since": hello.1 });
            ws.send(Message::text(f.to_string())).await.map_err(lost)?;
        }
        Ok(ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let d = b.delay(attempt);
            let cap = Duration::from_millis(100)
                .saturating_mul(1u32 << attempt.min(20))
                .min(Duration::from_secs(2));
            assert!(d <= cap && d >= cap / 2, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn parses_server_frames() {
        let f = parse_frame(
            r#"{"type":"event","seq":3,"topic":"ui.sync","ts":"2026-01-13T10:40:00Z","data":{"a":1}}"#,
        )
        .unwrap();
        assert!(matches!(f, ServerFrame::Event(SyncEvent { seq: 3, .. })));
        let f = parse_frame(r#"{"type":"error","id":2,"code":"TOPIC_RESERVED"}"#).unwrap();
        assert!(matches!(f, ServerFrame::Error { code, .. } if code == "TOPIC_RESERVED"));
        let f = parse_frame(r#"{"type":"ack","id":"k","seq":4}"#).unwrap();
        assert!(matches!(f, ServerFrame::Ack { seq: 4, .. }));
        assert!(parse_frame(r#"{"type":"event","seq":3}"#).is_none());
        assert!(parse_frame(r#"{"type":"mystery"}"#).is_none());
        let f = parse_frame(r#"{"type":"hello","deviceId":null,"seq":0}"#).unwrap();
        assert!(matches!(
            f,
            ServerFrame::Hello {
                device_id: None,
                seq: 0
            }
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = SecretString::new("dev_supersecret".into());
        let c = SyncClient::new("ws://127.0.0.1:1/ws", key);
        assert!(!format!("{c:?}").contains("supersecret"));
    }
}
