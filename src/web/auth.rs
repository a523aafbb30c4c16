//! Who is calling: admin (Bearer token or web session + CSRF), or a paired device.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};

use crate::admin;
use crate::registry::{self, Device};
use crate::secret::TokenHash;
use crate::state::AppState;
use crate::web::error::ApiError;

pub const SESSION_COOKIE: &str = "latchkey_session";
pub const LOGIN_COOKIE: &str = "latchkey_login";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Longest credential we hash; anything longer cannot be ours.
const MAX_CREDENTIAL_LEN: usize = 256;

/// The peer's address (no proxy sits in front of a LAN gateway).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| ClientAddr(ci.0.ip()))
            .ok_or_else(|| ApiError::internal(&"missing peer address"))
    }
}

pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= MAX_CREDENTIAL_LEN)
}

/// The credential after `scheme ` in the Authorization header.
pub fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (s, cred) = value.split_once(' ')?;
    (s.eq_ignore_ascii_case(scheme) && !cred.is_empty() && cred.len() <= MAX_CREDENTIAL_LEN)
        .then(|| cred.trim())
}

#[derive(Clone, PartialEq, Eq)]
pub enum Admin {
    /// An API token, by id (so its revocation can close what it opened).
    Token(i64),
    /// A browser session; the value is the session id from the cookie.
    Session(String),
}

/// The session id is a bearer credential: it never prints.
impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Admin::Token(id) => f.debug_tuple("Token").field(id).finish(),
            Admin::Session(_) => f.write_str("Session([redacted])"),
        }
    }
}

impl Admin {
    pub fn origin(&self) -> String {
        match self {
            Admin::Token(id) => format!("admin-token:{id}"),
            Admin::Session(_) => "admin-web".to_owned(),
        }
    }
}

/// Resolves admin credentials without enforcing CSRF (the caller decides whether it applies).
pub async fn admin_from_headers(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Admin>, ApiError> {
    let now = state.now();
    if let Some(token) = authorization(headers, "Bearer") {
        let hash = TokenHash::of(token);
        let id = state
            .store
            .read(move |c| admin::token_by_hash(c, &hash))
            .await?;
        let Some(id) = id else {
            return Err(ApiError::unauthorized("admin token is not valid"));
        };
        // Best effort; a failed bookkeeping write must not fail the request.
        if let Err(e) = state
            .store
            .write(move |tx| admin::touch_token(tx, id, now))
            .await
        {
            tracing::warn!(error = %e, "could not record admin token use");
        }
        return Ok(Some(Admin::Token(id)));
    }
    if let Some(sid) = cookie(headers, SESSION_COOKIE) {
        let sid = sid.to_owned();
        let probe = sid.clone();
        if state
            .store
            .read(move |c| admin::session_valid(c, &probe, now))
            .await?
        {
            return Ok(Some(Admin::Session(sid)));
        }
    }
    Ok(None)
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let admin = admin_from_headers(state, &parts.headers)
            .await?
            .ok_or_else(|| ApiError::unauthorized("admin authentication required"))?;
        if let Admin::Session(sid) = &admin {
            let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            let presented = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !safe && !presented.is_some_and(|p| admin::csrf_ok(&state.master, sid, p)) {
                return Err(ApiError::forbidden("missing or wrong CSRF token"));
            }
        }
        Ok(admin)
    }
}

/// A paired, unrevoked device authenticated by `Authorization: Device <key>`.
#[derive(Debug, Clone)]
pub struct AuthedDevice(pub Device);

/// Looks up a device key: `Ok(None)` when unknown, the device (possibly revoked) otherwise.
pub async fn device_by_key(state: &AppState, key: &str) -> Result<Option<Device>, ApiError> {
    if !key.starts_with(crate::pairing::DEVICE_KEY_PREFIX) {
        return Ok(None);
    }
    let hash = TokenHash::of(key);
    Ok(state
        .store
        .read(move |c| registry::by_key_hash(c, &hash))
        .await?)
}

impl FromRequestParts<AppState> for AuthedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let key = authorization(&parts.headers, "Device")
            .ok_or_else(|| ApiError::unauthorized("device authentication required"))?;
        match device_by_key(state, key).await? {
            None => Err(ApiError::unauthorized("device key is not valid")),
            Some(d) if d.revoked => Err(ApiError::device_revoked()),
            Some(d) => Ok(AuthedDevice(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn parses_cookies_and_authorization() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; latchkey_session=abc; b=2"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Device dev_x"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "missing"), None);
        assert_eq!(authorization(&h, "device"), Some("dev_x"));
        assert_eq!(authorization(&h, "Bearer"), None);
    }
}
