//! What the gateway's advertisement carries besides the Door service UUID: a short form of its
//! `gatewayId`, so that a phone paired with several gateways connects to the right one
//! without connecting to each (PROTOCOL.md §3, "Advertising").
//!
//! The short form travels as manufacturer-specific data (AD type `0xFF`) under company id
//! [`ADV_COMPANY_ID`]: one format byte, then the first [`GATEWAY_TAG_LEN`] bytes of
//! `SHA-256("latchkey/v1/adv/gateway" ‖ gatewayId)`. A hash rather than the id's own bytes, so
//! the encoding does not depend on how a gateway spells its id. It is not a secret (the
//! `gatewayId` is announced over mDNS too) and proves nothing: it only picks a candidate; the
//! signed result frame is what authenticates the gateway.

use sha2::{Digest, Sha256};

/// Company identifier of the manufacturer data. `0xFFFF` is the value the Bluetooth SIG
/// reserves for tests and internal use: latchkey has no assigned identifier, and the Door
/// service UUID in the same advertisement tells latchkey's data from anyone else's.
pub const ADV_COMPANY_ID: u16 = 0xFFFF;
/// First byte of the manufacturer data: the layout below.
pub const ADV_FORMAT: u8 = 0x01;
/// Bytes of the gateway hash in the advertisement (40 bits).
pub const GATEWAY_TAG_LEN: usize = 5;
/// Length of the manufacturer data after the company id.
pub const ADV_DATA_LEN: usize = 1 + GATEWAY_TAG_LEN;
/// Domain-separation label of the gateway hash.
pub const ADV_GATEWAY_LABEL: &[u8] = b"latchkey/v1/adv/gateway";

/// Legacy (BLE 4.x) advertising data holds at most this many bytes.
pub const LEGACY_ADV_MAX: usize = 31;
/// Bytes the gateway's advertising data uses: Flags (3, added by BlueZ), the complete list
/// of 128-bit service UUIDs (2 + 16) and the manufacturer data (2 + 2 + [`ADV_DATA_LEN`]).
/// The local name goes in the scan response.
pub const ADV_BYTES_USED: usize = 3 + (2 + 16) + (2 + 2 + ADV_DATA_LEN);
const _: () = assert!(ADV_BYTES_USED <= LEGACY_ADV_MAX);

/// The first [`GATEWAY_TAG_LEN`] bytes of `SHA-256(ADV_GATEWAY_LABEL ‖ gateway_id)`.
#[must_use]
pub fn gateway_tag(gateway_id: &str) -> [u8; GATEWAY_TAG_LEN] {
    let digest = Sha256::new()
        .chain_update(ADV_GATEWAY_LABEL)
        .chain_update(gateway_id.as_bytes())
        .finalize();
    let mut tag = [0u8; GATEWAY_TAG_LEN];
    for (dst, src) in tag.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    tag
}

/// The manufacturer data (after the company id) a gateway with `gateway_id` advertises.
#[must_use]
pub fn adv_data(gateway_id: &str) -> [u8; ADV_DATA_LEN] {
    let mut out = [0u8; ADV_DATA_LEN];
    out[0] = ADV_FORMAT;
    for (dst, src) in out.iter_mut().skip(1).zip(gateway_tag(gateway_id).iter()) {
        *dst = *src;
    }
    out
}

/// Whether manufacturer data heard under [`ADV_COMPANY_ID`] names the gateway `gateway_id`.
/// Data of another format or length never matches.
#[must_use]
pub fn adv_matches(data: &[u8], gateway_id: &str) -> bool {
    data == adv_data(gateway_id).as_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_and_match_only_their_gateway() {
        let a = "0123456789abcdef0123456789abcdef";
        let b = "0123456789abcdef0123456789abcdee";
        assert_ne!(gateway_tag(a), gateway_tag(b));
        let data = adv_data(a);
        assert_eq!(data[0], ADV_FORMAT);
        assert!(adv_matches(&data, a));
        assert!(!adv_matches(&data, b));
        assert!(!adv_matches(&data[..5], a));
        let mut other_format = data;
        other_format[0] = 2;
        assert!(!adv_matches(&other_format, a));
        assert_eq!(ADV_BYTES_USED, 31);
    }
}
