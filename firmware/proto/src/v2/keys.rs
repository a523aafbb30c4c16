//! Version-2 keys: the static-static P-256 shared secret of a phone and a door, the per-grant
//! hint key derived from it once, and the per-challenge session keys.
//!
//! ```text
//! Z        = x-coordinate of (own private scalar × peer public point), 32 bytes
//! hint_key = HKDF-SHA256(salt = door_id, ikm = Z, info = "latchkey/v2/key/hint", 32)
//! hint     = HMAC-SHA256(hint_key, "latchkey/v2/hint" ‖ nonce)[0..8]
//! PRK      = HKDF-Extract(salt = nonce, ikm = Z)
//! to_door  = HKDF-Expand(PRK, "latchkey/v2/key/phone-to-door" ‖ door_id, 32)
//! to_phone = HKDF-Expand(PRK, "latchkey/v2/key/door-to-phone" ‖ door_id, 32)
//! ```
//!
//! The door computes `Z` and `hint_key` once per grant (the scalar multiplication is the
//! expensive step on a microcontroller without ECC hardware); an unlock then costs one HMAC per
//! grant at challenge time and an HKDF and two AES-GCM operations per request.

use core::fmt;

use hkdf::Hkdf;
use hmac::digest::Mac;
use hmac::Hmac;
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{DoorId, Error, Hint, PublicKeyBytes, HINT_LEN, PUBLIC_KEY_LEN};
use crate::{mac, Nonce};

/// HKDF `info` of the hint key (the salt is the door id).
pub const INFO_HINT_KEY: &[u8] = b"latchkey/v2/key/hint";
/// HMAC label in front of the nonce when computing a hint.
pub const HINT_LABEL: &[u8] = b"latchkey/v2/hint";
/// HKDF `info` prefix of the key that encrypts requests (phone → door); the door id follows.
pub const INFO_TO_DOOR: &[u8] = b"latchkey/v2/key/phone-to-door";
/// HKDF `info` prefix of the key that encrypts results (door → phone); the door id follows.
pub const INFO_TO_PHONE: &[u8] = b"latchkey/v2/key/door-to-phone";

/// A P-256 public key as the 65-byte SEC1 uncompressed encoding (`04 ‖ X ‖ Y`).
///
/// # Errors
/// [`Error::BadPublicKey`] unless `bytes` is an uncompressed point on the curve (not the
/// identity).
pub fn parse_public_key(bytes: &[u8]) -> Result<p256::PublicKey, Error> {
    if bytes.len() != PUBLIC_KEY_LEN || bytes.first() != Some(&0x04) {
        return Err(Error::BadPublicKey);
    }
    p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| Error::BadPublicKey)
}

/// The 65-byte SEC1 uncompressed encoding of a public key.
#[must_use]
pub fn public_key_bytes(key: &p256::PublicKey) -> PublicKeyBytes {
    let point = key.to_sec1_point(false);
    let mut out = [0u8; PUBLIC_KEY_LEN];
    for (dst, src) in out.iter_mut().zip(point.as_bytes()) {
        *dst = *src;
    }
    out
}

/// A P-256 private key from its 32-byte big-endian scalar.
///
/// # Errors
/// [`Error::BadSecretKey`] if the scalar is zero or not below the group order.
pub fn parse_secret_key(bytes: &[u8; 32]) -> Result<p256::SecretKey, Error> {
    p256::SecretKey::from_slice(bytes).map_err(|_| Error::BadSecretKey)
}

/// What one phone and one door share, derived once: the ECDH secret `Z` and the hint key.
///
/// Both sides compute the same value: the phone from its private key and the door's public
/// key, the door from its private key and the phone's public key (taken from the grant).
/// Wiped on drop; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct PeerSecret {
    z: [u8; 32],
    hint_key: [u8; 32],
}

impl PeerSecret {
    /// ECDH between `own` and `peer` (SEC1 uncompressed), then the hint key for `door_id`.
    ///
    /// # Errors
    /// [`Error::BadPublicKey`] if `peer` is not a valid point.
    pub fn derive(
        own: &p256::SecretKey,
        peer: &[u8],
        door_id: &DoorId,
    ) -> Result<PeerSecret, Error> {
        let peer = parse_public_key(peer)?;
        let shared = own.diffie_hellman(&peer);
        let mut z = [0u8; 32];
        for (dst, src) in z.iter_mut().zip(shared.raw_secret_bytes().iter()) {
            *dst = *src;
        }
        let secret = PeerSecret::from_shared(&z, door_id);
        z.zeroize();
        Ok(secret)
    }

    /// Builds the secret from an already computed `Z` (e.g. restored from sealed storage).
    #[must_use]
    pub fn from_shared(z: &[u8; 32], door_id: &DoorId) -> PeerSecret {
        let mut hint_key = [0u8; 32];
        // A 32-byte output is far below HKDF's 255 × 32 limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(Some(door_id), z).expand(INFO_HINT_KEY, &mut hint_key);
        PeerSecret { z: *z, hint_key }
    }

    /// The ECDH shared secret `Z`.
    #[must_use]
    pub fn shared(&self) -> &[u8; 32] {
        &self.z
    }

    /// The hint key.
    #[must_use]
    pub fn hint_key(&self) -> &[u8; 32] {
        &self.hint_key
    }

    /// The 8-byte hint for a challenge nonce.
    #[must_use]
    pub fn hint(&self, nonce: &Nonce) -> Hint {
        self.hint_mac().hint(nonce)
    }

    /// The hint key as a keyed HMAC, for a door that computes the hint of every grant at
    /// each challenge: keying costs two of the four SHA-256 blocks of a hint, so it is done once.
    #[must_use]
    pub fn hint_mac(&self) -> HintMac {
        HintMac(mac::keyed::<Sha256>(&self.hint_key))
    }

    /// The session keys for one challenge.
    #[must_use]
    pub fn session(&self, nonce: &Nonce, door_id: &DoorId) -> SessionKeys {
        let hk = Hkdf::<Sha256>::new(Some(nonce), &self.z);
        let mut keys = SessionKeys {
            to_door: [0; 32],
            to_phone: [0; 32],
        };
        // 32-byte outputs: expand cannot fail.
        let _ = hk.expand_multi_info(&[INFO_TO_DOOR, door_id], &mut keys.to_door);
        let _ = hk.expand_multi_info(&[INFO_TO_PHONE, door_id], &mut keys.to_phone);
        keys
    }
}

impl Drop for PeerSecret {
    fn drop(&mut self) {
        self.z.zeroize();
        self.hint_key.zeroize();
    }
}

impl ZeroizeOnDrop for PeerSecret {}

impl fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerSecret { .. }")
    }
}

/// HMAC-SHA256 keyed with a hint key (see [`PeerSecret::hint_mac`]).
#[derive(Clone)]
pub struct HintMac(Hmac<Sha256>);

impl HintMac {
    /// The 8-byte hint for a challenge nonce.
    #[must_use]
    pub fn hint(&self, nonce: &Nonce) -> Hint {
        let mut mac = self.0.clone();
        mac.update(HINT_LABEL);
        mac.update(nonce);
        let tag = mac.finalize().into_bytes();
        let mut hint = [0u8; HINT_LEN];
        for (dst, src) in hint.iter_mut().zip(tag.iter()) {
            *dst = *src;
        }
        hint
    }
}

impl fmt::Debug for HintMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HintMac { .. }")
    }
}

/// The two AES-256-GCM keys of one challenge: `to_door` encrypts the request, `to_phone` the
/// result. Each encrypts exactly one message, which is why a fixed IV is safe (see
/// `PROTOCOL.md`). Wiped on drop; `Debug` prints nothing secret.
pub struct SessionKeys {
    to_door: [u8; 32],
    to_phone: [u8; 32],
}

impl SessionKeys {
    /// The request key (phone → door).
    #[must_use]
    pub fn to_door(&self) -> &[u8; 32] {
        &self.to_door
    }

    /// The result key (door → phone).
    #[must_use]
    pub fn to_phone(&self) -> &[u8; 32] {
        &self.to_phone
    }
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.to_door.zeroize();
        self.to_phone.zeroize();
    }
}

impl ZeroizeOnDrop for SessionKeys {}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn key(byte: u8) -> p256::SecretKey {
        parse_secret_key(&[byte; 32]).unwrap()
    }

    #[test]
    fn both_sides_derive_the_same_secret() {
        let (phone, door) = (key(0x11), key(0x22));
        let id = [9u8; 16];
        let at_phone =
            PeerSecret::derive(&phone, &public_key_bytes(&door.public_key()), &id).unwrap();
        let at_door =
            PeerSecret::derive(&door, &public_key_bytes(&phone.public_key()), &id).unwrap();
        assert_eq!(at_phone.shared(), at_door.shared());
        assert_eq!(at_phone.hint_key(), at_door.hint_key());
        let nonce = [1u8; 16];
        assert_eq!(at_phone.hint(&nonce), at_door.hint(&nonce));
        assert_ne!(at_phone.hint(&nonce), at_phone.hint(&[2u8; 16]));
        let (a, b) = (at_phone.session(&nonce, &id), at_door.session(&nonce, &id));
        assert_eq!(a.to_door(), b.to_door());
        assert_ne!(a.to_door(), a.to_phone());
        // Another door id gives other keys and another hint key.
        let other = at_phone.session(&nonce, &[8u8; 16]);
        assert_ne!(other.to_door(), a.to_door());
        let moved = PeerSecret::from_shared(at_phone.shared(), &[8u8; 16]);
        assert_ne!(moved.hint_key(), at_phone.hint_key());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(parse_secret_key(&[0; 32]).unwrap_err(), Error::BadSecretKey);
        assert_eq!(
            parse_secret_key(&[0xff; 32]).unwrap_err(),
            Error::BadSecretKey
        );
        let mut point = public_key_bytes(&key(3).public_key());
        assert!(parse_public_key(&point).is_ok());
        point[64] ^= 1;
        assert_eq!(parse_public_key(&point).unwrap_err(), Error::BadPublicKey);
        let compressed = key(3).public_key().to_sec1_point(true);
        assert_eq!(
            parse_public_key(compressed.as_bytes()).unwrap_err(),
            Error::BadPublicKey
        );
        assert_eq!(parse_public_key(&[0; 65]).unwrap_err(), Error::BadPublicKey);
    }

    #[test]
    fn debug_prints_no_secret() {
        let s = PeerSecret::from_shared(&[0xab; 32], &[0; 16]);
        assert_eq!(format!("{s:?}"), "PeerSecret { .. }");
        assert_eq!(
            format!("{:?}", s.session(&[0; 16], &[0; 16])),
            "SessionKeys { .. }"
        );
    }
}
