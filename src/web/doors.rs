//! `/doors`: every endpoint (configured doors and registered door nodes), what opening it
//! does, who may open it, its recent decisions, and the admin's "test open" (a form with the
//! session's CSRF token; the same action and audit record as `POST /api/endpoints/{id}/open`).

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::config::ActionConfig;
use crate::nodes::{self, doors};
use crate::registry;
use crate::state::AppState;
use crate::web::activity::{self, Row};
use crate::web::error::ApiError;
use crate::web::nodes::test_open;
use crate::web::ui::{check_csrf, render, session, CsrfForm};

/// Decisions scanned for the page, and shown per door.
const SCANNED: i64 = 500;
const PER_DOOR: usize = 5;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/doors", get(doors_page))
        .route("/doors/{id}/open", post(open_form))
}

pub struct DoorRow {
    pub id: String,
    pub name: String,
    pub action: String,
    pub who: String,
    pub decisions: Vec<Row>,
}

#[derive(Template)]
#[template(path = "doors.html")]
struct DoorsPage {
    name: String,
    csrf: String,
    doors: Vec<DoorRow>,
    /// The result of a test open just run: (succeeded, text).
    notice: Option<(bool, String)>,
}

/// What opening does, in words.
fn describe(action: &ActionConfig, nodes: &HashMap<String, (String, bool)>) -> String {
    match action {
        ActionConfig::Command { argv, timeout_secs } => format!(
            "runs {} (at most {timeout_secs} s)",
            argv.first().map(String::as_str).unwrap_or("?")
        ),
        ActionConfig::Gpio {
            chip,
            line,
            pulse_ms,
            ..
        } => format!("pulses GPIO {chip} line {line} for {pulse_ms} ms"),
        ActionConfig::Node { node_id, pulse_ms } => match nodes.get(node_id) {
            Some((name, online)) => format!(
                "node {name} ({}) pulses for {pulse_ms} ms",
                if *online { "online" } else { "offline" }
            ),
            None => format!("node {node_id} (not registered) pulses for {pulse_ms} ms"),
        },
        ActionConfig::None => "records the decision only".into(),
    }
}

async fn build(state: &AppState) -> Result<Vec<DoorRow>, ApiError> {
    let st = state.clone();
    let (eps, nodes, devices, recent) = state
        .store
        .read(move |c| {
            Ok((
                doors::endpoints(c, &st.config.endpoints)?,
                nodes::list(c)?,
                registry::list(c)?,
                activity::recent(c, SCANNED)?,
            ))
        })
        .await?;
    let nodes: HashMap<String, (String, bool)> = nodes
        .into_iter()
        .map(|n| (n.node_id.to_string(), (n.name, n.online)))
        .collect();
    let names: HashMap<String, String> = devices
        .into_iter()
        .map(|d| (d.device_id.to_string(), d.name))
        .collect();
    let mut by_door: HashMap<String, Vec<Row>> = HashMap::new();
    for r in recent {
        let list = by_door.entry(r.endpoint.clone()).or_default();
        if list.len() < PER_DOOR {
            list.push(r);
        }
    }
    Ok(eps
        .iter()
        .map(|e| DoorRow {
            id: e.id.clone(),
            name: e.name.clone(),
            action: describe(&e.action, &nodes),
            who: match e.allowed() {
                None => "every paired device".into(),
                Some(ids) if ids.is_empty() => "nobody".into(),
                Some(ids) => {
                    let mut who: Vec<String> = ids
                        .iter()
                        .map(|id| names.get(*id).cloned().unwrap_or_else(|| (*id).to_owned()))
                        .collect();
                    who.sort();
                    who.join(", ")
                }
            },
            decisions: by_door.remove(&e.id).unwrap_or_default(),
        })
        .collect())
}

async fn show(
    state: &AppState,
    csrf: String,
    notice: Option<(bool, String)>,
) -> Result<Response, ApiError> {
    render(&DoorsPage {
        name: state.config.name.clone(),
        csrf,
        doors: build(state).await?,
        notice,
    })
}

async fn doors_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some((_, s)) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    show(&state, s.csrf, None).await
}

async fn open_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let Some((sid, s)) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    check_csrf(&state, &sid, &form.csrf)?;
    let (ok, text) = match test_open(&state, &id, "admin-web").await {
        Ok(done) => (
            true,
            format!("Test open of {}: opened in {} ms.", done.endpoint, done.ms),
        ),
        Err(e) if e.status == StatusCode::NOT_FOUND => return Err(e),
        Err(e) => (false, format!("Test open of {id} failed: {}", e.message)),
    };
    let mut resp = show(&state, s.csrf, Some((ok, text))).await?;
    if !ok {
        *resp.status_mut() = StatusCode::BAD_GATEWAY;
    }
    Ok(resp)
}
