//! latchkey's BLE door protocol: the one definition of every byte that crosses the air.
//!
//! The gateway (BlueZ GATT server), the reference phone client and endpoint firmware all
//! depend on this crate, so the two ends of a link cannot disagree on a layout, a MAC input or
//! a status code. `docs/PROTOCOL.md` describes the same protocol for implementers in other
//! languages; `tests/vectors.rs` checks that the document's test vectors match this code.
//!
//! The crate is `no_std`, allocation-free and never panics on input. The `std` feature only
//! adds `std::error::Error` for [`Error`].
//!
//! Flow, after connecting (three ATT operations):
//! 1. the phone subscribes to [`RESULT_UUID`] (notify);
//! 2. the phone reads [`CHALLENGE_UUID`] and decodes a [`Challenge`];
//! 3. the phone writes an [`AuthFrame`] to [`AUTH_UUID`] (write with response);
//!
//! and the gateway notifies a [`ResultFrame`] on [`RESULT_UUID`].
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod adv;
pub mod dns_sd;
mod endpoint;
mod error;
mod frame;
mod keys;
mod mac;
mod policy;
mod status;
mod totp;
#[doc(hidden)]
pub mod vectors;

pub use adv::{
    adv_data, adv_matches, gateway_tag, ADV_BYTES_USED, ADV_COMPANY_ID, ADV_DATA_LEN, ADV_FORMAT,
    ADV_GATEWAY_LABEL, GATEWAY_TAG_LEN, LEGACY_ADV_MAX,
};
pub mod v2;

pub use endpoint::validate_endpoint;
pub use error::Error;
pub use frame::auth::{verify_tag, AuthFrame, AuthRequest, AUTH_MAC_LABEL};
pub use frame::challenge::Challenge;
pub use frame::result::{ResultFrame, VerifiedResult, RESULT_MAC_LABEL};
pub use keys::{DeviceKeys, INFO_AUTH_KEY, INFO_RESULT_KEY, MIN_SECRET_LEN};
pub use policy::{
    lockout_secs, timestamp_acceptable, LOCKOUT_BASE_SECS, LOCKOUT_MAX_SECS, LOCKOUT_THRESHOLD,
    MAX_CLOCK_SKEW_SECS, NONCE_LIFETIME_SECS,
};
pub use status::Status;
pub use totp::{
    hotp, totp_at, totp_step, verify_totp, TOTP_DIGITS, TOTP_PERIOD_SECS, TOTP_SKEW_STEPS,
};

/// The GATT primary service, advertised by the gateway: `8603cf6e-0001-462b-ab5a-16c899edcee3`.
pub const SERVICE_UUID: u128 = 0x8603_cf6e_0001_462b_ab5a_16c8_99ed_cee3;
/// Challenge characteristic (read, notify): `8603cf6e-0002-462b-ab5a-16c899edcee3`.
pub const CHALLENGE_UUID: u128 = 0x8603_cf6e_0002_462b_ab5a_16c8_99ed_cee3;
/// Auth characteristic (write with response): `8603cf6e-0003-462b-ab5a-16c899edcee3`.
pub const AUTH_UUID: u128 = 0x8603_cf6e_0003_462b_ab5a_16c8_99ed_cee3;
/// Result characteristic (notify): `8603cf6e-0004-462b-ab5a-16c899edcee3`.
pub const RESULT_UUID: u128 = 0x8603_cf6e_0004_462b_ab5a_16c8_99ed_cee3;

/// First byte of every frame. A receiver rejects any other value with
/// [`Error::UnsupportedVersion`] (answered with [`Status::Unsupported`]).
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the gateway's challenge nonce.
pub const NONCE_LEN: usize = 16;
/// Length of a device id: a UUID's 16 bytes in RFC 4122 (big-endian, as written) order.
pub const DEVICE_ID_LEN: usize = 16;
/// Longest endpoint id, in bytes. Endpoint ids are `[a-z0-9_-]*`; empty means the gateway's
/// default endpoint.
pub const MAX_ENDPOINT_LEN: usize = 32;
/// Length of the HMAC-SHA256 tags and of the derived keys.
pub const TAG_LEN: usize = 32;
/// Largest value a single ATT write or notification carries at ATT MTU 185 (MTU − 3).
pub const MAX_ATT_PAYLOAD: usize = 182;

/// Second byte of a [`Challenge`] frame.
pub const KIND_CHALLENGE: u8 = 0x01;
/// Second byte of an [`AuthFrame`].
pub const KIND_AUTH: u8 = 0x02;
/// Second byte of a [`ResultFrame`].
pub const KIND_RESULT: u8 = 0x03;

/// A challenge nonce.
pub type Nonce = [u8; NONCE_LEN];
/// A device id (raw UUID bytes).
pub type DeviceId = [u8; DEVICE_ID_LEN];
/// An HMAC-SHA256 tag.
pub type Tag = [u8; TAG_LEN];

/// Displays a 128-bit UUID in its canonical lower-case string form.
///
/// `UuidText(SERVICE_UUID).to_string()` is `8603cf6e-0001-462b-ab5a-16c899edcee3`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UuidText(pub u128);

impl core::fmt::Display for UuidText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96,
            (v >> 80) & 0xffff,
            (v >> 64) & 0xffff,
            (v >> 48) & 0xffff,
            v & 0xffff_ffff_ffff
        )
    }
}

impl core::fmt::Debug for UuidText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}
