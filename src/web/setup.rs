//! First run in the browser (CONTRACT §2): `GET /setup?code=…` shows the form that chooses the
//! admin password, `POST /setup` sets it and logs the admin in. Only while no password exists
//! (404 after, whoever set it); a wrong code is 403, throttled like the login.

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::admin::{self, AdminError};
use crate::secret::{ct_eq, SecretString};
use crate::state::AppState;
use crate::store::StoreError;
use crate::web::auth::{ClientAddr, LOGIN_COOKIE};
use crate::web::error::ApiError;
use crate::web::ui::{
    logged_in, login_csrf, pre_session, render, reserve_login_attempt, set_cookie,
};

pub fn routes() -> Router<AppState> {
    Router::new().route("/setup", get(setup_page).post(setup))
}

#[derive(Template)]
#[template(path = "setup.html")]
struct SetupPage {
    name: String,
    csrf: String,
    code: String,
    min_len: usize,
    max_len: usize,
    error: Option<String>,
}

#[derive(Deserialize)]
struct CodeQuery {
    #[serde(default)]
    code: String,
}

#[derive(Deserialize)]
struct SetupForm {
    code: String,
    csrf: String,
    password: String,
    confirm: String,
}

fn gone() -> ApiError {
    ApiError::not_found("no such resource")
}

/// 404 once a password exists: the page is gone, whoever set it (this form or the CLI).
async fn require_no_password(state: &AppState) -> Result<(), ApiError> {
    if state.store.read(admin::has_password).await? {
        return Err(gone());
    }
    Ok(())
}

/// Checks the set-up code under the login throttle: every try counts until it proves right.
fn check_code(state: &AppState, ip: std::net::IpAddr, code: &str) -> Result<(), ApiError> {
    reserve_login_attempt(state, ip, state.now())?;
    if state.setup.matches(code) {
        state.login_limit.release(&ip);
        state.login_global.release(&());
        return Ok(());
    }
    tracing::warn!(client = %ip, "wrong set-up code");
    Err(ApiError::forbidden(
        "wrong or spent set-up code; use the URL the gateway printed when it last started",
    ))
}

fn page(state: &AppState, nonce: &str, code: String, error: Option<String>) -> SetupPage {
    SetupPage {
        name: state.config.name.clone(),
        csrf: login_csrf(state, nonce),
        code,
        min_len: admin::MIN_PASSWORD_LEN,
        max_len: admin::MAX_PASSWORD_LEN,
        error,
    }
}

async fn setup_page(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    Query(q): Query<CodeQuery>,
) -> Result<Response, ApiError> {
    require_no_password(&state).await?;
    check_code(&state, ip, &q.code)?;
    let nonce = SecretString::random_token::<16>("").map_err(|e| ApiError::internal(&e))?;
    let mut resp = render(&page(&state, nonce.expose(), q.code, None))?;
    set_cookie(&mut resp, LOGIN_COOKIE, nonce.expose(), 600);
    Ok(resp)
}

/// What the set-up transaction found.
enum Outcome {
    Done(SecretString),
    AlreadySet,
    Rejected(AdminError),
}

async fn setup(
    State(state): State<AppState>,
    ClientAddr(ip): ClientAddr,
    headers: HeaderMap,
    Form(form): Form<SetupForm>,
) -> Result<Response, ApiError> {
    require_no_password(&state).await?;
    let nonce = pre_session(&state, &headers, &form.csrf)
        .ok_or_else(|| ApiError::forbidden("the set-up form expired; open the set-up URL again"))?;
    check_code(&state, ip, &form.code)?;
    let retry = |msg: &str| -> Result<Response, ApiError> {
        let mut resp = render(&page(&state, &nonce, form.code.clone(), Some(msg.into())))?;
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        Ok(resp)
    };
    if !ct_eq(form.password.as_bytes(), form.confirm.as_bytes()) {
        return retry("The two passwords differ.");
    }
    let now = state.now();
    let password = SecretString::new(form.password);
    // One transaction: of two set-ups racing with the same code, the second finds the first's
    // password and gets 404, as after any other way of setting it.
    let outcome = state
        .store
        .write_durable(move |tx| {
            if admin::has_password(tx)? {
                return Ok(Outcome::AlreadySet);
            }
            match admin::set_password(tx, password.expose(), now) {
                Ok(()) => {}
                Err(AdminError::Store(e)) => return Err(e),
                Err(AdminError::Db(e)) => return Err(StoreError::from(e)),
                Err(e) => return Ok(Outcome::Rejected(e)),
            }
            match admin::create_session(tx, now) {
                Ok(sid) => Ok(Outcome::Done(sid)),
                Err(AdminError::Store(e)) => Err(e),
                Err(AdminError::Db(e)) => Err(StoreError::from(e)),
                Err(e) => Ok(Outcome::Rejected(e)),
            }
        })
        .await?;
    let sid = match outcome {
        Outcome::Done(sid) => sid,
        Outcome::AlreadySet => return Err(gone()),
        Outcome::Rejected(e @ AdminError::PasswordLength) => return retry(&e.to_string()),
        Outcome::Rejected(e) => return Err(ApiError::internal(&e)),
    };
    state.setup.spend();
    tracing::info!(client = %ip, "admin password set through the set-up page; admin logged in");
    Ok(logged_in(&sid))
}
