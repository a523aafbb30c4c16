//! The auth frame the phone writes to the Auth characteristic.

use super::{check_header, check_len, Reader, Writer};
use crate::endpoint::endpoint_from_bytes;
use crate::mac::{ct_eq, hmac_sha256, verify_hmac_sha256};
use crate::{
    validate_endpoint, DeviceId, DeviceKeys, Error, Nonce, Tag, DEVICE_ID_LEN, KIND_AUTH,
    MAX_ENDPOINT_LEN, NONCE_LEN, PROTOCOL_VERSION, TAG_LEN,
};

/// Domain-separation label prepended to the signed bytes of an auth frame.
pub const AUTH_MAC_LABEL: &[u8] = b"latchkey/v1/mac/auth";

/// Offset of the endpoint length byte: version, kind, nonce, device id, totp, timestamp.
const ENDPOINT_LEN_AT: usize = 2 + NONCE_LEN + DEVICE_ID_LEN + 4 + 8;

/// What the phone asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthRequest<'a> {
    /// The device id given at pairing, as 16 raw UUID bytes.
    pub device_id: DeviceId,
    /// The current 6-digit TOTP code, as a number (`0..=999_999`).
    pub totp: u32,
    /// The phone's Unix time in seconds.
    pub timestamp: u64,
    /// Endpoint id, `[a-z0-9_-]{0,32}`; empty for the gateway's default endpoint.
    pub endpoint: &'a str,
}

impl AuthRequest<'_> {
    /// Checks the fields that have a restricted range: the TOTP code and the endpoint id.
    ///
    /// # Errors
    /// [`Error::TotpOutOfRange`], [`Error::EndpointTooLong`], [`Error::EndpointChar`].
    pub fn validate(&self) -> Result<(), Error> {
        if self.totp >= 1_000_000 {
            return Err(Error::TotpOutOfRange(self.totp));
        }
        validate_endpoint(self.endpoint)
    }

    /// Length of the signed auth frame carrying this request.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        AuthFrame::MIN_LEN + self.endpoint.len()
    }
}

/// A decoded auth frame: the request, the nonce it answers, its tag, and the bytes the tag
/// covers.
///
/// Layout (79 + N bytes, N = endpoint length ≤ 32, so at most 111):
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | version = 1 |
/// | 1 | 1 | kind = 0x02 |
/// | 2 | 16 | nonce (from the challenge) |
/// | 18 | 16 | device id |
/// | 34 | 4 | TOTP code, u32 BE |
/// | 38 | 8 | timestamp, u64 BE |
/// | 46 | 1 | N |
/// | 47 | N | endpoint id (ASCII) |
/// | 47+N | 32 | tag = HMAC-SHA256(auth key, `"latchkey/v1/mac/auth"` ‖ bytes 0..47+N) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFrame<'a> {
    /// The nonce the phone read from the challenge (not yet checked against the live one).
    pub nonce: Nonce,
    /// The request fields.
    pub request: AuthRequest<'a>,
    /// The frame's tag (not yet verified).
    pub tag: Tag,
    /// The bytes the tag covers (everything before it, after the label).
    pub signed: &'a [u8],
}

impl<'a> AuthFrame<'a> {
    /// Length with an empty endpoint id.
    pub const MIN_LEN: usize = ENDPOINT_LEN_AT + 1 + TAG_LEN;
    /// Length with the longest endpoint id.
    pub const MAX_LEN: usize = Self::MIN_LEN + MAX_ENDPOINT_LEN;

    /// Writes a signed auth frame for `request`, answering the challenge `nonce`, into `out`.
    /// Returns the frame's length ([`AuthRequest::frame_len`]).
    ///
    /// # Errors
    /// [`Error::TotpOutOfRange`], [`Error::EndpointTooLong`], [`Error::EndpointChar`],
    /// [`Error::BufferTooSmall`].
    pub fn encode(
        request: &AuthRequest<'_>,
        keys: &DeviceKeys,
        nonce: &Nonce,
        out: &mut [u8],
    ) -> Result<usize, Error> {
        request.validate()?;
        let endpoint = request.endpoint.as_bytes();
        let endpoint_len =
            u8::try_from(endpoint.len()).map_err(|_| Error::EndpointTooLong(endpoint.len()))?;
        let mut w = Writer::new(out, request.frame_len())?;
        w.put(&[PROTOCOL_VERSION, KIND_AUTH])?;
        w.put(nonce)?;
        w.put(&request.device_id)?;
        w.put(&request.totp.to_be_bytes())?;
        w.put(&request.timestamp.to_be_bytes())?;
        w.put(&[endpoint_len])?;
        w.put(endpoint)?;
        let tag = hmac_sha256(keys.auth_key(), &[AUTH_MAC_LABEL, w.written()]);
        w.put(&tag)?;
        Ok(w.len())
    }

    /// Parses an auth frame. Nothing is verified except the syntax; see [`AuthFrame::tag_valid`]
    /// and [`verify_tag`].
    ///
    /// # Errors
    /// [`Error::Empty`], [`Error::UnsupportedVersion`], [`Error::WrongKind`],
    /// [`Error::Truncated`], [`Error::TrailingBytes`], [`Error::EndpointTooLong`],
    /// [`Error::TotpOutOfRange`], [`Error::EndpointUtf8`], [`Error::EndpointChar`].
    pub fn decode(frame: &'a [u8]) -> Result<AuthFrame<'a>, Error> {
        check_header(frame, KIND_AUTH, Self::MIN_LEN)?;
        let endpoint_len = match frame.get(ENDPOINT_LEN_AT) {
            Some(&n) => usize::from(n),
            None => {
                return Err(Error::Truncated {
                    expected: Self::MIN_LEN,
                    actual: frame.len(),
                })
            }
        };
        if endpoint_len > MAX_ENDPOINT_LEN {
            return Err(Error::EndpointTooLong(endpoint_len));
        }
        let signed_len = ENDPOINT_LEN_AT + 1 + endpoint_len;
        check_len(frame, signed_len + TAG_LEN)?;

        let mut r = Reader::new(frame, 2);
        let nonce = r.array()?;
        let device_id = r.array()?;
        let totp = r.u32()?;
        let timestamp = r.u64()?;
        let _ = r.u8()?; // the endpoint length, read above
        let endpoint_bytes = r.take(endpoint_len)?;
        let tag = r.array()?;

        if totp >= 1_000_000 {
            return Err(Error::TotpOutOfRange(totp));
        }
        let endpoint = endpoint_from_bytes(endpoint_bytes)?;
        let signed = frame.get(..signed_len).ok_or(Error::Truncated {
            expected: signed_len + TAG_LEN,
            actual: frame.len(),
        })?;
        Ok(AuthFrame {
            nonce,
            request: AuthRequest {
                device_id,
                totp,
                timestamp,
                endpoint,
            },
            tag,
            signed,
        })
    }

    /// Whether the tag verifies under `keys` (constant time). This covers the embedded nonce;
    /// checking that the nonce is the connection's live one is separate (see [`verify_tag`]).
    #[must_use]
    pub fn tag_valid(&self, keys: &DeviceKeys) -> bool {
        verify_hmac_sha256(keys.auth_key(), &[AUTH_MAC_LABEL, self.signed], &self.tag)
    }
}

/// Verifies a raw auth frame in one call: it decodes, it carries `nonce`, and its tag verifies
/// under `keys`. The nonce and tag comparisons are constant-time and both always run.
#[must_use]
pub fn verify_tag(keys: &DeviceKeys, nonce: &Nonce, frame: &[u8]) -> bool {
    match AuthFrame::decode(frame) {
        Ok(parsed) => {
            let nonce_ok = ct_eq(&parsed.nonce, nonce);
            let tag_ok = parsed.tag_valid(keys);
            nonce_ok & tag_ok
        }
        Err(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn keys() -> DeviceKeys {
        DeviceKeys::derive(b"12345678901234567890", &[0x11; 16]).unwrap()
    }

    fn request(endpoint: &str) -> AuthRequest<'_> {
        AuthRequest {
            device_id: [0x11; 16],
            totp: 123_456,
            timestamp: 1_767_225_600,
            endpoint,
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(AuthFrame::MIN_LEN, 79);
        assert_eq!(AuthFrame::MAX_LEN, 111);
        const { assert!(AuthFrame::MAX_LEN <= crate::MAX_ATT_PAYLOAD) };
    }

    #[test]
    fn round_trip_and_verify() {
        let nonce = [9u8; 16];
        let mut buf = [0u8; AuthFrame::MAX_LEN];
        for endpoint in ["", "front-door", "0123456789abcdefghijklmnopqrstuv"] {
            let req = request(endpoint);
            let n = AuthFrame::encode(&req, &keys(), &nonce, &mut buf).unwrap();
            assert_eq!(n, 79 + endpoint.len());
            let frame = &buf[..n];
            let parsed = AuthFrame::decode(frame).unwrap();
            assert_eq!(parsed.request, req);
            assert_eq!(parsed.nonce, nonce);
            assert_eq!(parsed.signed, &frame[..n - 32]);
            assert_eq!(parsed.tag[..], frame[n - 32..]);
            assert!(parsed.tag_valid(&keys()));
            assert!(verify_tag(&keys(), &nonce, frame));
            assert!(!verify_tag(&keys(), &[8; 16], frame));
            let other = DeviceKeys::derive(b"12345678901234567890", &[0x12; 16]).unwrap();
            assert!(!verify_tag(&other, &nonce, frame));
        }
    }

    #[test]
    fn flipping_any_bit_breaks_verification() {
        let nonce = [3u8; 16];
        let mut buf = [0u8; AuthFrame::MAX_LEN];
        let n = AuthFrame::encode(&request("front-door"), &keys(), &nonce, &mut buf).unwrap();
        for i in 0..n {
            for bit in 0..8 {
                let mut tampered = buf;
                tampered[i] ^= 1 << bit;
                assert!(
                    !verify_tag(&keys(), &nonce, &tampered[..n]),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn encode_rejects_bad_requests() {
        let mut buf = [0u8; 200];
        let k = keys();
        let mut req = request("Front");
        assert_eq!(
            AuthFrame::encode(&req, &k, &[0; 16], &mut buf),
            Err(Error::EndpointChar(b'F'))
        );
        req.endpoint = "a";
        req.totp = 1_000_000;
        assert_eq!(
            AuthFrame::encode(&req, &k, &[0; 16], &mut buf),
            Err(Error::TotpOutOfRange(1_000_000))
        );
        req.totp = 0;
        assert_eq!(
            AuthFrame::encode(&req, &k, &[0; 16], &mut buf[..79]),
            Err(Error::BufferTooSmall {
                needed: 80,
                available: 79
            })
        );
    }

    #[test]
    fn decode_rejects_each_malformed_field() {
        let nonce = [3u8; 16];
        let mut buf = [0u8; AuthFrame::MAX_LEN + 1];
        let n = AuthFrame::encode(&request("ab"), &keys(), &nonce, &mut buf).unwrap();
        let good = buf;

        assert_eq!(AuthFrame::decode(&[]), Err(Error::Empty));
        let mut f = good;
        f[0] = 2;
        assert_eq!(
            AuthFrame::decode(&f[..n]),
            Err(Error::UnsupportedVersion(2))
        );
        let mut f = good;
        f[1] = 1;
        assert_eq!(
            AuthFrame::decode(&f[..n]),
            Err(Error::WrongKind {
                expected: 2,
                found: 1
            })
        );
        assert_eq!(
            AuthFrame::decode(&good[..40]),
            Err(Error::Truncated {
                expected: 79,
                actual: 40
            })
        );
        assert_eq!(
            AuthFrame::decode(&good[..n - 1]),
            Err(Error::Truncated {
                expected: n,
                actual: n - 1
            })
        );
        assert_eq!(
            AuthFrame::decode(&good[..n + 1]),
            Err(Error::TrailingBytes {
                expected: n,
                actual: n + 1
            })
        );
        let mut f = good;
        f[46] = 33;
        assert_eq!(AuthFrame::decode(&f[..n]), Err(Error::EndpointTooLong(33)));
        let mut f = good;
        f[34..38].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert_eq!(
            AuthFrame::decode(&f[..n]),
            Err(Error::TotpOutOfRange(1_000_000))
        );
        let mut f = good;
        f[47] = b'A';
        assert_eq!(AuthFrame::decode(&f[..n]), Err(Error::EndpointChar(b'A')));
        let mut f = good;
        f[47] = 0xff;
        assert_eq!(AuthFrame::decode(&f[..n]), Err(Error::EndpointUtf8));
        assert!(AuthFrame::decode(&good[..n]).is_ok());
    }
}
