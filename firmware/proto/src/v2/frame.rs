//! Version-2 frames: challenge (door → phone), request (phone → door), result (door → phone).
//!
//! | frame | bytes | layout |
//! |---|---|---|
//! | challenge | 42 | `02 01` ‖ door_id 16 ‖ nonce 16 ‖ door_time u64 |
//! | request | 83 | `02 02` ‖ hint 8 ‖ AES-GCM(to_door; tool_id 16 ‖ phone_time u64 ‖ endpoint 33) ‖ tag 16 |
//! | sealed result | 43 | `02 03` ‖ nonce 16 ‖ AES-GCM(to_phone; status 1 ‖ door_time u64) ‖ tag 16 |
//! | plain result | 19 | `02 04` ‖ nonce 16 ‖ status 1 |
//!
//! The AES-GCM IV is 12 zero bytes: each session key encrypts exactly one message. The AAD
//! of the request is its first 10 bytes followed by the nonce; that of a sealed result is its
//! first 18 bytes (which hold the nonce).

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::Aes256Gcm;

use super::endpoint::{EndpointId, ENDPOINT_FIELD_LEN};
use super::wire::{check_header, check_len, copy, put};
use super::{
    DoorId, Error, Hint, SessionKeys, Status, ToolId, HINT_LEN, KIND_CHALLENGE, KIND_PLAIN_RESULT,
    KIND_REQUEST, KIND_SEALED_RESULT, VERSION,
};
use crate::{Nonce, NONCE_LEN};

/// Length of an AES-GCM tag.
pub const GCM_TAG_LEN: usize = 16;
/// The AES-GCM IV of every version-2 message (each key encrypts one message only).
pub const GCM_IV: [u8; 12] = [0; 12];

/// Checks the version and kind bytes, then the exact length.
pub(super) fn check_frame(frame: &[u8], kind: u8, len: usize) -> Result<(), Error> {
    check_header(frame, kind)?;
    check_len(frame, len)
}

pub(super) fn u64_at(src: &[u8]) -> u64 {
    u64::from_be_bytes(copy::<8>(src))
}

/// AES-256-GCM encryption in place; returns the tag.
pub(super) fn seal(key: &[u8; 32], aad: &[u8], buf: &mut [u8]) -> Result<[u8; GCM_TAG_LEN], Error> {
    let cipher = Aes256Gcm::new(&(*key).into());
    let tag = cipher
        .encrypt_inout_detached(&GCM_IV.into(), aad, buf.into())
        .map_err(|_| Error::Decrypt)?;
    Ok(copy::<GCM_TAG_LEN>(&tag))
}

/// AES-256-GCM decryption in place; the buffer is wiped when the tag does not verify.
pub(super) fn open(key: &[u8; 32], aad: &[u8], buf: &mut [u8], tag: &[u8]) -> Result<(), Error> {
    let cipher = Aes256Gcm::new(&(*key).into());
    let tag: [u8; GCM_TAG_LEN] = copy(tag);
    cipher
        .decrypt_inout_detached(&GCM_IV.into(), aad, buf.into(), &tag.into())
        .map_err(|_| {
            buf.fill(0);
            Error::Decrypt
        })
}

/// The challenge a door issues on each read of its Challenge characteristic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The door's id (a node's 16 UUID bytes), so the phone picks the door key to use.
    pub door_id: DoorId,
    /// 16 fresh bytes from the door's CSPRNG.
    pub nonce: Nonce,
    /// The door's wall time (Unix seconds), 0 when it does not know it. Not authenticated:
    /// a phone may warn with it, never set a clock from it.
    pub door_time: u64,
}

impl Challenge {
    /// Length of the frame.
    pub const LEN: usize = 2 + 16 + NONCE_LEN + 8;

    /// The frame.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Challenge::LEN] {
        let mut out = [0u8; Challenge::LEN];
        let mut at = 0;
        put(&mut out, &mut at, &[VERSION, KIND_CHALLENGE]);
        put(&mut out, &mut at, &self.door_id);
        put(&mut out, &mut at, &self.nonce);
        put(&mut out, &mut at, &self.door_time.to_be_bytes());
        out
    }

    /// Parses a challenge frame.
    ///
    /// # Errors
    /// A foreign version, another kind, or another length.
    pub fn decode(frame: &[u8]) -> Result<Challenge, Error> {
        check_frame(frame, KIND_CHALLENGE, Challenge::LEN)?;
        Ok(Challenge {
            door_id: copy(frame.get(2..18).unwrap_or_default()),
            nonce: copy(frame.get(18..34).unwrap_or_default()),
            door_time: u64_at(frame.get(34..42).unwrap_or_default()),
        })
    }
}

/// What a phone asks for, encrypted inside a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBody {
    /// The access tool (the grant) the phone uses.
    pub tool_id: ToolId,
    /// The phone's wall time (Unix seconds): recorded, never trusted for a decision.
    pub phone_time: u64,
    /// The endpoint to open.
    pub endpoint: EndpointId,
}

/// Length of [`RequestBody`]'s plaintext.
pub const REQUEST_BODY_LEN: usize = 16 + 8 + ENDPOINT_FIELD_LEN;

impl RequestBody {
    /// The plaintext (57 bytes).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; REQUEST_BODY_LEN] {
        let mut out = [0u8; REQUEST_BODY_LEN];
        let mut at = 0;
        put(&mut out, &mut at, &self.tool_id);
        put(&mut out, &mut at, &self.phone_time.to_be_bytes());
        put(&mut out, &mut at, &self.endpoint.to_field());
        out
    }

    fn from_bytes(plain: &[u8]) -> Result<RequestBody, Error> {
        if plain.len() != REQUEST_BODY_LEN {
            return Err(Error::BadLength {
                expected: REQUEST_BODY_LEN,
                actual: plain.len(),
            });
        }
        Ok(RequestBody {
            tool_id: copy(plain.get(..16).unwrap_or_default()),
            phone_time: u64_at(plain.get(16..24).unwrap_or_default()),
            endpoint: EndpointId::from_field(plain.get(24..).unwrap_or_default())?,
        })
    }
}

/// The request frame a phone writes to the Request characteristic.
pub struct Request;

impl Request {
    /// Length of the frame.
    pub const LEN: usize = 2 + HINT_LEN + REQUEST_BODY_LEN + GCM_TAG_LEN;
    /// Bytes of the frame in front of the ciphertext (version, kind, hint).
    pub const HEADER_LEN: usize = 2 + HINT_LEN;

    /// Encrypts `body` for the challenge `nonce` (phone side).
    ///
    /// # Errors
    /// Only if AES-GCM refuses, which it does not for these sizes.
    pub fn seal(
        body: &RequestBody,
        keys: &SessionKeys,
        hint: &Hint,
        nonce: &Nonce,
    ) -> Result<[u8; Request::LEN], Error> {
        let mut out = [0u8; Request::LEN];
        out[0] = VERSION;
        out[1] = KIND_REQUEST;
        for (dst, src) in out.iter_mut().skip(2).zip(hint) {
            *dst = *src;
        }
        let aad = Request::aad(&out, nonce);
        let (_, rest) = out.split_at_mut(Request::HEADER_LEN);
        let (ct, tag_out) = rest.split_at_mut(REQUEST_BODY_LEN);
        let mut plain = body.to_bytes();
        for (dst, src) in ct.iter_mut().zip(plain.iter()) {
            *dst = *src;
        }
        plain.fill(0);
        let tag = seal(keys.to_door(), &aad, ct)?;
        for (dst, src) in tag_out.iter_mut().zip(tag.iter()) {
            *dst = *src;
        }
        Ok(out)
    }

    /// Checks the frame's version, kind and length and returns its hint (door side, before
    /// any key is known).
    ///
    /// # Errors
    /// A foreign version ([`Error::UnsupportedVersion`]), another kind, or another length.
    pub fn hint(frame: &[u8]) -> Result<Hint, Error> {
        check_frame(frame, KIND_REQUEST, Request::LEN)?;
        Ok(copy(frame.get(2..Request::HEADER_LEN).unwrap_or_default()))
    }

    /// Decrypts and parses a request with one candidate's session keys (door side).
    ///
    /// # Errors
    /// The header errors of [`Request::hint`]; [`Error::Decrypt`] when the frame does not
    /// authenticate under these keys and this nonce; a body error ([`Error::EndpointChar`],
    /// [`Error::NonZeroPadding`], …) when it authenticates but its content is malformed.
    pub fn open(frame: &[u8], keys: &SessionKeys, nonce: &Nonce) -> Result<RequestBody, Error> {
        check_frame(frame, KIND_REQUEST, Request::LEN)?;
        let aad = Request::aad(frame, nonce);
        let ct = frame
            .get(Request::HEADER_LEN..Request::HEADER_LEN + REQUEST_BODY_LEN)
            .unwrap_or_default();
        let tag = frame
            .get(Request::HEADER_LEN + REQUEST_BODY_LEN..)
            .unwrap_or_default();
        let mut plain: [u8; REQUEST_BODY_LEN] = copy(ct);
        open(keys.to_door(), &aad, &mut plain, tag)?;
        let body = RequestBody::from_bytes(&plain);
        plain.fill(0);
        body
    }

    /// The request's AAD: its version, kind and hint, then the challenge nonce.
    fn aad(frame: &[u8], nonce: &Nonce) -> [u8; Request::HEADER_LEN + NONCE_LEN] {
        let mut aad = [0u8; Request::HEADER_LEN + NONCE_LEN];
        let header = frame.get(..Request::HEADER_LEN).unwrap_or_default();
        for (dst, src) in aad.iter_mut().zip(header.iter().chain(nonce.iter())) {
            *dst = *src;
        }
        aad
    }
}

/// A door's answer, as the phone reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedResult {
    /// The status.
    pub status: Status,
    /// The door's wall time, when the result is authenticated and the door knows it.
    pub door_time: Option<u64>,
    /// Whether the result was sealed under the session's result key (the real door's answer)
    /// or plain (an unverified hint that anyone in radio range could have sent).
    pub authenticated: bool,
}

/// Result frames (door → phone).
pub struct ResultFrame;

/// Length of the encrypted status and door time.
const RESULT_BODY_LEN: usize = 1 + 8;

impl ResultFrame {
    /// Length of a sealed (authenticated, encrypted) result.
    pub const SEALED_LEN: usize = 2 + NONCE_LEN + RESULT_BODY_LEN + GCM_TAG_LEN;
    /// Length of a plain (unauthenticated) result.
    pub const PLAIN_LEN: usize = 2 + NONCE_LEN + 1;
    /// The longer of the two.
    pub const MAX_LEN: usize = ResultFrame::SEALED_LEN;

    /// A result sealed under the session's result key: what a door sends whenever the
    /// request decrypted.
    ///
    /// # Errors
    /// Only if AES-GCM refuses, which it does not for these sizes.
    pub fn seal(
        status: Status,
        door_time: Option<u64>,
        keys: &SessionKeys,
        nonce: &Nonce,
    ) -> Result<[u8; ResultFrame::SEALED_LEN], Error> {
        let mut out = [0u8; ResultFrame::SEALED_LEN];
        out[0] = VERSION;
        out[1] = KIND_SEALED_RESULT;
        for (dst, src) in out.iter_mut().skip(2).zip(nonce) {
            *dst = *src;
        }
        let (aad, rest) = out.split_at_mut(2 + NONCE_LEN);
        let (body, tag_out) = rest.split_at_mut(RESULT_BODY_LEN);
        body[0] = status.code();
        for (dst, src) in body
            .iter_mut()
            .skip(1)
            .zip(door_time.unwrap_or(0).to_be_bytes())
        {
            *dst = src;
        }
        let tag = seal(keys.to_phone(), aad, body)?;
        for (dst, src) in tag_out.iter_mut().zip(tag.iter()) {
            *dst = *src;
        }
        Ok(out)
    }

    /// An unauthenticated result, for when the door has no key for the sender (the request
    /// did not decode, matched no grant, did not decrypt, or came without a live challenge).
    ///
    /// # Errors
    /// [`Error::UnsignedGrant`] for [`Status::Granted`].
    pub fn plain(status: Status, nonce: &Nonce) -> Result<[u8; ResultFrame::PLAIN_LEN], Error> {
        if status.is_granted() {
            return Err(Error::UnsignedGrant);
        }
        let mut out = [0u8; ResultFrame::PLAIN_LEN];
        out[0] = VERSION;
        out[1] = KIND_PLAIN_RESULT;
        for (dst, src) in out.iter_mut().skip(2).zip(nonce) {
            *dst = *src;
        }
        out[2 + NONCE_LEN] = status.code();
        Ok(out)
    }

    /// Checks a result notification as a phone does: the right nonce, then (sealed) the tag
    /// under the session's result key, or (plain) that it does not claim a grant.
    ///
    /// # Errors
    /// Header errors; [`Error::NonceMismatch`] for another attempt's answer (keep waiting);
    /// [`Error::Decrypt`] for a sealed result that does not authenticate (forged, or for
    /// another phone: keep waiting); [`Error::UnknownStatus`]; [`Error::UnsignedGrant`].
    pub fn open(frame: &[u8], keys: &SessionKeys, nonce: &Nonce) -> Result<VerifiedResult, Error> {
        let kind = frame.get(1).copied();
        let sealed = kind == Some(KIND_SEALED_RESULT);
        if sealed {
            check_frame(frame, KIND_SEALED_RESULT, ResultFrame::SEALED_LEN)?;
        } else {
            check_frame(frame, KIND_PLAIN_RESULT, ResultFrame::PLAIN_LEN)?;
        }
        let their_nonce = frame.get(2..2 + NONCE_LEN).unwrap_or_default();
        if !crate::mac::ct_eq(their_nonce, nonce) {
            return Err(Error::NonceMismatch);
        }
        if !sealed {
            let code = frame.get(2 + NONCE_LEN).copied().unwrap_or(0);
            let status = Status::try_from(code).map_err(|_| Error::UnknownStatus(code))?;
            if status.is_granted() {
                return Err(Error::UnsignedGrant);
            }
            return Ok(VerifiedResult {
                status,
                door_time: None,
                authenticated: false,
            });
        }
        let aad = frame.get(..2 + NONCE_LEN).unwrap_or_default();
        let mut body: [u8; RESULT_BODY_LEN] = copy(
            frame
                .get(2 + NONCE_LEN..2 + NONCE_LEN + RESULT_BODY_LEN)
                .unwrap_or_default(),
        );
        let tag = frame
            .get(2 + NONCE_LEN + RESULT_BODY_LEN..)
            .unwrap_or_default();
        open(keys.to_phone(), aad, &mut body, tag)?;
        let status = Status::try_from(body[0]).map_err(|_| Error::UnknownStatus(body[0]))?;
        let door_time = u64_at(body.get(1..).unwrap_or_default());
        Ok(VerifiedResult {
            status,
            door_time: (door_time != 0).then_some(door_time),
            authenticated: true,
        })
    }
}
