//! An endpoint id held by value, as it sits in a grant or a decrypted request: a length byte and
//! 32 zero-padded bytes on the wire.

use core::fmt;

use super::Error;
use crate::endpoint::is_endpoint_byte;
use crate::MAX_ENDPOINT_LEN;

/// Bytes an endpoint id takes on the wire in version 2: its length, then 32 bytes, zero-padded.
pub const ENDPOINT_FIELD_LEN: usize = 1 + MAX_ENDPOINT_LEN;

/// An endpoint id (`[a-z0-9_-]`, 0–32 bytes), owned.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId {
    len: u8,
    bytes: [u8; MAX_ENDPOINT_LEN],
}

impl EndpointId {
    /// Checks and copies an endpoint id.
    ///
    /// # Errors
    /// [`Error::EndpointTooLong`] or [`Error::EndpointChar`].
    pub fn new(id: &str) -> Result<EndpointId, Error> {
        let raw = id.as_bytes();
        if raw.len() > MAX_ENDPOINT_LEN {
            return Err(Error::EndpointTooLong(raw.len()));
        }
        if let Some(bad) = raw.iter().find(|b| !is_endpoint_byte(**b)) {
            return Err(Error::EndpointChar(*bad));
        }
        let mut bytes = [0u8; MAX_ENDPOINT_LEN];
        for (dst, src) in bytes.iter_mut().zip(raw) {
            *dst = *src;
        }
        Ok(EndpointId {
            // At most 32: fits.
            len: raw.len() as u8,
            bytes,
        })
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        let used = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only ASCII was ever stored.
        core::str::from_utf8(used).unwrap_or_default()
    }

    /// The wire form: length byte, then the id zero-padded to 32 bytes.
    #[must_use]
    pub fn to_field(&self) -> [u8; ENDPOINT_FIELD_LEN] {
        let mut out = [0u8; ENDPOINT_FIELD_LEN];
        out[0] = self.len;
        for (dst, src) in out.iter_mut().skip(1).zip(self.bytes.iter()) {
            *dst = *src;
        }
        out
    }

    /// Parses the wire form, refusing a length above 32, a byte outside `[a-z0-9_-]` and
    /// non-zero padding.
    ///
    /// # Errors
    /// As described; [`Error::BadLength`] if `field` is not 33 bytes.
    pub fn from_field(field: &[u8]) -> Result<EndpointId, Error> {
        let (&len, rest) = field.split_first().ok_or(Error::Empty)?;
        if rest.len() != MAX_ENDPOINT_LEN {
            return Err(Error::BadLength {
                expected: ENDPOINT_FIELD_LEN,
                actual: field.len(),
            });
        }
        let n = usize::from(len);
        if n > MAX_ENDPOINT_LEN {
            return Err(Error::EndpointTooLong(n));
        }
        let (id, padding) = rest.split_at(n);
        if let Some(bad) = id.iter().find(|b| !is_endpoint_byte(**b)) {
            return Err(Error::EndpointChar(*bad));
        }
        if padding.iter().any(|b| *b != 0) {
            return Err(Error::NonZeroPadding);
        }
        let mut bytes = [0u8; MAX_ENDPOINT_LEN];
        for (dst, src) in bytes.iter_mut().zip(id) {
            *dst = *src;
        }
        Ok(EndpointId { len, bytes })
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({:?})", self.as_str())
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn field_round_trip_and_refusals() {
        let id = EndpointId::new("front-door").unwrap();
        let field = id.to_field();
        assert_eq!(field[0], 10);
        assert_eq!(EndpointId::from_field(&field).unwrap(), id);
        assert_eq!(id.as_str(), "front-door");
        let mut padded = field;
        padded[32] = 1;
        assert_eq!(EndpointId::from_field(&padded), Err(Error::NonZeroPadding));
        let mut long = field;
        long[0] = 33;
        assert_eq!(
            EndpointId::from_field(&long),
            Err(Error::EndpointTooLong(33))
        );
        let mut upper = field;
        upper[1] = b'F';
        assert_eq!(
            EndpointId::from_field(&upper),
            Err(Error::EndpointChar(b'F'))
        );
        assert!(EndpointId::from_field(&field[..32]).is_err());
        assert_eq!(EndpointId::new("a b"), Err(Error::EndpointChar(b' ')));
        assert_eq!(EndpointId::new(""), EndpointId::from_field(&[0; 33]));
    }
}
