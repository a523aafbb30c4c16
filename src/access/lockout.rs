//! Lockout after repeated failures (PROTOCOL.md §7.3): pure state machines over `now`, and
//! the functions that load and store them in the `lockouts` table.
//!
//! A subject is a device (failures of frames that prove possession of its key) or a peer
//! address (failures of frames that prove nothing). Five consecutive counted failures lock
//! the subject for 60 s; each further one doubles the lock up to an hour; a grant resets the
//! device's and the peer's count.
//!
//! Frames that prove nothing also spend the gateway-wide [`Budget`], so that an attacker who
//! rotates peer addresses (random addresses cost nothing) cannot get five tries per address
//! without bound. When it is spent, such frames are shed (answered `LOCKED_OUT`, unsigned,
//! not recorded one by one) until it refills; frames that prove a key never touch it.
//!
//! ```text
//!   device/peer:  failures 0..4 ──5th failure──▶ locked 60 s ──each further failure──▶ ×2, ≤ 1 h
//!                      ▲                                                            │
//!                      └──────────────────────── grant ◀────────────────────────────┘
//!   budget:       admits while tat ≤ now + (BURST−1)·INTERVAL; each admitted frame moves
//!                 tat = max(tat, now) + INTERVAL; otherwise sheds until tat − now shrinks
//! ```

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
    /// A paired device, by a frame that proved possession of its key.
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

/// Frames that prove nothing which the gateway examines at once, before shedding.
pub const BUDGET_BURST: i64 = 60;
/// Then one more such frame every this many seconds.
pub const BUDGET_INTERVAL_SECS: i64 = 10;
/// The `lockouts.subject` key of the gateway-wide budget.
const BUDGET_KEY: &str = "gateway:unproven";

/// The gateway-wide budget of frames that prove no key, as a generic cell rate algorithm
/// (one timestamp instead of a token count and a refill time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// Theoretical arrival time: when the budget would be whole again.
    pub tat: UnixTime,
    /// Frames shed since the budget last admitted one.
    pub shed: u32,
}

impl Budget {
    /// Seconds until the budget admits a frame, or `None` when it admits one at `now`.
    pub fn wait(&self, now: UnixTime) -> Option<u16> {
        let limit = now.saturating_add((BUDGET_BURST - 1) * BUDGET_INTERVAL_SECS);
        (self.tat > limit)
            .then(|| u16::try_from(self.tat.abs_diff(limit).max(1)).unwrap_or(u16::MAX))
    }

    /// Admits one frame at `now`. Returns how many were shed before it.
    pub fn spend(&mut self, now: UnixTime) -> u32 {
        self.tat = self.tat.max(now).saturating_add(BUDGET_INTERVAL_SECS);
        std::mem::take(&mut self.shed)
    }

    /// Sheds one frame. Returns whether it is the first of a run (worth one event).
    pub fn shed(&mut self) -> bool {
        self.shed = self.shed.saturating_add(1);
        self.shed == 1
    }
}

/// Reads the gateway-wide budget.
pub fn load_budget(conn: &Connection) -> Result<Budget, StoreError> {
    let row: Option<(i64, i64)> = conn
        .query_row(
            "SELECT failures, locked_until FROM lockouts WHERE subject = ?1",
            [BUDGET_KEY],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(row.map_or_else(Budget::default, |(shed, tat)| Budget {
        tat,
        shed: u32::try_from(shed).unwrap_or(u32::MAX),
    }))
}

/// Writes the gateway-wide budget (in the `lockouts` row of its own).
pub fn save_budget(tx: &Transaction<'_>, b: &Budget, now: UnixTime) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO lockouts (subject, failures, level, locked_until, updated_at)
         VALUES (?1, ?2, 0, ?3, ?4)
         ON CONFLICT (subject) DO UPDATE SET failures = excluded.failures,
             locked_until = excluded.locked_until, updated_at = excluded.updated_at",
        params![BUDGET_KEY, i64::from(b.shed), b.tat, now],
    )?;
    Ok(())
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
    fn the_budget_admits_a_burst_then_one_per_interval() {
        let now = 10_000;
        let mut b = Budget::default();
        for _ in 0..BUDGET_BURST {
            assert_eq!(b.wait(now), None);
            assert_eq!(b.spend(now), 0);
        }
        assert_eq!(b.wait(now), Some(10));
        assert!(b.shed());
        assert!(!b.shed());
        assert_eq!(b.wait(now + 9), Some(1));
        assert_eq!(b.wait(now + 10), None);
        assert_eq!(b.spend(now + 10), 2, "two were shed before it");
        assert_eq!(b.wait(now + 10), Some(10));
        // Idle for a while: the whole burst again.
        let later = now + BUDGET_BURST * BUDGET_INTERVAL_SECS + 10;
        for _ in 0..BUDGET_BURST {
            assert_eq!(b.wait(later), None);
            b.spend(later);
        }
        assert!(b.wait(later).is_some());
    }

    #[test]
    fn persisted_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(&dir.path().join("db"));
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
