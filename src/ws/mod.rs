//! WebSocket adapter: `GET /ws` (CONTRACT §4), the real-time sync channel for phones, the
//! admin pages and (later) endpoint nodes.
//!
//! Authentication happens on the upgrade request, before any upgrade: `Device` key, admin
//! `Bearer` token or session cookie (same-origin only), or `Node` key (endpoint nodes, whose
//! sessions run in `node`). Missing or bad credentials answer 401, a revoked device 403, with the contract's
//! error body.
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
//! - Phones do not receive `gateway.*` events (gateway administration, e.g.
//!   `gateway.admin_token_revoked`); admin sockets receive everything.
//! - `error` frames carry `code` and a human `message`; codes: `BAD_FRAME`, `FRAME_TOO_LARGE`
//!   (over 64 KiB), `BINARY_UNSUPPORTED`, `TOPIC_INVALID`, `TOPIC_RESERVED`,
//!   `PAYLOAD_TOO_LARGE` (data over 32 KiB), `INTERNAL`. A burst of 20 bad frames (then 2/s)
//!   is answered; past that the socket closes with 1008.
//! - Close codes: 1001 shutdown, 1008 too slow or too many bad frames, 1009 a frame over
//!   256 KiB, 1011 ping timeout or internal error, 4401 admin session ended, 4403 device (or
//!   admin token) revoked.

pub mod auth;
pub mod frames;
pub mod node;
pub mod session;

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
            drop(tracked);
        })
}
