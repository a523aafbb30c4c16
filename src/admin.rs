//! Admin credentials: the web password (argon2id), named API tokens (hashed), web sessions.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use hmac::{KeyInit, Mac};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::json;

use crate::clock::{rfc3339, UnixTime};
use crate::crypto::MasterKey;
use crate::events;
use crate::secret::{random_array, SecretString, TokenHash};
use crate::store::StoreError;

pub const ADMIN_TOKEN_PREFIX: &str = "lka_";
pub const MIN_PASSWORD_LEN: usize = 10;
pub const MAX_PASSWORD_LEN: usize = 1024;
pub const SESSION_TTL_SECS: i64 = 12 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters")]
    PasswordLength,
    #[error("token name must be 1 to 64 characters, none of them control, format or separator characters")]
    TokenName,
    #[error("password hashing failed")]
    Hash,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
}

fn argon2() -> Argon2<'static> {
    // Argon2id with the crate's defaults (19 MiB, 2 passes): OWASP's minimum, and fast enough
    // on a Pi 3 to keep a login under a second.
    Argon2::default()
}

pub fn set_password(tx: &Transaction<'_>, password: &str, now: UnixTime) -> Result<(), AdminError> {
    let n = password.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(AdminError::PasswordLength);
    }
    let salt_bytes = random_array::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|_| AdminError::Hash)?;
    let phc = argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|_| AdminError::Hash)?
        .to_string();
    tx.execute(
        "INSERT INTO admin (id, password_hash, updated_at) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET password_hash = excluded.password_hash,
                                       updated_at = excluded.updated_at",
        params![phc, now],
    )?;
    // A new password ends every web session.
    tx.execute("DELETE FROM sessions", [])?;
    Ok(())
}

pub fn has_password(conn: &Connection) -> Result<bool, StoreError> {
    Ok(
        conn.query_row("SELECT EXISTS(SELECT 1 FROM admin WHERE id = 1)", [], |r| {
            r.get(0)
        })?,
    )
}

pub fn password_hash(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT password_hash FROM admin WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?)
}

/// Verifies a password against the stored PHC string (argon2's own constant-time compare).
/// CPU-heavy: call from a blocking context.
pub fn verify_password(phc: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN * 4 {
        return false;
    }
    PasswordHash::new(phc)
        .map(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminToken {
    pub id: i64,
    pub name: String,
    pub created_at: String,
    pub last_used: Option<String>,
    pub revoked: bool,
}

pub fn create_token(
    tx: &Transaction<'_>,
    name: &str,
    now: UnixTime,
) -> Result<(i64, SecretString), AdminError> {
    let name = crate::names::display_name(name).map_err(|_| AdminError::TokenName)?;
    let token = SecretString::random_token::<32>(ADMIN_TOKEN_PREFIX)?;
    tx.execute(
        "INSERT INTO admin_tokens (name, token_hash, created_at) VALUES (?1, ?2, ?3)",
        params![name, token.hash().as_bytes(), now],
    )?;
    Ok((tx.last_insert_rowid(), token))
}

pub fn list_tokens(conn: &Connection) -> Result<Vec<AdminToken>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, created_at, last_used, revoked_at FROM admin_tokens ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AdminToken {
            id: r.get(0)?,
            name: r.get(1)?,
            created_at: rfc3339(r.get(2)?),
            last_used: r.get::<_, Option<i64>>(3)?.map(rfc3339),
            revoked: r.get::<_, Option<i64>>(4)?.is_some(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The id of the live (unrevoked) token with this hash.
pub fn token_by_hash(conn: &Connection, hash: &TokenHash) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id FROM admin_tokens WHERE token_hash = ?1 AND revoked_at IS NULL",
            [hash.as_bytes()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Notes a token's use, at most once a minute.
pub fn touch_token(tx: &Transaction<'_>, id: i64, now: UnixTime) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE admin_tokens SET last_used = ?2 WHERE id = ?1 AND (last_used IS NULL OR last_used <= ?2 - 60)",
        params![id, now],
    )?;
    Ok(())
}

/// Revokes a token; `gateway.admin_token_revoked` lets open admin sockets close at once.
pub fn revoke_token(tx: &Transaction<'_>, id: i64, now: UnixTime) -> Result<bool, StoreError> {
    let n = tx.execute(
        "UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )?;
    if n > 0 {
        events::append(
            tx,
            "gateway.admin_token_revoked",
            &json!({ "tokenId": id }),
            "gateway",
            now * 1000,
        )?;
    }
    Ok(n > 0)
}

/// Starts a web session; the returned value goes into the cookie and nowhere else.
pub fn create_session(tx: &Transaction<'_>, now: UnixTime) -> Result<SecretString, AdminError> {
    let sid = SecretString::random_token::<32>("")?;
    tx.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now])?;
    tx.execute(
        "INSERT INTO sessions (id_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
        params![sid.hash().as_bytes(), now, now + SESSION_TTL_SECS],
    )?;
    Ok(sid)
}

pub fn session_valid(conn: &Connection, sid: &str, now: UnixTime) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM sessions WHERE id_hash = ?1 AND expires_at > ?2)",
        params![TokenHash::of(sid).as_bytes(), now],
        |r| r.get(0),
    )?)
}

pub fn end_session(tx: &Transaction<'_>, sid: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM sessions WHERE id_hash = ?1",
        [TokenHash::of(sid).as_bytes()],
    )?;
    Ok(())
}

/// The CSRF token for a session: an HMAC of the session id under a key derived from the master
/// key, so nothing extra is stored and it cannot be forged without the session cookie.
pub fn csrf_token(master: &MasterKey, sid: &str) -> String {
    let key = master.derive("csrf");
    let mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_slice())
        .map(|mut m| {
            m.update(sid.as_bytes());
            m.finalize().into_bytes().to_vec()
        })
        .unwrap_or_default();
    data_encoding::BASE64URL_NOPAD.encode(&mac)
}

pub fn csrf_ok(master: &MasterKey, sid: &str, presented: &str) -> bool {
    crate::secret::ct_eq(csrf_token(master, sid).as_bytes(), presented.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_roundtrip_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        assert!(!store.read_blocking(has_password).unwrap());
        let short = store.write_blocking(|tx| Ok(set_password(tx, "short", 0)));
        assert!(matches!(short.unwrap(), Err(AdminError::PasswordLength)));
        store
            .write_blocking(|tx| Ok(set_password(tx, "correct horse battery", 0)))
            .unwrap()
            .unwrap();
        let phc = store.read_blocking(password_hash).unwrap().unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password(&phc, "correct horse battery"));
        assert!(!verify_password(&phc, "correct horse batterx"));
    }

    #[test]
    fn tokens_sessions_and_csrf() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let (id, tok) = store
            .write_blocking(|tx| Ok(create_token(tx, "ci", 10).unwrap()))
            .unwrap();
        assert!(tok.expose().starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(
            store
                .read_blocking(|c| token_by_hash(c, &tok.hash()))
                .unwrap(),
            Some(id)
        );
        assert!(store.write_blocking(|tx| revoke_token(tx, id, 20)).unwrap());
        assert_eq!(
            store
                .read_blocking(|c| token_by_hash(c, &tok.hash()))
                .unwrap(),
            None
        );
        assert!(store.read_blocking(list_tokens).unwrap()[0].revoked);

        let sid = store
            .write_blocking(|tx| Ok(create_session(tx, 100).unwrap()))
            .unwrap();
        assert!(store
            .read_blocking(|c| session_valid(c, sid.expose(), 101))
            .unwrap());
        assert!(!store
            .read_blocking(|c| session_valid(c, sid.expose(), 100 + SESSION_TTL_SECS))
            .unwrap());
        let k = MasterKey::from_bytes([3; 32]);
        let c = csrf_token(&k, sid.expose());
        assert!(csrf_ok(&k, sid.expose(), &c));
        assert!(!csrf_ok(&k, "other", &c));
    }
}
