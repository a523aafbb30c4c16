//! The phone's side of the door protocol (PROTOCOL.md §8), built only on `latchkey-proto`:
//! what a test's simulated phone writes and how it checks the gateway's answer.

use latchkey_proto::{
    hotp, totp_step, AuthFrame, AuthRequest, Challenge, DeviceKeys, Error, Nonce, ResultFrame, Tag,
    VerifiedResult, TAG_LEN,
};

/// A paired phone: its device id, TOTP secret and derived keys.
pub struct Phone {
    pub device_id: [u8; 16],
    secret: Vec<u8>,
    keys: DeviceKeys,
    /// The last TOTP step this phone sent (PROTOCOL.md §4.2 client guidance).
    last_step: Option<u64>,
}

/// An auth frame the phone built, with what it needs to check the answer.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub frame: Vec<u8>,
    pub nonce: Nonce,
    pub step: u64,
}

impl Attempt {
    /// The auth frame's tag (its last 32 bytes), which the result's MAC covers.
    pub fn tag(&self) -> Tag {
        tag_of(&self.frame)
    }
}

/// The last 32 bytes of an auth frame.
pub fn tag_of(frame: &[u8]) -> Tag {
    let mut tag = [0u8; TAG_LEN];
    if let Some(t) = frame.get(frame.len().saturating_sub(TAG_LEN)..) {
        if t.len() == TAG_LEN {
            tag.copy_from_slice(t);
        }
    }
    tag
}

impl Phone {
    pub fn new(device_id: [u8; 16], secret: Vec<u8>) -> Result<Self, Error> {
        let keys = DeviceKeys::derive(&secret, &device_id)?;
        Ok(Self {
            device_id,
            secret,
            keys,
            last_step: None,
        })
    }

    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    /// The TOTP code for `step`.
    pub fn code(&self, step: u64) -> u32 {
        hotp(&self.secret, step)
    }

    /// The step to use at `now`: the current one, or the next if the current was already
    /// sent; `None` if both were.
    pub fn next_step(&self, now: u64) -> Option<u64> {
        let current = totp_step(now);
        match self.last_step {
            Some(last) if last > current => None,
            Some(last) if last >= current => Some(current + 1),
            _ => Some(current),
        }
    }

    /// Builds the auth frame answering `challenge` (the bytes read from the Challenge
    /// characteristic) at the phone's time `now`, for `endpoint`.
    pub fn answer(&mut self, challenge: &[u8], now: u64, endpoint: &str) -> Result<Attempt, Error> {
        let c = Challenge::decode(challenge)?;
        let step = self.next_step(now).ok_or(Error::BadTag)?;
        let frame = self.frame(&c.nonce, self.code(step), now, endpoint)?;
        self.last_step = Some(step);
        Ok(Attempt {
            frame,
            nonce: c.nonce,
            step,
        })
    }

    /// A frame with every field chosen by the caller.
    pub fn frame(
        &self,
        nonce: &Nonce,
        totp: u32,
        timestamp: u64,
        endpoint: &str,
    ) -> Result<Vec<u8>, Error> {
        let mut out = [0u8; AuthFrame::MAX_LEN];
        let n = AuthFrame::encode(
            &AuthRequest {
                device_id: self.device_id,
                totp,
                timestamp,
                endpoint,
            },
            &self.keys,
            nonce,
            &mut out,
        )?;
        Ok(out.get(..n).unwrap_or_default().to_vec())
    }

    /// Checks a result notification against the attempt it should answer.
    pub fn verify(&self, result: &[u8], attempt: &Attempt) -> Result<VerifiedResult, Error> {
        ResultFrame::verify(result, &self.keys, &attempt.nonce, &attempt.tag())
    }
}
