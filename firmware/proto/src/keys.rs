//! Per-device MAC keys, derived from the device's TOTP secret.

use core::fmt;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::{DeviceId, Error, TAG_LEN};

/// HKDF `info` for the key that signs auth frames (phone → gateway).
pub const INFO_AUTH_KEY: &[u8] = b"latchkey/v1/key/auth";
/// HKDF `info` for the key that signs result frames (gateway → phone).
pub const INFO_RESULT_KEY: &[u8] = b"latchkey/v1/key/result";
/// Shortest TOTP secret accepted for key derivation (RFC 4226 R6: at least 128 bits).
pub const MIN_SECRET_LEN: usize = 16;

/// The two 32-byte HMAC-SHA256 keys of one device.
///
/// `auth` signs auth frames, `result` signs result frames; using separate keys means a tag
/// made for one direction can never be accepted in the other. Both are derived with
/// HKDF-SHA256 (RFC 5869):
///
/// ```text
/// salt = device id (16 raw UUID bytes)
/// ikm  = TOTP secret (raw bytes, i.e. base32-decoded; 20 bytes for latchkey devices)
/// auth   = HKDF-Expand(HKDF-Extract(salt, ikm), "latchkey/v1/key/auth",   32)
/// result = HKDF-Expand(HKDF-Extract(salt, ikm), "latchkey/v1/key/result", 32)
/// ```
///
/// The keys are wiped from memory on drop, and `Debug` does not print them.
pub struct DeviceKeys {
    auth: [u8; TAG_LEN],
    result: [u8; TAG_LEN],
}

impl DeviceKeys {
    /// Derives a device's keys from its TOTP secret and id.
    ///
    /// # Errors
    /// [`Error::SecretTooShort`] if the secret has fewer than 16 bytes;
    /// [`Error::KeyDerivation`] never in practice (HKDF only refuses outputs over 8160 bytes).
    pub fn derive(totp_secret: &[u8], device_id: &DeviceId) -> Result<DeviceKeys, Error> {
        if totp_secret.len() < MIN_SECRET_LEN {
            return Err(Error::SecretTooShort(totp_secret.len()));
        }
        let hk = Hkdf::<Sha256>::new(Some(device_id), totp_secret);
        let mut keys = DeviceKeys {
            auth: [0; TAG_LEN],
            result: [0; TAG_LEN],
        };
        hk.expand(INFO_AUTH_KEY, &mut keys.auth)
            .map_err(|_| Error::KeyDerivation)?;
        hk.expand(INFO_RESULT_KEY, &mut keys.result)
            .map_err(|_| Error::KeyDerivation)?;
        Ok(keys)
    }

    /// Wraps keys that were derived elsewhere (e.g. provisioned into firmware).
    #[must_use]
    pub fn from_raw(auth: [u8; TAG_LEN], result: [u8; TAG_LEN]) -> DeviceKeys {
        DeviceKeys { auth, result }
    }

    /// The key that signs auth frames.
    #[must_use]
    pub fn auth_key(&self) -> &[u8; TAG_LEN] {
        &self.auth
    }

    /// The key that signs result frames.
    #[must_use]
    pub fn result_key(&self) -> &[u8; TAG_LEN] {
        &self.result
    }
}

impl Clone for DeviceKeys {
    fn clone(&self) -> Self {
        DeviceKeys {
            auth: self.auth,
            result: self.result,
        }
    }
}

impl Drop for DeviceKeys {
    fn drop(&mut self) {
        self.auth.zeroize();
        self.result.zeroize();
    }
}

impl zeroize::ZeroizeOnDrop for DeviceKeys {}

impl fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceKeys { .. }")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    /// RFC 5869 Appendix A.1 (test case 1), through the same `hkdf` type `derive` uses.
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let (prk, hk) = Hkdf::<Sha256>::extract(Some(&salt), &ikm);
        assert_eq!(
            hex::encode(prk),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let mut okm = [0u8; 42];
        hk.expand(&info, &mut okm).unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn keys_differ_by_purpose_and_device() {
        let secret = b"12345678901234567890";
        let a = DeviceKeys::derive(secret, &[1; 16]).unwrap();
        let b = DeviceKeys::derive(secret, &[2; 16]).unwrap();
        assert_ne!(a.auth_key(), a.result_key());
        assert_ne!(a.auth_key(), b.auth_key());
        assert_ne!(a.result_key(), b.result_key());
        let again = DeviceKeys::derive(secret, &[1; 16]).unwrap();
        assert_eq!(a.auth_key(), again.auth_key());
    }

    #[test]
    fn short_secret_rejected() {
        assert!(matches!(
            DeviceKeys::derive(&[0; 15], &[0; 16]),
            Err(Error::SecretTooShort(15))
        ));
        assert!(DeviceKeys::derive(&[0; 16], &[0; 16]).is_ok());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let keys = DeviceKeys::from_raw([0xab; 32], [0xcd; 32]);
        let shown = format!("{keys:?}");
        assert_eq!(shown, "DeviceKeys { .. }");
    }
}
