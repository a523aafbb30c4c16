//! Who is on the other end of a socket, decided on the upgrade request (before any upgrade).

use axum::http::{header, HeaderMap};

use crate::events::{is_reserved, Event};
use crate::nodes::NodeId;
use crate::registry::DeviceId;
use crate::secret::TokenHash;
use crate::state::AppState;
use crate::web::auth::{admin_from_headers, authorization, device_by_key, Admin};
use crate::web::error::ApiError;

/// An authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A paired phone (`Authorization: Device <key>`).
    Device(DeviceId),
    /// The admin: an API token (`Bearer`) or the web UI's session cookie.
    Admin(Admin),
    /// A registered endpoint node (`Authorization: Node <key>`, docs/NODES.md §5); its socket
    /// runs the node session (`ws::node`), not the event stream.
    Node(NodeId),
}

impl Principal {
    pub fn device_id(&self) -> Option<&DeviceId> {
        match self {
            Principal::Device(id) => Some(id),
            Principal::Admin(_) | Principal::Node(_) => None,
        }
    }

    /// Where this peer's publishes come from, as the event log records it.
    pub fn origin(&self) -> String {
        match self {
            Principal::Device(id) => format!("device:{id}"),
            Principal::Admin(a) => a.origin(),
            Principal::Node(id) => format!("node:{id}"),
        }
    }

    /// Whether this peer may receive `ev` (CONTRACT §4), live and on replay alike. Admins see
    /// everything. A phone sees every client publish, and of the gateway's own events only the
    /// `device.*`, `access.*` and `vehicle.*` events about itself: never who else is paired or who opened
    /// which door, nor `node.*` and `gateway.*` (administration).
    pub fn may_see(&self, ev: &Event) -> bool {
        match self {
            Principal::Admin(_) => true,
            Principal::Device(me) => {
                if !is_reserved(&ev.topic) {
                    return true;
                }
                crate::events::is_device_scoped(&ev.topic)
                    && ev.subject.as_deref() == Some(me.as_str())
            }
            // A node sees only what is addressed to it (its session frames).
            Principal::Node(_) => false,
        }
    }

    /// Whether `ev` revokes the credential this socket was opened with.
    pub fn revoked_by(&self, ev: &Event) -> bool {
        match (self, ev.topic.as_str()) {
            (Principal::Device(id), "device.revoked") => ev.subject.as_deref() == Some(id.as_str()),
            (Principal::Admin(Admin::Token(tid)), "gateway.admin_token_revoked") => {
                ev.data_json().get("tokenId").and_then(|v| v.as_i64()) == Some(*tid)
            }
            (Principal::Node(id), "node.revoked") => {
                ev.data_json().get("nodeId").and_then(|v| v.as_str()) == Some(id.as_str())
            }
            _ => false,
        }
    }
}

/// Authenticates an upgrade request. Missing or bad credentials: 401; a revoked device: 403
/// (`DEVICE_REVOKED`); a cookie sent from another origin: 403.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let scheme = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split_once(' ').map_or(v, |(s, _)| s));
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("Device") => {
            let key = authorization(headers, "Device")
                .ok_or_else(|| ApiError::unauthorized("device key is not valid"))?;
            match device_by_key(state, key).await? {
                None => Err(ApiError::unauthorized("device key is not valid")),
                Some(d) if d.revoked => Err(ApiError::device_revoked()),
                Some(d) => Ok(Principal::Device(d.device_id)),
            }
        }
        Some(s) if s.eq_ignore_ascii_case("Node") => {
            let key = authorization(headers, "Node")
                .ok_or_else(|| ApiError::unauthorized("node key is not valid"))?;
            authenticate_node(state, key).await
        }
        Some(s) if !s.eq_ignore_ascii_case("Bearer") => Err(ApiError::unauthorized(
            "use Device, Node or Bearer authorization",
        )),
        _ => match admin_from_headers(state, headers).await? {
            Some(admin @ Admin::Token(_)) => Ok(Principal::Admin(admin)),
            Some(admin @ Admin::Session(_)) => {
                if !same_origin(headers) {
                    return Err(ApiError::forbidden(
                        "a session cookie is only accepted from the gateway's own pages",
                    ));
                }
                Ok(Principal::Admin(admin))
            }
            None => Err(ApiError::unauthorized("authentication required")),
        },
    }
}

/// An endpoint node (`Authorization: Node <nodeKey>`): unknown key 401, revoked node 403.
async fn authenticate_node(state: &AppState, key: &str) -> Result<Principal, ApiError> {
    if !key.starts_with(crate::nodes::provisioning::NODE_KEY_PREFIX) {
        return Err(ApiError::unauthorized("node key is not valid"));
    }
    let hash = TokenHash::of(key);
    let node = state
        .store
        .read(move |c| crate::nodes::by_key_hash(c, &hash))
        .await?;
    match node {
        None => Err(ApiError::unauthorized("node key is not valid")),
        Some(n) if n.revoked => Err(ApiError::forbidden("this node has been revoked")),
        Some(n) => Ok(Principal::Node(n.node_id)),
    }
}

/// Browsers always send `Origin` on a WebSocket handshake; a cookie-authenticated socket must
/// come from our own pages, so another site (or another port on this host) cannot ride the
/// admin's cookie. Clients without `Origin` are not browsers.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn origin_must_match_host_when_present() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("192.168.1.42:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://192.168.1.42:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://192.168.1.42:3000"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
