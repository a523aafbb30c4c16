//! The outcome of an access attempt, as carried in a result frame.

use core::fmt;

use crate::Error;

/// The gateway's answer to an auth frame. Codes are stable: never renumber, only append.
///
/// [`Status::as_str`] gives the SCREAMING_SNAKE name used in `access.denied` events, logs and
/// the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Access granted; the endpoint's action ran.
    Granted = 0,
    /// The auth frame could not be decoded (length, kind, field or endpoint syntax).
    Malformed = 1,
    /// No device with this id is paired.
    UnknownDevice = 2,
    /// The device was revoked.
    Revoked = 3,
    /// The TOTP code matches none of the accepted steps.
    BadTotp = 4,
    /// The TOTP code matches a step this device already used (or an older one).
    TotpReused = 5,
    /// The phone's timestamp is more than 5 minutes from the gateway's clock.
    ClockSkew = 6,
    /// The nonce is not the live challenge of this connection (none issued, expired, already
    /// used, or issued to another connection).
    NonceInvalid = 7,
    /// The frame's HMAC tag does not verify under the device's key.
    BadTag = 8,
    /// The device, or the sending peer, is locked out after repeated failures.
    LockedOut = 9,
    /// The endpoint is unknown, or this device may not use it.
    EndpointDenied = 10,
    /// Everything checked out but the endpoint's action failed.
    ActionFailed = 11,
    /// The frame's protocol version is not supported.
    Unsupported = 12,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 13] = [
        Status::Granted,
        Status::Malformed,
        Status::UnknownDevice,
        Status::Revoked,
        Status::BadTotp,
        Status::TotpReused,
        Status::ClockSkew,
        Status::NonceInvalid,
        Status::BadTag,
        Status::LockedOut,
        Status::EndpointDenied,
        Status::ActionFailed,
        Status::Unsupported,
    ];

    /// The wire code.
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The stable SCREAMING_SNAKE name, e.g. `"BAD_TOTP"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "GRANTED",
            Status::Malformed => "MALFORMED",
            Status::UnknownDevice => "UNKNOWN_DEVICE",
            Status::Revoked => "REVOKED",
            Status::BadTotp => "BAD_TOTP",
            Status::TotpReused => "TOTP_REUSED",
            Status::ClockSkew => "CLOCK_SKEW",
            Status::NonceInvalid => "NONCE_INVALID",
            Status::BadTag => "BAD_TAG",
            Status::LockedOut => "LOCKED_OUT",
            Status::EndpointDenied => "ENDPOINT_DENIED",
            Status::ActionFailed => "ACTION_FAILED",
            Status::Unsupported => "UNSUPPORTED",
        }
    }

    /// Parses a name produced by [`Status::as_str`].
    #[must_use]
    pub fn from_name(name: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// `true` only for [`Status::Granted`].
    #[must_use]
    pub const fn is_granted(self) -> bool {
        matches!(self, Status::Granted)
    }

    /// Whether this outcome counts towards a lockout threshold (see `PROTOCOL.md`, "Lockout"):
    /// every denial except [`Status::LockedOut`] (a lock answered it) and
    /// [`Status::ActionFailed`] (the phone proved itself; the door failed). Against the device
    /// when the frame proved possession of its key, else against the peer address.
    #[must_use]
    pub const fn counts_as_failure(self) -> bool {
        !matches!(
            self,
            Status::Granted | Status::LockedOut | Status::ActionFailed
        )
    }
}

impl TryFrom<u8> for Status {
    type Error = Error;

    fn try_from(code: u8) -> Result<Self, Error> {
        match Status::ALL.get(usize::from(code)) {
            Some(s) => Ok(*s),
            None => Err(Error::UnknownStatus(code)),
        }
    }
}

impl From<Status> for u8 {
    fn from(s: Status) -> u8 {
        s.code()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        let expected: [(u8, &str); 13] = [
            (0, "GRANTED"),
            (1, "MALFORMED"),
            (2, "UNKNOWN_DEVICE"),
            (3, "REVOKED"),
            (4, "BAD_TOTP"),
            (5, "TOTP_REUSED"),
            (6, "CLOCK_SKEW"),
            (7, "NONCE_INVALID"),
            (8, "BAD_TAG"),
            (9, "LOCKED_OUT"),
            (10, "ENDPOINT_DENIED"),
            (11, "ACTION_FAILED"),
            (12, "UNSUPPORTED"),
        ];
        for (code, name) in expected {
            let s = Status::try_from(code).unwrap();
            assert_eq!(s.code(), code);
            assert_eq!(s.as_str(), name);
            assert_eq!(Status::from_name(name), Some(s));
        }
        for code in 13..=u8::MAX {
            assert_eq!(Status::try_from(code), Err(Error::UnknownStatus(code)));
        }
        assert_eq!(Status::from_name("granted"), None);
    }
}
