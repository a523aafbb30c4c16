//! The outcome of a version-2 unlock attempt, as carried in a result frame.

use core::fmt;

use super::Error;

/// A door's answer to a version-2 request.
///
/// The code space is shared with version 1 ([`crate::Status`]): the codes version 2 reuses
/// keep their version-1 number and name (so `access.*` events read the same whichever
/// version opened the door); codes 13 and up are new. Codes are stable: never renumber, only
/// append. Version-1 codes that have no meaning here (2–6, 9) are never sent by a v2 door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Access granted; the endpoint's action ran.
    Granted = 0,
    /// The request did not decode (length, kind, padding, endpoint syntax).
    Malformed = 1,
    /// There is no live challenge on this connection (none issued, expired, or already used).
    NonceInvalid = 7,
    /// A grant's hint matched but the request does not decrypt under its keys (tampered, or
    /// made for another challenge).
    BadTag = 8,
    /// The tool is valid, but not for the endpoint asked for.
    EndpointDenied = 10,
    /// Everything checked out but the endpoint's action failed.
    ActionFailed = 11,
    /// The frame's protocol version is not supported.
    Unsupported = 12,
    /// The door holds no grant for this phone, or none with this access tool id.
    UnknownTool = 13,
    /// The access tool has expired (at the door's clock).
    ToolExpired = 14,
    /// The access tool is not valid yet (at the door's clock).
    ToolNotYetValid = 15,
    /// The grant belongs to a revocation epoch older than the door's.
    ToolRevoked = 16,
    /// The door does not know the wall time (it restarted and has not heard the gateway
    /// since), so it cannot check an expiry.
    ClockUnknown = 17,
}

impl Status {
    /// Every version-2 status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Granted,
        Status::Malformed,
        Status::NonceInvalid,
        Status::BadTag,
        Status::EndpointDenied,
        Status::ActionFailed,
        Status::Unsupported,
        Status::UnknownTool,
        Status::ToolExpired,
        Status::ToolNotYetValid,
        Status::ToolRevoked,
        Status::ClockUnknown,
    ];

    /// The wire code.
    #[must_use]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The stable SCREAMING_SNAKE name, e.g. `"TOOL_EXPIRED"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Granted => "GRANTED",
            Status::Malformed => "MALFORMED",
            Status::NonceInvalid => "NONCE_INVALID",
            Status::BadTag => "BAD_TAG",
            Status::EndpointDenied => "ENDPOINT_DENIED",
            Status::ActionFailed => "ACTION_FAILED",
            Status::Unsupported => "UNSUPPORTED",
            Status::UnknownTool => "UNKNOWN_TOOL",
            Status::ToolExpired => "TOOL_EXPIRED",
            Status::ToolNotYetValid => "TOOL_NOT_YET_VALID",
            Status::ToolRevoked => "TOOL_REVOKED",
            Status::ClockUnknown => "CLOCK_UNKNOWN",
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
}

impl TryFrom<u8> for Status {
    type Error = Error;

    fn try_from(code: u8) -> Result<Self, Error> {
        Status::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .ok_or(Error::UnknownStatus(code))
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
    fn shared_codes_match_version_1() {
        for s in Status::ALL.into_iter().filter(|s| s.code() < 13) {
            let v1 = crate::Status::try_from(s.code()).unwrap();
            assert_eq!(v1.as_str(), s.as_str());
        }
        for code in 0..=u8::MAX {
            match Status::try_from(code) {
                Ok(s) => assert_eq!(s.code(), code),
                Err(e) => assert_eq!(e, Error::UnknownStatus(code)),
            }
        }
        assert_eq!(Status::try_from(2), Err(Error::UnknownStatus(2)));
        assert_eq!(Status::from_name("TOOL_REVOKED"), Some(Status::ToolRevoked));
    }
}
