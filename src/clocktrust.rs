//! Clock trust. A Raspberry Pi has no battery-backed clock, and TOTP, the ±5 minute window
//! and lockout expiry all depend on the gateway's time. Two witnesses say whether to trust it:
//!
//! - systemd-timedated's `NTPSynchronized` (read over D-Bus by the BLE adapter; "unknown"
//!   when the service is absent);
//! - the phones: every *authenticated* auth frame carries the phone's Unix time, and phones
//!   keep network time. The median of (phone − gateway) over recent frames is the offset the
//!   phones see. Only frames whose tag verified count, so nobody without a device key can
//!   move it.
//!
//! The clock is *suspect* when it reads a time before this software was built, or when at
//! least [`MIN_SAMPLES`] recent phone frames put it more than [`SUSPECT_OFFSET_SECS`] off.
//! Pure over `now`; the log, `/metrics` and the `/activity` page show the assessment.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::clock::UnixTime;

/// Phone offsets kept (the newest).
pub const WINDOW: usize = 31;
/// Samples older than this (by the gateway's clock, in either direction, which also discards
/// them after the clock jumps) are dropped.
pub const SAMPLE_MAX_AGE_SECS: u64 = 3600;
/// Fewest samples for a verdict from phones.
pub const MIN_SAMPLES: usize = 3;
/// A median offset beyond this is suspect: TOTP tolerates ±30–60 s, and phones are rarely more
/// than a few seconds off network time.
pub const SUSPECT_OFFSET_SECS: i64 = 90;
/// 2025-01-01T00:00:00Z. A clock before this is certainly wrong (a Pi that booted without
/// network starts near its last shutdown time or at the epoch).
pub const PLAUSIBLE_AFTER: UnixTime = 1_735_689_600;

/// What systemd-timedated says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NtpSync {
    #[default]
    Unknown,
    Yes,
    No,
}

impl NtpSync {
    /// For `/metrics`: 1 synchronized, 0 not, -1 unknown.
    pub fn gauge(self) -> i64 {
        match self {
            NtpSync::Yes => 1,
            NtpSync::No => 0,
            NtpSync::Unknown => -1,
        }
    }
}

/// The current judgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Assessment {
    pub ntp: NtpSync,
    /// Median of phone time − gateway time over recent authenticated frames.
    pub phone_offset_secs: Option<i64>,
    pub samples: usize,
    pub suspect: bool,
    /// One sentence for people when something is off (suspect, or not synchronized).
    pub message: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// (gateway time when seen, phone − gateway)
    samples: VecDeque<(UnixTime, i64)>,
    ntp: NtpSync,
    /// Whether the last assessment was suspect, to log transitions only.
    was_suspect: bool,
}

#[derive(Default)]
pub struct ClockTrust {
    inner: Mutex<Inner>,
}

impl ClockTrust {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An authenticated frame said the phone's time was `phone_time` when ours was `now`.
    pub fn record_phone_time(&self, phone_time: u64, now: UnixTime) {
        let offset = i64::try_from(phone_time)
            .unwrap_or(i64::MAX)
            .saturating_sub(now);
        {
            let mut g = self.lock();
            if g.samples.len() >= WINDOW {
                g.samples.pop_front();
            }
            g.samples.push_back((now, offset));
        }
        self.log_transition(now);
    }

    /// What timedated said (or that it could not be asked).
    pub fn set_ntp(&self, ntp: NtpSync, now: UnixTime) {
        let changed = {
            let mut g = self.lock();
            let changed = g.ntp != ntp;
            g.ntp = ntp;
            if ntp == NtpSync::Yes && changed {
                // The clock was just disciplined: what phones saw before no longer applies.
                g.samples.clear();
            }
            changed
        };
        if changed {
            match ntp {
                NtpSync::Yes => tracing::info!("system clock is NTP-synchronized"),
                NtpSync::No => {
                    tracing::warn!("system clock is not NTP-synchronized; TOTP depends on it")
                }
                NtpSync::Unknown => tracing::debug!("NTP synchronization state is unknown"),
            }
        }
        self.log_transition(now);
    }

    /// Logs once when the clock becomes suspect and once when it recovers.
    fn log_transition(&self, now: UnixTime) {
        let a = self.assess(now);
        let mut g = self.lock();
        if a.suspect != g.was_suspect {
            g.was_suspect = a.suspect;
            drop(g);
            if a.suspect {
                tracing::warn!(
                    offset_secs = a.phone_offset_secs,
                    "the gateway clock looks wrong: {}",
                    a.message.as_deref().unwrap_or("")
                );
            } else {
                tracing::info!("the gateway clock looks right again");
            }
        }
    }

    pub fn assess(&self, now: UnixTime) -> Assessment {
        let g = self.lock();
        let mut offsets: Vec<i64> = g
            .samples
            .iter()
            .filter(|(seen, _)| seen.abs_diff(now) <= SAMPLE_MAX_AGE_SECS)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort_unstable();
        let samples = offsets.len();
        let median = offsets.get(samples / 2).copied();
        let ntp = g.ntp;
        drop(g);

        let too_early = now < PLAUSIBLE_AFTER;
        let phones_disagree = samples >= MIN_SAMPLES
            && median.is_some_and(|m| m.unsigned_abs() > SUSPECT_OFFSET_SECS.unsigned_abs());
        let suspect = too_early || phones_disagree;
        let message = if too_early {
            Some(format!(
                "the clock reads {}, before this software was built; set the time or enable NTP",
                crate::clock::rfc3339(now)
            ))
        } else if phones_disagree {
            let m = median.unwrap_or(0);
            Some(format!(
                "phones' clocks are a median {} s {} the gateway's; TOTP codes will be refused \
                 (check NTP on the gateway)",
                m.unsigned_abs(),
                if m > 0 { "ahead of" } else { "behind" }
            ))
        } else if ntp == NtpSync::No {
            Some("the system clock is not NTP-synchronized".to_owned())
        } else {
            None
        };
        Assessment {
            ntp,
            phone_offset_secs: median,
            samples,
            suspect,
            message,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_767_225_600;

    #[test]
    fn trusted_until_phones_disagree() {
        let t = ClockTrust::new();
        let a = t.assess(NOW);
        assert!(!a.suspect);
        assert_eq!((a.samples, a.phone_offset_secs, a.message), (0, None, None));
        t.record_phone_time(NOW as u64 + 400, NOW);
        t.record_phone_time(NOW as u64 + 2, NOW);
        assert!(!t.assess(NOW).suspect, "two samples are not enough");
        t.record_phone_time(NOW as u64 + 380, NOW);
        let a = t.assess(NOW);
        assert!(a.suspect);
        assert_eq!(a.phone_offset_secs, Some(380));
        assert!(a.message.unwrap().contains("380 s ahead of"));
        // Samples age out (and vanish when the clock jumps by more than their age).
        assert!(!t.assess(NOW + 3601).suspect);
        // NTP synchronizing clears what phones saw against the old clock.
        t.set_ntp(NtpSync::Yes, NOW);
        assert_eq!(t.assess(NOW).samples, 0);
    }

    #[test]
    fn outliers_do_not_move_the_median() {
        let t = ClockTrust::new();
        for d in [1i64, -2, 0, 3, 100_000] {
            t.record_phone_time((NOW + d) as u64, NOW);
        }
        let a = t.assess(NOW);
        assert_eq!(a.phone_offset_secs, Some(1));
        assert!(!a.suspect);
    }

    #[test]
    fn epoch_clock_and_ntp_state() {
        let t = ClockTrust::new();
        assert!(t.assess(0).suspect);
        assert!(t.assess(0).message.unwrap().contains("1970-01-01"));
        t.set_ntp(NtpSync::No, NOW);
        let a = t.assess(NOW);
        assert!(!a.suspect);
        assert_eq!(a.ntp.gauge(), 0);
        assert!(a.message.unwrap().contains("not NTP-synchronized"));
    }
}
