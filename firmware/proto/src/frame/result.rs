//! The result frame the gateway notifies on the Result characteristic.

use super::{check_header, check_len, Reader, Writer};
use crate::mac::{ct_eq, hmac_sha256, verify_hmac_sha256};
use crate::{
    DeviceKeys, Error, Nonce, Status, Tag, KIND_RESULT, NONCE_LEN, PROTOCOL_VERSION, TAG_LEN,
};

/// Domain-separation label prepended to the signed bytes of a result frame.
pub const RESULT_MAC_LABEL: &[u8] = b"latchkey/v1/mac/result";

/// Length of the part of a result frame the tag covers.
const SIGNED_LEN: usize = 2 + 1 + 2 + NONCE_LEN;

/// The gateway's answer to one auth frame.
///
/// Layout (53 bytes):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version = 1 |
/// | 1 | 1 | kind = 0x03 |
/// | 2 | 1 | status code |
/// | 3 | 2 | retry_after, u16 BE seconds (for `LockedOut`; otherwise 0) |
/// | 5 | 16 | nonce of the attempt this answers |
/// | 21 | 32 | tag = HMAC-SHA256(result key, `"latchkey/v1/mac/result"` ‖ auth tag ‖ bytes 0..21), or 32 zero bytes when the gateway has no key (unauthenticated) |
///
/// The nonce lets every subscribed phone recognise its own result (BlueZ notifies all
/// subscribers); the auth tag in the MAC input binds the answer to the exact frame the phone
/// sent. An unauthenticated result can never carry [`Status::Granted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultFrame {
    /// The outcome.
    pub status: Status,
    /// Seconds until the lockout ends, for [`Status::LockedOut`]; otherwise 0.
    pub retry_after: u16,
    /// The nonce of the challenge this attempt answered.
    pub nonce: Nonce,
}

/// A result frame that passed [`ResultFrame::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedResult {
    /// The decoded content.
    pub result: ResultFrame,
    /// `true` if the tag verified under the device's result key. `false` means the frame had an
    /// all-zero tag: a denial the gateway could not sign (unknown device, malformed frame, …)
    /// — or a spoof. Show it as unconfirmed; it is never a grant.
    pub authenticated: bool,
}

impl ResultFrame {
    /// Encoded length.
    pub const LEN: usize = SIGNED_LEN + TAG_LEN;

    fn write_body<'b>(&self, out: &'b mut [u8]) -> Result<Writer<'b>, Error> {
        let mut w = Writer::new(out, Self::LEN)?;
        w.put(&[PROTOCOL_VERSION, KIND_RESULT, self.status.code()])?;
        w.put(&self.retry_after.to_be_bytes())?;
        w.put(&self.nonce)?;
        Ok(w)
    }

    /// Writes a result authenticated with the device's result key, bound to `auth_tag` (the tag
    /// of the auth frame this answers). Returns [`ResultFrame::LEN`].
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`].
    pub fn encode_signed(
        &self,
        keys: &DeviceKeys,
        auth_tag: &Tag,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        let mut w = self.write_body(out)?;
        let tag = hmac_sha256(
            keys.result_key(),
            &[RESULT_MAC_LABEL, auth_tag, w.written()],
        );
        w.put(&tag)?;
        Ok(w.len())
    }

    /// Writes an unauthenticated result (all-zero tag), for when the gateway has no key for the
    /// sender. Returns [`ResultFrame::LEN`].
    ///
    /// # Errors
    /// [`Error::UnsignedGrant`] for [`Status::Granted`]; [`Error::BufferTooSmall`].
    pub fn encode_unsigned(&self, out: &mut [u8]) -> Result<usize, Error> {
        if self.status.is_granted() {
            return Err(Error::UnsignedGrant);
        }
        let mut w = self.write_body(out)?;
        w.put(&[0u8; TAG_LEN])?;
        Ok(w.len())
    }

    /// Parses a result frame, returning its content and its tag (not verified).
    ///
    /// # Errors
    /// [`Error::Empty`], [`Error::UnsupportedVersion`], [`Error::WrongKind`],
    /// [`Error::Truncated`], [`Error::TrailingBytes`], [`Error::UnknownStatus`],
    /// [`Error::UnsignedGrant`] (a grant with an all-zero tag).
    pub fn decode(frame: &[u8]) -> Result<(ResultFrame, Tag), Error> {
        check_header(frame, KIND_RESULT, Self::LEN)?;
        check_len(frame, Self::LEN)?;
        let mut r = Reader::new(frame, 2);
        let status = Status::try_from(r.u8()?)?;
        let retry_after = r.u16()?;
        let nonce = r.array()?;
        let tag: Tag = r.array()?;
        if status.is_granted() && is_zero(&tag) {
            return Err(Error::UnsignedGrant);
        }
        Ok((
            ResultFrame {
                status,
                retry_after,
                nonce,
            },
            tag,
        ))
    }

    /// What a phone runs on a notification: decode, check that it answers *this* attempt
    /// (`nonce` read from the challenge, `auth_tag` = last 32 bytes of the auth frame sent),
    /// and verify the tag.
    ///
    /// # Errors
    /// Any [`ResultFrame::decode`] error; [`Error::NonceMismatch`] if the result answers
    /// another attempt (ignore it and keep waiting); [`Error::BadTag`] if a non-zero tag does
    /// not verify (a forgery, or a result for another frame: treat as no answer).
    pub fn verify(
        frame: &[u8],
        keys: &DeviceKeys,
        nonce: &Nonce,
        auth_tag: &Tag,
    ) -> Result<VerifiedResult, Error> {
        let (result, tag) = Self::decode(frame)?;
        if !ct_eq(&result.nonce, nonce) {
            return Err(Error::NonceMismatch);
        }
        if is_zero(&tag) {
            return Ok(VerifiedResult {
                result,
                authenticated: false,
            });
        }
        let signed = frame.get(..SIGNED_LEN).ok_or(Error::Truncated {
            expected: Self::LEN,
            actual: frame.len(),
        })?;
        if verify_hmac_sha256(
            keys.result_key(),
            &[RESULT_MAC_LABEL, auth_tag, signed],
            &tag,
        ) {
            Ok(VerifiedResult {
                result,
                authenticated: true,
            })
        } else {
            Err(Error::BadTag)
        }
    }
}

/// Whether a (public) tag is all zero bytes.
fn is_zero(tag: &Tag) -> bool {
    tag.iter().all(|b| *b == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys() -> DeviceKeys {
        DeviceKeys::derive(b"12345678901234567890", &[0x11; 16]).unwrap()
    }

    const NONCE: Nonce = [5; 16];
    const AUTH_TAG: Tag = [0xa5; 32];

    fn frame(status: Status) -> ResultFrame {
        ResultFrame {
            status,
            retry_after: 0,
            nonce: NONCE,
        }
    }

    #[test]
    fn signed_round_trip() {
        for status in Status::ALL {
            let r = ResultFrame {
                retry_after: 42,
                ..frame(status)
            };
            let mut buf = [0u8; ResultFrame::LEN];
            assert_eq!(r.encode_signed(&keys(), &AUTH_TAG, &mut buf), Ok(53));
            let (decoded, _) = ResultFrame::decode(&buf).unwrap();
            assert_eq!(decoded, r);
            let v = ResultFrame::verify(&buf, &keys(), &NONCE, &AUTH_TAG).unwrap();
            assert_eq!(v.result, r);
            assert!(v.authenticated);
        }
    }

    #[test]
    fn bound_to_auth_tag_nonce_and_key() {
        let mut buf = [0u8; ResultFrame::LEN];
        frame(Status::Granted)
            .encode_signed(&keys(), &AUTH_TAG, &mut buf)
            .unwrap();
        let mut other_tag = AUTH_TAG;
        other_tag[0] ^= 1;
        assert_eq!(
            ResultFrame::verify(&buf, &keys(), &NONCE, &other_tag),
            Err(Error::BadTag)
        );
        assert_eq!(
            ResultFrame::verify(&buf, &keys(), &[6; 16], &AUTH_TAG),
            Err(Error::NonceMismatch)
        );
        let other_keys = DeviceKeys::derive(b"12345678901234567890", &[0x12; 16]).unwrap();
        assert_eq!(
            ResultFrame::verify(&buf, &other_keys, &NONCE, &AUTH_TAG),
            Err(Error::BadTag)
        );
        // A result signed with the auth key (wrong direction) does not verify.
        let swapped = DeviceKeys::from_raw(*keys().result_key(), *keys().auth_key());
        assert_eq!(
            ResultFrame::verify(&buf, &swapped, &NONCE, &AUTH_TAG),
            Err(Error::BadTag)
        );
    }

    #[test]
    fn flipping_any_bit_breaks_verification() {
        let mut buf = [0u8; ResultFrame::LEN];
        frame(Status::Granted)
            .encode_signed(&keys(), &AUTH_TAG, &mut buf)
            .unwrap();
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut t = buf;
                t[i] ^= 1 << bit;
                let v = ResultFrame::verify(&t, &keys(), &NONCE, &AUTH_TAG);
                assert!(
                    !matches!(
                        v,
                        Ok(VerifiedResult {
                            authenticated: true,
                            ..
                        })
                    ),
                    "byte {i} bit {bit}: {v:?}"
                );
            }
        }
    }

    #[test]
    fn unsigned_results() {
        let mut buf = [0u8; ResultFrame::LEN];
        assert_eq!(
            frame(Status::Granted).encode_unsigned(&mut buf),
            Err(Error::UnsignedGrant)
        );
        frame(Status::UnknownDevice)
            .encode_unsigned(&mut buf)
            .unwrap();
        assert_eq!(buf[21..], [0u8; 32]);
        let v = ResultFrame::verify(&buf, &keys(), &NONCE, &AUTH_TAG).unwrap();
        assert!(!v.authenticated);
        assert_eq!(v.result.status, Status::UnknownDevice);
        // Turning an unsigned denial into a grant is refused.
        buf[2] = 0;
        assert_eq!(ResultFrame::decode(&buf), Err(Error::UnsignedGrant));
        assert_eq!(
            ResultFrame::verify(&buf, &keys(), &NONCE, &AUTH_TAG),
            Err(Error::UnsignedGrant)
        );
    }

    #[test]
    fn decode_rejects_malformed() {
        let mut buf = [0u8; ResultFrame::LEN + 1];
        frame(Status::BadTotp)
            .encode_signed(&keys(), &AUTH_TAG, &mut buf)
            .unwrap();
        let good = buf;
        assert_eq!(ResultFrame::decode(&[]), Err(Error::Empty));
        assert_eq!(
            ResultFrame::decode(&good[..52]),
            Err(Error::Truncated {
                expected: 53,
                actual: 52
            })
        );
        assert_eq!(
            ResultFrame::decode(&good[..54]),
            Err(Error::TrailingBytes {
                expected: 53,
                actual: 54
            })
        );
        // The first code no status has (codes are appended, so this moves with them).
        let unknown = Status::ALL.len() as u8;
        let mut f = good;
        f[2] = unknown;
        assert_eq!(
            ResultFrame::decode(&f[..53]),
            Err(Error::UnknownStatus(unknown))
        );
        let mut f = good;
        f[0] = 0;
        assert_eq!(
            ResultFrame::decode(&f[..53]),
            Err(Error::UnsupportedVersion(0))
        );
        let mut f = good;
        f[1] = 2;
        assert_eq!(
            ResultFrame::decode(&f[..53]),
            Err(Error::WrongKind {
                expected: 3,
                found: 2
            })
        );
    }
}
