//! Provisioning tokens (seed 004, CONTRACT §6, NODES.md §3) and node registration.
//!
//! A token is 256 bits from the OS CSPRNG, stored only as its SHA-256, lives 10 minutes and is
//! redeemed by one conditional UPDATE … RETURNING inside the writer's IMMEDIATE transaction, so
//! of any number of racing registrations exactly one sees it unused. Issuing a new token for a
//! pending node voids every earlier one of that node.

use data_encoding::BASE64;
use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use super::{doors, validate_name, Kind, NodeError, NodeId};
use crate::clock::UnixTime;
use crate::crypto::MasterKey;
use crate::events;
use crate::secret::{SecretString, TokenHash};

pub const TOKEN_PREFIX: &str = "prov_";
pub const NODE_KEY_PREFIX: &str = "node_";
/// Seed 004: tokens live 10 minutes.
pub const TOKEN_TTL_SECS: i64 = 600;
/// Longest token string we bother hashing; anything longer is not ours.
const MAX_TOKEN_LEN: usize = 128;
/// `firmware`: at most 32 printable ASCII characters.
const MAX_FIRMWARE_LEN: usize = 32;
/// SEC1 uncompressed P-256 point.
const PUBKEY_LEN: usize = 65;
/// Used and expired tokens stay a day for the audit trail, then go (with pending nodes that
/// never registered and have no token left).
const KEEP_SECS: i64 = 86_400;

/// What the admin (or the provisioning app) asks for; every field optional.
#[derive(Debug, Default, Clone)]
pub struct TokenRequest {
    pub household_id: Option<String>,
    pub room: Option<String>,
    pub name: Option<String>,
    pub node_id: Option<String>,
}

/// A fresh token; the clear value exists only here and in the answer.
#[derive(Debug)]
pub struct NewToken {
    pub node_id: NodeId,
    pub token: SecretString,
    pub expires: UnixTime,
}

pub fn issue_token(
    tx: &Transaction<'_>,
    req: &TokenRequest,
    now: UnixTime,
) -> Result<NewToken, NodeError> {
    let field = |v: &Option<String>, name: &str| -> Result<Option<String>, NodeError> {
        v.as_deref().map(|s| validate_name(s, name)).transpose()
    };
    let household = field(&req.household_id, "household_id")?;
    let room = field(&req.room, "room")?;
    let name = field(&req.name, "name")?;

    let node_id = match &req.node_id {
        None => {
            let id = NodeId::new_random()?;
            tx.execute(
                "INSERT INTO nodes (id, name, room, household_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id.as_str(),
                    name.unwrap_or_default(),
                    room.unwrap_or_default(),
                    household.unwrap_or_default(),
                    now
                ],
            )?;
            id
        }
        Some(raw) => {
            let id = NodeId::parse(raw).ok_or(NodeError::NotFound)?;
            let row: Option<(Option<i64>, Option<i64>)> = tx
                .query_row(
                    "SELECT registered_at, revoked_at FROM nodes WHERE id = ?1",
                    [id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match row {
                None => return Err(NodeError::NotFound),
                Some((None, None)) => {}
                Some(_) => return Err(NodeError::AlreadyRegistered),
            }
            tx.execute(
                "UPDATE provisioning_tokens SET voided_at = ?2
                 WHERE node_id = ?1 AND used_at IS NULL AND voided_at IS NULL",
                params![id.as_str(), now],
            )?;
            tx.execute(
                "UPDATE nodes SET name = COALESCE(?2, name), room = COALESCE(?3, room),
                                  household_id = COALESCE(?4, household_id)
                 WHERE id = ?1",
                params![id.as_str(), name, room, household],
            )?;
            id
        }
    };

    let token = SecretString::random_token::<32>(TOKEN_PREFIX)?;
    let expires = now + TOKEN_TTL_SECS;
    tx.execute(
        "INSERT INTO provisioning_tokens (token_hash, node_id, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token.hash().as_bytes(), node_id.as_str(), now, expires],
    )?;
    events::append(
        tx,
        "node.token",
        &json!({ "nodeId": node_id, "expires": expires }),
        "gateway",
        now * 1000,
    )?;
    prune(tx, now)?;
    Ok(NewToken {
        node_id,
        token,
        expires,
    })
}

fn prune(tx: &Transaction<'_>, now: UnixTime) -> Result<(), NodeError> {
    tx.execute(
        "DELETE FROM provisioning_tokens WHERE expires_at < ?1",
        [now - KEEP_SECS],
    )?;
    tx.execute(
        "DELETE FROM nodes WHERE registered_at IS NULL AND created_at < ?1
           AND NOT EXISTS (SELECT 1 FROM provisioning_tokens t WHERE t.node_id = nodes.id)",
        [now - KEEP_SECS],
    )?;
    Ok(())
}

/// A node's registration request (NODES.md §3.2), as received.
#[derive(Debug, Clone)]
pub struct Registration {
    pub node_id: String,
    pub token: String,
    /// Standard base64 of the SEC1 uncompressed P-256 point.
    pub pubkey: String,
    pub kind: String,
    pub firmware: String,
}

/// What the node is told, once.
#[derive(Debug)]
pub struct Registered {
    pub node_id: NodeId,
    pub node_key: SecretString,
    pub gateway_pubkey: [u8; 32],
    pub endpoint: Option<String>,
}

struct Checked {
    node_id: NodeId,
    pubkey: Vec<u8>,
    kind: Kind,
    firmware: String,
}

/// Field checks, before the token is looked at (the message names the field, not its value).
fn check(req: &Registration) -> Result<Checked, NodeError> {
    let bad = |m: &str| NodeError::BadRequest(m.to_owned());
    let node_id = NodeId::parse(&req.node_id).ok_or_else(|| bad("node_id is not a node id"))?;
    if req.pubkey.len() > 2 * PUBKEY_LEN {
        return Err(bad("pubkey is not a P-256 public key"));
    }
    let pubkey = BASE64
        .decode(req.pubkey.as_bytes())
        .map_err(|_| bad("pubkey is not standard base64"))?;
    // SEC1 uncompressed only (0x04 ‖ X ‖ Y), and a point on the curve.
    if pubkey.len() != PUBKEY_LEN
        || pubkey.first() != Some(&0x04)
        || p256::PublicKey::from_sec1_bytes(&pubkey).is_err()
    {
        return Err(bad(
            "pubkey is not an uncompressed SEC1 P-256 public key on the curve",
        ));
    }
    let kind = Kind::parse(&req.kind).ok_or_else(|| bad("kind must be door or vehicle"))?;
    let firmware = req.firmware.trim();
    if firmware.is_empty()
        || firmware.len() > MAX_FIRMWARE_LEN
        || !firmware.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad("firmware must be 1 to 32 printable ASCII characters"));
    }
    Ok(Checked {
        node_id,
        pubkey,
        kind,
        firmware: firmware.to_owned(),
    })
}

/// Redeems a provisioning token: the node gets its key, the registry its public key, and a
/// door node its endpoint id (`reserved`: the ids the configuration already uses).
pub fn register(
    tx: &Transaction<'_>,
    master: &MasterKey,
    req: &Registration,
    reserved: &[String],
    now: UnixTime,
) -> Result<Registered, NodeError> {
    let c = check(req)?;
    if req.token.len() > MAX_TOKEN_LEN || !req.token.starts_with(TOKEN_PREFIX) {
        return Err(NodeError::TokenInvalid);
    }
    let hash = TokenHash::of(&req.token);
    let claimed: Option<i64> = tx
        .prepare_cached(
            "UPDATE provisioning_tokens SET used_at = ?3
             WHERE token_hash = ?1 AND node_id = ?2 AND used_at IS NULL AND voided_at IS NULL
               AND expires_at > ?3
             RETURNING id",
        )?
        .query_row(params![hash.as_bytes(), c.node_id.as_str(), now], |r| {
            r.get(0)
        })
        .optional()?;
    if claimed.is_none() {
        type Row = (String, i64, Option<i64>, Option<i64>);
        let row: Option<Row> = tx
            .query_row(
                "SELECT node_id, expires_at, used_at, voided_at FROM provisioning_tokens
                 WHERE token_hash = ?1",
                [hash.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        return Err(match row {
            None => NodeError::TokenInvalid,
            Some((node, ..)) if node != c.node_id.as_str() => NodeError::TokenInvalid,
            Some((_, _, Some(_), _)) => NodeError::TokenUsed,
            Some((_, _, None, Some(_))) => NodeError::TokenInvalid,
            Some(_) => NodeError::TokenExpired,
        });
    }

    let node_key = SecretString::random_token::<32>(NODE_KEY_PREFIX)?;
    let (name, room): (String, String) = tx.query_row(
        "SELECT name, room FROM nodes WHERE id = ?1",
        [c.node_id.as_str()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let endpoint = match c.kind {
        Kind::Door => Some(doors::unique_endpoint_id(
            tx,
            &doors::slug(&name, &room),
            reserved,
        )?),
        Kind::Vehicle => None,
    };
    let changed = tx.execute(
        "UPDATE nodes SET kind = ?2, firmware = ?3, pubkey = ?4, key_hash = ?5,
                          endpoint_id = ?6, registered_at = ?7
         WHERE id = ?1 AND registered_at IS NULL AND revoked_at IS NULL",
        params![
            c.node_id.as_str(),
            c.kind.as_str(),
            c.firmware,
            c.pubkey,
            node_key.hash().as_bytes(),
            endpoint,
            now
        ],
    )?;
    // A revoked pending node's tokens are void, so this only guards against a broken row.
    if changed == 0 {
        return Err(NodeError::TokenInvalid);
    }
    let gateway_pubkey = super::signing::public_key(tx, master)?;
    events::append(
        tx,
        "node.registered",
        &json!({
            "nodeId": c.node_id,
            "name": name,
            "room": room,
            "kind": c.kind.as_str(),
            "firmware": c.firmware,
            "endpoint": endpoint,
        }),
        "gateway",
        now * 1000,
    )?;
    Ok(Registered {
        node_id: c.node_id,
        node_key,
        gateway_pubkey,
        endpoint,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn setup() -> (tempfile::TempDir, Store, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        (dir, store, MasterKey::from_bytes([7; 32]))
    }

    /// A valid P-256 point: the generator, SEC1 uncompressed (SP 800-186 §3.2.1.3).
    fn test_pubkey() -> String {
        let hex = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296\
                   4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
        BASE64.encode(&data_encoding::HEXLOWER.decode(hex.as_bytes()).unwrap())
    }

    fn reg(node_id: &NodeId, token: &str) -> Registration {
        Registration {
            node_id: node_id.to_string(),
            token: token.to_owned(),
            pubkey: test_pubkey(),
            kind: "door".into(),
            firmware: "0.1.0".into(),
        }
    }

    #[test]
    fn token_refresh_voids_the_old_one_and_registration_is_once() {
        let (_d, store, key) = setup();
        let req = TokenRequest {
            name: Some("Front door".into()),
            ..Default::default()
        };
        let first = store
            .write_blocking(|tx| Ok(issue_token(tx, &req, 1000)))
            .unwrap()
            .unwrap();
        assert!(first.token.expose().starts_with("prov_"));
        assert_eq!(first.token.expose().len(), 5 + 43);
        let again = TokenRequest {
            node_id: Some(first.node_id.to_string()),
            ..Default::default()
        };
        let second = store
            .write_blocking(|tx| Ok(issue_token(tx, &again, 1100)))
            .unwrap()
            .unwrap();
        assert_eq!(second.node_id, first.node_id);
        let old = store
            .write_blocking(|tx| {
                Ok(register(
                    tx,
                    &key,
                    &reg(&first.node_id, first.token.expose()),
                    &[],
                    1101,
                ))
            })
            .unwrap();
        assert!(matches!(old, Err(NodeError::TokenInvalid)), "{old:?}");
        let ok = store
            .write_blocking(|tx| {
                Ok(register(
                    tx,
                    &key,
                    &reg(&second.node_id, second.token.expose()),
                    &[],
                    1102,
                ))
            })
            .unwrap()
            .unwrap();
        assert!(ok.node_key.expose().starts_with("node_"));
        assert_eq!(ok.endpoint.as_deref(), Some("front-door"));
        let used = store
            .write_blocking(|tx| {
                Ok(register(
                    tx,
                    &key,
                    &reg(&second.node_id, second.token.expose()),
                    &[],
                    1103,
                ))
            })
            .unwrap();
        assert!(matches!(used, Err(NodeError::TokenUsed)), "{used:?}");
        // A registered node gets no new token.
        let late = store
            .write_blocking(|tx| Ok(issue_token(tx, &again, 1104)))
            .unwrap();
        assert!(
            matches!(late, Err(NodeError::AlreadyRegistered)),
            "{late:?}"
        );
        let node = store
            .read_blocking(|c| super::super::get(c, &ok.node_id))
            .unwrap()
            .unwrap();
        assert_eq!(node.state, "registered");
        assert_eq!(node.firmware.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn expiry_and_bad_fields() {
        let (_d, store, key) = setup();
        let t = store
            .write_blocking(|tx| Ok(issue_token(tx, &TokenRequest::default(), 1000)))
            .unwrap()
            .unwrap();
        let tok = t.token.expose().to_owned();
        let r = store
            .write_blocking(|tx| Ok(register(tx, &key, &reg(&t.node_id, &tok), &[], 1600)))
            .unwrap();
        assert!(matches!(r, Err(NodeError::TokenExpired)), "{r:?}");
        let mut bad = reg(&t.node_id, &tok);
        bad.pubkey = BASE64.encode(&[4u8; 65]);
        let r = store
            .write_blocking(|tx| Ok(register(tx, &key, &bad, &[], 1001)))
            .unwrap();
        assert!(matches!(r, Err(NodeError::BadRequest(_))), "{r:?}");
        let mut bad = reg(&t.node_id, &tok);
        bad.kind = "toaster".into();
        let r = store
            .write_blocking(|tx| Ok(register(tx, &key, &bad, &[], 1001)))
            .unwrap();
        assert!(matches!(r, Err(NodeError::BadRequest(_))), "{r:?}");
        // Another node's id with this token: not valid for it.
        let other = NodeId::new_random().unwrap();
        let r = store
            .write_blocking(|tx| Ok(register(tx, &key, &reg(&other, &tok), &[], 1001)))
            .unwrap();
        assert!(matches!(r, Err(NodeError::TokenInvalid)), "{r:?}");
        let unknown = TokenRequest {
            node_id: Some(other.to_string()),
            ..Default::default()
        };
        let r = store
            .write_blocking(|tx| Ok(issue_token(tx, &unknown, 1001)))
            .unwrap();
        assert!(matches!(r, Err(NodeError::NotFound)), "{r:?}");
    }
}
