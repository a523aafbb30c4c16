//! The registry: one SQLite file in WAL mode, opened by the daemon and by CLI commands alike,
//! encrypted as a whole under a key derived from the master key (see `encryption`).
//!
//! rusqlite is blocking, so async callers never run it on the runtime. Writes run, one after
//! another, on a dedicated writer thread that owns the write connection, each as a `BEGIN
//! IMMEDIATE` transaction, so SQLite itself decides races (including against CLI processes on
//! the same file). Queued jobs run back to back: no thread hand-off between two transactions,
//! which is what a crowd of threads taking turns on a mutex costs. Reads use a second
//! connection through `spawn_blocking` and never wait behind a write. WAL checkpoints (the only fsyncs with `synchronous=NORMAL`) run on a
//! background thread of their own shortly after writes, so in normal use (bursts of writes,
//! then quiet) the WAL is copied back and restarted without any request paying for the fsync.
//! Under writes without pause SQLite's own auto-checkpoint (1000 pages) still bounds the WAL;
//! it then finds most of the copying already done.

pub mod encryption;
mod migrations;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::Notify;

use crate::crypto::MasterKey;
use encryption::FileKey;

pub use migrations::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("database worker stopped")]
    Worker,
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    #[error(
        "the master key does not match the registry {path}: it cannot decrypt it (was master.key \
         or the latchkey.key credential replaced?)"
    )]
    WrongKey { path: PathBuf },
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    reader: Mutex<Connection>,
    path: PathBuf,
    /// Work for the writer thread; dropping it (with the last `Store`) ends the thread.
    jobs: Option<mpsc::Sender<Job>>,
    /// Dropped to stop the checkpointer.
    stop: Option<mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Whatever must stay open as long as the database is (the data dir's lock).
    guard: Mutex<Option<std::fs::File>>,
}

/// The last handle closes everything before returning, as a plain connection would: the
/// writer finishes what is queued, and the final close checkpoints and removes the WAL.
impl Drop for Inner {
    fn drop(&mut self) {
        self.jobs.take();
        self.stop.take();
        let me = std::thread::current().id();
        for t in self.threads.drain(..) {
            // The last handle may be dropped by a job on the writer thread itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

/// What the writer thread, the checkpointer and blocking callers share.
struct Shared {
    writer: Mutex<Connection>,
    /// Signalled after every commit that appended events, so the event tailer wakes at once.
    committed: Notify,
    /// Commits so far; the checkpointer compares it with what it last saw.
    commits: AtomicU64,
}

type Job = Box<dyn FnOnce(&Shared) + Send>;

/// How often the checkpointer looks for new commits.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Every connection's `synchronous` level. NORMAL is durable across application crashes in WAL
/// mode; only a power cut can lose the last transactions, never corrupt the file. What must
/// survive that too commits with [`Store::write_durable`].
const SYNCHRONOUS: &str = "NORMAL";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", SYNCHRONOUS)?;
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database encrypted under a key derived from `master`,
    /// encrypting a plain one from an older version first, and brings its schema up to date.
    pub fn open(path: &Path, master: &MasterKey) -> Result<Self, StoreError> {
        let key = FileKey::from_master(master);
        encryption::encrypt_if_plain(path, &key)?;
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        };
        let connect = |flags: OpenFlags| -> Result<Connection, StoreError> {
            let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
            conn.busy_timeout(Duration::from_secs(5))
                .map_err(open_err)?;
            encryption::apply_key(&conn, &key, path)?;
            configure(&conn).map_err(open_err)?;
            Ok(conn)
        };
        let mut writer = connect(OpenFlags::default())?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        migrations::migrate(&mut writer)?;
        let others = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = connect(others)?;
        let checkpointer = connect(others)?;

        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            committed: Notify::new(),
            commits: AtomicU64::new(0),
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let spawn_err = |e: std::io::Error| StoreError::Open {
            path: path.to_owned(),
            message: format!("cannot start a database thread: {e}"),
        };
        let for_writer = shared.clone();
        let writer_thread = std::thread::Builder::new()
            .name("latchkey-db-writer".into())
            .spawn(move || {
                // Ends when every Store handle (and so the sender) is gone.
                while let Ok(job) = queue.recv() {
                    // A panicking job fails its own caller (its answer channel drops), not
                    // every later write.
                    let _ =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&for_writer)));
                }
            })
            .map_err(spawn_err)?;
        let watched = Arc::downgrade(&shared);
        let (stop, stopped) = mpsc::channel::<()>();
        let checkpoint_thread = std::thread::Builder::new()
            .name("latchkey-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, watched, stopped))
            .map_err(spawn_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                reader: Mutex::new(reader),
                path: path.to_owned(),
                jobs: Some(jobs),
                stop: Some(stop),
                threads: vec![writer_thread, checkpoint_thread],
                guard: Mutex::new(None),
            }),
        })
    }

    /// Keeps `file` (a lock) open until the last handle closes the database.
    pub fn keep_until_closed(&self, file: std::fs::File) {
        *self.inner.guard.lock().unwrap_or_else(|p| p.into_inner()) = Some(file);
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done transaction (rusqlite rolls
        // back on drop), so a poisoned lock is still safe to use.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a write transaction on the calling thread (CLI and blocking contexts).
    pub fn write_blocking<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner.shared.write(Commit::Normal, f)
    }

    /// [`Store::write_blocking`], durable before it returns (see [`Store::write_durable`]).
    pub fn write_durable_blocking<R>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.inner.shared.write(Commit::Synced, f)
    }

    /// Runs a read on the calling thread.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let conn = Self::lock(&self.inner.reader);
        f(&conn)
    }

    /// A write transaction off the async runtime, queued to the writer thread. Committed
    /// when it returns, which survives the process being killed; a power cut may still lose
    /// it until the next checkpoint (at most [`CHECKPOINT_EVERY`] later).
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.queue(Commit::Normal, f).await
    }

    /// A write that is on the disk when it returns: its commit syncs the WAL (and with it
    /// every earlier commit). For what a power cut must not undo once acknowledged: tokens,
    /// pairings, registrations, revocations, admin credentials (docs/RELIABILITY.md).
    pub async fn write_durable<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.queue(Commit::Synced, f).await
    }

    async fn queue<R: Send + 'static>(
        &self,
        commit: Commit,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |shared: &Shared| {
            let _ = answer.send(shared.write(commit, f));
        });
        self.send(job)?;
        Self::wait(result).await?
    }

    /// Waits for the writer thread's answer on the runtime: a write in flight holds no thread,
    /// so a reconnect storm's writes do not take the (bounded) blocking pool from reads. On a
    /// paused test clock tokio may auto-advance while a write is in flight, as real time would
    /// pass.
    async fn wait<T: Send + 'static>(
        result: tokio::sync::oneshot::Receiver<T>,
    ) -> Result<T, StoreError> {
        result.await.map_err(|_| StoreError::Worker)
    }

    /// A read off the async runtime.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|_| StoreError::Worker)?
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        match &self.inner.jobs {
            Some(jobs) => jobs.send(job).map_err(|_| StoreError::Worker),
            None => Err(StoreError::Worker),
        }
    }

    /// Resolves after the next commit made through this handle.
    pub async fn committed(&self) {
        self.inner.shared.committed.notified().await;
    }

    /// Proves the database answers, through the read connection and through the writer thread
    /// (used by the systemd watchdog: a wedged writer must get us restarted).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await?;
        let (answer, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |shared: &Shared| {
            let conn = Self::lock(&shared.writer);
            let r = conn
                .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(StoreError::from);
            let _ = answer.send(r);
        });
        self.send(job)?;
        Self::wait(result).await??;
        Ok(())
    }
}

/// How a commit reaches the disk: `Normal` is SQLite's `synchronous=NORMAL` in WAL mode (no
/// sync at commit; the checkpoints sync), `Synced` is `synchronous=FULL` for this commit.
/// `Normal` is [`SYNCHRONOUS`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Commit {
    Normal,
    Synced,
}

impl Shared {
    fn write<R>(
        &self,
        commit: Commit,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = Store::lock(&self.writer);
        // SQLite refuses to change the level inside a transaction, so it is set around it.
        if commit == Commit::Synced {
            conn.pragma_update(None, "synchronous", "FULL")?;
        }
        let committed: Result<R, StoreError> = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if commit == Commit::Synced {
            conn.pragma_update(None, "synchronous", SYNCHRONOUS)?;
        }
        let out = committed?;
        drop(conn);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed.notify_one();
        Ok(out)
    }
}

/// Copies committed pages from the WAL into the database now and then, off the write path.
/// PASSIVE never blocks readers or the writer; it does what it can and tries again later.
fn checkpoint_loop(conn: Connection, shared: Weak<Shared>, stop: mpsc::Receiver<()>) {
    let mut seen = 0;
    loop {
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(CHECKPOINT_EVERY) {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let commits = shared.commits.load(Ordering::Relaxed);
        drop(shared);
        if commits == seen {
            continue;
        }
        seen = commits;
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// SQLite's `PRAGMA integrity_check` on an open connection: `Ok(())`, or the first problem
/// it reports.
pub fn integrity(conn: &Connection) -> Result<Result<(), String>, StoreError> {
    let report: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    Ok(match report.as_str() {
        "ok" => Ok(()),
        _ => Err(report.lines().next().unwrap_or_default().to_owned()),
    })
}

/// Opens the registry at `path` under `master` as the daemon would after a crash (SQLite
/// recovers its WAL), without migrating anything, and runs [`integrity`] on it. For the crash
/// harness (`examples/crash.rs`); the daemon itself never needs it.
pub fn check_integrity(path: &Path, master: &MasterKey) -> Result<Result<(), String>, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    encryption::apply_key(&conn, &FileKey::from_master(master), path)?;
    integrity(&conn)
}

/// Unit tests' stores, under a fixed master key.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn open(path: &Path) -> Store {
        Store::open(path, &MasterKey::from_bytes([7; 32])).unwrap()
    }
}

/// Reads a `meta` value.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Sets a `meta` value, replacing any.
pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Whether anything in the database was sealed under a master key (the key check, or a
/// device's TOTP secret): then only that key will do, and a new one must never be made.
pub fn holds_sealed_data(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'key_check')
             OR EXISTS (SELECT 1 FROM devices)",
        [],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's `synchronous` as the writer connection has it inside a transaction
    /// (1 NORMAL, 2 FULL).
    fn level(tx: &rusqlite::Transaction<'_>) -> Result<i64, StoreError> {
        Ok(tx.query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    #[tokio::test]
    async fn a_durable_write_commits_with_a_sync_and_the_next_write_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        assert_eq!(store.write(level).await.unwrap(), 1);
        assert_eq!(store.write_durable(level).await.unwrap(), 2);
        assert_eq!(store.write(level).await.unwrap(), 1);
        assert_eq!(store.write_durable_blocking(level).unwrap(), 2);
        assert_eq!(store.write_blocking(level).unwrap(), 1);
        // A failing durable job leaves the level as it found it too.
        let failed = store
            .write_durable(|tx| {
                tx.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(store.write(level).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn opens_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::store::testing::open(&path);
        let v: i64 = store
            .read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = store
            .read(|c| Ok(c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let gid = store
            .read(|c| meta_get(c, "gateway_id"))
            .await
            .unwrap()
            .unwrap();
        drop(store);
        let again = crate::store::testing::open(&path);
        assert_eq!(
            again
                .read(|c| meta_get(c, "gateway_id"))
                .await
                .unwrap()
                .unwrap(),
            gid
        );
        again.ping().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_all_commit_and_a_panic_fails_only_its_caller() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let writes = (0..200).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(move |tx| {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES (?1, 'v')",
                            [format!("k{i}")],
                        )?;
                        Ok(i)
                    })
                    .await
            })
        });
        for (i, w) in writes.enumerate() {
            assert_eq!(w.await.unwrap().unwrap(), i);
        }
        let boom: Result<(), _> = store
            .write(|_| -> Result<(), StoreError> { panic!("job panics") })
            .await;
        assert!(matches!(boom, Err(StoreError::Worker)));
        let n: i64 = store
            .write(|tx| Ok(tx.query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 201, "200 keys and the gateway id");
        store.ping().await.unwrap();
    }

    #[test]
    fn the_last_handle_closes_the_database_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = crate::store::testing::open(&path);
        store
            .write_blocking(|tx| {
                tx.execute("INSERT INTO meta (key, value) VALUES ('x', '1')", [])?;
                Ok(())
            })
            .unwrap();
        assert!(dir.path().join("db.sqlite-wal").exists());
        drop(store);
        // Every connection closed, the last one checkpointed and removed the WAL.
        assert!(!dir.path().join("db.sqlite-wal").exists());
        let again = crate::store::testing::open(&path);
        assert_eq!(
            again
                .read_blocking(|c| meta_get(c, "x"))
                .unwrap()
                .as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn failed_write_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db.sqlite"));
        let r: Result<(), _> = store
            .write(|tx| {
                tx.execute("INSERT INTO meta (key, value) VALUES ('x', '1')", [])?;
                Err(StoreError::Corrupt("test"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(store.read(|c| meta_get(c, "x")).await.unwrap(), None);
    }
}
