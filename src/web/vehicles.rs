//! Vehicle keys over HTTP (CONTRACT §6, docs/PROTOCOL.md §27): the phone's pairing sessions
//! (`POST /pairing-sessions`, `…/complete`, `DELETE`) and `GET /device/keys`, device-
//! authenticated with bodies of at most 4 KiB; the admin's list and revoke
//! (`/api/vehicle-keys`) and the nodes page's revoke form; the housekeeping that expires
//! sessions.

use std::time::Duration;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use data_encoding::BASE64;
use serde::Deserialize;
use serde_json::json;

use crate::clock::rfc3339;
use crate::grants::pairing_sessions::{self, Completion, Issuer, SessionError, StartRequest};
use crate::grants::vehicle;
use crate::registry::DeviceId;
use crate::state::AppState;
use crate::web::auth::{Admin, AuthedDevice};
use crate::web::error::ApiError;
use crate::web::tools::small_json;
use crate::web::ui::CsrfForm;

/// Sessions a device may start a minute.
pub const SESSIONS_PER_MINUTE: usize = 5;
/// How often the housekeeping looks for expired sessions.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);
/// Longest base64 text looked at for a frame (the 106-byte challenge is 144 characters).
const MAX_B64: usize = 512;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/pairing-sessions", post(start))
        .route("/pairing-sessions/{session_id}/complete", post(complete))
        .route(
            "/pairing-sessions/{session_id}",
            axum::routing::delete(cancel),
        )
        .route("/device/keys", get(device_keys))
        .route("/api/vehicle-keys", get(admin_list))
        .route("/api/vehicle-keys/{key_id}/revoke", post(admin_revoke))
        .route("/nodes/keys/{key_id}/revoke", post(revoke_form))
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::BadRequest(m) => Self::bad_request(m),
            SessionError::NotFound(m) => Self::not_found(m),
            SessionError::Used => Self::new(
                StatusCode::GONE,
                "PAIRING_SESSION_USED",
                "the pairing session was already completed or cancelled",
            ),
            SessionError::Expired => Self::new(
                StatusCode::GONE,
                "PAIRING_SESSION_EXPIRED",
                "the pairing session has expired",
            ),
            SessionError::Forbidden => {
                Self::forbidden("the completion is not signed and sealed by this device's key")
            }
            SessionError::Grants(g) => g.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartBody {
    vehicle_id: String,
    device_id: String,
    nonce: String,
    rssi: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CompleteBody {
    encrypted_response: String,
    signature: String,
}

fn decode(text: &str, what: &'static str) -> Result<Vec<u8>, ApiError> {
    if text.len() > MAX_B64 {
        return Err(ApiError::bad_request(what));
    }
    BASE64
        .decode(text.as_bytes())
        .map_err(|_| ApiError::bad_request(what))
}

fn throttle(state: &AppState, device: &DeviceId) -> Result<(), ApiError> {
    state
        .pairing_session_limit
        .reserve(device, state.now())
        .map_err(|retry| ApiError::throttled(&state.metrics, retry))
}

/// Counts sessions opened: reserved before the checks (so a burst cannot all pass), given
/// back when the request is refused.
async fn start(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    req: Request,
) -> Result<Response, ApiError> {
    let who = device.device_id.clone();
    throttle(&state, &who)?;
    let opened = open_session(&state, device.device_id, req).await;
    if opened.is_err() {
        state.pairing_session_limit.release(&who);
    }
    opened
}

async fn open_session(
    state: &AppState,
    device: DeviceId,
    req: Request,
) -> Result<Response, ApiError> {
    let body: StartBody = small_json(req, state).await?;
    let rssi = body
        .rssi
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("rssi must be an integer from -127 to 20"))?;
    let challenge = decode(
        &body.nonce,
        "nonce is not standard base64 of the pairing challenge",
    )?;
    let req = StartRequest {
        vehicle_id: body.vehicle_id,
        device_id: body.device_id,
        challenge,
        rssi,
    };
    let now = state.now();
    let started = state
        .store
        .write(move |tx| Ok(pairing_sessions::start(tx, &device, &req, now)))
        .await??;
    tracing::info!(session_id = %started.session_id, "vehicle pairing session started");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "sessionId": started.session_id,
            "expiresAt": rfc3339(started.expires_at),
        })),
    )
        .into_response())
}

async fn complete(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    Path(session_id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let body: CompleteBody = small_json(req, &state).await?;
    let c = Completion {
        encrypted_response: decode(
            &body.encrypted_response,
            "encryptedResponse is not standard base64",
        )?,
        signature: decode(&body.signature, "signature is not standard base64")?,
    };
    let (now, now_ms, st) = (state.now(), state.clock.now_ms(), state.clone());
    let done = state
        .store
        .write(move |tx| {
            let issuer = Issuer {
                master: &st.master,
                endpoints: &st.config.endpoints,
                lifetime: st.config.vehicle_key_lifetime_secs,
            };
            Ok(pairing_sessions::complete(
                tx,
                &issuer,
                &device.device_id,
                &session_id,
                &c,
                now,
                now_ms,
            ))
        })
        .await?;
    let done = done.inspect_err(|e| {
        if matches!(e, SessionError::Forbidden) {
            tracing::warn!("a vehicle pairing completion did not verify");
        }
    })?;
    tracing::info!(key_id = %done.key.key_id, vehicle_id = %done.key.vehicle_id, "vehicle key issued");
    Ok(axum::Json(json!({
        "key": done.key,
        "bleResponsePayload": BASE64.encode(&done.ble_response),
    }))
    .into_response())
}

async fn cancel(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let id = session_id.clone();
    state
        .store
        .write(move |tx| Ok(pairing_sessions::cancel(tx, &device.device_id, &id, now)))
        .await??;
    Ok(axum::Json(json!({ "sessionId": session_id, "cancelled": true })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeysQuery {
    vehicle_id: Option<String>,
}

async fn device_keys(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    Query(q): Query<KeysQuery>,
) -> Result<Response, ApiError> {
    let vehicle = match q.vehicle_id {
        Some(v) => Some(
            vehicle::parse_vehicle_id(&v)
                .ok_or_else(|| ApiError::bad_request("vehicleId is not a node id"))?,
        ),
        None => None,
    };
    let keys = state
        .store
        .read(move |c| vehicle::for_device(c, &device.device_id, vehicle.as_deref()))
        .await?;
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

async fn admin_list(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let keys = state.store.read(vehicle::all).await?;
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

/// Voids a key; the vehicle's snapshot drops it as the `device.tool` event goes out.
async fn revoke_key(state: &AppState, key_id: String, origin: String) -> Result<(), ApiError> {
    if key_id.len() > 64 {
        return Err(ApiError::not_found("no such vehicle key"));
    }
    let now = state.now();
    let found = state
        .store
        .write_durable(move |tx| vehicle::revoke(tx, &key_id, now, &origin))
        .await?;
    if found {
        Ok(())
    } else {
        Err(ApiError::not_found("no such vehicle key"))
    }
}

async fn admin_revoke(
    State(state): State<AppState>,
    admin: Admin,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    revoke_key(&state, key_id.clone(), admin.origin()).await?;
    tracing::info!(key_id = %key_id, "vehicle key revoked");
    Ok(axum::Json(json!({ "keyId": key_id, "revoked": true })).into_response())
}

async fn revoke_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    if !crate::web::nodes::form_ok(&state, &headers, &form.csrf).await? {
        return Ok(Redirect::to("/login").into_response());
    }
    revoke_key(&state, key_id, "admin-web".into()).await?;
    Ok(Redirect::to("/nodes").into_response())
}

/// Expires pairing sessions past their life (with their `vehicle.pairing` events) until
/// shutdown.
pub fn spawn_housekeeping(state: &AppState) {
    let st = state.clone();
    state.tasks.spawn(async move {
        let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = st.shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = st.now();
            if let Err(e) = st
                .store
                .write(move |tx| pairing_sessions::expire(tx, now))
                .await
            {
                tracing::warn!(error = %e, "cannot expire pairing sessions");
            }
        }
    });
}
