//! The gateway's own door key: a P-256 key pair (PROTOCOL.md §14), made once from the OS
//! CSPRNG and kept only sealed under the master key in `meta`, like the signing key. Phones
//! learn its public half with their access tool and derive their v2 session keys from it.

use rusqlite::{Connection, Transaction};

use crate::crypto::MasterKey;
use crate::nodes::signing::{open_seed, seed_or_create};
use crate::nodes::NodeError;
use crate::store::StoreError;
use latchkey_proto::v2::{parse_secret_key, public_key_bytes, PublicKeyBytes};

pub(crate) const META_KEY: &str = "gateway_door_key";
pub(crate) const AAD: &str = "latchkey/meta/gateway_door_key";

fn from_seed(seed: &[u8; 32]) -> Result<p256::SecretKey, StoreError> {
    parse_secret_key(seed).map_err(|_| StoreError::Corrupt("the gateway door key"))
}

/// The door key, if one was made.
pub fn secret(
    conn: &Connection,
    master: &MasterKey,
) -> Result<Option<p256::SecretKey>, StoreError> {
    open_seed(conn, master, META_KEY, AAD)?
        .map(|s| from_seed(&s))
        .transpose()
}

/// The door key, made and sealed on first use (inside the caller's write transaction).
pub fn get_or_create(
    tx: &Transaction<'_>,
    master: &MasterKey,
) -> Result<p256::SecretKey, NodeError> {
    // A scalar must be 1 ≤ d < n: draw again in the (2^-32) case it is not.
    let seed = seed_or_create(tx, master, META_KEY, AAD, |s| parse_secret_key(s).is_ok())?;
    Ok(from_seed(&seed)?)
}

/// Its public key, SEC1 uncompressed.
pub fn public(key: &p256::SecretKey) -> PublicKeyBytes {
    public_key_bytes(&key.public_key())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn made_once_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let master = MasterKey::from_bytes([5; 32]);
        assert!(store
            .read_blocking(|c| secret(c, &master))
            .unwrap()
            .is_none());
        let a = store
            .write_blocking(|tx| Ok(get_or_create(tx, &master).map(|k| public(&k))))
            .unwrap()
            .unwrap();
        let b = store
            .read_blocking(|c| secret(c, &master))
            .unwrap()
            .map(|k| public(&k))
            .unwrap();
        assert_eq!(a, b, "made once");
        let other = MasterKey::from_bytes([6; 32]);
        assert!(store.read_blocking(|c| secret(c, &other)).is_err());
    }
}
