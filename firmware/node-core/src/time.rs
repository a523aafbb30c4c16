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

/// The node's idea of wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WallClock {
    /// Nothing has told the node the time since it booted.
    #[default]
    Unknown,
    /// Learnt from the gateway: Unix milliseconds at the node's boot instant.
    Known {
        /// Unix milliseconds at `Instant(0)`.
        unix_ms_at_boot: i64,
    },
}

impl WallClock {
    /// Records the gateway's `now` (Unix seconds) as read at monotonic `at`.
    pub fn set(&mut self, unix: UnixTime, at: Instant) {
        let at_ms = i64::try_from(at.as_millis()).unwrap_or(i64::MAX);
        *self = WallClock::Known {
            unix_ms_at_boot: unix.saturating_mul(1000).saturating_sub(at_ms),
        };
    }

    /// Unix seconds at monotonic `now`, or `None` while unknown.
    pub fn now(&self, now: Instant) -> Option<UnixTime> {
        match *self {
            WallClock::Unknown => None,
            WallClock::Known { unix_ms_at_boot } => {
                let now_ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
                Some(unix_ms_at_boot.saturating_add(now_ms).div_euclid(1000))
            }
        }
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
