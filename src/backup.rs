//! Backups of the registry (`latchkey backup FILE`, the daemon's daily ones) and putting one
//! back (`latchkey restore FILE`, daemon stopped).
//!
//! A backup file is a header line, `latchkey-backup 1\n` (the format version), followed by a
//! SQLite3 Multiple Ciphers database encrypted under the registry's own file key (so the master
//! key that opens the registry opens its backups, and nothing in the file is readable without
//! it). Inside, `meta` holds the gateway id as the registry does, plus `backup_format` and
//! `backup_created_at`. The copy is made with SQLite's backup API in a single step: one read
//! transaction, so it holds exactly what was committed when it began while writers carry on
//! in the WAL.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::clock::UnixTime;
use crate::crypto::MasterKey;
use crate::datadir::{self, Lock, DB_FILE};
use crate::store::encryption::{apply_key, sync_dir, FileKey};
use crate::store::{meta_get, Store, StoreError};

/// The format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;
const MAGIC: &str = "latchkey-backup";
/// The header line is short; anything longer is not ours.
const MAX_HEADER: u64 = 64;
/// Daily backups are `latchkey-<UTC time>.backup` in this directory of the data dir.
const DIR: &str = "backups";
const DAILY_PREFIX: &str = "latchkey-";
const DAILY_SUFFIX: &str = ".backup";
const STAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// The first line of every backup file.
pub fn header() -> Vec<u8> {
    format!("{MAGIC} {FORMAT}\n").into_bytes()
}

/// Where the daemon keeps its daily backups and makes its snapshots.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// A consistent copy of the registry in a temporary file, removed when this is dropped.
pub struct Snapshot(PathBuf);

impl Snapshot {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(suffixed(&self.0, "-journal"));
    }
}

/// Copies the registry behind `store` into a new file in `dir` (created 0700), encrypted under
/// the same file key, and stamps it with the format and `now`.
pub fn snapshot(
    store: &Store,
    master: &MasterKey,
    now: UnixTime,
    dir: &Path,
) -> anyhow::Result<Snapshot> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let rand = crate::secret::random_array::<8>()?;
    let snap = Snapshot(dir.join(format!(
        ".snapshot-{}",
        data_encoding::HEXLOWER.encode(&rand)
    )));
    // Made private first: SQLite would create it with the umask's mode.
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(snap.path())
        .with_context(|| format!("cannot create {}", snap.path().display()))?;
    let key = FileKey::from_master(master);
    let source = Connection::open_with_flags(
        store.path(),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(Duration::from_secs(5))?;
    apply_key(&source, &key, store.path())?;
    let mut copy = Connection::open(snap.path())?;
    apply_key(&copy, &key, snap.path())?;
    {
        let backup = Backup::new(&source, &mut copy)?;
        // All pages in one step: one read transaction, so one consistent state. Busy only
        // while another connection holds an exclusive lock (a checkpoint's last moment).
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                StepResult::Busy | StepResult::Locked | StepResult::More if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => bail!("the registry stayed locked; the backup was not made"),
            }
        }
    }
    // A self-contained file: no WAL beside it.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    copy.execute_batch(&format!(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('backup_format', '{FORMAT}');
         INSERT OR REPLACE INTO meta (key, value) VALUES ('backup_created_at', '{now}');"
    ))?;
    drop(copy);
    File::open(snap.path())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", snap.path().display()))?;
    Ok(snap)
}

/// Writes the backup file `target` (mode 0600) from a snapshot: a temporary file beside it,
/// synced, then renamed, so `target` is either absent, the old file or the whole backup.
pub fn write(snapshot: &Snapshot, target: &Path) -> anyhow::Result<u64> {
    let body = File::open(snapshot.path())
        .with_context(|| format!("cannot read {}", snapshot.path().display()))?;
    write_atomically(target, (&header()[..]).chain(body), None)
}

/// Writes `bytes` bytes from `from` (the daemon's answer) to `target` as [`write`] does, after
/// checking they start as a backup does.
pub fn receive(from: impl Read, bytes: u64, target: &Path) -> anyhow::Result<u64> {
    let mut from = BufReader::new(from.take(bytes));
    let head = from.fill_buf().context("cannot read the daemon's answer")?;
    if !head.starts_with(MAGIC.as_bytes()) {
        bail!("the daemon's answer is not a backup");
    }
    write_atomically(target, from, Some(bytes))
}

fn write_atomically(
    target: &Path,
    mut from: impl Read,
    expect: Option<u64>,
) -> anyhow::Result<u64> {
    let name = target
        .file_name()
        .with_context(|| format!("{} is not a file name", target.display()))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let rand = crate::secret::random_array::<6>()?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        data_encoding::HEXLOWER.encode(&rand)
    ));
    let written = (|| -> anyhow::Result<u64> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot create a file in {}", dir.display()))?;
        let n = std::io::copy(&mut from, &mut out)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        if expect.is_some_and(|e| e != n) {
            bail!("the backup arrived cut short ({n} bytes); nothing was written");
        }
        out.flush()?;
        out.sync_all()
            .with_context(|| format!("cannot sync {}", temp.display()))?;
        std::fs::rename(&temp, target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        Ok(n)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    let n = written?;
    sync_dir(target)?;
    Ok(n)
}

/// One backup into the data dir's `backups/` as `latchkey-<now>.backup`; older ones beyond the
/// newest `keep` are removed. Returns the new file.
pub fn daily(
    store: &Store,
    master: &MasterKey,
    now: UnixTime,
    keep: usize,
) -> anyhow::Result<PathBuf> {
    let data_dir = store
        .path()
        .parent()
        .context("the registry has no directory")?;
    let dir = dir(data_dir);
    let snap = snapshot(store, master, now, &dir)?;
    let stamp = time::OffsetDateTime::from_unix_timestamp(now)?.format(STAMP)?;
    let target = dir.join(format!("{DAILY_PREFIX}{stamp}{DAILY_SUFFIX}"));
    write(&snap, &target)?;
    for old in prune(&dailies(&dir)?, keep) {
        std::fs::remove_file(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(target)
}

/// The daily backups in `dir` with their times, oldest first.
pub fn dailies(dir: &Path) -> anyhow::Result<Vec<(UnixTime, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        if let Some(t) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(daily_time)
        {
            out.push((t, path));
        }
    }
    out.sort();
    Ok(out)
}

fn daily_time(name: &str) -> Option<UnixTime> {
    let stamp = name
        .strip_prefix(DAILY_PREFIX)?
        .strip_suffix(DAILY_SUFFIX)?;
    let t = time::PrimitiveDateTime::parse(stamp, STAMP).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

/// Of `backups` (oldest first), those beyond the newest `keep`.
fn prune(backups: &[(UnixTime, PathBuf)], keep: usize) -> Vec<PathBuf> {
    let extra = backups.len().saturating_sub(keep);
    backups[..extra].iter().map(|(_, p)| p.clone()).collect()
}

/// Whether a daily backup is due: none yet, or the newest is `interval` old.
pub fn due(newest: Option<UnixTime>, now: UnixTime, interval: u64) -> bool {
    let interval = i64::try_from(interval).unwrap_or(i64::MAX);
    newest.is_none_or(|t| now.saturating_sub(t) >= interval)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    pub gateway_id: String,
    pub created_at: UnixTime,
    /// The registry it replaced, kept aside.
    pub aside: Option<PathBuf>,
}

/// Puts the backup `file` in place of the registry in `data_dir` (daemon stopped). Checks
/// first, changing nothing if any check fails: the header's format, that the current master key
/// opens it, that it is this gateway's (when the data dir has a registry), and SQLite's
/// integrity check. The registry it replaces stays as `latchkey.db.before-restore-<time>`.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    credentials_dir: Option<&Path>,
    now: UnixTime,
) -> anyhow::Result<Restored> {
    let lock = datadir::lock(data_dir, Lock::Exclusive)?;
    let mut input = BufReader::new(
        File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
    );
    check_header(&mut input, file)?;

    let db = data_dir.join(DB_FILE);
    let has_registry = std::fs::metadata(&db).is_ok_and(|m| m.len() > 0);
    let (master, current) = if has_registry {
        let held = lock
            .try_clone()
            .context("cannot hold the data dir's lock")?;
        let (store, master, _) = datadir::open_locked(data_dir, credentials_dir, held)?;
        let id = store.read_blocking(|c| meta_get(c, "gateway_id"))?;
        // Closing checkpoints the WAL: the file alone is the registry set aside below.
        drop(store);
        (master, id)
    } else {
        let (master, _) = MasterKey::load(credentials_dir, data_dir, false).map_err(|e| {
            anyhow::anyhow!(
                "{e}; restoring needs the master key the backup was made under, as \
                 {}/master.key or the latchkey.key credential",
                data_dir.display()
            )
        })?;
        (master, None)
    };

    let temp = suffixed(&db, ".restoring");
    let _ = std::fs::remove_file(&temp);
    let checked = (|| -> anyhow::Result<(String, UnixTime)> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot create {}", temp.display()))?;
        std::io::copy(&mut input, &mut out)
            .with_context(|| format!("cannot copy {}", file.display()))?;
        out.sync_all()?;
        drop(out);
        let stamp = check_copy(&temp, file, &master, current.as_deref())?;
        File::open(&temp).and_then(|f| f.sync_all())?;
        Ok(stamp)
    })();
    let (gateway_id, created_at) = match checked {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(suffixed(&temp, "-journal"));
            return Err(e);
        }
    };
    let aside = if has_registry {
        let stamp = time::OffsetDateTime::from_unix_timestamp(now)?.format(STAMP)?;
        let aside = suffixed(&db, &format!(".before-restore-{stamp}"));
        // A second name for the old registry, then one atomic rename over the first: at every
        // moment `latchkey.db` is the old registry or the restored one.
        std::fs::hard_link(&db, &aside)
            .with_context(|| format!("cannot keep the registry aside as {}", aside.display()))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&temp, &db).with_context(|| format!("cannot replace {}", db.display()))?;
    sync_dir(&db)?;
    drop(lock);
    Ok(Restored {
        gateway_id,
        created_at,
        aside,
    })
}

fn check_header(input: &mut impl BufRead, file: &Path) -> anyhow::Result<()> {
    let mut line = Vec::new();
    input
        .take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let text = std::str::from_utf8(&line).unwrap_or_default();
    let version = text
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        None => bail!("{} is not a latchkey backup", file.display()),
        Some(v) if v > FORMAT => bail!(
            "{} is a backup in format {v}, newer than this latchkey reads ({FORMAT}); restore it \
             with a newer latchkey",
            file.display()
        ),
        Some(_) => Ok(()),
    }
}

/// Checks the restored copy at `temp`: the key opens it, it is a backup of `current` (if any),
/// its schema is not newer than ours, and it passes `PRAGMA integrity_check`. Removes the
/// backup's own stamps; returns its gateway id and time.
fn check_copy(
    temp: &Path,
    file: &Path,
    master: &MasterKey,
    current: Option<&str>,
) -> anyhow::Result<(String, UnixTime)> {
    let conn = Connection::open(temp)?;
    match apply_key(&conn, &FileKey::from_master(master), temp) {
        Ok(()) => {}
        Err(StoreError::WrongKey { .. }) => bail!(
            "{} was made under another master key: the current one does not open it (restore \
             the master key it was made with first)",
            file.display()
        ),
        Err(e) => return Err(e.into()),
    }
    let stamp = |key: &str| -> anyhow::Result<Option<String>> {
        meta_get(&conn, key).map_err(anyhow::Error::from)
    };
    let (Some(_), Some(created)) = (stamp("backup_format")?, stamp("backup_created_at")?) else {
        bail!(
            "{} is not a latchkey backup (it has no backup stamp)",
            file.display()
        );
    };
    let created_at: UnixTime = created.parse().unwrap_or_default();
    let gateway_id =
        stamp("gateway_id")?.with_context(|| format!("{} holds no gateway id", file.display()))?;
    if let Some(current) = current {
        if current != gateway_id {
            bail!(
                "{} is a backup of another gateway ({gateway_id}); this data directory's \
                 registry is gateway {current}",
                file.display()
            );
        }
    }
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if schema > crate::store::SCHEMA_VERSION {
        bail!(
            "{} was made by a newer latchkey (schema {schema}); restore it with that version",
            file.display()
        );
    }
    if let Err(problem) = crate::store::integrity(&conn)? {
        bail!(
            "{} fails SQLite's integrity check ({problem})",
            file.display()
        );
    }
    conn.execute(
        "DELETE FROM meta WHERE key IN ('backup_format', 'backup_created_at')",
        [],
    )?;
    Ok((gateway_id, created_at))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_names_parse_and_pruning_keeps_the_newest() {
        assert_eq!(
            daily_time("latchkey-20260113T104000Z.backup"),
            Some(1_768_300_800)
        );
        assert_eq!(daily_time("latchkey-x.backup"), None);
        assert_eq!(daily_time(".snapshot-00"), None);
        let all: Vec<(UnixTime, PathBuf)> = (0..5)
            .map(|i| (i, PathBuf::from(format!("b{i}"))))
            .collect();
        assert_eq!(
            prune(&all, 3),
            vec![PathBuf::from("b0"), PathBuf::from("b1")]
        );
        assert!(prune(&all, 7).is_empty());
    }

    #[test]
    fn a_backup_is_due_once_an_interval_has_passed() {
        assert!(due(None, 100, 86_400));
        assert!(!due(Some(100), 100 + 86_399, 86_400));
        assert!(due(Some(100), 100 + 86_400, 86_400));
    }

    #[test]
    fn headers_are_checked() {
        let p = Path::new("f");
        check_header(&mut &b"latchkey-backup 1\nrest"[..], p).unwrap();
        let e = check_header(&mut &b"SQLite format 3\0"[..], p).unwrap_err();
        assert!(e.to_string().contains("not a latchkey backup"), "{e}");
        let e = check_header(&mut &b"latchkey-backup 9\n"[..], p).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
    }

    #[test]
    fn snapshot_write_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let key = MasterKey::from_bytes([5; 32]);
        std::fs::write(data.join("master.key"), [5u8; 32]).unwrap();
        std::fs::set_permissions(
            data.join("master.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let store = Store::open(&data.join(DB_FILE), &key).unwrap();
        store
            .write_blocking(|tx| {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('needle', 'in-backup')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        let snap = snapshot(&store, &key, 1_000, &super::dir(&data)).unwrap();
        let target = dir.path().join("b.backup");
        write(&snap, &target).unwrap();
        drop(snap);
        let bytes = std::fs::read(&target).unwrap();
        assert!(bytes.starts_with(b"latchkey-backup 1\n"));
        assert!(!bytes.windows(6).any(|w| w == b"needle"));
        store
            .write_blocking(|tx| {
                tx.execute("UPDATE meta SET value = 'after' WHERE key = 'needle'", [])?;
                Ok(())
            })
            .unwrap();
        drop(store);
        let r = restore(&target, &data, None, 2_000).unwrap();
        assert_eq!(r.created_at, 1_000);
        assert!(r.aside.unwrap().exists());
        let again = Store::open(&data.join(DB_FILE), &key).unwrap();
        let v = again.read_blocking(|c| meta_get(c, "needle")).unwrap();
        assert_eq!(v.as_deref(), Some("in-backup"));
        assert_eq!(
            again
                .read_blocking(|c| meta_get(c, "backup_format"))
                .unwrap(),
            None
        );
    }
}
