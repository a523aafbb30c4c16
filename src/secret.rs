//! Secret values and their generation. Every secret comes from the OS CSPRNG, is wiped on drop,
//! and prints as `[redacted]` through `Debug` and `Display` so it cannot leak into logs or errors.

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD, HEXLOWER};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub struct RandomError;

/// Fills a fresh array from the OS CSPRNG (getrandom(2) on Linux).
pub fn random_array<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| RandomError)?;
    Ok(out)
}

/// A secret string, e.g. a device key or a pair token as handed to a client.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(s: String) -> Self {
        Self(Zeroizing::new(s))
    }

    /// `prefix` + base64url of `N` random bytes.
    pub fn random_token<const N: usize>(prefix: &str) -> Result<Self, RandomError> {
        let mut raw = random_array::<N>()?;
        let s = format!("{prefix}{}", BASE64URL_NOPAD.encode(&raw));
        raw.zeroize();
        Ok(Self::new(s))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the token. Our tokens carry ≥128 bits of entropy, so a plain hash is enough
    /// to make the stored value useless to a thief (no KDF needed).
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.expose())
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Secret bytes, e.g. a TOTP secret once unsealed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        Self(Zeroizing::new(v))
    }

    pub fn random<const N: usize>() -> Result<Self, RandomError> {
        let mut raw = random_array::<N>()?;
        let out = Self::new(raw.to_vec());
        raw.zeroize();
        Ok(out)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// RFC 4648 base32 without padding, the form authenticator apps take.
    pub fn to_base32(&self) -> SecretString {
        SecretString::new(BASE32_NOPAD.encode(self.expose()))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// SHA-256 of a high-entropy token; what the store keeps instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(b).ok().map(Self)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to correlate in a debugger and reveals nothing useful.
        write!(f, "TokenHash({}…)", &HEXLOWER.encode(&self.0[..4]))
    }
}

/// Constant-time equality for secrets of any length (length itself is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = SecretString::random_token::<32>("dev_").unwrap();
        assert!(s.expose().starts_with("dev_"));
        assert_eq!(s.expose().len(), 4 + 43);
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let b = SecretBytes::random::<20>().unwrap();
        assert_eq!(format!("{b:?}"), "[redacted]");
        let h = s.hash();
        assert!(!format!("{h:?}").contains(&HEXLOWER.encode(&h.0)));
    }

    #[test]
    fn random_tokens_differ() {
        let a = SecretString::random_token::<16>("pt_").unwrap();
        let b = SecretString::random_token::<16>("pt_").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ct_eq_compares_contents_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
