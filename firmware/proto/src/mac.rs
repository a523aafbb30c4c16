//! HMAC construction shared by TOTP (HMAC-SHA1) and the frame tags (HMAC-SHA256).
//!
//! The MAC itself is the `hmac` crate's. This module only builds the keyed instance without a
//! fallible call: `Hmac::new_from_slice` returns a `Result` although HMAC accepts keys of any
//! length, and this crate must not unwrap. RFC 2104 §2 defines the key block `K0` as the key
//! zero-padded to the hash's block size, after hashing it first if it is longer than a block;
//! `Hmac::new` takes exactly such a block, and does the same padding internally, so both paths
//! compute the identical MAC (the RFC 4231 vectors in the tests, including the 131-byte keys,
//! go through this function).

use hmac::digest::{Digest, Key, KeyInit, Mac};
use hmac::{EagerHash, Hmac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::Tag;

/// An HMAC instance keyed with `key` (any length).
pub(crate) fn keyed<D>(key: &[u8]) -> Hmac<D>
where
    D: EagerHash + Digest,
{
    let mut block = Key::<Hmac<D>>::default();
    if key.len() > block.len() {
        let mut hashed = D::digest(key);
        for (dst, src) in block.iter_mut().zip(hashed.iter()) {
            *dst = *src;
        }
        hashed.as_mut_slice().zeroize();
    } else {
        for (dst, src) in block.iter_mut().zip(key) {
            *dst = *src;
        }
    }
    let mac = <Hmac<D> as KeyInit>::new(&block);
    block.as_mut_slice().zeroize();
    mac
}

/// HMAC-SHA256 of the concatenation of `parts`, keyed with `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Tag {
    let mut mac = keyed::<Sha256>(key);
    for part in parts {
        mac.update(part);
    }
    let mut tag = [0u8; 32];
    let out = mac.finalize().into_bytes();
    for (dst, src) in tag.iter_mut().zip(out.iter()) {
        *dst = *src;
    }
    tag
}

/// Verifies an HMAC-SHA256 tag over `parts` in constant time.
pub(crate) fn verify_hmac_sha256(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = keyed::<Sha256>(key);
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}

/// Constant-time equality of two byte strings of the same public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        hex::decode(s).unwrap()
    }

    extern crate std;

    /// RFC 4231 §4.2–4.8, HMAC-SHA-256 column (test case 5 truncates to 128 bits).
    #[test]
    fn rfc4231_hmac_sha256() {
        let long_key = [0xaau8; 131];
        let cases: [(std::vec::Vec<u8>, std::vec::Vec<u8>, &str); 7] = [
            (
                [0x0bu8; 20].to_vec(),
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                [0xaau8; 20].to_vec(),
                [0xddu8; 50].to_vec(),
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                [0xcdu8; 50].to_vec(),
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                [0x0cu8; 20].to_vec(),
                b"Test With Truncation".to_vec(),
                "a3b6167473100ee06e0c796c2955552b",
            ),
            (
                long_key.to_vec(),
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                long_key.to_vec(),
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            let expected = hex(expected);
            // Split the message to exercise the multi-part path the frames use.
            let (a, b) = data.split_at(data.len() / 2);
            let tag = hmac_sha256(&key, &[a, b]);
            assert_eq!(&tag[..expected.len()], &expected[..]);
            if expected.len() == 32 {
                assert!(verify_hmac_sha256(&key, &[&data], &expected));
                let mut wrong = expected.clone();
                wrong[31] ^= 1;
                assert!(!verify_hmac_sha256(&key, &[&data], &wrong));
            }
            // Same answer as the fallible constructor.
            let mut reference = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            reference.update(&data);
            assert_eq!(&reference.finalize().into_bytes()[..], &tag[..]);
        }
    }

    #[test]
    fn verify_rejects_wrong_length_tag() {
        let tag = hmac_sha256(b"k", &[b"m"]);
        assert!(!verify_hmac_sha256(b"k", &[b"m"], &tag[..31]));
        assert!(!verify_hmac_sha256(b"k", &[b"m"], &[]));
    }
}
