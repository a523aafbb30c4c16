//! HTTP adapter: the JSON API, the admin pages and the static assets on one port.

pub mod activity;
pub mod api;
pub mod auth;
pub mod doors;
pub mod error;
pub mod metrics;
pub mod nodes;
pub mod setup;
pub mod tools;
pub mod ui;
pub mod vehicles;

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
        "time.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/time.js"),
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
        .merge(setup::routes())
        .merge(activity::routes())
        .merge(doors::routes())
        .merge(nodes::routes())
        .merge(tools::routes())
        .merge(vehicles::routes())
        .merge(extra)
        .route("/static/{file}", get(asset))
        .fallback(|| async { ApiError::not_found("no such resource") })
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
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

/// Reads the whole request body (at most `MAX_BODY`, inside the body limit layers) before
/// any handler runs, under the body deadline: a client that trickles its body is answered
/// and dropped instead of holding a connection and a task.
async fn read_body(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    use axum::body::HttpBody as _;
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(state.config.http.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => {
            let body = axum::body::Body::from(collected.to_bytes());
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Ok(Err(e)) if is_too_large(e.as_ref()) => ApiError::too_large().into_response(),
        Ok(Err(_)) => ApiError::bad_request("the request body could not be read").into_response(),
        Err(_) => {
            let mut resp =
                ApiError::bad_request("the request body did not arrive in time").into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

fn is_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
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
