//! The master key and sealing of secrets at rest.
//!
//! Secrets that must be recoverable (TOTP seeds) are sealed with XChaCha20-Poly1305 under a
//! master key that never enters the database. The row's identity is the associated data, so a
//! sealed value copied into another row fails to open.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::secret::{random_array, RandomError, SecretBytes};

pub const MASTER_KEY_LEN: usize = 32;
const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// Longest master-key file we read: 64 hex chars plus a newline, with slack.
const MAX_KEY_FILE: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("master key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "master key {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "master key {path} must hold exactly 32 bytes (raw, or 64 hex digits); found {len} bytes"
    )]
    Length { path: PathBuf, len: usize },
    #[error(
        "master key {path} is missing, but the database beside it holds data sealed under it; \
         restore master.key from your backup (or provide it as the systemd credential \
         latchkey.key); no new key was created"
    )]
    Missing { path: PathBuf },
    #[error(transparent)]
    Random(#[from] RandomError),
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open under this master key and row")]
    Open,
    #[error("sealing failed")]
    Seal,
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Where the master key came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Credential(PathBuf),
    DataDir(PathBuf),
    Created(PathBuf),
}

pub struct MasterKey {
    key: Zeroizing<[u8; MASTER_KEY_LEN]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self {
            key: Zeroizing::new(bytes),
        }
    }

    /// systemd's `$CREDENTIALS_DIRECTORY/latchkey.key` when present, else
    /// `<data_dir>/master.key`, created 0600 on first run. `may_create` is false when the
    /// database already holds sealed data: a new key could never open it, so a missing key is
    /// an error, and nothing is written.
    pub fn load(
        credentials_dir: Option<&Path>,
        data_dir: &Path,
        may_create: bool,
    ) -> Result<(Self, KeySource), KeyError> {
        if let Some(dir) = credentials_dir {
            let path = dir.join("latchkey.key");
            if path.exists() {
                return Ok((read_key_file(&path)?, KeySource::Credential(path)));
            }
        }
        let path = data_dir.join("master.key");
        if !may_create {
            return match read_key_file(&path) {
                Err(KeyError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Err(KeyError::Missing { path })
                }
                other => other.map(|k| (k, KeySource::DataDir(path))),
            };
        }
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut f) => {
                let key = random_array::<MASTER_KEY_LEN>()?;
                let io = |source| KeyError::Io {
                    path: path.clone(),
                    source,
                };
                f.write_all(&key).map_err(io)?;
                f.sync_all().map_err(io)?;
                Ok((Self::from_bytes(key), KeySource::Created(path)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((read_key_file(&path)?, KeySource::DataDir(path)))
            }
            Err(source) => Err(KeyError::Io { path, source }),
        }
    }

    /// A new key from the OS CSPRNG (for `latchkey admin rotate-key`).
    pub fn generate() -> Result<Self, RandomError> {
        let mut key = random_array::<MASTER_KEY_LEN>()?;
        let out = Self::from_bytes(key);
        key.zeroize();
        Ok(out)
    }

    /// Reads a key file (raw 32 bytes or 64 hex digits, mode 0600 or stricter).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        read_key_file(path)
    }

    /// Writes the key to a new file `path` (0600, raw bytes), synced: `path` must not exist.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(self.key.as_slice()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Whether both are the same key (constant time).
    pub fn same_as(&self, other: &Self) -> bool {
        crate::secret::ct_eq(self.key.as_slice(), other.key.as_slice())
    }

    /// A purpose-specific subkey, so the master key itself only ever keys HKDF.
    pub fn derive(&self, info: &str) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(b"latchkey master key v1"), self.key.as_slice());
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        let _ = hk.expand(info.as_bytes(), out.as_mut_slice());
        out
    }

    /// Seals `plain`; `aad` names the row (table and id) the value belongs to.
    pub fn seal(&self, plain: &[u8], aad: &str) -> Result<Vec<u8>, SealError> {
        let sealing_key = self.derive("seal");
        let cipher = XChaCha20Poly1305::new(sealing_key.as_slice().into());
        let nonce = random_array::<NONCE_LEN>()?;
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &str) -> Result<SecretBytes, SealError> {
        let (version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if *version != SEAL_VERSION || rest.len() < NONCE_LEN + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let sealing_key = self.derive("seal");
        let cipher = XChaCha20Poly1305::new(sealing_key.as_slice().into());
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map(SecretBytes::new)
            .map_err(|_| SealError::Open)
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut raw = Zeroizing::new(Vec::new());
    fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let len = raw.len();
    let length_err = || KeyError::Length {
        path: path.to_owned(),
        len,
    };
    if let Ok(mut key) = <[u8; MASTER_KEY_LEN]>::try_from(raw.as_slice()) {
        let out = MasterKey::from_bytes(key);
        key.zeroize();
        return Ok(out);
    }
    // Also accept the hex form, which is easier to paste into `systemd-creds encrypt`.
    let text = std::str::from_utf8(&raw).map_err(|_| length_err())?.trim();
    let decoded = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .map_err(|_| length_err())?,
    );
    let mut key = <[u8; MASTER_KEY_LEN]>::try_from(decoded.as_slice()).map_err(|_| length_err())?;
    let out = MasterKey::from_bytes(key);
    key.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_key_0600_and_reloads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, src) = MasterKey::load(None, dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::Created(_)));
        let mode = fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (k2, src) = MasterKey::load(None, dir.path(), true).unwrap();
        assert!(matches!(src, KeySource::DataDir(_)));
        let sealed = k1.seal(b"secret", "devices/1").unwrap();
        assert_eq!(k2.open(&sealed, "devices/1").unwrap().expose(), b"secret");
    }

    #[test]
    fn refuses_readable_or_short_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        fs::write(&path, [7u8; 32]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load(None, dir.path(), true).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"));
        fs::write(&path, [7u8; 31]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = MasterKey::load(None, dir.path(), true).unwrap_err();
        assert!(matches!(err, KeyError::Length { len: 31, .. }), "{err}");
    }

    #[test]
    fn never_creates_a_key_when_told_not_to() {
        let dir = tempfile::tempdir().unwrap();
        let err = MasterKey::load(None, dir.path(), false).unwrap_err();
        assert!(matches!(err, KeyError::Missing { .. }), "{err}");
        assert!(!dir.path().join("master.key").exists());
        MasterKey::load(None, dir.path(), true).unwrap();
        let (_, src) = MasterKey::load(None, dir.path(), false).unwrap();
        assert!(matches!(src, KeySource::DataDir(_)));
    }

    #[test]
    fn credential_dir_wins_and_accepts_hex() {
        let creds = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let path = creds.path().join("latchkey.key");
        fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        let (k, src) = MasterKey::load(Some(creds.path()), data.path(), true).unwrap();
        assert_eq!(src, KeySource::Credential(path));
        assert!(!data.path().join("master.key").exists());
        let same = MasterKey::from_bytes([0xab; 32]);
        let sealed = k.seal(b"x", "a").unwrap();
        assert_eq!(same.open(&sealed, "a").unwrap().expose(), b"x");
    }

    #[test]
    fn sealed_value_is_bound_to_its_row_and_key() {
        let k = MasterKey::from_bytes([1; 32]);
        let sealed = k.seal(b"totp seed", "devices/a").unwrap();
        assert!(matches!(k.open(&sealed, "devices/b"), Err(SealError::Open)));
        let other = MasterKey::from_bytes([2; 32]);
        assert!(matches!(
            other.open(&sealed, "devices/a"),
            Err(SealError::Open)
        ));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            k.open(&tampered, "devices/a"),
            Err(SealError::Open)
        ));
        assert!(matches!(
            k.open(&sealed[..10], "devices/a"),
            Err(SealError::Malformed)
        ));
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
    }
}
