//! HTTP adapter: the JSON API, the admin pages and the static assets on one port.

pub mod activity;
pub mod api;
pub mod auth;
pub mod error;
pub mod metrics;
pub mod nodes;
pub mod ui;

use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::state::AppState;
use error::ApiError;

/// Every request body is bounded (CONTRACT: 64 KiB → 413 PAYLOAD_TOO_LARGE).
pub const MAX_BODY: usize = 64 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Assets are compiled in so the binary is the whole install.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    ),
    (
        "live.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/live.js"),
    ),
    (
        "pair.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/pair.js"),
    ),
    (
        "devices.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/devices.js"),
    ),
    (
        "nodes.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/nodes.js"),
    ),
    (
        "activity.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/activity.js"),
    ),
    (
        "activity.css",
        "text/css; charset=utf-8",
        include_str!("../../static/activity.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../static/favicon.svg"),
    ),
];

pub fn router(state: AppState, extra: Router<AppState>) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(ui::routes())
        .merge(activity::routes())
        .merge(nodes::routes())
        .merge(extra)
        .route("/static/{file}", get(asset))
        .fallback(|| async { ApiError::not_found("no such resource") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        // Outside the body limit: its early 413 (declared Content-Length too big) is plain
        // text and must be rewritten too.
        .layer(middleware::from_fn(contract_errors))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .with_state(state)
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "public, max-age=300"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::not_found("no such asset").into_response(),
    }
}

/// Rewrites any error the framework produced on its own (unknown route, wrong method, body
/// too large, bad form) into the contract's JSON error body, so nothing leaks as plain text.
async fn contract_errors(req: axum::extract::Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() || status.is_server_error() {
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") && !ct.starts_with("text/html") {
            let mut fixed = ApiError::from_status(status).into_response();
            for h in [header::RETRY_AFTER, header::ALLOW] {
                if let Some(v) = resp.headers().get(&h) {
                    fixed.headers_mut().insert(h, v.clone());
                }
            }
            return fixed;
        }
    }
    resp
}
