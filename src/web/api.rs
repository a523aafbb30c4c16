//! The JSON API (CONTRACT §2).

use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::pairing::{self, DeviceInfo};
use crate::registry::{self, DeviceId, RevokeOutcome};
use crate::state::AppState;
use crate::web::auth::{Admin, AuthedDevice, ClientAddr};
use crate::web::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/pair-tokens", post(create_pair_token))
        .route("/api/pair", post(pair))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{device_id}/revoke", post(revoke_device))
        .route("/api/me", get(me))
}

/// `axum::Json`, but its rejections speak the contract's error body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(r) => Err(ApiError::from(r as JsonRejection)),
        }
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PairTokenCreated {
    pair_token: String,
    expires: i64,
    qr_payload: String,
}

/// The exact string the QR code encodes (CONTRACT §2).
pub fn qr_payload(state: &AppState, token: &str, expires: i64) -> String {
    json!({
        "v": 1,
        "host": state.advertise_host,
        "port": state.port,
        "pairToken": token,
        "expires": expires,
    })
    .to_string()
}

/// Mints a pair token; shared by the API and the web page.
pub async fn new_pair_token(state: &AppState) -> Result<pairing::NewPairToken, ApiError> {
    let now = state.now();
    let ttl = state.config.pair_token_ttl_secs;
    Ok(state
        .store
        .write_durable(move |tx| Ok(pairing::create_token(tx, now, ttl)))
        .await??)
}

async fn create_pair_token(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let t = new_pair_token(&state).await?;
    let body = PairTokenCreated {
        qr_payload: qr_payload(&state, t.token.expose(), t.expires),
        pair_token: t.token.expose().to_owned(),
        expires: t.expires,
    };
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PairRequest {
    pair_token: String,
    device_info: DeviceInfoBody,
}

#[derive(Deserialize)]
struct DeviceInfoBody {
    name: String,
    #[serde(rename = "type")]
    kind: String,
}

async fn pair(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Json(req): Json<PairRequest>,
) -> Result<Response, ApiError> {
    let now = state.now();
    // A lookup is one SHA-256 and one indexed row, and a 128-bit token makes a burst of
    // guesses worthless, so this throttle may check first and count after: concurrent
    // redemptions of a real token must each get their exact answer (201 or 410).
    if let Err(retry) = state.pair_limit.check(&ip, now) {
        return Err(ApiError::throttled(&state.metrics, retry));
    }
    let info = DeviceInfo::validate(&req.device_info.name, &req.device_info.kind)?;
    // The authenticator label; kept here so no second database round trip is needed.
    let account = info.name.clone();
    let token = req.pair_token;
    let st = state.clone();
    let result = state
        .store
        .write_durable(move |tx| Ok(pairing::redeem(tx, &st.master, &token, &info, now)))
        .await?;
    let paired = match result {
        Ok(p) => p,
        Err(e) => {
            state.metrics.pair_failures.fetch_add(1, Ordering::Relaxed);
            // Only guesses count against the address: a real token that is used or expired
            // is no attack.
            if matches!(e, pairing::PairError::Invalid) {
                state.pair_limit.fail(&ip, now);
            }
            return Err(e.into());
        }
    };
    state.metrics.pairings.fetch_add(1, Ordering::Relaxed);
    tracing::info!(device_id = %paired.device_id, "device paired");
    let uri = pairing::totp_uri(&paired.totp_secret, &state.config.name, &account)
        .ok_or_else(|| ApiError::internal(&"otpauth uri"))?;
    let body = json!({
        "deviceId": paired.device_id,
        "deviceKey": paired.device_key.expose(),
        "totp": {
            "secret": paired.totp_secret.to_base32().expose(),
            "period": pairing::TOTP_PERIOD,
            "digits": pairing::TOTP_DIGITS,
            "algorithm": "SHA1",
            "uri": uri.expose(),
        },
        "gatewayId": state.gateway_id,
        "wsUrl": state.ws_url(),
    });
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list_devices(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let devices = state.store.read(registry::list).await?;
    Ok(axum::Json(json!({ "devices": devices })).into_response())
}

/// Revokes a device; shared by the API and the web page.
pub async fn revoke(state: &AppState, id: &str, origin: String) -> Result<DeviceId, ApiError> {
    let id = DeviceId::parse(id).ok_or_else(|| ApiError::not_found("no such device"))?;
    let now = state.now();
    let target = id.clone();
    let outcome = state
        .store
        .write_durable(move |tx| registry::revoke(tx, &target, now, &origin))
        .await?;
    match outcome {
        RevokeOutcome::NotFound => Err(ApiError::not_found("no such device")),
        RevokeOutcome::Revoked => {
            tracing::info!(device_id = %id, "device revoked");
            Ok(id)
        }
        RevokeOutcome::AlreadyRevoked => Ok(id),
    }
}

async fn revoke_device(
    State(state): State<AppState>,
    admin: Admin,
    Path(device_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = revoke(&state, &device_id, admin.origin()).await?;
    Ok(axum::Json(json!({ "deviceId": id, "revoked": true })).into_response())
}

async fn me(
    State(state): State<AppState>,
    AuthedDevice(device): AuthedDevice,
) -> Result<Response, ApiError> {
    let now = state.now();
    let id = device.device_id.clone();
    state
        .store
        .write(move |tx| registry::touch_last_seen(tx, &id, now))
        .await?;
    // The device's fresh entry and the doors it may open (configured ones and registered door
    // nodes) in one read, so a phone learns the endpoint ids its auth frames name (PROTOCOL.md §8).
    let st = state.clone();
    let (fresh, all, access_tool, vehicle_keys) = state
        .store
        .read(move |c| {
            let fresh = registry::get(c, &device.device_id)?;
            let all = crate::nodes::doors::endpoints(c, &st.config.endpoints)?;
            // The live tool, described as register and refresh answer it (so a phone can
            // re-read it); its door key exists since the tool's issue made it.
            let tool = crate::grants::tools::live_for_device(c, &device.device_id)?;
            let door = crate::grants::doorkey::secret(c, &st.master)?;
            let view = match (tool, door) {
                (Some(t), Some(k)) => Some(crate::grants::tools::view(
                    c,
                    &t,
                    &all,
                    &st.gateway_id,
                    &crate::grants::doorkey::public(&k),
                )?),
                _ => None,
            };
            let keys = crate::grants::vehicle::for_device(c, &device.device_id, None)?;
            Ok((fresh, all, view, keys))
        })
        .await?;
    let device = fresh.ok_or_else(|| ApiError::not_found("no such device"))?;
    let endpoints = all
        .open_to(&device.device_id)
        .map(|e| MeEndpoint {
            id: e.id.clone(),
            name: e.name.clone(),
        })
        .collect();
    Ok(axum::Json(Me {
        device,
        endpoints,
        access_tool,
        vehicle_keys,
    })
    .into_response())
}

/// `GET /api/me`: the device's registry entry, the endpoints it may open, its access tool and
/// vehicle keys.
#[derive(Serialize)]
struct Me {
    #[serde(flatten)]
    device: registry::Device,
    endpoints: Vec<MeEndpoint>,
    #[serde(rename = "accessTool")]
    access_tool: Option<crate::grants::tools::ToolView>,
    /// Its live vehicle keys (as `GET /device/keys` lists them).
    #[serde(rename = "vehicleKeys")]
    vehicle_keys: Vec<crate::grants::vehicle::KeyView>,
}

#[derive(Serialize)]
struct MeEndpoint {
    id: String,
    name: String,
}

async fn metrics(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let text = crate::web::metrics::render(&state).await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
