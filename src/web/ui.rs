//! The admin web pages: server-rendered askama templates, forms with CSRF tokens, no inline
//! script (the Content-Security-Policy forbids it), every asset from `static/`.

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::admin;
use crate::clock::rfc3339;
use crate::registry::{self, Device};
use crate::secret::SecretString;
use crate::state::AppState;
use crate::web::api::{new_pair_token, qr_payload, revoke};
use crate::web::auth::{cookie, ClientAddr, LOGIN_COOKIE, SESSION_COOKIE};
use crate::web::error::ApiError;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/pair", get(pair_page).post(pair_new))
        .route("/devices", get(devices_page))
        .route("/devices/{device_id}/revoke", post(revoke_form))
        .route("/tokens", get(tokens_page).post(token_create))
        .route("/tokens/{id}/revoke", post(token_revoke))
}

/// The current browser session and its CSRF token, or a redirect to the login page.
pub(super) struct Session {
    pub(super) csrf: String,
}

pub(super) async fn session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(String, Session)>, ApiError> {
    let Some(sid) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let (sid, probe, now) = (sid.to_owned(), sid.to_owned(), state.now());
    if !state
        .store
        .read(move |c| admin::session_valid(c, &probe, now))
        .await?
    {
        return Ok(None);
    }
    let csrf = admin::csrf_token(&state.master, &sid);
    Ok(Some((sid, Session { csrf })))
}

macro_rules! require_session {
    ($state:expr, $headers:expr) => {
        match session(&$state, &$headers).await? {
            Some(s) => s,
            None => return Ok(Redirect::to("/login").into_response()),
        }
    };
}

pub(super) fn render(t: &impl Template) -> Result<Response, ApiError> {
    t.render()
        .map(|html| Html(html).into_response())
        .map_err(|e| ApiError::internal(&e))
}

pub(super) fn check_csrf(state: &AppState, sid: &str, presented: &str) -> Result<(), ApiError> {
    if admin::csrf_ok(&state.master, sid, presented) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "missing or wrong CSRF token; reload the page",
        ))
    }
}

/// Door decisions on the dashboard.
const DASHBOARD_DECISIONS: i64 = 5;

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    name: String,
    csrf: String,
    devices: usize,
    active: usize,
    revoked: usize,
    gateway_id: String,
    address: String,
    ble: String,
    ble_up: bool,
    clock: String,
    clock_suspect: bool,
    nodes_online: usize,
    nodes_offline: usize,
    decisions: Vec<crate::web::activity::Row>,
}

async fn dashboard(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = require_session!(state, headers);
    let (devices, nodes, decisions) = state
        .store
        .read(|c| {
            Ok((
                registry::list(c)?,
                crate::nodes::list(c)?,
                crate::web::activity::recent(c, DASHBOARD_DECISIONS)?,
            ))
        })
        .await?;
    let revoked = devices.iter().filter(|d| d.revoked).count();
    let live: Vec<_> = nodes
        .iter()
        .filter(|n| !n.revoked && n.registered_at.is_some())
        .collect();
    let nodes_online = live.iter().filter(|n| n.online).count();
    let (ble, ble_up) = crate::web::activity::ble_summary(&state);
    let trust = state.clock_trust.assess(state.now());
    render(&DashboardPage {
        name: state.config.name.clone(),
        csrf: s.csrf,
        devices: devices.len(),
        active: devices.len() - revoked,
        revoked,
        gateway_id: state.gateway_id.clone(),
        address: state.host_port(),
        ble,
        ble_up,
        clock: trust.message.unwrap_or_else(|| "looks right".into()),
        clock_suspect: trust.suspect,
        nodes_online,
        nodes_offline: live.len() - nodes_online,
        decisions,
    })
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    name: String,
    csrf: String,
    has_password: bool,
    error: Option<String>,
    /// Where the set-up URL points (shown while no password exists).
    address: String,
}

/// The login form's CSRF token is bound to a short-lived pre-session cookie.
pub(super) fn login_csrf(state: &AppState, nonce: &str) -> String {
    admin::csrf_token(&state.master, &format!("login:{nonce}"))
}

async fn login_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let has_password = state.store.read(admin::has_password).await?;
    let nonce = SecretString::random_token::<16>("").map_err(|e| ApiError::internal(&e))?;
    let page = LoginPage {
        name: state.config.name.clone(),
        csrf: login_csrf(&state, nonce.expose()),
        has_password,
        error: None,
        address: state.host_port(),
    };
    let mut resp = render(&page)?;
    set_cookie(&mut resp, LOGIN_COOKIE, nonce.expose(), 600);
    Ok(resp)
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
    csrf: String,
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let now = state.now();
    let nonce = pre_session(&state, &headers, &form.csrf)
        .ok_or_else(|| ApiError::forbidden("the login form expired; reload the page"))?;
    let nonce = nonce.as_str();
    let phc = state.store.read(admin::password_hash).await?;
    let Some(phc) = phc else {
        return Ok(Redirect::to("/login").into_response());
    };
    let ok = check_password(&state, ip, now, phc, SecretString::new(form.password)).await?;
    if !ok {
        state
            .metrics
            .login_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(client = %ip, "admin login failed");
        let page = LoginPage {
            name: state.config.name.clone(),
            csrf: login_csrf(&state, nonce),
            has_password: true,
            error: Some("Wrong password.".into()),
            address: state.host_port(),
        };
        let mut resp = render(&page)?;
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(resp);
    }
    let sid = state
        .store
        .write(move |tx| Ok(admin::create_session(tx, now)))
        .await?
        .map_err(|e| ApiError::internal(&e))?;
    tracing::info!(client = %ip, "admin logged in");
    Ok(logged_in(&sid))
}

/// The pre-session cookie's nonce when `presented` is the CSRF token bound to it (forms shown
/// before a session exists: login, first-run set-up).
pub(super) fn pre_session(
    state: &AppState,
    headers: &HeaderMap,
    presented: &str,
) -> Option<String> {
    let nonce = cookie(headers, LOGIN_COOKIE)?;
    crate::secret::ct_eq(login_csrf(state, nonce).as_bytes(), presented.as_bytes())
        .then(|| nonce.to_owned())
}

/// Counts a password or set-up-code attempt from `ip` before it is checked, or refuses with
/// `RATE_LIMITED` when `ip` (or everyone together) is out of failures; a good attempt gives
/// its reservation back.
pub(super) fn reserve_login_attempt(
    state: &AppState,
    ip: std::net::IpAddr,
    now: i64,
) -> Result<(), ApiError> {
    let limited = |retry| ApiError::throttled(&state.metrics, retry);
    state.login_limit.reserve(&ip, now).map_err(limited)?;
    if let Err(retry) = state.login_global.reserve(&(), now) {
        state.login_limit.release(&ip);
        return Err(limited(retry));
    }
    Ok(())
}

/// To the dashboard with the new session's cookie; the pre-session cookie is cleared.
pub(super) fn logged_in(sid: &SecretString) -> Response {
    let mut resp = Redirect::to("/").into_response();
    set_cookie(
        &mut resp,
        SESSION_COOKIE,
        sid.expose(),
        admin::SESSION_TTL_SECS,
    );
    set_cookie(&mut resp, LOGIN_COOKIE, "", 0);
    resp
}

/// Checks the admin password, or refuses with `RATE_LIMITED` without hashing when `ip` (or
/// everyone together) is out of failed attempts. The attempt is counted before the hash runs,
/// so concurrent guesses cannot all slip past the throttle; hashes run a few at a time.
async fn check_password(
    state: &AppState,
    ip: std::net::IpAddr,
    now: i64,
    phc: String,
    password: SecretString,
) -> Result<bool, ApiError> {
    reserve_login_attempt(state, ip, now)?;
    let ok = {
        let _permit = state
            .password_checks
            .acquire()
            .await
            .map_err(|e| ApiError::internal(&e))?;
        state
            .metrics
            .password_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || admin::verify_password(&phc, password.expose()))
            .await
            .map_err(|e| ApiError::internal(&e))?
    };
    if ok {
        state.login_limit.reset(&ip);
        state.login_global.release(&());
    }
    Ok(ok)
}

pub(super) fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: i64) {
    let v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if let Ok(v) = header::HeaderValue::from_str(&v) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    pub(super) csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    if let Some((sid, _)) = session(&state, &headers).await? {
        check_csrf(&state, &sid, &form.csrf)?;
        state
            .store
            .write(move |tx| admin::end_session(tx, &sid))
            .await?;
    }
    let mut resp = Redirect::to("/login").into_response();
    set_cookie(&mut resp, SESSION_COOKIE, "", 0);
    Ok(resp)
}

#[derive(Template)]
#[template(path = "pair.html")]
struct PairPage {
    name: String,
    csrf: String,
    token_id: i64,
    expires: i64,
    ttl: u64,
    qr_svg: String,
    payload: String,
}

async fn show_pair(state: &AppState, csrf: String) -> Result<Response, ApiError> {
    let t = new_pair_token(state).await?;
    let payload = qr_payload(state, t.token.expose(), t.expires);
    let qr_svg = crate::qr::svg(&payload).map_err(|e| ApiError::internal(&e))?;
    let mut resp = render(&PairPage {
        name: state.config.name.clone(),
        csrf,
        token_id: t.id,
        expires: t.expires,
        ttl: state.config.pair_token_ttl_secs,
        qr_svg,
        payload,
    })?;
    // The page holds a live token: never cache it.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

async fn pair_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = require_session!(state, headers);
    show_pair(&state, s.csrf).await
}

async fn pair_new(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let (sid, s) = require_session!(state, headers);
    check_csrf(&state, &sid, &form.csrf)?;
    show_pair(&state, s.csrf).await
}

struct DeviceRow {
    d: Device,
    paired_at: String,
    last_seen: String,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    name: String,
    csrf: String,
    rows: Vec<DeviceRow>,
}

async fn devices_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = require_session!(state, headers);
    let rows = state
        .store
        .read(registry::list)
        .await?
        .into_iter()
        .map(|d| DeviceRow {
            paired_at: d.paired_at.clone(),
            last_seen: d
                .last_seen_unix
                .map(rfc3339)
                .unwrap_or_else(|| "never".into()),
            d,
        })
        .collect();
    render(&DevicesPage {
        name: state.config.name.clone(),
        csrf: s.csrf,
        rows,
    })
}

async fn revoke_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(device_id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let (sid, _) = require_session!(state, headers);
    check_csrf(&state, &sid, &form.csrf)?;
    revoke(&state, &device_id, "admin-web".into()).await?;
    Ok(Redirect::to("/devices").into_response())
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    name: String,
    csrf: String,
    tokens: Vec<admin::AdminToken>,
    /// A token just created, shown this once.
    created: Option<String>,
}

async fn tokens_page(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = require_session!(state, headers);
    let tokens = state.store.read(admin::list_tokens).await?;
    render(&TokensPage {
        name: state.config.name.clone(),
        csrf: s.csrf,
        tokens,
        created: None,
    })
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
}

async fn token_create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, ApiError> {
    let (sid, s) = require_session!(state, headers);
    check_csrf(&state, &sid, &form.csrf)?;
    let now = state.now();
    let name = form.name;
    let (_, token) = state
        .store
        .write_durable(move |tx| Ok(admin::create_token(tx, &name, now)))
        .await?
        .map_err(|e| match e {
            admin::AdminError::TokenName => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(&other),
        })?;
    let tokens = state.store.read(admin::list_tokens).await?;
    let mut resp = render(&TokensPage {
        name: state.config.name.clone(),
        csrf: s.csrf,
        tokens,
        created: Some(token.expose().to_owned()),
    })?;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

async fn token_revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let (sid, _) = require_session!(state, headers);
    check_csrf(&state, &sid, &form.csrf)?;
    let now = state.now();
    state
        .store
        .write_durable(move |tx| admin::revoke_token(tx, id, now))
        .await?;
    Ok(Redirect::to("/tokens").into_response())
}
