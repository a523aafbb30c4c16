//! Everything that can go wrong while encoding, decoding or keying a frame.

use core::fmt;

use crate::Status;

/// Why a frame could not be encoded or decoded, or a key derived.
///
/// Each malformed field has its own variant so that logs say what was wrong; on the wire every
/// decode error becomes [`Status::Malformed`], except a foreign version, which becomes
/// [`Status::Unsupported`] (see [`Error::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The output buffer given to an `encode` is too small.
    BufferTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The frame is empty.
    Empty,
    /// The frame's first byte is not [`crate::PROTOCOL_VERSION`].
    UnsupportedVersion(u8),
    /// The frame's second byte is not the kind expected here.
    WrongKind {
        /// The kind this decoder reads.
        expected: u8,
        /// The kind found.
        found: u8,
    },
    /// The frame ends before all its fields.
    Truncated {
        /// The length the frame must have (as far as it could be determined).
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The frame has bytes after its last field.
    TrailingBytes {
        /// The length the frame must have.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The TOTP field is not a 6-digit code (it is ≥ 1 000 000).
    TotpOutOfRange(u32),
    /// The endpoint id is longer than [`crate::MAX_ENDPOINT_LEN`].
    EndpointTooLong(usize),
    /// The endpoint id is not valid UTF-8.
    EndpointUtf8,
    /// The endpoint id contains a character outside `[a-z0-9_-]` (the first offending byte).
    EndpointChar(u8),
    /// The status byte is not a known [`Status`] code.
    UnknownStatus(u8),
    /// A result frame says [`Status::Granted`] without a tag; grants are always authenticated.
    UnsignedGrant,
    /// A tag did not verify.
    BadTag,
    /// A result frame answers a different challenge nonce than the one given (another phone's
    /// attempt, or a stale one).
    NonceMismatch,
    /// A TOTP secret shorter than 16 bytes (RFC 4226 requires at least 128 bits).
    SecretTooShort(usize),
    /// HKDF refused to expand (cannot happen for the fixed 32-byte outputs used here).
    KeyDerivation,
}

impl Error {
    /// The status a gateway answers when an auth frame fails to decode with this error.
    #[must_use]
    pub const fn status(&self) -> Status {
        match self {
            Error::UnsupportedVersion(_) => Status::Unsupported,
            _ => Status::Malformed,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "output buffer too small: need {needed} bytes, have {available}"
                )
            }
            Error::Empty => f.write_str("empty frame"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Error::WrongKind { expected, found } => {
                write!(
                    f,
                    "wrong frame kind: expected {expected:#04x}, found {found:#04x}"
                )
            }
            Error::Truncated { expected, actual } => {
                write!(
                    f,
                    "frame truncated: expected {expected} bytes, got {actual}"
                )
            }
            Error::TrailingBytes { expected, actual } => {
                write!(f, "trailing bytes: expected {expected} bytes, got {actual}")
            }
            Error::TotpOutOfRange(v) => write!(f, "TOTP code {v} is not 6 digits"),
            Error::EndpointTooLong(n) => write!(f, "endpoint id is {n} bytes, at most 32 allowed"),
            Error::EndpointUtf8 => f.write_str("endpoint id is not valid UTF-8"),
            Error::EndpointChar(b) => {
                write!(
                    f,
                    "endpoint id contains byte {b:#04x}, only [a-z0-9_-] allowed"
                )
            }
            Error::UnknownStatus(s) => write!(f, "unknown status code {s}"),
            Error::UnsignedGrant => f.write_str("result grants access without a tag"),
            Error::BadTag => f.write_str("tag does not verify"),
            Error::NonceMismatch => f.write_str("result answers another challenge"),
            Error::SecretTooShort(n) => {
                write!(f, "TOTP secret is {n} bytes, at least 16 required")
            }
            Error::KeyDerivation => f.write_str("key derivation failed"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
