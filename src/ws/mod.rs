//! WebSocket adapter (CONTRACT §4). Filled in by the real-time sync work.

use axum::Router;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
}
