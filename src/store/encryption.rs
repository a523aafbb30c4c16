//! The registry file encrypted as a whole: SQLite3 Multiple Ciphers (ChaCha20-Poly1305 per page,
//! WAL frames included) under a raw 256-bit key derived from the master key, so opening costs
//! no passphrase KDF. A plain database left by an older version is encrypted in place on first
//! open: copied with `VACUUM INTO`, the copy keyed, synced and renamed over the original, so a
//! crash at any point leaves either the old plain file or the new encrypted one.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use zeroize::Zeroizing;

use super::StoreError;
use crate::crypto::MasterKey;

/// What every plain SQLite file starts with; an encrypted one starts with a random salt.
const PLAIN_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// HKDF info for the registry's file key: only this file is ever keyed with it.
const KEY_INFO: &str = "latchkey/registry";

/// The registry's file key, derived from the master key. Never printed.
pub struct FileKey(Zeroizing<[u8; 32]>);

impl FileKey {
    pub fn from_master(master: &MasterKey) -> Self {
        Self(master.derive(KEY_INFO))
    }

    /// `raw:` + hex: SQLite3 Multiple Ciphers takes it as the key itself, skipping its KDF.
    fn pragma_value(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "'raw:{}'",
            data_encoding::HEXLOWER.encode(self.0.as_slice())
        ))
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey([redacted])")
    }
}

/// Keys a freshly opened connection, then reads the schema to prove the key opens the file
/// (SQLite reads nothing until then; a wrong key shows as "file is not a database").
pub(crate) fn apply_key(conn: &Connection, key: &FileKey, path: &Path) -> Result<(), StoreError> {
    let sql = Zeroizing::new(format!("PRAGMA key = {}", key.pragma_value().as_str()));
    conn.execute_batch(&sql).map_err(|e| open_error(path, e))?;
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(e) if is_not_a_database(&e) => Err(StoreError::WrongKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(open_error(path, e)),
    }
}

/// Re-encrypts every page of the file under `key` (rollback-journal mode only).
pub(crate) fn rekey(conn: &Connection, key: &FileKey, path: &Path) -> Result<(), StoreError> {
    let sql = Zeroizing::new(format!("PRAGMA rekey = {}", key.pragma_value().as_str()));
    conn.execute_batch(&sql).map_err(|e| open_error(path, e))
}

fn is_not_a_database(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase)
}

fn open_error(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Whether `path` is an unencrypted SQLite database (a registry from before encryption).
pub fn is_plain(path: &Path) -> Result<bool, StoreError> {
    let mut head = [0u8; 16];
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(path, "cannot read", &e)),
    };
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => return Ok(false),
            Ok(k) => n += k,
            Err(e) => return Err(io_error(path, "cannot read", &e)),
        }
    }
    Ok(&head == PLAIN_MAGIC)
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        message: format!("{what} {}: {e}", path.display()),
    }
}

/// The temporary copy a migration writes; a leftover one is from an interrupted migration.
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".encrypting");
    PathBuf::from(name)
}

fn wal_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Encrypts a plain registry in place, if `path` is one. Atomic: until the final rename the
/// plain file is untouched (its WAL checkpointed into it first, so nothing lives only in the
/// WAL); after it, the encrypted copy is complete and synced.
pub fn encrypt_if_plain(path: &Path, key: &FileKey) -> Result<bool, StoreError> {
    let temp = temp_path(path);
    remove_leftover(&temp)?;
    if !is_plain(path)? {
        return Ok(false);
    }
    let journal = {
        let mut j = temp.as_os_str().to_owned();
        j.push("-journal");
        PathBuf::from(j)
    };
    {
        let plain = Connection::open(path).map_err(|e| open_error(path, e))?;
        plain
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| open_error(path, e))?;
        // Everything into the main file, so the copy below and the rename lose nothing.
        plain
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(|e| open_error(path, e))?;
        // Made empty and private first: SQLite would create it with the umask's mode.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error(&temp, "cannot create", &e))?;
        let target = temp
            .to_str()
            .ok_or_else(|| io_error(&temp, "cannot use", &std::io::Error::other("not UTF-8")))?;
        plain
            .execute("VACUUM INTO ?1", [target])
            .map_err(|e| open_error(path, e))?;
    }
    // The plain file's last connection is closed: a WAL left now belongs to another process.
    if std::fs::metadata(wal_path(path)).is_ok_and(|m| m.len() > 0) {
        remove_leftover(&temp)?;
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "another process has the registry open; stop it before the first start \
                      of this version (which encrypts the registry)"
                .into(),
        });
    }
    {
        let copy = Connection::open(&temp).map_err(|e| open_error(&temp, e))?;
        // Rekeying a plain database works in rollback-journal mode only.
        copy.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| open_error(&temp, e))?;
        rekey(&copy, key, &temp)?;
    }
    if is_plain(&temp)? {
        remove_leftover(&temp)?;
        return Err(StoreError::Open {
            path: path.to_owned(),
            message: "the encrypted copy of the registry came out unencrypted".into(),
        });
    }
    File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(&temp, "cannot sync", &e))?;
    let _ = std::fs::remove_file(&journal);
    std::fs::rename(&temp, path).map_err(|e| io_error(path, "cannot replace", &e))?;
    sync_dir(path)?;
    tracing::info!(path = %path.display(), "encrypted the registry in place (it was a plain SQLite file)");
    Ok(true)
}

/// Removes an interrupted migration's copy and its journal; the plain original still stands.
fn remove_leftover(temp: &Path) -> Result<(), StoreError> {
    let mut journal = temp.as_os_str().to_owned();
    journal.push("-journal");
    for p in [temp.to_owned(), PathBuf::from(journal)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&p, "cannot remove", &e)),
        }
    }
    Ok(())
}

/// Makes a rename in the file's directory durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "cannot sync", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{meta_get, Store};

    fn master(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn nothing_readable_in_the_file_or_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.db");
        let store = Store::open(&path, &master(1)).unwrap();
        store
            .write_blocking(|tx| {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('needle-key', 'needle-value')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        // Still open: the row is in the WAL, not yet checkpointed.
        let wal = std::fs::read(wal_path(&path)).unwrap();
        assert!(!wal.is_empty());
        assert!(!contains(&wal, "needle"));
        drop(store);
        let file = std::fs::read(&path).unwrap();
        assert_ne!(&file[..16], PLAIN_MAGIC);
        assert!(!contains(&file, "needle"));
        assert!(!contains(&file, "CREATE TABLE"));
        let again = Store::open(&path, &master(1)).unwrap();
        assert_eq!(
            again
                .read_blocking(|c| meta_get(c, "needle-key"))
                .unwrap()
                .as_deref(),
            Some("needle-value")
        );
    }

    #[test]
    fn a_wrong_key_fails_with_one_line_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.db");
        drop(Store::open(&path, &master(1)).unwrap());
        let err = Store::open(&path, &master(2)).unwrap_err();
        assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("master key does not match the registry"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        // The failed attempt changed nothing.
        Store::open(&path, &master(1)).unwrap();
    }

    #[test]
    fn a_plain_file_is_encrypted_in_place_and_an_interrupted_copy_is_redone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.db");
        {
            let plain = Connection::open(&path).unwrap();
            plain.pragma_update(None, "journal_mode", "WAL").unwrap();
            plain
                .execute_batch("CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('needle-row');")
                .unwrap();
        }
        assert!(is_plain(&path).unwrap());
        // A crash mid-migration left a half-written copy: it is thrown away and redone.
        std::fs::write(temp_path(&path), b"half a copy").unwrap();
        let key = FileKey::from_master(&master(3));
        assert!(encrypt_if_plain(&path, &key).unwrap());
        assert!(!temp_path(&path).exists());
        assert!(!is_plain(&path).unwrap());
        assert!(!contains(&std::fs::read(&path).unwrap(), "needle"));
        assert!(!encrypt_if_plain(&path, &key).unwrap(), "only once");
        let conn = Connection::open(&path).unwrap();
        apply_key(&conn, &key, &path).unwrap();
        let x: String = conn.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, "needle-row");
    }
}
