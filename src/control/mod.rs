//! The control socket: how CLI commands reach a running daemon instead of opening the registry
//! beside it (CONTRACT §1). A Unix socket, `latchkey.sock` in `$RUNTIME_DIRECTORY` (systemd's
//! `/run/latchkey`) or else in the data dir, mode 0660; peers are checked by their credentials.
//!
//! Protocol (docs/OPERATIONS.md): one request per connection, a JSON object on one line of at most
//! [`MAX_REQUEST`] bytes, sent within [`REQUEST_TIMEOUT`]; one answer line, `{"ok":…}` or
//! `{"error":{"code","message"}}` with the contract's codes. `backup`'s answer line is followed
//! by the backup file's bytes, as many as the line's `bytes` says.
//!
//! The commands themselves ([`execute`]) are the same code whether the daemon runs them or the
//! CLI does, on a registry it opened itself.

pub mod client;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::UnixTime;
use crate::config::Config;
use crate::registry::{self, DeviceId, RevokeOutcome};
use crate::secret::SecretString;
use crate::store::{Store, StoreError};

pub const SOCKET_FILE: &str = "latchkey.sock";
/// Where systemd puts `RuntimeDirectory=latchkey`: a CLI that cannot read the data dir (an
/// admin in group latchkey, not the service user) looks here.
pub const SYSTEMD_SOCKET: &str = "/run/latchkey/latchkey.sock";
/// A request is a command and a few short arguments.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client has this long to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `serve` listens: `$RUNTIME_DIRECTORY` when systemd sets it, else the data dir.
pub fn socket_path(config: &Config) -> PathBuf {
    config
        .runtime_dir
        .as_deref()
        .unwrap_or(&config.data_dir)
        .join(SOCKET_FILE)
}

/// One request. Unknown commands and fields are refused.
#[derive(Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    AdminPassword { password: String },
    AdminToken { name: String },
    // Empty braces, not unit variants: serde ignores unknown fields beside a unit variant.
    Pair {},
    DevicesList {},
    DevicesRevoke { id: String },
    NodesList {},
    NodesRevoke { id: String },
    Backup {},
}

impl std::fmt::Debug for Request {
    /// Only the command's name: a password must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Self::AdminPassword { .. } => "admin-password",
            Self::AdminToken { .. } => "admin-token",
            Self::Pair {} => "pair",
            Self::DevicesList {} => "devices-list",
            Self::DevicesRevoke { .. } => "devices-revoke",
            Self::NodesList {} => "nodes-list",
            Self::NodesRevoke { .. } => "nodes-revoke",
            Self::Backup {} => "backup",
        }
    }
}

/// Why a command did not run: an answer for the user (`code` from the contract), or a fault
/// whose cause the daemon logs and the CLI prints (only `INTERNAL` crosses the socket).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl Failure {
    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
        }
    }

    /// The answer line's `error` object.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Refused { code, message } => {
                json!({ "error": { "code": code, "message": message } })
            }
            Self::Internal(_) => {
                json!({ "error": { "code": "INTERNAL", "message": "internal error (see the daemon's log)" } })
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.into())
    }
}

/// Where phones are told to connect, for `pair`'s QR payload.
pub struct Advertised {
    pub host: String,
    pub port: u16,
}

/// Runs a command (other than `backup`) on `store`. Blocking: call it off the async runtime.
pub fn execute(
    store: &Store,
    req: Request,
    now: UnixTime,
    pair_ttl: u64,
    at: &Advertised,
) -> Result<Value, Failure> {
    match req {
        Request::AdminPassword { password } => {
            let password = SecretString::new(password);
            store
                .write_durable_blocking(|tx| {
                    Ok(crate::admin::set_password(tx, password.expose(), now))
                })?
                .map_err(admin_failure)?;
            Ok(json!({}))
        }
        Request::AdminToken { name } => {
            let (_, token) = store
                .write_durable_blocking(|tx| Ok(crate::admin::create_token(tx, &name, now)))?
                .map_err(admin_failure)?;
            Ok(json!({ "token": token.expose() }))
        }
        Request::Pair {} => {
            let t = store
                .write_durable_blocking(|tx| Ok(crate::pairing::create_token(tx, now, pair_ttl)))?
                .map_err(|e| Failure::Internal(e.into()))?;
            let payload = json!({
                "v": 1,
                "host": at.host,
                "port": at.port,
                "pairToken": t.token.expose(),
                "expires": t.expires,
            })
            .to_string();
            Ok(json!({ "payload": payload, "expires": t.expires, "ttlSecs": pair_ttl }))
        }
        Request::DevicesList {} => Ok(json!({ "devices": store.read_blocking(registry::list)? })),
        Request::DevicesRevoke { id } => {
            let Some(id) = DeviceId::parse(&id) else {
                return Err(Failure::refused(
                    "NOT_FOUND",
                    format!("no device with id {id:?}"),
                ));
            };
            let outcome =
                store.write_durable_blocking(|tx| registry::revoke(tx, &id, now, "cli"))?;
            revoked(outcome, "device", id.as_str())
        }
        Request::NodesList {} => Ok(json!({ "nodes": store.read_blocking(crate::nodes::list)? })),
        Request::NodesRevoke { id } => {
            let Some(id) = crate::nodes::NodeId::parse(&id) else {
                return Err(Failure::refused(
                    "NOT_FOUND",
                    format!("no node with id {id:?}"),
                ));
            };
            // A running daemon sees the `node.revoked` event and closes the node's session.
            let outcome =
                store.write_durable_blocking(|tx| crate::nodes::revoke(tx, &id, now, "cli"))?;
            revoked(outcome, "node", &id.to_string())
        }
        Request::Backup {} => Err(Failure::refused(
            "BAD_REQUEST",
            "backup is streamed, not executed",
        )),
    }
}

fn revoked(outcome: RevokeOutcome, what: &str, id: &str) -> Result<Value, Failure> {
    match outcome {
        RevokeOutcome::Revoked => Ok(json!({ "id": id, "revoked": true, "already": false })),
        RevokeOutcome::AlreadyRevoked => Ok(json!({ "id": id, "revoked": true, "already": true })),
        RevokeOutcome::NotFound => Err(Failure::refused(
            "NOT_FOUND",
            format!("no {what} with id {id}"),
        )),
    }
}

fn admin_failure(e: crate::admin::AdminError) -> Failure {
    use crate::admin::AdminError;
    match e {
        AdminError::PasswordLength | AdminError::TokenName => {
            Failure::refused("BAD_REQUEST", e.to_string())
        }
        other => Failure::Internal(other.into()),
    }
}

/// A peer's credentials as the kernel recorded them when it connected (`SO_PEERCRED`,
/// `SO_PEERGROUPS`): no pid involved, so nothing can be swapped in after the fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Who may use the socket: root, the daemon's own user, and members of the daemon's group
/// (the same people the socket file's 0660 lets in; this holds even if its mode is widened).
pub fn peer_allowed(peer: &Peer, daemon_uid: u32, daemon_gid: u32) -> bool {
    peer.uid == 0
        || peer.uid == daemon_uid
        || peer.gid == daemon_gid
        || peer.groups.contains(&daemon_gid)
}

/// Removes `path` if it is a socket nobody serves any more (the data dir's lock, held by this
/// daemon now, proves no other daemon does). Anything else there is left alone and reported.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path)?;
            tracing::debug!(path = %path.display(), "replaced a stale control socket");
            Ok(())
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; move it away",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_the_daemons_user_and_its_group_are_allowed() {
        // The daemon runs as latchkey (uid 990, gid 990).
        assert!(peer_allowed(&peer(0, 0, &[]), 990, 990));
        assert!(peer_allowed(&peer(990, 990, &[]), 990, 990));
        // An admin whose primary group is latchkey, or who has it as a supplementary group.
        assert!(peer_allowed(&peer(1000, 990, &[]), 990, 990));
        assert!(peer_allowed(&peer(1000, 1000, &[27, 990]), 990, 990));
    }

    #[test]
    fn a_foreign_user_is_refused() {
        assert!(!peer_allowed(&peer(1001, 1001, &[27, 100]), 990, 990));
        assert!(!peer_allowed(&peer(65534, 65534, &[]), 990, 990));
    }

    #[test]
    fn requests_parse_strictly_and_never_print_a_password() {
        let r: Request =
            serde_json::from_str(r#"{"command":"admin-password","password":"hunter2hunter2"}"#)
                .unwrap();
        assert_eq!(format!("{r:?}"), "admin-password");
        let r: Request = serde_json::from_str(r#"{"command":"devices-revoke","id":"x"}"#).unwrap();
        assert_eq!(r.name(), "devices-revoke");
        assert!(serde_json::from_str::<Request>(r#"{"command":"rotate-key"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"pair","extra":1}"#).is_err());
    }
}
