//! TOTP (RFC 6238) over HOTP (RFC 4226): HMAC-SHA1, 30-second steps, 6 digits.
//!
//! Pure functions of the secret and the time; nothing here reads a clock.

use hmac::digest::Mac;
use sha1::Sha1;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::mac::keyed;

/// Length of a TOTP time step.
pub const TOTP_PERIOD_SECS: u64 = 30;
/// Digits in a code.
pub const TOTP_DIGITS: u32 = 6;
/// Steps accepted on either side of the gateway's current step.
pub const TOTP_SKEW_STEPS: u8 = 1;
/// 10^[`TOTP_DIGITS`]: codes are below this.
const CODE_MODULUS: u32 = 1_000_000;

/// The RFC 4226 §5.3 dynamic truncation of HMAC-SHA1(secret, counter): a 31-bit value.
pub(crate) fn truncated(secret: &[u8], counter: u64) -> u32 {
    let mut mac = keyed::<Sha1>(secret);
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = digest.last().map_or(0, |b| usize::from(b & 0x0f));
    let mut word = [0u8; 4];
    for (dst, src) in word.iter_mut().zip(digest.iter().skip(offset)) {
        *dst = *src;
    }
    u32::from_be_bytes(word) & 0x7fff_ffff
}

/// The 6-digit HOTP code for `counter`.
#[must_use]
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    truncated(secret, counter) % CODE_MODULUS
}

/// The TOTP step containing `unix_time`: `unix_time / 30`.
#[must_use]
pub const fn totp_step(unix_time: u64) -> u64 {
    unix_time / TOTP_PERIOD_SECS
}

/// The 6-digit TOTP code at `unix_time` (seconds). Shown to people zero-padded to 6 digits;
/// carried in frames as a number.
#[must_use]
pub fn totp_at(secret: &[u8], unix_time: u64) -> u32 {
    hotp(secret, totp_step(unix_time))
}

/// Checks `code` against the steps `step(now) - skew_steps ..= step(now) + skew_steps` and
/// returns the matching step.
///
/// Every step in the window is computed and compared in constant time; there is no early
/// exit. Should a code match more than one step (a 10⁻⁶ coincidence), the *oldest* matching
/// step is returned, which is the conservative choice for the caller's replay rule: accept only
/// if the returned step is newer than the last step this device used, then store it.
/// Codes of 1 000 000 or more never match.
#[must_use]
pub fn verify_totp(secret: &[u8], code: u32, now: u64, skew_steps: u8) -> Option<u64> {
    let current = totp_step(now);
    let first = current.saturating_sub(u64::from(skew_steps));
    let last = current.saturating_add(u64::from(skew_steps));
    // Whether the code is in range is public (it is the sender's input), so this may branch.
    if code >= CODE_MODULUS {
        return None;
    }
    let mut found = subtle::Choice::from(0);
    let mut matched = 0u64;
    let mut step = first;
    loop {
        let hit = hotp(secret, step).ct_eq(&code);
        // Take this step only if it matches and nothing older matched yet.
        let take = hit & !found;
        matched.conditional_assign(&step, take);
        found |= hit;
        if step >= last {
            break;
        }
        step += 1;
    }
    if bool::from(found) {
        Some(matched)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;
    use std::string::ToString;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    /// RFC 6238 Appendix B, SHA1 column (8 digits).
    const RFC6238_SHA1: [(u64, u32); 6] = [
        (59, 94_287_082),
        (1_111_111_109, 7_081_804),
        (1_111_111_111, 14_050_471),
        (1_234_567_890, 89_005_924),
        (2_000_000_000, 69_279_037),
        (20_000_000_000, 65_353_130),
    ];

    #[test]
    fn rfc6238_sha1_eight_digits() {
        for (time, code) in RFC6238_SHA1 {
            assert_eq!(truncated(RFC_SECRET, totp_step(time)) % 100_000_000, code);
        }
    }

    #[test]
    fn six_digit_codes_are_the_rfc_codes_truncated() {
        for (time, code) in RFC6238_SHA1 {
            assert_eq!(totp_at(RFC_SECRET, time), code % 1_000_000);
        }
    }

    #[test]
    fn rfc4226_hotp_vectors() {
        // RFC 4226 Appendix D, counters 0..9.
        let expected = [
            755_224, 287_082, 359_152, 969_429, 338_314, 254_676, 287_922, 162_583, 399_871,
            520_489,
        ];
        for (counter, code) in expected.into_iter().enumerate() {
            assert_eq!(hotp(RFC_SECRET, counter as u64), code);
        }
    }

    #[test]
    fn matches_totp_rs() {
        let secrets: [&[u8]; 3] = [RFC_SECRET, &[0x42; 16], &[0x99; 100]];
        for secret in secrets {
            let reference = totp_rs::Builder::new()
                .with_secret(secret.to_vec())
                .build_noncompliant();
            let mut t = 0u64;
            while t < 40_000_000_000 {
                assert_eq!(
                    format!("{:06}", totp_at(secret, t)),
                    reference.generate(t).to_string(),
                    "t={t}"
                );
                t = t * 3 + 7_919;
            }
        }
    }

    #[test]
    fn verify_window_and_step() {
        let now = 1_111_111_111;
        let step = totp_step(now);
        for delta in [-1i64, 0, 1] {
            let s = step.checked_add_signed(delta).unwrap();
            let code = hotp(RFC_SECRET, s);
            assert_eq!(verify_totp(RFC_SECRET, code, now, 1), Some(s));
        }
        for delta in [-3i64, -2, 2, 3] {
            let s = step.checked_add_signed(delta).unwrap();
            let code = hotp(RFC_SECRET, s);
            // These particular steps' codes do not collide with the window's.
            assert_eq!(verify_totp(RFC_SECRET, code, now, 1), None, "delta {delta}");
        }
        let code = hotp(RFC_SECRET, step + 2);
        assert_eq!(verify_totp(RFC_SECRET, code, now, 2), Some(step + 2));
        assert_eq!(verify_totp(RFC_SECRET, code, now, 0), None);
    }

    #[test]
    fn verify_rejects_out_of_range_codes() {
        let now = 59;
        let code = truncated(RFC_SECRET, totp_step(now)); // the untruncated 31-bit value
        assert!(code >= 1_000_000);
        assert_eq!(verify_totp(RFC_SECRET, code, now, 1), None);
        assert_eq!(verify_totp(RFC_SECRET, u32::MAX, now, 1), None);
        assert_eq!(verify_totp(RFC_SECRET, code % 1_000_000, now, 1), Some(1));
    }

    #[test]
    fn verify_near_epoch_and_far_future() {
        let code0 = hotp(RFC_SECRET, 0);
        assert_eq!(verify_totp(RFC_SECRET, code0, 0, 1), Some(0));
        assert_eq!(verify_totp(RFC_SECRET, code0, 29, 255), Some(0));
        let last = totp_step(u64::MAX);
        let code = hotp(RFC_SECRET, last);
        assert_eq!(verify_totp(RFC_SECRET, code, u64::MAX, 1), Some(last));
    }
}
