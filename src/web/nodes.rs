//! Endpoint nodes over HTTP (CONTRACT §6, docs/NODES.md §3): provisioning tokens, registration,
//! the node list, revoke and rename; the admin's test open of any endpoint; and the `/nodes`
//! page (add a node → token, countdown and QR; list with live online/offline).

use std::sync::atomic::Ordering;

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use data_encoding::BASE64;
use serde::Deserialize;
use serde_json::json;

use crate::access::action::{Actions, Grantee};
use crate::clock::rfc3339;
use crate::nodes::provisioning::{self, Registration, TokenRequest};
use crate::nodes::{self, doors, Node, NodeId, Rename};
use crate::registry::{DeviceId, RevokeOutcome};
use crate::state::AppState;
use crate::web::api::Json;
use crate::web::auth::{Admin, ClientAddr};
use crate::web::error::ApiError;
use crate::web::ui::{check_csrf, render, session, CsrfForm};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v0/provisioning/token", post(create_token))
        .route("/api/v0/nodes/register", post(register))
        .route("/api/nodes", get(list))
        .route("/api/v0/nodes/{node_id}", get(get_one))
        .route("/api/nodes/{node_id}", get(get_one).patch(rename))
        .route("/api/nodes/{node_id}/revoke", post(revoke))
        .route("/api/endpoints", get(list_endpoints))
        .route("/api/endpoints/{id}/open", post(open))
        .route("/nodes", get(page).post(page_add))
        .route("/nodes/{node_id}/rename", post(rename_form))
        .route("/nodes/{node_id}/revoke", post(revoke_form))
}

#[derive(Deserialize, Default)]
struct TokenBody {
    household_id: Option<String>,
    room: Option<String>,
    name: Option<String>,
    node_id: Option<String>,
}

/// Issues a provisioning token; shared by the API and the page.
async fn issue(state: &AppState, req: TokenRequest) -> Result<provisioning::NewToken, ApiError> {
    let now = state.now();
    Ok(state
        .store
        .write_durable(move |tx| Ok(provisioning::issue_token(tx, &req, now)))
        .await??)
}

async fn create_token(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Every field is optional, so an empty body is an empty request.
    let b: TokenBody = if body.iter().all(u8::is_ascii_whitespace) {
        TokenBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                // serde names the field and the expected type, never the value.
                let text: String = e.to_string().chars().take(200).collect();
                ApiError::bad_request(format!("invalid request: {text}"))
            } else {
                ApiError::bad_request("request body is not valid JSON")
            }
        })?
    };
    let t = issue(
        &state,
        TokenRequest {
            household_id: b.household_id,
            room: b.room,
            name: b.name,
            node_id: b.node_id,
        },
    )
    .await?;
    let body = json!({
        "token": t.token.expose(),
        "node_id": t.node_id,
        "expires_at": rfc3339(t.expires),
        "expires_in": provisioning::TOKEN_TTL_SECS,
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
struct RegisterBody {
    node_id: String,
    provisioning_token: String,
    pubkey: String,
    kind: String,
    firmware: String,
}

async fn register(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(b): Json<RegisterBody>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let limit = &state.nodes.register_limit;
    if let Err(retry) = limit.check(&ip, now) {
        return Err(ApiError::throttled(&state.metrics, retry));
    }
    let req = Registration {
        node_id: b.node_id,
        token: b.provisioning_token,
        pubkey: b.pubkey,
        kind: b.kind,
        firmware: b.firmware,
    };
    let reserved = doors::reserved_ids(&state.config.endpoints);
    let st = state.clone();
    let result = state
        .store
        .write_durable(move |tx| Ok(provisioning::register(tx, &st.master, &req, &reserved, now)))
        .await?;
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            // Only guesses count against the address: a real token used or expired is no attack.
            if matches!(e, nodes::NodeError::TokenInvalid) {
                limit.fail(&ip, now);
            }
            return Err(e.into());
        }
    };
    tracing::info!(node_id = %r.node_id, endpoint = ?r.endpoint, "node registered");
    let body = json!({
        "node_key": r.node_key.expose(),
        "gateway_id": state.gateway_id,
        "gateway_pubkey": BASE64.encode(&r.gateway_pubkey),
        "ws_url": state.ws_url(),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let nodes = state.store.read(nodes::list).await?;
    Ok(axum::Json(json!({ "nodes": nodes })).into_response())
}

fn parse_id(id: &str) -> Result<NodeId, ApiError> {
    NodeId::parse(id).ok_or_else(|| ApiError::not_found("no such node"))
}

async fn get_one(
    State(state): State<AppState>,
    _admin: Admin,
    Path(node_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&node_id)?;
    let node = state.store.read(move |c| nodes::get(c, &id)).await?;
    let node = node.ok_or_else(|| ApiError::not_found("no such node"))?;
    Ok(axum::Json(node).into_response())
}

/// Revokes a node; its session closes with 4403 as the event goes out. Shared with the page.
async fn revoke_node(state: &AppState, node_id: &str, origin: String) -> Result<NodeId, ApiError> {
    let id = parse_id(node_id)?;
    let (target, now) = (id.clone(), state.now());
    let outcome = state
        .store
        .write_durable(move |tx| nodes::revoke(tx, &target, now, &origin))
        .await?;
    match outcome {
        RevokeOutcome::NotFound => Err(ApiError::not_found("no such node")),
        RevokeOutcome::Revoked => {
            tracing::info!(node_id = %id, "node revoked");
            Ok(id)
        }
        RevokeOutcome::AlreadyRevoked => Ok(id),
    }
}

async fn revoke(
    State(state): State<AppState>,
    admin: Admin,
    Path(node_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = revoke_node(&state, &node_id, admin.origin()).await?;
    Ok(axum::Json(json!({ "node_id": id, "revoked": true })).into_response())
}

#[derive(Deserialize)]
struct RenameBody {
    name: Option<String>,
    room: Option<String>,
    endpoint: Option<String>,
}

async fn rename_node(
    state: &AppState,
    node_id: &str,
    change: Rename,
    origin: String,
) -> Result<Node, ApiError> {
    let id = parse_id(node_id)?;
    let reserved = doors::reserved_ids(&state.config.endpoints);
    let now = state.now();
    Ok(state
        .store
        .write(move |tx| Ok(nodes::rename(tx, &id, &change, &reserved, now, &origin)))
        .await??)
}

async fn rename(
    State(state): State<AppState>,
    admin: Admin,
    Path(node_id): Path<String>,
    Json(b): Json<RenameBody>,
) -> Result<Response, ApiError> {
    let change = Rename {
        name: b.name,
        room: b.room,
        endpoint: b.endpoint,
    };
    let node = rename_node(&state, &node_id, change, admin.origin()).await?;
    Ok(axum::Json(node).into_response())
}

async fn list_endpoints(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let st = state.clone();
    let eps = state
        .store
        .read(move |c| doors::endpoints(c, &st.config.endpoints))
        .await?;
    let list: Vec<_> = eps
        .iter()
        .map(|e| {
            let node = match &e.action {
                crate::config::ActionConfig::Node { node_id, .. } => Some(node_id.as_str()),
                _ => None,
            };
            json!({ "id": e.id, "name": e.name, "nodeId": node })
        })
        .collect();
    Ok(axum::Json(json!({ "endpoints": list })).into_response())
}

/// `POST /api/endpoints/{id}/open`: the admin's test open (see [`test_open`]).
async fn open(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let done = test_open(&state, &id, &admin.origin()).await?;
    Ok(
        axum::Json(json!({ "endpoint": done.endpoint, "status": "GRANTED", "ms": done.ms }))
            .into_response(),
    )
}

/// A test open that ran.
pub struct TestOpened {
    pub endpoint: String,
    pub ms: u64,
}

/// The admin's "test open" (API and the /doors page): runs the endpoint's action now, as a
/// grant would, and records an `access.granted` (or `access.denied` with `ACTION_FAILED` and
/// the reason) with `"transport":"admin"` and the admin as `peer`.
pub async fn test_open(state: &AppState, id: &str, origin: &str) -> Result<TestOpened, ApiError> {
    let st = state.clone();
    let eps = state
        .store
        .read(move |c| doors::endpoints(c, &st.config.endpoints))
        .await?;
    let ep = eps
        .resolve(id)
        .filter(|_| !id.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such endpoint"))?;
    // Not a device: the nil id and a label stand in for the grantee of a command action.
    let who = Grantee {
        device_id: DeviceId::from_bytes([0; 16]),
        device_name: "admin (test open)".into(),
    };
    let started = tokio::time::Instant::now();
    let outcome = Actions::with_nodes(state.nodes.clone())
        .run_as(&ep, &who, origin)
        .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let detail = outcome.as_ref().err().map(|e| e.to_string());
    let (topic, reason, counter) = match &outcome {
        Ok(()) => ("access.granted", "GRANTED", &state.metrics.access_granted),
        Err(_) => (
            "access.denied",
            "ACTION_FAILED",
            &state.metrics.access_denied,
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let mut data = json!({
        "deviceId": null,
        "deviceName": who.device_name,
        "endpoint": ep.id,
        "reason": reason,
        "peer": origin,
        "authenticated": true,
        "transport": "admin",
    });
    if let Some(d) = &detail {
        data["detail"] = json!(d);
    }
    let (now_ms, rec_origin) = (state.clock.now_ms(), origin.to_owned());
    state
        .store
        .write(move |tx| crate::events::append(tx, topic, &data, &rec_origin, now_ms))
        .await?;
    match detail {
        None => {
            tracing::info!(endpoint = %ep.id, %origin, ms, "test open");
            Ok(TestOpened {
                endpoint: ep.id,
                ms,
            })
        }
        Some(d) => {
            tracing::warn!(endpoint = %ep.id, %origin, reason = %d, "test open failed");
            Err(ApiError::action_failed(d))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The /nodes page

struct NodeRow {
    n: Node,
    label: String,
    status: &'static str,
    last_seen: String,
    /// A vehicle's live keys (PROTOCOL.md §27), each with a revoke button.
    keys: Vec<crate::grants::vehicle::AdminKeyView>,
}

/// A token just made on the page, with the QR of its payload for a phone app.
struct Added {
    node_id: String,
    token: String,
    expires: i64,
    ttl: i64,
    qr_svg: String,
    payload: String,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    name: String,
    csrf: String,
    rows: Vec<NodeRow>,
    added: Option<Added>,
}

/// The QR payload a provisioning app reads (NODES.md §3.4).
pub fn qr_payload(state: &AppState, node_id: &NodeId, token: &str, expires: i64) -> String {
    json!({
        "v": 1,
        "host": state.advertise_host,
        "port": state.port,
        "node_id": node_id,
        "token": token,
        "expires": expires,
    })
    .to_string()
}

fn status(n: &Node) -> &'static str {
    match (n.state, n.online) {
        ("registered", true) => "online",
        ("registered", false) => "offline",
        (s, _) => s,
    }
}

async fn render_page(
    state: &AppState,
    csrf: String,
    added: Option<Added>,
) -> Result<Response, ApiError> {
    let (list, mut keys) = state
        .store
        .read(|c| Ok((nodes::list(c)?, crate::grants::vehicle::all(c)?)))
        .await?;
    let rows = list
        .into_iter()
        .map(|n| {
            let mine;
            (mine, keys) = keys
                .drain(..)
                .partition(|k| k.key.vehicle_id == n.node_id.as_str());
            NodeRow {
                label: n.label().to_owned(),
                status: status(&n),
                last_seen: n.last_seen.clone().unwrap_or_else(|| "never".into()),
                keys: mine,
                n,
            }
        })
        .collect();
    let fresh = added.is_some();
    let mut resp = render(&NodesPage {
        name: state.config.name.clone(),
        csrf,
        rows,
        added,
    })?;
    if fresh {
        // The page holds a live token: never cache it.
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    Ok(resp)
}

async fn page(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let Some((_, s)) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    render_page(&state, s.csrf, None).await
}

#[derive(Deserialize)]
struct AddForm {
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    room: String,
}

async fn page_add(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<AddForm>,
) -> Result<Response, ApiError> {
    let Some((sid, s)) = session(&state, &headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    check_csrf(&state, &sid, &form.csrf)?;
    let t = issue(
        &state,
        TokenRequest {
            name: Some(form.name),
            room: Some(form.room),
            ..Default::default()
        },
    )
    .await?;
    let payload = qr_payload(&state, &t.node_id, t.token.expose(), t.expires);
    let qr_svg = crate::qr::svg(&payload).map_err(|e| ApiError::internal(&e))?;
    let added = Added {
        node_id: t.node_id.to_string(),
        token: t.token.expose().to_owned(),
        expires: t.expires,
        ttl: t.expires - state.now(),
        qr_svg,
        payload,
    };
    render_page(&state, s.csrf, Some(added)).await
}

#[derive(Deserialize)]
struct RenameForm {
    csrf: String,
    name: Option<String>,
    room: Option<String>,
    endpoint: Option<String>,
}

/// A page form's session and CSRF token: `Ok(false)` when there is no session (log in first).
pub(crate) async fn form_ok(
    state: &AppState,
    headers: &HeaderMap,
    csrf: &str,
) -> Result<bool, ApiError> {
    let Some((sid, _)) = session(state, headers).await? else {
        return Ok(false);
    };
    check_csrf(state, &sid, csrf)?;
    Ok(true)
}

async fn rename_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    Form(form): Form<RenameForm>,
) -> Result<Response, ApiError> {
    if !form_ok(&state, &headers, &form.csrf).await? {
        return Ok(Redirect::to("/login").into_response());
    }
    let change = Rename {
        name: form.name,
        room: form.room,
        // An empty field leaves the endpoint id as it is.
        endpoint: form.endpoint.filter(|e| !e.trim().is_empty()),
    };
    rename_node(&state, &node_id, change, "admin-web".into()).await?;
    Ok(Redirect::to("/nodes").into_response())
}

async fn revoke_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(node_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    if !form_ok(&state, &headers, &form.csrf).await? {
        return Ok(Redirect::to("/login").into_response());
    }
    revoke_node(&state, &node_id, "admin-web".into()).await?;
    Ok(Redirect::to("/nodes").into_response())
}
