//! The protocol's timing rules, as numbers and pure functions of `now`.
//!
//! The gateway enforces these; they live here so that the gateway, the firmware and
//! `PROTOCOL.md` share one definition.

/// A challenge nonce is valid for this long after it was issued (and only once, and only on
/// the connection it was issued to).
pub const NONCE_LIFETIME_SECS: u64 = 30;
/// The phone's timestamp may differ from the gateway's clock by at most this much, either way.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Consecutive counted failures that start a lockout.
pub const LOCKOUT_THRESHOLD: u32 = 5;
/// Length of the first lockout.
pub const LOCKOUT_BASE_SECS: u64 = 60;
/// Longest lockout.
pub const LOCKOUT_MAX_SECS: u64 = 3_600;

/// Whether a phone timestamp is within ±[`MAX_CLOCK_SKEW_SECS`] (inclusive) of `now`.
#[must_use]
pub const fn timestamp_acceptable(timestamp: u64, now: u64) -> bool {
    timestamp.abs_diff(now) <= MAX_CLOCK_SKEW_SECS
}

/// How long to lock out after `consecutive_failures` counted failures (see
/// [`crate::Status::counts_as_failure`]); 0 below the threshold.
///
/// The 5th failure locks for 60 s, each further failure (without a grant in between) doubles
/// it — 120, 240, 480, 960, 1920 — up to 3600 s. A grant resets the count; attempts answered
/// with [`crate::Status::LockedOut`] do not count.
#[must_use]
pub const fn lockout_secs(consecutive_failures: u32) -> u64 {
    if consecutive_failures < LOCKOUT_THRESHOLD {
        return 0;
    }
    let doublings = consecutive_failures - LOCKOUT_THRESHOLD;
    if doublings >= 6 {
        return LOCKOUT_MAX_SECS;
    }
    let secs = LOCKOUT_BASE_SECS << doublings;
    if secs > LOCKOUT_MAX_SECS {
        LOCKOUT_MAX_SECS
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_schedule() {
        let got: [u64; 13] = core::array::from_fn(|i| lockout_secs(i as u32));
        assert_eq!(
            got,
            [0, 0, 0, 0, 0, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        );
        assert_eq!(lockout_secs(u32::MAX), 3600);
    }

    #[test]
    fn clock_skew_is_inclusive() {
        let now = 1_000_000;
        assert!(timestamp_acceptable(now - 300, now));
        assert!(timestamp_acceptable(now + 300, now));
        assert!(!timestamp_acceptable(now - 301, now));
        assert!(!timestamp_acceptable(now + 301, now));
        assert!(!timestamp_acceptable(0, u64::MAX));
    }
}
