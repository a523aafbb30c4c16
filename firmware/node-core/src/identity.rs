//! The node's own P-256 key pair (NODES.md §2): made from the board's CSPRNG on first boot and
//! after a factory reset; the public key goes to the gateway at registration as SEC1 uncompressed,
//! standard base64 with padding.

use alloc::string::String;

use data_encoding::BASE64;
use p256::elliptic_curve::sec1::ToSec1Point;
use zeroize::Zeroizing;

use crate::board::Rng;

/// Length of a P-256 secret scalar.
pub const SECRET_LEN: usize = 32;

/// The node's key pair. `Debug` shows only the public key.
pub struct Identity {
    secret: p256::SecretKey,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity")
            .field("pubkey", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new key pair from the CSPRNG.
    pub fn generate(rng: &mut impl Rng) -> Self {
        loop {
            let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
            rng.fill_bytes(bytes.as_mut());
            // Rejection sampling: zero or ≥ n (probability ~2^-32) is drawn again.
            if let Some(identity) = Self::from_secret_bytes(bytes.as_ref()) {
                return identity;
            }
        }
    }

    /// Restores a stored key pair; `None` if the bytes are not a valid scalar.
    pub fn from_secret_bytes(bytes: &[u8]) -> Option<Self> {
        p256::SecretKey::from_slice(bytes)
            .ok()
            .map(|secret| Self { secret })
    }

    /// The secret scalar, for storage.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; SECRET_LEN]> {
        let mut out = Zeroizing::new([0u8; SECRET_LEN]);
        out.copy_from_slice(&self.secret.to_bytes());
        out
    }

    /// The private key, for the door's ECDH with phones (PROTOCOL.md §15).
    pub fn door_key(&self) -> p256::SecretKey {
        self.secret.clone()
    }

    /// The public key as SEC1 uncompressed (65 bytes), standard base64 with padding.
    pub fn public_base64(&self) -> String {
        let point = self.secret.public_key().to_sec1_point(false);
        BASE64.encode(point.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(u8);
    impl Rng for Fixed {
        fn fill_bytes(&mut self, buf: &mut [u8]) {
            buf.fill(self.0);
        }
    }

    #[test]
    fn public_key_is_65_byte_sec1_uncompressed_in_standard_base64() {
        let id = Identity::generate(&mut Fixed(7));
        let raw = BASE64.decode(id.public_base64().as_bytes()).unwrap();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 0x04);
    }

    #[test]
    fn a_stored_secret_restores_the_same_key() {
        let id = Identity::generate(&mut Fixed(9));
        let again = Identity::from_secret_bytes(id.secret_bytes().as_ref()).unwrap();
        assert_eq!(id.public_base64(), again.public_base64());
    }

    #[test]
    fn invalid_scalars_are_refused_and_redrawn() {
        assert!(Identity::from_secret_bytes(&[0u8; 32]).is_none());
        assert!(Identity::from_secret_bytes(&[0xffu8; 32]).is_none());
        struct ZeroThenSeven(bool);
        impl Rng for ZeroThenSeven {
            fn fill_bytes(&mut self, buf: &mut [u8]) {
                buf.fill(if self.0 { 7 } else { 0 });
                self.0 = true;
            }
        }
        let id = Identity::generate(&mut ZeroThenSeven(false));
        assert_eq!(
            id.public_base64(),
            Identity::generate(&mut Fixed(7)).public_base64()
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let id = Identity::generate(&mut Fixed(7));
        let d = alloc::format!("{id:?}");
        assert!(d.contains("pubkey") && !d.contains("secret"), "{d}");
    }
}
