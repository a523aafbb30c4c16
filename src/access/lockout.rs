//! Lockout after repeated failures (PROTOCOL.md §7.3): a pure state machine over `now`, and
//! the two functions that load and store it in the `lockouts` table.
//!
//! A subject is a device (failures that name a paired device) or a peer address (failures
//! with no usable device id). Five consecutive counted failures lock the subject for 60 s;
//! each further one doubles the lock up to an hour; a grant resets a device's count.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use latchkey_proto::lockout_secs;

use crate::clock::UnixTime;
use crate::registry::DeviceId;
use crate::store::StoreError;

/// Peer rows nobody touched for this long are forgotten (a phone's address rotates, so a
/// peer row is useless after a while, and an attacker must not grow the table forever).
pub const PEER_IDLE_SECS: i64 = 24 * 3600;

/// Who a failure counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A paired device, named by a frame (whether or not the frame was genuine).
    Device(DeviceId),
    /// A radio peer with no usable device id: the BlueZ device object path.
    Peer(String),
}

impl Subject {
    /// The `lockouts.subject` key.
    pub fn key(&self) -> String {
        match self {
            Subject::Device(id) => format!("device:{id}"),
            Subject::Peer(p) => format!("peer:{p}"),
        }
    }
}

/// One subject's lockout state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockState {
    /// Consecutive counted failures since the last grant.
    pub failures: u32,
    /// Unix time the current lock ends; in the past (or 0) when not locked.
    pub locked_until: UnixTime,
}

impl LockState {
    /// Seconds until the lock ends, or `None` when not locked at `now`.
    pub fn remaining(&self, now: UnixTime) -> Option<u64> {
        (self.locked_until > now).then(|| self.locked_until.abs_diff(now))
    }

    /// `remaining` as the result frame's `retry_after` (at least 1 while locked).
    pub fn retry_after(&self, now: UnixTime) -> u16 {
        self.remaining(now)
            .map_or(0, |s| u16::try_from(s.max(1)).unwrap_or(u16::MAX))
    }

    /// Counts one failure at `now`. Returns the length of the lock it starts, if any.
    pub fn record_failure(&mut self, now: UnixTime) -> Option<u64> {
        self.failures = self.failures.saturating_add(1);
        let secs = lockout_secs(self.failures);
        if secs == 0 {
            return None;
        }
        self.locked_until = now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX));
        Some(secs)
    }

    /// A grant: the count starts again.
    pub fn reset(&mut self) {
        *self = LockState::default();
    }
}

/// Reads a subject's state (default when it has none).
pub fn load(conn: &Connection, subject: &Subject) -> Result<LockState, StoreError> {
    let row: Option<(i64, i64)> = conn
        .query_row(
            "SELECT failures, locked_until FROM lockouts WHERE subject = ?1",
            [subject.key()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(
        row.map_or_else(LockState::default, |(failures, locked_until)| LockState {
            failures: u32::try_from(failures).unwrap_or(u32::MAX),
            locked_until,
        }),
    )
}

/// Writes a subject's state; a reset state deletes the row.
pub fn save(
    tx: &Transaction<'_>,
    subject: &Subject,
    state: &LockState,
    now: UnixTime,
) -> Result<(), StoreError> {
    if *state == LockState::default() {
        tx.execute("DELETE FROM lockouts WHERE subject = ?1", [subject.key()])?;
        return Ok(());
    }
    let level = i64::try_from(lockout_secs(state.failures)).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO lockouts (subject, failures, level, locked_until, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures,
             level = excluded.level, locked_until = excluded.locked_until,
             updated_at = excluded.updated_at",
        params![
            subject.key(),
            i64::from(state.failures),
            level,
            state.locked_until,
            now
        ],
    )?;
    Ok(())
}

/// Forgets peer rows that are not locked and were idle for [`PEER_IDLE_SECS`].
pub fn prune_peers(tx: &Transaction<'_>, now: UnixTime) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "DELETE FROM lockouts WHERE subject LIKE 'peer:%' AND locked_until <= ?1 AND updated_at < ?2",
        params![now, now.saturating_sub(PEER_IDLE_SECS)],
    )?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn schedule_from_the_fifth_failure() {
        let mut s = LockState::default();
        let now = 1_000;
        for _ in 0..4 {
            assert_eq!(s.record_failure(now), None);
            assert_eq!(s.remaining(now), None);
        }
        assert_eq!(s.record_failure(now), Some(60));
        assert_eq!(s.remaining(now), Some(60));
        assert_eq!(s.retry_after(now + 59), 1);
        assert_eq!(s.remaining(now + 60), None);
        let mut lengths = Vec::new();
        for _ in 0..8 {
            lengths.push(s.record_failure(now).unwrap_or(0));
        }
        assert_eq!(lengths, [120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        s.reset();
        assert_eq!(s, LockState::default());
        assert_eq!(s.record_failure(now), None);
    }

    #[test]
    fn persisted_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let peer = Subject::Peer("/org/bluez/hci0/dev_00_11_22_33_44_55".into());
        let dev = Subject::Device(DeviceId::from_bytes([7; 16]));
        let mut s = LockState::default();
        for _ in 0..5 {
            s.record_failure(100);
        }
        store
            .write_blocking(|tx| {
                save(tx, &peer, &s, 100)?;
                save(tx, &dev, &s, 100)
            })
            .unwrap();
        assert_eq!(store.read_blocking(|c| load(c, &peer)).unwrap(), s);
        // Still locked: kept, whatever its age.
        let pruned = store
            .write_blocking(|tx| prune_peers(tx, 150 + PEER_IDLE_SECS))
            .unwrap();
        assert_eq!(pruned, 1, "the lock ended at 160, the row idled a day");
        assert_eq!(
            store.read_blocking(|c| load(c, &peer)).unwrap(),
            LockState::default()
        );
        // Device rows are never pruned; a reset deletes.
        assert_eq!(store.read_blocking(|c| load(c, &dev)).unwrap(), s);
        store
            .write_blocking(|tx| save(tx, &dev, &LockState::default(), 200))
            .unwrap();
        let n: i64 = store
            .read_blocking(|c| Ok(c.query_row("SELECT COUNT(*) FROM lockouts", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 0);
    }
}
