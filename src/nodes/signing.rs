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

const META_KEY: &str = "gateway_signing_key";
const AAD: &str = "latchkey/meta/gateway_signing_key";

/// The signing key, if one was made.
pub fn signing_key(conn: &Connection, master: &MasterKey) -> Result<Option<SigningKey>, NodeError> {
    let Some(hex) = store::meta_get(conn, META_KEY)? else {
        return Ok(None);
    };
    let sealed = data_encoding::HEXLOWER
        .decode(hex.as_bytes())
        .map_err(|_| StoreError::Corrupt("the gateway signing key"))?;
    let seed = master
        .open(&sealed, AAD)
        .map_err(|_| StoreError::Corrupt("the gateway signing key does not open"))?;
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        <[u8; 32]>::try_from(seed.expose())
            .map_err(|_| StoreError::Corrupt("the gateway signing key"))?,
    );
    Ok(Some(SigningKey::from_bytes(&seed)))
}

/// The signing key, made and sealed on first use (inside the caller's write transaction, so
/// two processes cannot both make one).
pub fn get_or_create(tx: &Transaction<'_>, master: &MasterKey) -> Result<SigningKey, NodeError> {
    if let Some(k) = signing_key(tx, master)? {
        return Ok(k);
    }
    let seed = Zeroizing::new(random_array::<32>()?);
    let sealed = master
        .seal(seed.as_slice(), AAD)
        .map_err(|_| NodeError::Seal)?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        [META_KEY, &data_encoding::HEXLOWER.encode(&sealed)],
    )?;
    Ok(SigningKey::from_bytes(&seed))
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
        let store = crate::store::Store::open(&dir.path().join("db.sqlite")).unwrap();
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
