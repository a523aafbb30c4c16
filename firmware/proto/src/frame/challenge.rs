//! The challenge the gateway serves on the Challenge characteristic.

use super::{check_header, check_len, Reader, Writer};
use crate::{Error, Nonce, KIND_CHALLENGE, NONCE_LEN, PROTOCOL_VERSION};

/// A fresh nonce for this connection, and the gateway's clock.
///
/// Layout (26 bytes): `version u8 | kind u8 = 0x01 | nonce [16] | gateway_time u64 BE`.
/// `gateway_time` is the gateway's Unix time when it issued the nonce; the phone can compare it
/// with its own clock to explain a [`crate::Status::ClockSkew`] before it happens. It is not
/// authenticated, so the phone must not set its clock from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Challenge {
    /// The nonce the auth frame must echo and sign.
    pub nonce: Nonce,
    /// Gateway Unix time (seconds) at issue.
    pub gateway_time: u64,
}

impl Challenge {
    /// Encoded length.
    pub const LEN: usize = 2 + NONCE_LEN + 8;

    /// Writes the frame into `out`, returning its length ([`Challenge::LEN`]).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`].
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, Error> {
        let mut w = Writer::new(out, Self::LEN)?;
        w.put(&[PROTOCOL_VERSION, KIND_CHALLENGE])?;
        w.put(&self.nonce)?;
        w.put(&self.gateway_time.to_be_bytes())?;
        Ok(w.len())
    }

    /// The encoded frame.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        // Cannot fail: `out` has exactly the needed length.
        let _ = self.encode(&mut out);
        out
    }

    /// Parses a challenge frame.
    ///
    /// # Errors
    /// [`Error::Empty`], [`Error::UnsupportedVersion`], [`Error::WrongKind`],
    /// [`Error::Truncated`], [`Error::TrailingBytes`].
    pub fn decode(frame: &[u8]) -> Result<Challenge, Error> {
        check_header(frame, KIND_CHALLENGE, Self::LEN)?;
        check_len(frame, Self::LEN)?;
        let mut r = Reader::new(frame, 2);
        Ok(Challenge {
            nonce: r.array()?,
            gateway_time: r.u64()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Challenge {
            nonce: [7; 16],
            gateway_time: 0x0102_0304_0506_0708,
        };
        let bytes = c.to_bytes();
        assert_eq!(bytes[..2], [1, 1]);
        assert_eq!(bytes[18..], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(Challenge::decode(&bytes), Ok(c));
    }

    #[test]
    fn rejects_bad_frames() {
        let bytes = Challenge {
            nonce: [0; 16],
            gateway_time: 5,
        }
        .to_bytes();
        assert_eq!(Challenge::decode(&[]), Err(Error::Empty));
        assert_eq!(Challenge::decode(&[2]), Err(Error::UnsupportedVersion(2)));
        assert_eq!(
            Challenge::decode(&[1]),
            Err(Error::Truncated {
                expected: 26,
                actual: 1
            })
        );
        assert_eq!(
            Challenge::decode(&[1, 2]),
            Err(Error::WrongKind {
                expected: 1,
                found: 2
            })
        );
        assert_eq!(
            Challenge::decode(&bytes[..25]),
            Err(Error::Truncated {
                expected: 26,
                actual: 25
            })
        );
        let mut long = [0u8; 27];
        long[..26].copy_from_slice(&bytes);
        assert_eq!(
            Challenge::decode(&long),
            Err(Error::TrailingBytes {
                expected: 26,
                actual: 27
            })
        );
        let mut small = [0u8; 25];
        assert_eq!(
            Challenge::decode(&bytes).unwrap().encode(&mut small),
            Err(Error::BufferTooSmall {
                needed: 26,
                available: 25
            })
        );
    }
}
