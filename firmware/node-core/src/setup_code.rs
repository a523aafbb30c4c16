//! The setup code printed on the node's label: the WPA2 passphrase of the node's setup access
//! point (NODES.md §4). 16 base32 characters (80 bits) from the board's CSPRNG, shown and typed
//! in four groups; the hyphenated form is the passphrase, so what is printed is what is typed.
//!
//! It is made once, on first start, and kept outside the credentials (a factory reset keeps it:
//! the label does not change).

use alloc::string::String;

use data_encoding::BASE32_NOPAD;
use zeroize::Zeroizing;

use crate::board::Rng;

/// Random bytes in a code: 10 bytes = 80 bits = 16 base32 characters.
pub const CODE_BYTES: usize = 10;
/// Length of the printed code, `XXXX-XXXX-XXXX-XXXX`.
pub const CODE_LEN: usize = 19;
/// The setup access point's SSID prefix; [`ssid`] adds four characters of the label id.
pub const SSID_PREFIX: &str = "latchkey-setup-";

/// Makes a new setup code.
pub fn generate(rng: &mut impl Rng) -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; CODE_BYTES]);
    rng.fill_bytes(raw.as_mut());
    let plain = Zeroizing::new(BASE32_NOPAD.encode(raw.as_ref()));
    let mut code = Zeroizing::new(String::with_capacity(CODE_LEN));
    for (i, c) in plain.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            code.push('-');
        }
        code.push(c);
    }
    code
}

/// Whether `s` has the shape of a setup code (a stored one read back, say).
pub fn is_valid(s: &str) -> bool {
    s.len() == CODE_LEN
        && s.bytes().enumerate().all(|(i, b)| {
            if i % 5 == 4 {
                b == b'-'
            } else {
                b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
            }
        })
}

/// The setup access point's SSID: the prefix and a 4-character label id that is not secret
/// (so the SSID tells nothing about the code), e.g. `latchkey-setup-7QX2`.
pub fn ssid(label_id: &str) -> String {
    let mut s = String::from(SSID_PREFIX);
    s.push_str(label_id);
    s
}

/// Makes a label id: 4 base32 characters (20 bits), only to tell nodes apart in a Wi-Fi list.
pub fn generate_label_id(rng: &mut impl Rng) -> String {
    let mut raw = [0u8; 5];
    rng.fill_bytes(&mut raw);
    let mut s = BASE32_NOPAD.encode(&raw);
    s.truncate(4);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) struct Counter(u8);
    impl Rng for Counter {
        fn fill_bytes(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 = self.0.wrapping_mul(31).wrapping_add(7);
                *b = self.0;
            }
        }
    }

    #[test]
    fn codes_are_grouped_base32_with_80_bits() {
        let code = generate(&mut Counter(1));
        assert_eq!(code.len(), CODE_LEN);
        assert!(is_valid(&code), "{}", code.as_str());
        // WPA2 passphrases are 8..=63 characters.
        assert!((8..=63).contains(&code.len()));
        assert_ne!(code, generate(&mut Counter(2)));
    }

    #[test]
    fn validation_rejects_other_shapes() {
        assert!(!is_valid("ABCD-EFGH-IJKL-MNO1"));
        assert!(!is_valid("ABCDEFGHIJKLMNOPQRS"));
        assert!(!is_valid("abcd-efgh-ijkl-mnop"));
    }

    #[test]
    fn the_ssid_carries_the_label_id_not_the_code() {
        let id = generate_label_id(&mut Counter(3));
        assert_eq!(id.len(), 4);
        assert_eq!(ssid(&id), alloc::format!("latchkey-setup-{id}"));
    }
}
