//! The gateway's Ed25519 signing key: created once (from the OS CSPRNG), kept only sealed under
//! the master key like TOTP secrets, bound to its row by the associated data. Nodes receive its
//! public key at registration (`gateway_pubkey`); the access-tool grants (issue 10) are signed
//! with it.

use ed25519_dalek::SigningKey;
use rusqlite::{Connection, Transaction};
use zeroize::Zeroizing;

use super::NodeError;
use crate::crypto::MasterKey;
use crate::secret::random_array;
use crate::store::{self, StoreError};

pub(crate) const META_KEY: &str = "gateway_signing_key";
pub(crate) const AAD: &str = "latchkey/meta/gateway_signing_key";

/// The signing key, if one was made.
pub fn signing_key(conn: &Connection, master: &MasterKey) -> Result<Option<SigningKey>, NodeError> {
    Ok(open_seed(conn, master, META_KEY, AAD)?.map(|seed| SigningKey::from_bytes(&seed)))
}

/// The signing key, made and sealed on first use (inside the caller's write transaction, so
/// two processes cannot both make one).
pub fn get_or_create(tx: &Transaction<'_>, master: &MasterKey) -> Result<SigningKey, NodeError> {
    let seed = seed_or_create(tx, master, META_KEY, AAD, |_| true)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A 32-byte secret kept sealed under the master key in `meta` under `key` (bound to it by
/// `aad`), if one was made. Shared by the gateway's keys (this one, the door key of
/// `crate::grants::doorkey`).
pub(crate) fn open_seed(
    conn: &Connection,
    master: &MasterKey,
    key: &str,
    aad: &str,
) -> Result<Option<Zeroizing<[u8; 32]>>, StoreError> {
    let Some(hex) = store::meta_get(conn, key)? else {
        return Ok(None);
    };
    let sealed = data_encoding::HEXLOWER
        .decode(hex.as_bytes())
        .map_err(|_| StoreError::Corrupt("a sealed gateway key"))?;
    let seed = master
        .open(&sealed, aad)
        .map_err(|_| StoreError::Corrupt("a sealed gateway key does not open"))?;
    Ok(Some(Zeroizing::new(
        <[u8; 32]>::try_from(seed.expose())
            .map_err(|_| StoreError::Corrupt("a sealed gateway key"))?,
    )))
}

/// [`open_seed`], or a new secret from the OS CSPRNG (drawn again until `valid` accepts it),
/// sealed and stored inside the caller's write transaction.
pub(crate) fn seed_or_create(
    tx: &Transaction<'_>,
    master: &MasterKey,
    key: &str,
    aad: &str,
    valid: impl Fn(&[u8; 32]) -> bool,
) -> Result<Zeroizing<[u8; 32]>, NodeError> {
    if let Some(seed) = open_seed(tx, master, key, aad)? {
        return Ok(seed);
    }
    let seed = loop {
        let s = Zeroizing::new(random_array::<32>()?);
        if valid(&s) {
            break s;
        }
    };
    let sealed = master
        .seal(seed.as_slice(), aad)
        .map_err(|_| NodeError::Seal)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        [key, &data_encoding::HEXLOWER.encode(&sealed)],
    )?;
    Ok(seed)
}

/// The public half, 32 bytes (what `gateway_pubkey` carries, base64).
pub fn public_key(tx: &Transaction<'_>, master: &MasterKey) -> Result<[u8; 32], NodeError> {
    Ok(get_or_create(tx, master)?.verifying_key().to_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    #[test]
    fn made_once_sealed_and_usable() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let master = MasterKey::from_bytes([5; 32]);
        let a = store
            .write_blocking(|tx| Ok(public_key(tx, &master)))
            .unwrap()
            .unwrap();
        let b = store
            .write_blocking(|tx| Ok(public_key(tx, &master)))
            .unwrap()
            .unwrap();
        assert_eq!(a, b, "the key is made once");
        let key = store
            .read_blocking(|c| Ok(signing_key(c, &master)))
            .unwrap()
            .unwrap()
            .unwrap();
        let sig = key.sign(b"grant");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&a).unwrap();
        assert!(vk.verify(b"grant", &sig).is_ok());
        // Stored sealed: the seed is nowhere in the clear, and another master key cannot open it.
        let other = MasterKey::from_bytes([6; 32]);
        assert!(store
            .read_blocking(|c| Ok(signing_key(c, &other)))
            .unwrap()
            .is_err());
    }
}
