//! The fixed inputs of the test vectors in `docs/PROTOCOL.md`, and the computation of every
//! expected byte from them. `examples/vectors.rs` prints them; `tests/vectors.rs` pins them
//! and checks the document. Not part of the stable API.

use crate::{
    adv_data, totp_at, totp_step, AuthFrame, AuthRequest, Challenge, DeviceId, DeviceKeys, Error,
    Nonce, ResultFrame, Status, Tag, ADV_COMPANY_ID, ADV_DATA_LEN, LEGACY_ADV_MAX, SERVICE_UUID,
    TAG_LEN,
};

/// The RFC 6238 test secret, ASCII `12345678901234567890` (base32
/// `GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ`).
pub const TOTP_SECRET: &[u8; 20] = b"12345678901234567890";
/// Device id `6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b`.
pub const DEVICE_ID: DeviceId = [
    0x6f, 0x1c, 0x2a, 0x9e, 0x3b, 0x4d, 0x4e, 0x5f, 0x8a, 0x7b, 0x9c, 0x0d, 0x1e, 0x2f, 0x3a, 0x4b,
];
/// Challenge nonce `000102030405060708090a0b0c0d0e0f`.
pub const NONCE: Nonce = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
];
/// Gateway time in the challenge: 2026-01-01T00:00:00Z.
pub const GATEWAY_TIME: u64 = 1_767_225_600;
/// Phone time in the auth frame (and for its TOTP code): 12 s after the gateway's.
pub const PHONE_TIME: u64 = 1_767_225_612;
/// Endpoint id.
pub const ENDPOINT: &str = "front-door";
/// `retry_after` in the locked-out result.
pub const RETRY_AFTER: u16 = 120;
/// `retry_after` in the unsigned (peer) locked-out result.
pub const PEER_RETRY_AFTER: u16 = 60;
/// A gateway id, as `gatewayId` in the pair answer.
pub const GATEWAY_ID: &str = "0123456789abcdef0123456789abcdef";

/// Everything the vectors section of `PROTOCOL.md` lists.
#[derive(Debug)]
pub struct Vectors {
    /// The derived keys.
    pub keys: DeviceKeys,
    /// TOTP step of [`PHONE_TIME`].
    pub step: u64,
    /// TOTP code at [`PHONE_TIME`].
    pub totp: u32,
    /// Challenge frame.
    pub challenge: [u8; Challenge::LEN],
    /// Auth frame buffer; the frame is `auth[..auth_len]`.
    pub auth: [u8; AuthFrame::MAX_LEN],
    /// Auth frame length.
    pub auth_len: usize,
    /// Signed `GRANTED` result.
    pub result_granted: [u8; ResultFrame::LEN],
    /// Signed `LOCKED_OUT` result with `retry_after` = [`RETRY_AFTER`].
    pub result_locked_out: [u8; ResultFrame::LEN],
    /// Unsigned `UNKNOWN_DEVICE` result.
    pub result_unknown_device: [u8; ResultFrame::LEN],
    /// Unsigned `LOCKED_OUT` result (a peer lockout) with `retry_after` = [`PEER_RETRY_AFTER`].
    pub result_peer_locked_out: [u8; ResultFrame::LEN],
    /// Manufacturer data (after the company id) of [`GATEWAY_ID`]'s advertisement.
    pub adv_data: [u8; ADV_DATA_LEN],
    /// The whole legacy advertising data of that gateway: Flags, service UUID, manufacturer
    /// data, in that order.
    pub advertising: [u8; LEGACY_ADV_MAX],
}

impl Vectors {
    /// The auth frame.
    #[must_use]
    pub fn auth_frame(&self) -> &[u8] {
        self.auth.get(..self.auth_len).unwrap_or_default()
    }

    /// The auth frame's tag (its last 32 bytes).
    #[must_use]
    pub fn auth_tag(&self) -> Tag {
        let mut tag = [0u8; TAG_LEN];
        let frame = self.auth_frame();
        let start = frame.len().saturating_sub(TAG_LEN);
        for (dst, src) in tag.iter_mut().zip(frame.iter().skip(start)) {
            *dst = *src;
        }
        tag
    }
}

/// Computes every vector from the fixed inputs.
///
/// # Errors
/// Only if the codec itself is broken.
pub fn compute() -> Result<Vectors, Error> {
    let keys = DeviceKeys::derive(TOTP_SECRET, &DEVICE_ID)?;
    let totp = totp_at(TOTP_SECRET, PHONE_TIME);
    let challenge = Challenge {
        nonce: NONCE,
        gateway_time: GATEWAY_TIME,
    }
    .to_bytes();
    let request = AuthRequest {
        device_id: DEVICE_ID,
        totp,
        timestamp: PHONE_TIME,
        endpoint: ENDPOINT,
    };
    let mut auth = [0u8; AuthFrame::MAX_LEN];
    let auth_len = AuthFrame::encode(&request, &keys, &NONCE, &mut auth)?;
    let mut v = Vectors {
        keys,
        step: totp_step(PHONE_TIME),
        totp,
        challenge,
        auth,
        auth_len,
        result_granted: [0; ResultFrame::LEN],
        result_locked_out: [0; ResultFrame::LEN],
        result_unknown_device: [0; ResultFrame::LEN],
        result_peer_locked_out: [0; ResultFrame::LEN],
        adv_data: adv_data(GATEWAY_ID),
        advertising: [0; LEGACY_ADV_MAX],
    };
    v.advertising = advertising(&v.adv_data);
    let auth_tag = v.auth_tag();
    let result = |status, retry_after| ResultFrame {
        status,
        retry_after,
        nonce: NONCE,
    };
    result(Status::Granted, 0).encode_signed(&v.keys, &auth_tag, &mut v.result_granted)?;
    result(Status::LockedOut, RETRY_AFTER).encode_signed(
        &v.keys,
        &auth_tag,
        &mut v.result_locked_out,
    )?;
    result(Status::UnknownDevice, 0).encode_unsigned(&mut v.result_unknown_device)?;
    result(Status::LockedOut, PEER_RETRY_AFTER).encode_unsigned(&mut v.result_peer_locked_out)?;
    Ok(v)
}

/// Flags (LE General Discoverable, BR/EDR not supported), the complete list of 128-bit
/// service UUIDs (little-endian), and the manufacturer data (company id little-endian).
fn advertising(data: &[u8; ADV_DATA_LEN]) -> [u8; LEGACY_ADV_MAX] {
    let mut out = [0u8; LEGACY_ADV_MAX];
    let company = ADV_COMPANY_ID.to_le_bytes();
    // AD structure length: the type byte, the company id, the data.
    let mfr_len = u8::try_from(1 + 2 + ADV_DATA_LEN).unwrap_or(0);
    let parts: [&[u8]; 6] = [
        &[0x02, 0x01, 0x06],
        &[0x11, 0x07],
        &SERVICE_UUID.to_le_bytes(),
        &[mfr_len, 0xff],
        &company,
        data,
    ];
    for (dst, src) in out.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
        *dst = *src;
    }
    out
}
