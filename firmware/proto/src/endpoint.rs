//! Endpoint ids: which door (or other action) an auth frame asks for.

use crate::{Error, MAX_ENDPOINT_LEN};

/// Checks an endpoint id: at most [`MAX_ENDPOINT_LEN`] bytes of `[a-z0-9_-]`. The empty id
/// is valid and names the gateway's default endpoint.
///
/// # Errors
/// [`Error::EndpointTooLong`] or [`Error::EndpointChar`] (with the first offending byte).
pub fn validate_endpoint(endpoint: &str) -> Result<(), Error> {
    validate_endpoint_bytes(endpoint.as_bytes())
}

/// Checks raw endpoint bytes as received, then returns them as `&str`.
pub(crate) fn endpoint_from_bytes(bytes: &[u8]) -> Result<&str, Error> {
    if bytes.len() > MAX_ENDPOINT_LEN {
        return Err(Error::EndpointTooLong(bytes.len()));
    }
    let text = core::str::from_utf8(bytes).map_err(|_| Error::EndpointUtf8)?;
    validate_endpoint_bytes(bytes)?;
    Ok(text)
}

fn validate_endpoint_bytes(bytes: &[u8]) -> Result<(), Error> {
    if bytes.len() > MAX_ENDPOINT_LEN {
        return Err(Error::EndpointTooLong(bytes.len()));
    }
    match bytes.iter().find(|b| !is_endpoint_byte(**b)) {
        Some(bad) => Err(Error::EndpointChar(*bad)),
        None => Ok(()),
    }
}

pub(crate) const fn is_endpoint_byte(b: u8) -> bool {
    matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "",
            "front-door",
            "garage_2",
            "a",
            "0123456789abcdefghijklmnopqrstuv",
        ] {
            assert_eq!(validate_endpoint(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        assert_eq!(validate_endpoint("Front"), Err(Error::EndpointChar(b'F')));
        assert_eq!(validate_endpoint("a b"), Err(Error::EndpointChar(b' ')));
        assert_eq!(validate_endpoint("a.b"), Err(Error::EndpointChar(b'.')));
        assert_eq!(validate_endpoint("tür"), Err(Error::EndpointChar(0xc3)));
        assert_eq!(
            validate_endpoint("0123456789abcdefghijklmnopqrstuvw"),
            Err(Error::EndpointTooLong(33))
        );
        assert_eq!(endpoint_from_bytes(&[b'a', 0xff]), Err(Error::EndpointUtf8));
        assert_eq!(
            endpoint_from_bytes("é".as_bytes()),
            Err(Error::EndpointChar(0xc3))
        );
    }
}
