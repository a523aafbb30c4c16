//! `/activity`: every door decision, newest first, live over the WebSocket
//! (`static/activity.js` on `latchkeyLive(["access.*"], …)`), with the BLE service's state
//! and a warning when the gateway's clock looks wrong.

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::Connection;

use crate::admin;
use crate::ble::BleState;
use crate::clock::rfc3339_ms;
use crate::state::AppState;
use crate::store::StoreError;
use crate::web::auth::{cookie, SESSION_COOKIE};
use crate::web::error::ApiError;

/// Decisions shown on the page (the log keeps many more).
const SHOWN: i64 = 200;

pub fn routes() -> Router<AppState> {
    Router::new().route("/activity", get(activity_page))
}

/// One decision as the page shows it.
pub struct Row {
    pub seq: i64,
    pub ts: String,
    pub granted: bool,
    pub reason: String,
    pub device_id: String,
    pub device_name: String,
    pub endpoint: String,
    pub peer: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
struct ActivityPage {
    name: String,
    csrf: String,
    rows: Vec<Row>,
    ble: String,
    ble_up: bool,
    clock_warning: Option<String>,
    clock_suspect: bool,
}

/// The newest access decisions, newest first, from the audit log (which client publishes
/// can neither evict nor imitate: `events.rs`).
pub fn recent(conn: &Connection, limit: i64) -> Result<Vec<Row>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, topic, data, ts_ms FROM events
         WHERE audit = 1 AND topic IN ('access.granted', 'access.denied')
         ORDER BY seq DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, topic, data, ts_ms) = row?;
        let data: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
        let text = |k: &str| data[k].as_str().unwrap_or_default().to_owned();
        out.push(Row {
            seq,
            ts: rfc3339_ms(ts_ms),
            granted: topic == "access.granted",
            reason: text("reason"),
            device_id: text("deviceId"),
            device_name: text("deviceName"),
            endpoint: text("endpoint"),
            peer: text("peer"),
        });
    }
    Ok(out)
}

/// The BLE door service's state in words, and whether it is up.
pub fn ble_summary(state: &AppState) -> (String, bool) {
    match state.ble.get() {
        BleState::Up { adapter } => (format!("registered on {adapter}, advertising"), true),
        BleState::Waiting { reason } => (format!("waiting: {reason}"), false),
        BleState::Off { reason } => (format!("off: {reason}"), false),
    }
}

async fn activity_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(sid) = cookie(&headers, SESSION_COOKIE).map(str::to_owned) else {
        return Ok(Redirect::to("/login").into_response());
    };
    let (probe, now) = (sid.clone(), state.now());
    if !state
        .store
        .read(move |c| admin::session_valid(c, &probe, now))
        .await?
    {
        return Ok(Redirect::to("/login").into_response());
    }
    let rows = state.store.read(|c| recent(c, SHOWN)).await?;
    let (ble, ble_up) = ble_summary(&state);
    let clock = state.clock_trust.assess(now);
    let page = ActivityPage {
        name: state.config.name.clone(),
        csrf: admin::csrf_token(&state.master, &sid),
        rows,
        ble,
        ble_up,
        clock_warning: clock.message,
        clock_suspect: clock.suspect,
    };
    page.render()
        .map(|html| Html(html).into_response())
        .map_err(|e| ApiError::internal(&e))
}
