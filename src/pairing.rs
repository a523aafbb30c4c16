//! One-time pairing tokens and their redemption.
//!
//! A token is redeemed by a single conditional UPDATE inside an IMMEDIATE transaction: SQLite
//! serializes writers (across processes too), so of any number of racing redemptions exactly
//! one sees the row still unused.

use rusqlite::{params, OptionalExtension, Transaction};
use serde_json::json;

use crate::clock::UnixTime;
use crate::crypto::MasterKey;
use crate::events;
use crate::names;
use crate::registry::{totp_aad, DeviceId};
use crate::secret::{SecretBytes, SecretString};
use crate::store::StoreError;

pub const PAIR_TOKEN_PREFIX: &str = "pt_";
pub const DEVICE_KEY_PREFIX: &str = "dev_";
pub const TOTP_PERIOD: u64 = 30;
pub const TOTP_DIGITS: usize = 6;
pub const MAX_TYPE_LEN: usize = 32;
/// Longest token string we bother hashing; anything longer is not ours.
pub const MAX_TOKEN_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("pair token is not valid")]
    Invalid,
    #[error("pair token has expired")]
    Expired,
    #[error("pair token was already used")]
    Used,
    #[error("{0}")]
    BadDeviceInfo(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Random(#[from] crate::secret::RandomError),
    #[error("sealing failed")]
    Seal,
}

/// A freshly minted token; the clear value exists only here and in the admin's QR code.
#[derive(Debug)]
pub struct NewPairToken {
    pub id: i64,
    pub token: SecretString,
    pub expires: UnixTime,
}

pub fn create_token(
    tx: &Transaction<'_>,
    now: UnixTime,
    ttl_secs: u64,
) -> Result<NewPairToken, PairError> {
    let token = SecretString::random_token::<16>(PAIR_TOKEN_PREFIX)?;
    let expires = now + i64::try_from(ttl_secs).unwrap_or(300);
    tx.execute(
        "INSERT INTO pair_tokens (token_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
        params![token.hash().as_bytes(), now, expires],
    )?;
    // Used tokens are kept a day for the audit trail, then dropped.
    tx.execute(
        "DELETE FROM pair_tokens WHERE expires_at < ?1",
        [now - 86_400],
    )?;
    Ok(NewPairToken {
        id: tx.last_insert_rowid(),
        token,
        expires,
    })
}

#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub kind: String,
}

impl DeviceInfo {
    /// Names are shown in the admin UI: visible text, trimmed, bounded (`names`).
    pub fn validate(name: &str, kind: &str) -> Result<Self, PairError> {
        let name = names::display_name(name).map_err(|e| {
            PairError::BadDeviceInfo(match e {
                names::NameError::Length => "deviceInfo.name must be 1 to 64 characters",
                names::NameError::Invisible => {
                    "deviceInfo.name must not contain control, format or separator characters"
                }
            })
        })?;
        let kind = kind.trim();
        if kind.is_empty()
            || kind.len() > MAX_TYPE_LEN
            || !kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PairError::BadDeviceInfo(
                "deviceInfo.type must be 1 to 32 of [A-Za-z0-9_-]",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            kind: kind.to_owned(),
        })
    }
}

/// What the phone receives, once.
#[derive(Debug)]
pub struct Paired {
    pub device_id: DeviceId,
    pub device_key: SecretString,
    pub totp_secret: SecretBytes,
    pub token_id: i64,
    pub seq: i64,
}

pub fn redeem(
    tx: &Transaction<'_>,
    master: &MasterKey,
    token: &str,
    info: &DeviceInfo,
    now: UnixTime,
) -> Result<Paired, PairError> {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(PAIR_TOKEN_PREFIX) {
        return Err(PairError::Invalid);
    }
    let hash = crate::secret::TokenHash::of(token);
    // Cached statements: this is the hot path when a room full of phones pairs at once.
    let claimed: Option<i64> = tx
        .prepare_cached(
            "UPDATE pair_tokens SET used_at = ?2
             WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
             RETURNING id",
        )?
        .query_row(params![hash.as_bytes(), now], |r| r.get(0))
        .optional()?;
    let Some(token_id) = claimed else {
        let row: Option<(i64, Option<i64>)> = tx
            .query_row(
                "SELECT expires_at, used_at FROM pair_tokens WHERE token_hash = ?1",
                [hash.as_bytes()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        return Err(match row {
            None => PairError::Invalid,
            Some((_, Some(_))) => PairError::Used,
            Some(_) => PairError::Expired,
        });
    };

    let device_id = DeviceId::new_random()?;
    let device_key = SecretString::random_token::<32>(DEVICE_KEY_PREFIX)?;
    let totp_secret = SecretBytes::random::<20>()?;
    let sealed = master
        .seal(totp_secret.expose(), &totp_aad(&device_id))
        .map_err(|_| PairError::Seal)?;
    tx.prepare_cached(
        "INSERT INTO devices (id, name, type, key_hash, totp_sealed, paired_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        device_id.as_str(),
        info.name,
        info.kind,
        device_key.hash().as_bytes(),
        sealed,
        now
    ])?;
    tx.prepare_cached("UPDATE pair_tokens SET device_id = ?2 WHERE id = ?1")?
        .execute(params![token_id, device_id.as_str()])?;
    let seq = events::append(
        tx,
        "device.paired",
        &json!({
            "deviceId": device_id,
            "name": info.name,
            "type": info.kind,
            "pairTokenId": token_id,
        }),
        "gateway",
        now * 1000,
    )?;
    Ok(Paired {
        device_id,
        device_key,
        totp_secret,
        token_id,
        seq,
    })
}

/// The `otpauth://` URI authenticator apps and TOTP libraries take.
pub fn totp_uri(secret: &SecretBytes, issuer: &str, account: &str) -> Option<SecretString> {
    // totp-rs refuses ':' in names; the label is cosmetic, so substitute.
    let clean = |s: &str| s.replace(':', "-");
    let totp = totp_rs::Builder::new()
        .with_algorithm(totp_rs::Algorithm::SHA1)
        .with_digits(TOTP_DIGITS as u8)
        .with_step_duration(TOTP_PERIOD)
        .with_secret(secret.expose().to_vec())
        .with_issuer(Some(clean(issuer)))
        .with_account_name(clean(account))
        .build()
        .ok()?;
    let mut url = totp.to_url().ok()?;
    // totp-rs leaves out parameters at their defaults; some authenticators want them spelled out.
    for (k, v) in [("algorithm", "SHA1"), ("digits", "6"), ("period", "30")] {
        if !url.contains(&format!("{k}=")) {
            url.push_str(&format!("&{k}={v}"));
        }
    }
    Some(SecretString::new(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn setup() -> (tempfile::TempDir, Store, MasterKey) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        (dir, store, MasterKey::from_bytes([9; 32]))
    }

    fn info() -> DeviceInfo {
        DeviceInfo::validate("Pixel 7", "mobile").unwrap()
    }

    #[test]
    fn redeem_once_then_used() {
        let (_d, store, key) = setup();
        let t = store
            .write_blocking(|tx| Ok(create_token(tx, 1000, 300).unwrap()))
            .unwrap();
        let tok = t.token.expose().to_owned();
        let p = store
            .write_blocking(|tx| Ok(redeem(tx, &key, &tok, &info(), 1001)))
            .unwrap()
            .unwrap();
        assert!(p.device_key.expose().starts_with("dev_"));
        assert_eq!(p.totp_secret.expose().len(), 20);
        let again = store
            .write_blocking(|tx| Ok(redeem(tx, &key, &tok, &info(), 1002)))
            .unwrap();
        assert!(matches!(again, Err(PairError::Used)));
        let secret = store
            .read_blocking(|c| crate::registry::totp_secret(c, &key, &p.device_id))
            .unwrap()
            .unwrap();
        assert_eq!(secret, p.totp_secret);
    }

    #[test]
    fn expiry_is_exclusive_at_the_deadline() {
        let (_d, store, key) = setup();
        let t = store
            .write_blocking(|tx| Ok(create_token(tx, 1000, 300).unwrap()))
            .unwrap();
        let tok = t.token.expose().to_owned();
        let r = store
            .write_blocking(|tx| Ok(redeem(tx, &key, &tok, &info(), 1300)))
            .unwrap();
        assert!(matches!(r, Err(PairError::Expired)));
        let r = store
            .write_blocking(|tx| Ok(redeem(tx, &key, "pt_nope", &info(), 1000)))
            .unwrap();
        assert!(matches!(r, Err(PairError::Invalid)));
    }

    #[test]
    fn device_info_limits() {
        assert!(DeviceInfo::validate("", "mobile").is_err());
        assert!(DeviceInfo::validate(&"x".repeat(65), "mobile").is_err());
        assert!(DeviceInfo::validate("a\u{7}b", "mobile").is_err());
        assert!(DeviceInfo::validate("ok", "mob ile").is_err());
        assert_eq!(
            DeviceInfo::validate(" Pixel ", "mobile").unwrap().name,
            "Pixel"
        );
    }

    #[test]
    fn totp_uri_is_standard() {
        let s = SecretBytes::new(b"12345678901234567890".to_vec());
        let uri = totp_uri(&s, "latchkey", "Pixel: 7").unwrap();
        let uri = uri.expose();
        assert!(
            uri.starts_with("otpauth://totp/latchkey:Pixel-%207?"),
            "{uri}"
        );
        assert!(
            uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.contains("issuer=latchkey"), "{uri}");
    }
}
