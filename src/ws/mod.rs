//! WebSocket adapter: `GET /ws` (CONTRACT §4), the real-time sync channel for phones, the
//! admin pages and (later) endpoint nodes.
//!
//! Authentication happens on the upgrade request, before any upgrade: `Device` key, admin
//! `Bearer` token or session cookie (same-origin only), or `Node` key (endpoint nodes, whose
//! sessions run in `node`). Missing or bad credentials answer 401, a revoked device 403, with
//! the contract's error body; a device that already holds `http.ws_per_device` sockets
//! (default 8) 429 `RATE_LIMITED`.
//!
//! Protocol notes beyond the contract's text (all additive):
//! - A publisher does not receive its own event on the connection it published from (the
//!   `ack` carries its seq); every other connection does, including the same device's others.
//!   After a reconnect, a `resume` replays everything after `since`, own events included.
//! - Live delivery starts when the client sends `resume`, or 1 s after `hello` (`HOLD`);
//!   events meanwhile are held, never dropped. A client that resumes should send `resume` as
//!   its first frame (it may before `hello` arrives) so its replay comes before any live event.
//!   A second `resume` rewinds. `reset` is also sent when `since` is beyond the newest seq
//!   (a client that talked to another gateway or a wiped log).
//! - Who sees what (CONTRACT §4, `Principal::may_see`), live and on replay alike: admin sockets
//!   see every event; a phone sees every client publish (from any device or admin) and, of the
//!   gateway's own events, only the `device.*` and `access.*` events whose `deviceId` is its own
//!   (an `access.denied` for a frame that named it counts, whoever sent the frame). Phones never
//!   see `node.*` or `gateway.*` (administration, e.g. `gateway.admin_token_revoked`).
//! - Topics: lower-case `[a-z0-9_-]` words joined by dots, at most 128 bytes (`BAD_TOPIC`
//!   otherwise). A subscribe pattern is `*` (everything), a topic (exactly it), or a topic
//!   followed by `.*` (everything below it, at any depth); `*` is only ever a whole last word,
//!   and a pattern is at most 128 bytes too.
//! - Publish budget: each device (and each admin credential) may publish `[events]
//!   publish_rate` a second (default 20) with a burst of `publish_burst` (default 40), shared by
//!   all its sockets. Over it: `{"type":"error","id":K,"code":"RATE_LIMITED","message":…,
//!   "retryAfterMs":N}`; the event is not recorded, the socket stays.
//! - Retention (`events.rs`): the gateway's events are an audit log pruned only by their own
//!   count (`audit_retention`, default 10,000) and optional age (`audit_max_age_days`). Client
//!   publishes are kept up to `retention` (10,000) together and within `max_bytes` (64 MiB,
//!   audit data included); past that, publishers holding more than their quota
//!   (`retention_per_publisher`, 2,000, and the same share of the bytes) lose their oldest
//!   first, and only then the oldest publishes of all. The pruner runs every 10 s.
//! - `reset`: a resume from `since` gets `{"type":"reset","seq":LATEST}` exactly when `since`
//!   is beyond the newest seq, or when the audit rule or the total publish bounds have pruned
//!   an event with a seq above `since` (`events::horizon`; for a phone this is conservative: an
//!   audit event of another device counts too). A publisher trimmed beyond its quota does not
//!   cause a reset: a client resuming from before the trim gets that publisher's retained
//!   (newest) events, in order, and everything else complete.
//! - Seqs are strictly increasing but not consecutive: after the daemon did not stop cleanly
//!   (killed, or the power cut) the next seq is 1,000,000 past the last committed one
//!   (`events::open_log`). A power cut may take the last half second of events, whose seqs a
//!   client may already hold; the skip means none is ever issued again, so a client resuming
//!   from one gets exactly the events after it (docs/RELIABILITY.md).
//! - Catch-up is paced by the client's reads: the log is replayed a batch at a time, each
//!   written to the socket before the next is read, so a client that keeps reading catches up
//!   from anywhere in retention, however long that takes. It is dropped (1008) when a write
//!   makes no progress for 10 s, or when the pruner overtakes what it has not read yet.
//! - `error` frames carry `code` and a human `message`; codes: `BAD_FRAME`, `FRAME_TOO_LARGE`
//!   (over 64 KiB), `BINARY_UNSUPPORTED`, `BAD_TOPIC`, `TOPIC_RESERVED`, `RATE_LIMITED`,
//!   `PAYLOAD_TOO_LARGE` (data over 32 KiB), `INTERNAL`. A burst of 20 bad frames (then 2/s)
//!   is answered; past that the socket closes with 1008. `RATE_LIMITED` is not a bad frame.
//! - Close codes: 1001 shutdown, 1002 a WebSocket protocol violation (unmasked client frame,
//!   reserved opcode or bits, control frame over 125 bytes, …), 1007 a text frame that is not
//!   UTF-8, 1008 too slow or too many bad frames, 1009 a frame over 256 KiB, 1011 ping timeout
//!   or internal error, 4401 admin session ended, 4403 device (or admin token) revoked.

pub mod auth;
pub mod frames;
pub mod node;
pub mod session;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;
use crate::web::error::ApiError;

/// Hard limit on one incoming message: beyond it tungstenite stops reading and the socket
/// closes with 1009. Between `frames::MAX_FRAME` and this, the client gets an error frame.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Read buffer per connection: small, because most sockets are idle phones.
const READ_BUFFER: usize = 2 * 1024;
/// tungstenite writes to the socket once this much is buffered (we flush per batch anyway).
const WRITE_BUFFER: usize = 16 * 1024;
/// Beyond this tungstenite refuses to buffer more (our own queue bounds it long before).
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ws", get(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let principal = match auth::authenticate(&state, &headers).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(_) => {
            return ApiError::bad_request("this endpoint speaks WebSocket only").into_response()
        }
    };
    // Authenticated sockets are capped per device, not per address (the listener stops
    // counting this connection against its address once it is upgraded); the place is held
    // until the session ends.
    let place = match principal.device_id() {
        Some(id) => match state.ws_devices.try_take(id) {
            Ok(slot) => Some(slot),
            Err(_) => {
                state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return ApiError {
                    message: "this device has too many WebSockets open".to_owned(),
                    ..ApiError::rate_limited(5)
                }
                .into_response();
            }
        },
        None => None,
    };
    // (An upgrade that races the daemon's shutdown gets its hello and then 1001 at once.)
    // Counted by the daemon's task tracker from now on, so shutdown waits for its 1001.
    let tracked = state.tasks.token();
    if let auth::Principal::Node(id) = principal {
        return node::upgrade(ws, state, id, tracked);
    }
    let conn = Arc::new(session::Conn::new(state, principal));
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            session::serve_socket(socket, conn).await;
            drop(place);
            drop(tracked);
        })
}
