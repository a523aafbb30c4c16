//! Everything that can go wrong with a version-2 frame, grant or snapshot.

use core::fmt;

use super::Status;

/// Why a version-2 frame, grant or snapshot was refused, or could not be built.
///
/// One variant per defect so that logs say what was wrong; none carries a secret or the
/// refused bytes. On the wire a frame's decode error becomes [`Status::Malformed`], a foreign
/// version [`Status::Unsupported`] (see [`Error::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The output buffer given to an `encode` is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The input is empty.
    Empty,
    /// The first byte is not version 2.
    UnsupportedVersion(u8),
    /// The second byte is not the kind expected here.
    WrongKind {
        /// The kind this decoder reads.
        expected: u8,
        /// The kind found.
        found: u8,
    },
    /// The input does not have the length its layout requires.
    BadLength {
        /// The length required (as far as it could be determined).
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// An endpoint length byte above 32.
    EndpointTooLong(usize),
    /// An endpoint byte outside `[a-z0-9_-]`.
    EndpointChar(u8),
    /// A padding byte that is not zero.
    NonZeroPadding,
    /// The status byte is not a version-2 [`Status`].
    UnknownStatus(u8),
    /// An unauthenticated result claims [`Status::Granted`].
    UnsignedGrant,
    /// AES-GCM refused the ciphertext (tampered, wrong key, or another challenge's).
    Decrypt,
    /// A result answers another challenge than the one given.
    NonceMismatch,
    /// A P-256 public key is not a valid SEC1 uncompressed point on the curve.
    BadPublicKey,
    /// A P-256 private key is zero or not below the group order.
    BadSecretKey,
    /// The gateway's Ed25519 public key is not a valid point.
    BadGatewayKey,
    /// The Ed25519 signature does not verify under the gateway's key.
    BadSignature,
    /// A grant or snapshot names another node than this one.
    WrongNode,
    /// A grant's `not_before` is not before its `expires`.
    EmptyValidity,
    /// A grant in a snapshot has another epoch than the snapshot.
    EpochMismatch,
    /// A snapshot's version is not newer than the one stored (a replay or a rollback).
    StaleVersion {
        /// Version stored.
        stored: u64,
        /// Version received.
        received: u64,
    },
    /// A snapshot's epoch is older than the one stored.
    StaleEpoch {
        /// Epoch stored.
        stored: u32,
        /// Epoch received.
        received: u32,
    },
    /// A snapshot lists more grants than a door keeps.
    TooManyGrants(usize),
    /// A snapshot lists the same (tool, endpoint) twice.
    DuplicateGrant,
    /// Text that is not standard base64 of an acceptable length.
    Base64,
}

impl Error {
    /// The status a door answers when a request fails to decode with this error.
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
            Error::Empty => f.write_str("empty input"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v}"),
            Error::WrongKind { expected, found } => {
                write!(
                    f,
                    "wrong kind: expected {expected:#04x}, found {found:#04x}"
                )
            }
            Error::BadLength { expected, actual } => {
                write!(f, "bad length: expected {expected} bytes, got {actual}")
            }
            Error::EndpointTooLong(n) => write!(f, "endpoint id is {n} bytes, at most 32 allowed"),
            Error::EndpointChar(b) => {
                write!(
                    f,
                    "endpoint id contains byte {b:#04x}, only [a-z0-9_-] allowed"
                )
            }
            Error::NonZeroPadding => f.write_str("non-zero padding"),
            Error::UnknownStatus(s) => write!(f, "unknown status code {s}"),
            Error::UnsignedGrant => f.write_str("unauthenticated result grants access"),
            Error::Decrypt => f.write_str("ciphertext does not authenticate"),
            Error::NonceMismatch => f.write_str("result answers another challenge"),
            Error::BadPublicKey => f.write_str("not a P-256 public key"),
            Error::BadSecretKey => f.write_str("not a P-256 private key"),
            Error::BadGatewayKey => f.write_str("not an Ed25519 public key"),
            Error::BadSignature => f.write_str("signature does not verify"),
            Error::WrongNode => f.write_str("grant is for another node"),
            Error::EmptyValidity => f.write_str("grant expires before it starts"),
            Error::EpochMismatch => f.write_str("grant epoch differs from the snapshot's"),
            Error::StaleVersion { stored, received } => {
                write!(f, "snapshot version {received} is not newer than {stored}")
            }
            Error::StaleEpoch { stored, received } => {
                write!(f, "snapshot epoch {received} is older than {stored}")
            }
            Error::TooManyGrants(n) => write!(f, "snapshot has {n} grants, too many"),
            Error::DuplicateGrant => f.write_str("snapshot lists a grant twice"),
            Error::Base64 => f.write_str("not standard base64 of an acceptable length"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
