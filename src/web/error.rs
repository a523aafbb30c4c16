//! The one error type every HTTP handler returns, rendered as the contract's body:
//! `{"error":{"code":"…","message":"…"}}`. Internal causes are logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::nodes::NodeError;
use crate::pairing::PairError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn device_revoked() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "DEVICE_REVOKED",
            "this device has been revoked",
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "request body is larger than 64 KiB",
        )
    }

    /// A 429 from one of the gateway's throttles, counted in `/metrics`.
    pub fn throttled(metrics: &crate::state::Metrics, retry_after: u64) -> Self {
        metrics
            .rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::rate_limited(retry_after)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                "too many attempts; retry later",
            )
        }
    }

    /// Logs the cause and answers with a message that reveals nothing about it.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )
    }

    /// The contract's code for a bare status (used for framework-made errors). The contract
    /// has a closed list of codes, each with its status, so anything without a code of its own
    /// (405, 415, 422, …) is a 400 BAD_REQUEST.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::not_found("no such resource"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::bad_request("this method is not allowed on this resource (see Allow)")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::bad_request("unsupported Content-Type"),
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(),
            StatusCode::UNAUTHORIZED => Self::unauthorized("authentication required"),
            StatusCode::FORBIDDEN => Self::forbidden("forbidden"),
            StatusCode::TOO_MANY_REQUESTS => Self::rate_limited(60),
            s if s.is_server_error() => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            ),
            s => Self::bad_request(s.canonical_reason().unwrap_or("bad request")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<PairError> for ApiError {
    fn from(e: PairError) -> Self {
        match e {
            PairError::Invalid => Self::new(
                StatusCode::UNAUTHORIZED,
                "PAIR_TOKEN_INVALID",
                "the pair token is not valid",
            ),
            PairError::Expired => Self::new(
                StatusCode::GONE,
                "PAIR_TOKEN_EXPIRED",
                "the pair token has expired",
            ),
            PairError::Used => Self::new(
                StatusCode::GONE,
                "PAIR_TOKEN_USED",
                "the pair token was already used",
            ),
            PairError::BadDeviceInfo(m) => Self::bad_request(m),
            other => Self::internal(&other),
        }
    }
}

impl From<crate::grants::GrantsError> for ApiError {
    fn from(e: crate::grants::GrantsError) -> Self {
        use crate::grants::GrantsError as G;
        match e {
            G::BadRequest(m) => Self::bad_request(m),
            G::NotFound => Self::not_found("no such access tool"),
            G::Revoked => Self::device_revoked(),
            other => Self::internal(&other),
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::TokenInvalid => Self::new(
                StatusCode::UNAUTHORIZED,
                "PROVISIONING_TOKEN_INVALID",
                "the provisioning token is not valid",
            ),
            NodeError::TokenExpired => Self::new(
                StatusCode::GONE,
                "PROVISIONING_TOKEN_EXPIRED",
                "the provisioning token has expired",
            ),
            NodeError::TokenUsed => Self::new(
                StatusCode::GONE,
                "PROVISIONING_TOKEN_USED",
                "the provisioning token was already used",
            ),
            NodeError::NotFound => Self::not_found("no such node"),
            NodeError::AlreadyRegistered => Self::bad_request("node is already registered"),
            NodeError::BadRequest(m) => Self::bad_request(m),
            other => Self::internal(&other),
        }
    }
}

impl ApiError {
    /// A door's action failed (node offline, silent or refusing; command failed; …).
    pub fn action_failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "ACTION_FAILED", message)
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large();
        }
        match r {
            J::MissingJsonContentType(_) => {
                Self::bad_request("expected Content-Type: application/json")
            }
            J::JsonSyntaxError(_) => Self::bad_request("request body is not valid JSON"),
            J::JsonDataError(e) => Self::bad_request(data_error_message(&e)),
            _ => Self::bad_request("the request body could not be read"),
        }
    }
}

type PathError = serde_path_to_error::Error<serde_json::Error>;

/// A fixed sentence naming the field and the rule it broke. serde's own messages quote the
/// value the client sent (`invalid type: string "dev_…"`, `unknown variant …`) and our type
/// names (`expected struct DeviceInfoBody`): neither may reach the client.
fn data_error_message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = Some(e);
    let found = std::iter::from_fn(|| {
        let cur = source?;
        source = cur.source();
        Some(cur)
    })
    .find_map(|c| c.downcast_ref::<PathError>());
    let Some(err) = found else {
        return "the request body is not the object this endpoint takes".to_owned();
    };
    let serde_msg = err.inner().to_string();
    if serde_msg.starts_with("unknown field") {
        // The path may end in the unknown key itself, which is the client's text.
        return "the request body has a field this endpoint does not take".to_owned();
    }
    let path = field_path(err.path());
    // `missing field `name``: the name between the backticks is our own field's.
    if let Some(field) = serde_msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let full = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        return format!("{full} is missing");
    }
    if path.is_empty() {
        "the request body is not the object this endpoint takes".to_owned()
    } else {
        format!("{path} has the wrong type or value")
    }
}

/// The JSON path of a deserialization error. For our struct bodies every key on the path is
/// one of our field names; anything that does not look like one is shown as `?`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                let ours = !key.is_empty()
                    && key.len() <= 32
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                out.push_str(if ours { key } else { "?" });
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}
