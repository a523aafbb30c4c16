//! The data directory: private to the service user (0700, every file 0600), and never taken
//! for a fresh start while it holds the remains of a gateway.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

use crate::crypto::{KeySource, MasterKey};
use crate::store::{self, Store};

pub const DB_FILE: &str = "latchkey.db";
const WAL_FILE: &str = "latchkey.db-wal";
const SHM_FILE: &str = "latchkey.db-shm";
/// A SQLite database is never shorter than its 100-byte header.
const SQLITE_HEADER: u64 = 100;

/// Creates the data directory (0700) if needed and refuses one that group or others can
/// open: it holds the password hash and sealed secrets. The binary calls this before any
/// command that uses the directory (tests drive the library on temp dirs of their own).
pub fn check_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    create_data_dir(data_dir)?;
    let meta = std::fs::metadata(data_dir)
        .with_context(|| format!("cannot read data directory {}", data_dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "data directory {dir} is open to group or others (mode {mode:o}); run `chmod 700 {dir}`",
            dir = data_dir.display()
        );
    }
    Ok(())
}

fn create_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))
}

/// Creates the data directory (0700) if needed, loads the master key (`credentials_dir` first,
/// see `MasterKey::load`) and opens the registry in it, encrypted under that key. Refuses a
/// directory that holds the remains of a gateway (a master key or a WAL) without a usable
/// database: starting afresh there would silently make a new gateway. Every file the registry
/// makes is 0600 whatever the umask.
pub fn open_store(
    data_dir: &Path,
    credentials_dir: Option<&Path>,
) -> anyhow::Result<(Store, MasterKey)> {
    create_data_dir(data_dir)?;
    let lock = lock(data_dir, Lock::Shared)?;
    let (store, master, _) = open_locked(data_dir, credentials_dir, lock)?;
    Ok((store, master))
}

/// Every latchkey process that opens the registry holds this file locked shared for as long as
/// it has it open; `latchkey admin rotate-key` needs it exclusive (so: no daemon running).
const LOCK_FILE: &str = "latchkey.lock";

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    Shared,
    Exclusive,
}

/// Opens (creating, 0600) the data dir's lock file.
fn open_lock_file(data_dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::fs::File)> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path, file))
}

/// Takes the data dir's lock without waiting.
pub(crate) fn lock(data_dir: &Path, how: Lock) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let (path, file) = open_lock_file(data_dir)?;
    let op = match how {
        Lock::Shared => libc::LOCK_SH,
        Lock::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    // SAFETY: flock(2) on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::WouldBlock {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
        match how {
            Lock::Shared => anyhow::bail!(
                "a master key rotation is running on {}; wait for it to finish",
                data_dir.display()
            ),
            Lock::Exclusive => anyhow::bail!(
                "latchkey is running on {} (the daemon or another command); stop it first \
                 (systemctl stop latchkey)",
                data_dir.display()
            ),
        }
    }
    Ok(file)
}

/// Marks the data dir as served by this process, for as long as the returned file is open: an
/// OFD write lock on the lock file (Linux keeps these apart from the shared `flock` every
/// process holds), with the control socket's path as the file's content. Fails while another
/// daemon serves the directory.
pub(crate) fn mark_daemon(data_dir: &Path, socket: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let (path, mut file) = open_lock_file(data_dir)?;
    if let Err(e) = ofd_lock(&file, libc::F_OFD_SETLK) {
        if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
            anyhow::bail!(
                "another latchkey serve is running on {}; stop it first",
                data_dir.display()
            );
        }
        return Err(e).with_context(|| format!("cannot lock {}", path.display()));
    }
    // Absolute, so a CLI started from another directory finds it.
    let socket = std::path::absolute(socket)
        .with_context(|| format!("cannot resolve {}", socket.display()))?;
    file.set_len(0)
        .and_then(|()| file.write_all(socket.as_os_str().as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file)
}

/// Whether a daemon serves the data dir, as its lock file tells.
#[derive(Debug)]
pub enum Daemon {
    /// None: CLI commands open the registry themselves.
    Stopped,
    /// One does, with its control socket there.
    Running { socket: std::path::PathBuf },
    /// This user cannot read the data dir (not the service user): only the socket can tell.
    Unreadable(std::io::Error),
}

/// Looks (without taking anything) whether a daemon holds the mark of [`mark_daemon`].
pub fn daemon(data_dir: &Path) -> anyhow::Result<Daemon> {
    use std::os::unix::ffi::OsStrExt;
    let path = data_dir.join(LOCK_FILE);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No lock file: either no latchkey ever ran here, or the directory itself is
            // closed to this user (then the lock file's absence proves nothing).
            return match std::fs::read_dir(data_dir) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    Ok(Daemon::Unreadable(e))
                }
                _ => Ok(Daemon::Stopped),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(Daemon::Unreadable(e))
        }
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let held = ofd_lock(&file, libc::F_OFD_GETLK)
        .with_context(|| format!("cannot read the lock on {}", path.display()))?;
    if !held {
        return Ok(Daemon::Stopped);
    }
    let mut socket = Vec::new();
    use std::io::Read;
    (&file)
        .take(4096)
        .read_to_end(&mut socket)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Daemon::Running {
        socket: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&socket)),
    })
}

/// `F_OFD_SETLK`: takes a write lock on the whole file (Ok(true)). `F_OFD_GETLK`: whether
/// another open file holds one (nothing is taken).
fn ofd_lock(file: &std::fs::File, cmd: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `struct flock` is valid (whole file from offset 0).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl(2) with a lock command and a pointer to a flock struct we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cmd != libc::F_OFD_GETLK || fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// [`open_store`] with the data dir's lock already held (kept open as long as the store).
/// Also returns where the key came from. A registry that the key does not open, beside a
/// `master.key.new`, is one whose rotation stopped after replacing the registry: the new key
/// opens it, and takes the old one's place.
pub(crate) fn open_locked(
    data_dir: &Path,
    credentials_dir: Option<&Path>,
    lock: std::fs::File,
) -> anyhow::Result<(Store, MasterKey, KeySource)> {
    let db = data_dir.join(DB_FILE);
    refuse_remains(data_dir, &db)?;
    let may_create = may_create_key(&db)?;
    // SQLite creates the WAL and SHM files with the database file's mode.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&db)
        .with_context(|| format!("cannot create {}", db.display()))?;
    for name in [DB_FILE, WAL_FILE, SHM_FILE] {
        private(&data_dir.join(name))?;
    }
    let (master, source) = MasterKey::load(credentials_dir, data_dir, may_create)?;
    match &source {
        KeySource::Created(p) => tracing::info!(path = %p.display(), "created a new master key"),
        KeySource::DataDir(p) | KeySource::Credential(p) => {
            tracing::debug!(path = %p.display(), "master key loaded")
        }
    }
    let pending = data_dir.join(crate::rotation::NEW_KEY_FILE);
    let (store, master) = match Store::open(&db, &master) {
        Ok(store) => {
            crate::rotation::discard_unfinished(data_dir, &pending, &master)?;
            (store, master)
        }
        Err(store::StoreError::WrongKey { .. }) if pending.exists() => {
            let new = MasterKey::read(&pending)?;
            let store = Store::open(&db, &new)?;
            crate::rotation::adopt_new_key(&pending, &source)?;
            (store, new)
        }
        Err(e) => return Err(e.into()),
    };
    check_sealing_key(&store, &master)?;
    store.keep_until_closed(lock);
    Ok((store, master, source))
}

/// The associated data of `meta.key_check`, a value sealed only to prove the master key.
pub(crate) const KEY_CHECK_AAD: &str = "latchkey/meta/key-check";

/// A new master key may be made only for a registry that nothing was ever keyed or sealed
/// under: none yet, or a plain one (from before encryption) without sealed data.
fn may_create_key(db: &Path) -> anyhow::Result<bool> {
    let len = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    if len == 0 {
        return Ok(true);
    }
    if !store::encryption::is_plain(db)? {
        return Ok(false);
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("cannot open {}", db.display()))?;
    // A plain file without our tables yet holds nothing sealed either.
    Ok(!store::holds_sealed_data(&conn).unwrap_or(false))
}

/// Proves the master key is the one this registry's secrets were sealed under (the file key
/// already proved it for the file; this also covers a registry from before encryption).
fn check_sealing_key(store: &Store, key: &MasterKey) -> anyhow::Result<()> {
    const AAD: &str = KEY_CHECK_AAD;
    match store.read_blocking(|c| store::meta_get(c, "key_check"))? {
        Some(hex) => {
            let sealed = data_encoding::HEXLOWER
                .decode(hex.as_bytes())
                .unwrap_or_default();
            if key.open(&sealed, AAD).is_err() {
                anyhow::bail!(
                    "the master key does not match the secrets sealed in {}; restore the \
                     original key or start from an empty data directory",
                    store.path().display()
                );
            }
        }
        None => {
            let hex = data_encoding::HEXLOWER.encode(&key.seal(b"latchkey", AAD)?);
            store.write_blocking(|tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('key_check', ?1)",
                    [hex],
                )?;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Mode 0600 for `path` if it exists (files made by older versions under a lax umask).
fn private(path: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private (chmod 600)", path.display()))
        }
        _ => Ok(()),
    }
}

/// Fails when the database is missing or shorter than a SQLite header while files of an
/// earlier gateway lie beside it.
fn refuse_remains(data_dir: &Path, db: &Path) -> anyhow::Result<()> {
    let db_len = std::fs::metadata(db).map(|m| m.len()).ok();
    if db_len.is_some_and(|n| n >= SQLITE_HEADER) {
        return Ok(());
    }
    let remains: Vec<&str> = ["master.key", WAL_FILE]
        .into_iter()
        .filter(|f| std::fs::metadata(data_dir.join(f)).is_ok_and(|m| m.len() > 0))
        .collect();
    if remains.is_empty() {
        return Ok(());
    }
    let found = match db_len {
        None => format!("{} is missing", db.display()),
        Some(n) => format!("{} is truncated ({n} bytes)", db.display()),
    };
    anyhow::bail!(
        "{found} but {dir} still holds {remains} of an earlier gateway; restore {DB_FILE} \
         (and its -wal file) from your backup, or move the directory's files away to start a \
         new gateway",
        dir = data_dir.display(),
        remains = remains.join(" and "),
    )
}
