//! Master key rotation (`latchkey admin rotate-key`, daemon stopped): the registry file re-keyed
//! and every sealed secret re-sealed under a new master key, so that a crash at any point leaves
//! a registry that one of the two keys opens entirely.
//!
//! The new key is written to `master.key.new` first. The registry is copied, and the copy
//! re-sealed (one transaction) and re-keyed; only then is it renamed over the registry, and
//! `master.key.new` renamed over `master.key` last. On start (`datadir::open_locked`), a registry
//! the key does not open, beside a `master.key.new`, is one whose rotation stopped between the
//! two renames: the new key opens it and is moved into place. A `master.key.new` beside a
//! registry the old key opens is from a rotation that stopped before the registry was replaced,
//! and is removed.
//!
//! Sealed secrets (every caller of `MasterKey::seal`): each device's `totp_sealed`, and in `meta`
//! the key check, `gateway_signing_key` and `gateway_door_key`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{Connection, Transaction};

use crate::crypto::{KeySource, MasterKey};
use crate::datadir::{self, Lock, DB_FILE};
use crate::registry::{totp_aad, DeviceId};
use crate::store::encryption::{self, FileKey};
use crate::store::{meta_get, StoreError};

/// The new key, until the rotation is complete.
pub const NEW_KEY_FILE: &str = "master.key.new";
/// The registry's re-keyed copy, until it replaces the registry.
const COPY_SUFFIX: &str = ".rotating";
/// Test builds only: `latchkey admin rotate-key` stops for good at the step this names, so
/// that a test can kill it there.
#[cfg(debug_assertions)]
const PAUSE_ENV: &str = "LATCHKEY_TEST_ROTATION_PAUSE";

/// The `meta` rows sealed under the master key, with their associated data.
const SEALED_META: [(&str, &str); 3] = [
    ("key_check", datadir::KEY_CHECK_AAD),
    (crate::nodes::signing::META_KEY, crate::nodes::signing::AAD),
    (
        crate::grants::doorkey::META_KEY,
        crate::grants::doorkey::AAD,
    ),
];

/// What a finished rotation left to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotated {
    /// The new key is in `master.key`.
    KeyFile(PathBuf),
    /// The key comes from a systemd credential, which this process cannot replace: the new key
    /// is in this file until the owner installs it as the credential.
    InstallCredential(PathBuf),
}

/// Rotates the master key of the registry in `data_dir`. Fails, changing nothing, while any
/// other latchkey process has the registry open.
pub fn rotate(data_dir: &Path, credentials_dir: Option<&Path>) -> anyhow::Result<Rotated> {
    let lock = datadir::lock(data_dir, Lock::Exclusive)?;
    let _relock = lock
        .try_clone()
        .context("cannot hold the data dir's lock")?;
    // `_relock` holds the lock on after the store (which keeps `lock`) is closed.
    // Opening brings the registry up to date and finishes or discards an earlier rotation.
    let (store, old, source) = datadir::open_locked(data_dir, credentials_dir, lock)?;
    let db = store.path().to_owned();
    // The last handle checkpoints the WAL into the file and removes it.
    drop(store);
    let wal = wal_of(&db);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        anyhow::bail!(
            "{} is still there after closing the registry",
            wal.display()
        );
    }

    let pending = data_dir.join(NEW_KEY_FILE);
    remove_if_there(&pending)?;
    let new = MasterKey::generate()?;
    new.write_new(&pending)?;
    encryption::sync_dir(&pending)?;
    pause("new-key-written");

    let copy = copy_path(&db);
    remove_copy(&copy)?;
    std::fs::copy(&db, &copy).with_context(|| format!("cannot copy {}", db.display()))?;
    pause("copied");

    {
        let mut conn = Connection::open(&copy)?;
        encryption::apply_key(&conn, &FileKey::from_master(&old), &copy)?;
        // Re-keying rewrites every page; in rollback-journal mode that is one transaction.
        conn.pragma_update(None, "journal_mode", "DELETE")?;
        let tx = conn.transaction()?;
        reseal_all(&tx, &old, &new)?;
        tx.commit()?;
        pause("resealed");
        encryption::rekey(&conn, &FileKey::from_master(&new), &copy)?;
    }
    // Proof before it replaces anything: the new key opens the copy.
    {
        let conn = Connection::open(&copy)?;
        encryption::apply_key(&conn, &FileKey::from_master(&new), &copy)?;
    }
    std::fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", copy.display()))?;
    pause("rekeyed");

    std::fs::rename(&copy, &db).with_context(|| format!("cannot replace {}", db.display()))?;
    encryption::sync_dir(&db)?;
    pause("registry-replaced");

    adopt_new_key(&pending, &source)?;
    Ok(match source {
        KeySource::Credential(_) => Rotated::InstallCredential(pending),
        KeySource::DataDir(p) | KeySource::Created(p) => Rotated::KeyFile(p),
    })
}

/// Re-seals every sealed secret from `old` to `new`, inside `tx`.
fn reseal_all(tx: &Transaction<'_>, old: &MasterKey, new: &MasterKey) -> Result<usize, StoreError> {
    let reseal = |sealed: &[u8], aad: &str| -> Result<Vec<u8>, StoreError> {
        let plain = old
            .open(sealed, aad)
            .map_err(|_| StoreError::Corrupt("a sealed secret does not open under the old key"))?;
        new.seal(plain.expose(), aad)
            .map_err(|_| StoreError::Corrupt("a secret could not be sealed"))
    };
    let mut n = 0;
    for (key, aad) in SEALED_META {
        let Some(hex) = meta_get(tx, key)? else {
            continue;
        };
        let sealed = data_encoding::HEXLOWER
            .decode(hex.as_bytes())
            .map_err(|_| StoreError::Corrupt("a sealed meta value"))?;
        let again = data_encoding::HEXLOWER.encode(&reseal(&sealed, aad)?);
        tx.execute("UPDATE meta SET value = ?2 WHERE key = ?1", [key, &again])?;
        n += 1;
    }
    let devices: Vec<(String, Vec<u8>)> = tx
        .prepare("SELECT id, totp_sealed FROM devices")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, sealed) in devices {
        let device = DeviceId::parse(&id).ok_or(StoreError::Corrupt("a device id"))?;
        let again = reseal(&sealed, &totp_aad(&device))?;
        tx.execute(
            "UPDATE devices SET totp_sealed = ?2 WHERE id = ?1",
            rusqlite::params![id, again],
        )?;
        n += 1;
    }
    Ok(n)
}

/// The registry opened under the new key: that key takes the old one's place (the last step of
/// a rotation, or of one interrupted after it replaced the registry).
pub(crate) fn adopt_new_key(pending: &Path, source: &KeySource) -> anyhow::Result<()> {
    match source {
        KeySource::DataDir(key) | KeySource::Created(key) => {
            std::fs::rename(pending, key).with_context(|| {
                format!("cannot move {} to {}", pending.display(), key.display())
            })?;
            encryption::sync_dir(key)?;
            tracing::info!(path = %key.display(), "the registry is under the new master key");
        }
        KeySource::Credential(cred) => tracing::warn!(
            new_key = %pending.display(),
            credential = %cred.display(),
            "the registry is under the new master key in {NEW_KEY_FILE}: install it as the \
             latchkey.key credential, then delete it"
        ),
    }
    Ok(())
}

/// `key` opened the registry: a `master.key.new` beside it is either that same key (installed
/// as the systemd credential after a rotation) or from a rotation that stopped before replacing
/// the registry, as is a leftover copy. Either way it is no longer needed.
pub(crate) fn discard_unfinished(
    data_dir: &Path,
    pending: &Path,
    key: &MasterKey,
) -> anyhow::Result<()> {
    let copy = copy_path(&data_dir.join(DB_FILE));
    let had_copy = copy.exists();
    remove_copy(&copy)?;
    let installed = pending.exists() && MasterKey::read(pending).is_ok_and(|k| k.same_as(key));
    if installed {
        remove_if_there(pending)?;
        tracing::info!("the new master key is installed; removed {NEW_KEY_FILE}");
    } else if pending.exists() || had_copy {
        remove_if_there(pending)?;
        tracing::warn!(
            "a master key rotation had stopped before it replaced the registry; it stays under \
             the current key (run `latchkey admin rotate-key` again)"
        );
    }
    Ok(())
}

fn copy_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(COPY_SUFFIX);
    PathBuf::from(name)
}

fn wal_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn remove_copy(copy: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let mut p = copy.as_os_str().to_owned();
        p.push(suffix);
        remove_if_there(Path::new(&p))?;
    }
    Ok(())
}

fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

fn pause(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var(PAUSE_ENV).is_ok_and(|s| s == step) {
        eprintln!("rotation paused at {step}");
        loop {
            std::thread::park();
        }
    }
    let _ = step;
}
