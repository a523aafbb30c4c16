//! Reconnect backoff for the gateway session (NODES.md §5): wait 1 s after a close, doubling up
//! to 60 s, each wait ±20 % random jitter (so a gateway restart is not met by every node at once);
//! back to 1 s after a session that lasted at least 60 s.
//!
//! The jitter comes from the caller's RNG as a plain `u32`, so the rule is tested with fixed values.

/// First wait, in milliseconds.
pub const INITIAL_MS: u32 = 1_000;
/// Longest wait before jitter.
pub const MAX_MS: u32 = 60_000;
/// Jitter, in percent either side.
pub const JITTER_PERCENT: u32 = 20;
/// A session at least this long resets the backoff.
pub const STABLE_SESSION_MS: u64 = 60_000;

/// The backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: INITIAL_MS,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt, jittered by `random`, and doubles the base for the one after.
    pub fn next_delay_ms(&mut self, random: u32) -> u32 {
        let base = self.base_ms;
        self.base_ms = base.saturating_mul(2).min(MAX_MS);
        // Uniform in [100 - J, 100 + J] percent of the base.
        let span = 2 * JITTER_PERCENT + 1;
        let percent = 100 - JITTER_PERCENT + random % span;
        // u64: 60_000 * 120 does not fit the intent of u32 arithmetic on every target.
        let ms = u64::from(base) * u64::from(percent) / 100;
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    /// Tells the backoff how long the session that just ended had lasted.
    pub fn session_ended(&mut self, lasted_ms: u64) {
        if lasted_ms >= STABLE_SESSION_MS {
            self.base_ms = INITIAL_MS;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_sixty() {
        let mut b = Backoff::default();
        // random = 20 is the middle of the 41 jitter steps: exactly the base.
        let waits: [u32; 8] = core::array::from_fn(|_| b.next_delay_ms(JITTER_PERCENT));
        assert_eq!(
            waits,
            [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut lowest = u32::MAX;
        let mut highest = 0;
        for r in 0..1_000u32 {
            let mut b = Backoff::default();
            let w = b.next_delay_ms(r.wrapping_mul(2_654_435_761));
            lowest = lowest.min(w);
            highest = highest.max(w);
        }
        assert_eq!((lowest, highest), (800, 1_200));
    }

    #[test]
    fn a_long_session_resets_but_a_short_one_does_not() {
        let mut b = Backoff::default();
        b.next_delay_ms(JITTER_PERCENT);
        b.next_delay_ms(JITTER_PERCENT);
        b.session_ended(59_999);
        assert_eq!(b.next_delay_ms(JITTER_PERCENT), 4_000);
        b.session_ended(60_000);
        assert_eq!(b.next_delay_ms(JITTER_PERCENT), 1_000);
    }
}
