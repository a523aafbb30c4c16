//! Time on a node. Two clocks under two names, never mixed:
//!
//! - [`Instant`]: monotonic milliseconds since boot, from the board's timer. Every deadline
//!   (relay pulse, liveness, backoff) is an `Instant`.
//! - [`WallClock`]: Unix time, which a node without a battery clock does not know at boot.
//!   "Unknown" is a state of its own; the gateway's `hello` sets it, and the monotonic clock
//!   carries it forward while offline.

use core::ops::Add;

/// Monotonic milliseconds since the node booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Instant(u64);

impl Instant {
    /// From milliseconds since boot.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since boot.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub const fn millis_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<u64> for Instant {
    type Output = Instant;
    /// Adds milliseconds (saturating: a deadline at the end of time is "never").
    fn add(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }
}

/// Unix time in seconds.
pub type UnixTime = i64;

/// The node's idea of wall time (NODES.md §6, PROTOCOL.md §20.3).
///
/// Unknown at boot. The anchor is the `now` of the latest session `hello`, carried forward by
/// the monotonic clock, and never below the floor: the `issued_at` of the latest verified grant
/// snapshot (signed, while `hello` over `ws://` is not). The floor alone never makes the time
/// known: after a reboot without the gateway the node does not know how long it was off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WallClock {
    /// Unix milliseconds at `Instant(0)`, once a `hello` said the time.
    unix_ms_at_boot: Option<i64>,
    /// Unix seconds the wall time never goes below.
    floor: UnixTime,
}

impl WallClock {
    /// Records the gateway's `now` (Unix seconds) as read at monotonic `at`, raised to the floor.
    pub fn set(&mut self, unix: UnixTime, at: Instant) {
        let at_ms = i64::try_from(at.as_millis()).unwrap_or(i64::MAX);
        let unix = unix.max(self.floor);
        self.unix_ms_at_boot = Some(unix.saturating_mul(1000).saturating_sub(at_ms));
    }

    /// Raises the floor to a verified snapshot's `issued_at`; a known time below it jumps to it.
    pub fn raise_floor(&mut self, floor: UnixTime, at: Instant) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        if self.now(at).is_some_and(|t| t < floor) {
            self.set(floor, at);
        }
    }

    /// Unix seconds at monotonic `now`, or `None` while unknown.
    pub fn now(&self, now: Instant) -> Option<UnixTime> {
        let at_boot = self.unix_ms_at_boot?;
        let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
        Some(at_boot.saturating_add(now_ms).div_euclid(1000))
    }

    /// Whether a `hello` has said the time since boot.
    pub fn is_known(&self) -> bool {
        self.unix_ms_at_boot.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_unknown_until_set_then_follows_the_monotonic_clock() {
        let mut wall = WallClock::default();
        assert_eq!(wall.now(Instant::from_millis(5_000)), None);
        wall.set(1_764_237_600, Instant::from_millis(5_000));
        assert_eq!(wall.now(Instant::from_millis(5_000)), Some(1_764_237_600));
        assert_eq!(wall.now(Instant::from_millis(65_999)), Some(1_764_237_660));
    }

    #[test]
    fn a_snapshot_floor_raises_a_known_time_but_never_makes_it_known() {
        let mut wall = WallClock::default();
        // Boot: the stored snapshot is re-applied, its issued_at becomes the floor.
        wall.raise_floor(1_767_225_000, Instant::from_millis(100));
        assert_eq!(wall.now(Instant::from_millis(100)), None);
        // A hello whose time is below the signed floor is raised to it.
        wall.set(1_700_000_000, Instant::from_millis(1_000));
        assert_eq!(wall.now(Instant::from_millis(1_000)), Some(1_767_225_000));
        assert_eq!(wall.now(Instant::from_millis(11_000)), Some(1_767_225_010));
        // A later snapshot raises a running time that is behind it, not one ahead of it.
        wall.raise_floor(1_767_225_100, Instant::from_millis(11_000));
        assert_eq!(wall.now(Instant::from_millis(11_000)), Some(1_767_225_100));
        wall.raise_floor(1_767_225_050, Instant::from_millis(12_000));
        assert_eq!(wall.now(Instant::from_millis(12_000)), Some(1_767_225_101));
        // A later hello moves it, never below the floor.
        wall.set(1_767_300_000, Instant::from_millis(13_000));
        assert_eq!(wall.now(Instant::from_millis(13_000)), Some(1_767_300_000));
    }

    #[test]
    fn instant_arithmetic_saturates() {
        assert_eq!(
            Instant::from_millis(u64::MAX) + 5,
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(
            Instant::from_millis(3).millis_since(Instant::from_millis(9)),
            0
        );
    }
}
