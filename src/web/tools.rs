//! Access tools over HTTP (CONTRACT §6, docs/PROTOCOL.md §26): `POST /device/register` and
//! `POST /device/refresh` (which refreshes vehicle keys too, §27), device-authenticated, bodies of at most 4 KiB, at most 10 a minute
//! per device for both together.

use axum::body::HttpBody as _;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use rusqlite::Transaction;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::grants::tools::{self, PhoneKey, Tool, ToolView};
use crate::grants::{doorkey, vehicle, GrantsError};
use crate::registry::DeviceId;
use crate::state::AppState;
use crate::web::api::Json;
use crate::web::auth::AuthedDevice;
use crate::web::error::ApiError;

/// Spec A: a register or refresh body is small.
const MAX_BODY: u64 = 4 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/device/register", post(register))
        .route("/device/refresh", post(refresh))
}

/// Unknown fields are ignored, as in the other JSON bodies (a newer phone may send more).
#[derive(Deserialize)]
struct RegisterBody {
    pubkey: String,
    hash: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    access_tool_id: String,
}

/// The JSON body, refused past 4 KiB (the body is already read in full by the router's
/// `read_body`, so its exact size is known).
pub(crate) async fn small_json<T: DeserializeOwned>(
    req: Request,
    state: &AppState,
) -> Result<T, ApiError> {
    if req.body().size_hint().lower() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request body is larger than 4 KiB",
        ));
    }
    let Json(v) = Json::<T>::from_request(req, state).await?;
    Ok(v)
}

fn throttle(state: &AppState, device: &DeviceId) -> Result<(), ApiError> {
    state
        .tool_limit
        .reserve(device, state.now())
        .map_err(|retry| ApiError::throttled(&state.metrics, retry))
}

/// The tool as the phone sees it, inside the caller's write transaction (which makes the
/// gateway's door key on first use).
fn describe(tx: &Transaction<'_>, state: &AppState, tool: &Tool) -> Result<ToolView, GrantsError> {
    let endpoints = crate::nodes::doors::endpoints(tx, &state.config.endpoints)?;
    let door = doorkey::public(&doorkey::get_or_create(tx, &state.master)?);
    Ok(tools::view(tx, tool, &endpoints, &state.gateway_id, &door)?)
}

async fn register(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    req: Request,
) -> Result<Response, ApiError> {
    throttle(&state, &device.device_id)?;
    let body: RegisterBody = small_json(req, &state).await?;
    let key = PhoneKey::parse(&body.pubkey, &body.hash)?;
    let (now, lifetime, st) = (state.now(), state.config.tool_lifetime_secs, state.clone());
    let view = state
        .store
        .write(move |tx| {
            Ok(tools::register(tx, &device.device_id, &key, lifetime, now)
                .and_then(|tool| describe(tx, &st, &tool)))
        })
        .await??;
    tracing::info!(access_tool_id = %view.access_tool_id, "access tool registered");
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

async fn refresh(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
    req: Request,
) -> Result<Response, ApiError> {
    throttle(&state, &device.device_id)?;
    let body: RefreshBody = small_json(req, &state).await?;
    if body.access_tool_id.len() > 64 {
        return Err(ApiError::not_found("no such access tool"));
    }
    let lifetimes = tools::Lifetimes {
        general: state.config.tool_lifetime_secs,
        vehicle: state.config.vehicle_key_lifetime_secs,
    };
    let (now, st) = (state.now(), state.clone());
    let answer = state
        .store
        .write(move |tx| {
            Ok(
                tools::refresh(tx, &device.device_id, &body.access_tool_id, lifetimes, now)
                    .and_then(|tool| match tool.vehicle_id {
                        // A vehicle key answers as `GET /device/keys` lists it.
                        Some(_) => Ok(serde_json::to_value(vehicle::describe(tx, &tool)?)),
                        None => Ok(serde_json::to_value(describe(tx, &st, &tool)?)),
                    }),
            )
        })
        .await??
        .map_err(|e| ApiError::internal(&e))?;
    Ok(axum::Json(answer).into_response())
}
