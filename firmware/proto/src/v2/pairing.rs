//! Vehicle pairing (seed 000, `docs/PROTOCOL.md` "Vehicle keys"): the vehicle's signed
//! challenge, the gateway's signed pairing response (a grant bound to the vehicle's nonce), and
//! the phone's proof at the gateway (an approval sealed by ECDH with its registered key, and an
//! ECDSA signature by the same key).
//!
//! ```text
//! vehicle ── PairingChallenge (ECDSA, node key) ──▶ phone ──▶ gateway: verify, open a session
//! phone ── approval (ECDH+AES-GCM) + ECDSA signature ──▶ gateway: issue the key
//! gateway ── PairingResponse (Ed25519, bound to the nonce) ──▶ phone ──▶ vehicle: verify, keep
//! ```
//!
//! Every check is here so that the gateway, the vehicle (no_std) and phones share one codec.

use hkdf::Hkdf;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{
    Signature as EcdsaSignature, SigningKey as EcdsaSigningKey, VerifyingKey as EcdsaVerifyingKey,
};
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::frame::{check_frame, open, seal, u64_at};
use super::wire::{copy, field, put};
use super::{
    parse_public_key, DoorId, EndpointId, Error, Grant, PeerSecret, PublicKeyBytes, ToolId,
    GCM_TAG_LEN, VERSION,
};
use crate::{Nonce, NONCE_LEN};
use ed25519_dalek::ed25519::signature::{MultipartSigner, MultipartVerifier};
use ed25519_dalek::{
    Signature as EdSignature, SigningKey as EdSigningKey, VerifyingKey as EdVerifyingKey,
};

/// The vehicle pairing GATT service: `8603cf6e-0021-462b-ab5a-16c899edcee3`.
pub const SERVICE_UUID: u128 = 0x8603_cf6e_0021_462b_ab5a_16c8_99ed_cee3;
/// Pairing Challenge characteristic (read): `8603cf6e-0022-462b-ab5a-16c899edcee3`.
pub const CHALLENGE_UUID: u128 = 0x8603_cf6e_0022_462b_ab5a_16c8_99ed_cee3;
/// Pairing Response characteristic (write with response): `8603cf6e-0023-462b-ab5a-16c899edcee3`.
pub const RESPONSE_UUID: u128 = 0x8603_cf6e_0023_462b_ab5a_16c8_99ed_cee3;

/// Second byte of a [`PairingChallenge`] frame.
pub const KIND_PAIRING_CHALLENGE: u8 = 0x21;
/// Second byte of a [`PairingResponse`] frame.
pub const KIND_PAIRING_RESPONSE: u8 = 0x22;

/// Length of a signed pairing challenge.
pub const CHALLENGE_LEN: usize = 2 + 16 + NONCE_LEN + 8 + ECDSA_SIGNATURE_LEN;
/// Length of a pairing response.
pub const RESPONSE_LEN: usize = RESPONSE_SIGNED_LEN + ED25519_SIGNATURE_LEN;
/// Length of the phone's sealed approval (`encryptedResponse`).
pub const APPROVAL_LEN: usize = APPROVAL_PLAIN_LEN + GCM_TAG_LEN;
/// A raw P-256 ECDSA signature, `r ‖ s`.
pub const ECDSA_SIGNATURE_LEN: usize = 64;
/// The endpoint id of every vehicle grant.
pub const ENDPOINT: &str = "vehicle";

/// Signed by the vehicle's node key before its challenge bytes.
pub const CHALLENGE_LABEL: &[u8] = b"latchkey/v2/pairing-challenge";
/// Signed by the gateway before the vehicle id and the response bytes.
pub const RESPONSE_LABEL: &[u8] = b"latchkey/v2/pairing-response";
/// HKDF info of the approval key.
pub const APPROVAL_INFO: &[u8] = b"latchkey/v2/pairing-approve";
/// Signed by the phone before the session id and the two digests.
pub const COMPLETION_LABEL: &[u8] = b"latchkey/v2/pairing-complete";

const ED25519_SIGNATURE_LEN: usize = 64;
const CHALLENGE_SIGNED_LEN: usize = CHALLENGE_LEN - ECDSA_SIGNATURE_LEN;
const RESPONSE_SIGNED_LEN: usize = 2 + NONCE_LEN + 16 + 8 + 8 + 4 + COMPRESSED_KEY_LEN;
/// A P-256 point in SEC1 compressed form (`02|03 ‖ X`): what keeps the response in one write.
const COMPRESSED_KEY_LEN: usize = 33;
/// `0x01` (approved) ‖ SHA-256 of the challenge frame.
const APPROVAL_PLAIN_LEN: usize = 1 + 32;
const APPROVED: u8 = 0x01;

/// A vehicle id as the challenge names it (the node id's 16 bytes).
pub type VehicleId = DoorId;
/// A pairing session id (16 UUID bytes).
pub type SessionId = [u8; 16];

/// `readPairingChallenge`: which vehicle, a fresh nonce, and its wall time (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingChallenge {
    /// The vehicle's node id.
    pub vehicle_id: VehicleId,
    /// Fresh from the vehicle's CSPRNG at this read.
    pub nonce: Nonce,
    /// The vehicle's wall time (Unix s), 0 when it does not know it.
    pub timestamp: u64,
}

impl PairingChallenge {
    fn signed_part(&self) -> [u8; CHALLENGE_SIGNED_LEN] {
        let mut out = [0u8; CHALLENGE_SIGNED_LEN];
        let mut at = 0;
        put(&mut out, &mut at, &[VERSION, KIND_PAIRING_CHALLENGE]);
        put(&mut out, &mut at, &self.vehicle_id);
        put(&mut out, &mut at, &self.nonce);
        put(&mut out, &mut at, &self.timestamp.to_be_bytes());
        out
    }

    /// The frame, signed with the vehicle's node key (deterministic ECDSA, RFC 6979).
    #[must_use]
    pub fn sign(&self, node_key: &p256::SecretKey) -> [u8; CHALLENGE_LEN] {
        let signed = self.signed_part();
        let sig: EcdsaSignature =
            EcdsaSigningKey::from(node_key).sign(&labelled(CHALLENGE_LABEL, &signed));
        let mut out = [0u8; CHALLENGE_LEN];
        let mut at = 0;
        put(&mut out, &mut at, &signed);
        put(&mut out, &mut at, &sig.to_bytes());
        out
    }

    /// Reads the fields without checking the signature (the phone, which has no node key).
    ///
    /// # Errors
    /// Header errors or [`Error::BadLength`].
    pub fn decode(frame: &[u8]) -> Result<PairingChallenge, Error> {
        check_frame(frame, KIND_PAIRING_CHALLENGE, CHALLENGE_LEN)?;
        Ok(PairingChallenge {
            vehicle_id: copy(field(frame, 2, 18)),
            nonce: copy(field(frame, 18, 34)),
            timestamp: u64_at(field(frame, 34, 42)),
        })
    }

    /// Decodes, then checks the signature under the vehicle's registered key (the gateway).
    ///
    /// # Errors
    /// Decode errors, [`Error::BadPublicKey`], [`Error::BadSignature`].
    pub fn verify(frame: &[u8], node_key: &PublicKeyBytes) -> Result<PairingChallenge, Error> {
        let challenge = PairingChallenge::decode(frame)?;
        let key = EcdsaVerifyingKey::from(parse_public_key(node_key)?);
        let sig = EcdsaSignature::from_slice(field(frame, CHALLENGE_SIGNED_LEN, CHALLENGE_LEN))
            .map_err(|_| Error::BadSignature)?;
        key.verify(
            &labelled(CHALLENGE_LABEL, field(frame, 0, CHALLENGE_SIGNED_LEN)),
            &sig,
        )
        .map_err(|_| Error::BadSignature)?;
        Ok(challenge)
    }
}

/// `bleResponsePayload`: the vehicle key as the vehicle stores it, bound to its nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingResponse {
    /// The challenge's nonce.
    pub nonce: Nonce,
    /// The vehicle key's id (its `accessToolId`).
    pub key_id: ToolId,
    /// First second of validity (Unix s, inclusive).
    pub not_before: u64,
    /// End of validity (Unix s, exclusive).
    pub expires: u64,
    /// The vehicle's revocation epoch at the gateway.
    pub epoch: u32,
    /// The phone's P-256 public key.
    pub phone_key: PublicKeyBytes,
}

impl PairingResponse {
    fn signed_part(&self) -> [u8; RESPONSE_SIGNED_LEN] {
        let mut out = [0u8; RESPONSE_SIGNED_LEN];
        let mut at = 0;
        put(&mut out, &mut at, &[VERSION, KIND_PAIRING_RESPONSE]);
        put(&mut out, &mut at, &self.nonce);
        put(&mut out, &mut at, &self.key_id);
        put(&mut out, &mut at, &self.not_before.to_be_bytes());
        put(&mut out, &mut at, &self.expires.to_be_bytes());
        put(&mut out, &mut at, &self.epoch.to_be_bytes());
        put(&mut out, &mut at, &compress(&self.phone_key));
        out
    }

    /// The frame, signed by the gateway for `vehicle_id` (which is signed, not sent). The phone
    /// key travels compressed; a key that is not a point is sent as 33 zero bytes, which no
    /// vehicle accepts (the gateway only signs keys it validated at registration).
    #[must_use]
    pub fn sign(&self, vehicle_id: &VehicleId, gateway: &EdSigningKey) -> [u8; RESPONSE_LEN] {
        let signed = self.signed_part();
        let sig = gateway.multipart_sign(&[RESPONSE_LABEL, vehicle_id, &signed]);
        let mut out = [0u8; RESPONSE_LEN];
        let mut at = 0;
        put(&mut out, &mut at, &signed);
        put(&mut out, &mut at, &sig.to_bytes());
        out
    }

    /// Checks the layout and the gateway's signature for this vehicle, then the fields (the
    /// vehicle; it compares the nonce with its own and the epoch with its stored one).
    ///
    /// # Errors
    /// Header errors, [`Error::BadLength`], [`Error::BadSignature`], [`Error::BadPublicKey`],
    /// [`Error::EmptyValidity`].
    pub fn verify(
        frame: &[u8],
        vehicle_id: &VehicleId,
        gateway: &EdVerifyingKey,
    ) -> Result<PairingResponse, Error> {
        check_frame(frame, KIND_PAIRING_RESPONSE, RESPONSE_LEN)?;
        let signed = field(frame, 0, RESPONSE_SIGNED_LEN);
        let sig = EdSignature::from_bytes(&copy(field(frame, RESPONSE_SIGNED_LEN, RESPONSE_LEN)));
        gateway
            .multipart_verify(&[RESPONSE_LABEL, vehicle_id, signed], &sig)
            .map_err(|_| Error::BadSignature)?;
        let response = PairingResponse {
            nonce: copy(field(frame, 2, 18)),
            key_id: copy(field(frame, 18, 34)),
            not_before: u64_at(field(frame, 34, 42)),
            expires: u64_at(field(frame, 42, 50)),
            epoch: u32::from_be_bytes(copy(field(frame, 50, 54))),
            phone_key: decompress(field(frame, 54, RESPONSE_SIGNED_LEN))?,
        };
        if response.not_before >= response.expires {
            return Err(Error::EmptyValidity);
        }
        Ok(response)
    }

    /// The grant this key is at the vehicle: endpoint [`ENDPOINT`].
    ///
    /// # Errors
    /// None in practice ([`ENDPOINT`] is a valid endpoint id).
    pub fn grant(&self, vehicle_id: &VehicleId) -> Result<Grant, Error> {
        Ok(Grant {
            tool_id: self.key_id,
            node_id: *vehicle_id,
            endpoint: EndpointId::new(ENDPOINT)?,
            not_before: self.not_before,
            expires: self.expires,
            epoch: self.epoch,
            phone_key: self.phone_key,
        })
    }
}

/// `encryptedResponse`: the phone's approval, sealed under a key only the holder of the phone's
/// registered private key and the gateway can derive (ECDH with the gateway's door key).
///
/// # Errors
/// [`Error::BadPublicKey`] for a bad gateway key.
pub fn seal_approval(
    phone: &p256::SecretKey,
    gateway_door: &PublicKeyBytes,
    session_id: &SessionId,
    challenge_frame: &[u8],
) -> Result<[u8; APPROVAL_LEN], Error> {
    let mut key = approval_key(phone, gateway_door, session_id)?;
    let mut buf = [0u8; APPROVAL_PLAIN_LEN];
    buf[0] = APPROVED;
    put(&mut buf, &mut 1, &Sha256::digest(challenge_frame));
    let sealed = seal(&key, session_id, &mut buf);
    key.zeroize();
    let tag = sealed?;
    let mut out = [0u8; APPROVAL_LEN];
    let mut at = 0;
    put(&mut out, &mut at, &buf);
    put(&mut out, &mut at, &tag);
    Ok(out)
}

/// The gateway's check of [`seal_approval`]: it opens under the key shared with `phone`, says
/// "approved", and names this challenge.
///
/// # Errors
/// [`Error::BadLength`], [`Error::BadPublicKey`], [`Error::Decrypt`] (wrong key, another
/// session, tampered, or not an approval of this challenge).
pub fn open_approval(
    gateway_door: &p256::SecretKey,
    phone: &PublicKeyBytes,
    session_id: &SessionId,
    challenge_frame: &[u8],
    sealed: &[u8],
) -> Result<(), Error> {
    if sealed.len() != APPROVAL_LEN {
        return Err(Error::BadLength {
            expected: APPROVAL_LEN,
            actual: sealed.len(),
        });
    }
    let mut key = approval_key(gateway_door, phone, session_id)?;
    let mut buf: [u8; APPROVAL_PLAIN_LEN] = copy(sealed);
    let opened = open(
        &key,
        session_id,
        &mut buf,
        field(sealed, APPROVAL_PLAIN_LEN, APPROVAL_LEN),
    );
    key.zeroize();
    opened?;
    let expected = Sha256::digest(challenge_frame);
    let ok = buf[0] == APPROVED && field(&buf, 1, APPROVAL_PLAIN_LEN) == expected.as_slice();
    if ok {
        Ok(())
    } else {
        Err(Error::Decrypt)
    }
}

/// The phone's completion signature (ECDSA P-256 / SHA-256 by its registered key).
#[must_use]
pub fn sign_completion(
    phone: &p256::SecretKey,
    session_id: &SessionId,
    challenge_frame: &[u8],
    sealed: &[u8],
) -> [u8; ECDSA_SIGNATURE_LEN] {
    let message = completion_message(session_id, challenge_frame, sealed);
    let sig: EcdsaSignature = EcdsaSigningKey::from(phone).sign(&message);
    copy(&sig.to_bytes())
}

/// The gateway's check of [`sign_completion`] under the device's registered key.
///
/// # Errors
/// [`Error::BadPublicKey`], [`Error::BadSignature`].
pub fn verify_completion(
    phone: &PublicKeyBytes,
    session_id: &SessionId,
    challenge_frame: &[u8],
    sealed: &[u8],
    signature: &[u8],
) -> Result<(), Error> {
    let key = EcdsaVerifyingKey::from(parse_public_key(phone)?);
    let sig = EcdsaSignature::from_slice(signature).map_err(|_| Error::BadSignature)?;
    key.verify(
        &completion_message(session_id, challenge_frame, sealed),
        &sig,
    )
    .map_err(|_| Error::BadSignature)
}

const COMPLETION_LEN: usize = 28 + 16 + 32 + 32;

/// `"latchkey/v2/pairing-complete" ‖ session id ‖ SHA-256(challenge) ‖ SHA-256(sealed)`.
fn completion_message(
    session_id: &SessionId,
    challenge_frame: &[u8],
    sealed: &[u8],
) -> [u8; COMPLETION_LEN] {
    let mut out = [0u8; COMPLETION_LEN];
    let mut at = 0;
    put(&mut out, &mut at, COMPLETION_LABEL);
    put(&mut out, &mut at, session_id);
    put(&mut out, &mut at, &Sha256::digest(challenge_frame));
    put(&mut out, &mut at, &Sha256::digest(sealed));
    out
}

/// HKDF-SHA256(salt = session id, IKM = Z, info = [`APPROVAL_INFO`]).
fn approval_key(
    own: &p256::SecretKey,
    peer: &PublicKeyBytes,
    session_id: &SessionId,
) -> Result<[u8; 32], Error> {
    // The door id only enters PeerSecret's hint key, which is not used here: Z alone is.
    let secret = PeerSecret::derive(own, peer, session_id)?;
    let mut key = [0u8; 32];
    // 32 bytes are far below HKDF's limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(Some(session_id), secret.shared()).expand(APPROVAL_INFO, &mut key);
    Ok(key)
}

/// SEC1 compressed form of an uncompressed key; zeros when it is not a point.
fn compress(key: &PublicKeyBytes) -> [u8; COMPRESSED_KEY_LEN] {
    match parse_public_key(key) {
        Ok(point) => copy(point.to_sec1_point(true).as_bytes()),
        Err(_) => [0; COMPRESSED_KEY_LEN],
    }
}

/// The uncompressed form of a compressed key, checked to be on the curve.
fn decompress(bytes: &[u8]) -> Result<PublicKeyBytes, Error> {
    if bytes.len() != COMPRESSED_KEY_LEN || !matches!(bytes.first(), Some(2 | 3)) {
        return Err(Error::BadPublicKey);
    }
    let point = p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| Error::BadPublicKey)?;
    Ok(super::public_key_bytes(&point))
}

/// `label ‖ bytes` for the ECDSA signer, which hashes its whole input with SHA-256.
fn labelled(label: &[u8], bytes: &[u8]) -> [u8; CHALLENGE_LABEL.len() + CHALLENGE_SIGNED_LEN] {
    let mut out = [0u8; CHALLENGE_LABEL.len() + CHALLENGE_SIGNED_LEN];
    let mut at = 0;
    put(&mut out, &mut at, label);
    put(&mut out, &mut at, bytes);
    out
}

// The response must fit one ATT Write Request at the MTU 185 phones request (MTU − 3 = 182
// bytes of value); the challenge one Read Response at the MTU 114 every latchkey phone has
// (MTU − 1 = 113).
const _: () = assert!(RESPONSE_LEN <= 182 && CHALLENGE_LEN <= 113);
const _: () = assert!(COMPLETION_LABEL.len() == 28);
