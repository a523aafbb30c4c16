//! The door's grant store (NODES.md §8, PROTOCOL.md §19–§20): the verified grant set with its
//! relay pulse, what a `grants` frame does to it, and the blob it is kept as in flash.
//!
//! A snapshot is verified before anything is kept ([`GrantSet::apply`] replaces the set only
//! when everything checks); only then is the blob written, and `grants_ack` answered.
//!
//! The blob also caches each phone's ECDH secret `Z` (PROTOCOL.md §20.4): without it a restart
//! redoes one P-256 scalar multiplication per phone, about 37–58 s of CPU for 256 phones on an
//! ESP32-C3, during which a single-threaded node serves nothing. `Z` is as secret as the door
//! key it derives from, which the same flash already holds. A digest over the blob guards the
//! cache: a damaged one is dropped (and `Z` recomputed), since a wrong cached `Z` would survive
//! every later snapshot (known phones keep their secret) and lock that phone out for good.
//!
//! ```text
//! blob = 0x01 ‖ pulse_ms u32 ‖ n u32 ‖ snapshot (n bytes) ‖ Z × k ‖ SHA-256(everything before)
//! ```
//! with `k` the distinct phone keys of the snapshot, in the order they first appear.

use alloc::string::String;
use alloc::vec::Vec;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use latchkey_proto::v2::ed25519_dalek::VerifyingKey;
use latchkey_proto::v2::{
    door_tag, from_base64, gateway_key, Applied, DoorId, Error, Grant, GrantSet, PublicKeyBytes,
    DOOR_TAG_LEN, MAX_SNAPSHOT_LEN, PUBLIC_KEY_LEN, SNAPSHOT_HEADER_LEN,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::relay::{MAX_PULSE_MS, MIN_PULSE_MS};
use crate::storage::Credentials;

/// The pulse of the node's own (v2) grants when the gateway gives none in range.
pub const DEFAULT_PULSE_MS: u32 = 3_000;
/// Longest `snapshot` text a `grants` frame may carry: base64 of the largest snapshot.
pub const MAX_SNAPSHOT_TEXT: usize = MAX_SNAPSHOT_LEN.div_ceil(3) * 4;

const BLOB_FORMAT: u8 = 1;
const BLOB_HEAD: usize = 1 + 4 + 4;
const DIGEST_LEN: usize = 32;

/// Why a `grants` frame was refused: the `grants_ack` error codes (spec B).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Decoding, signature, node id or a grant check failed.
    BadSnapshot,
    /// The version is not above the stored one, or the epoch is lower.
    Stale,
}

impl Refusal {
    /// The wire code.
    pub const fn code(self) -> &'static str {
        match self {
            Refusal::BadSnapshot => "BAD_SNAPSHOT",
            Refusal::Stale => "STALE",
        }
    }

    fn of(e: Error) -> Self {
        match e {
            Error::StaleVersion { .. } | Error::StaleEpoch { .. } => Refusal::Stale,
            _ => Refusal::BadSnapshot,
        }
    }
}

/// What a `grants` frame did.
#[derive(Debug)]
pub enum Outcome {
    /// Applied: persist `blob`, then send the ack.
    Applied {
        /// The snapshot's version.
        version: u64,
        /// Grants now held, and ECDH computations it took.
        applied: Applied,
        /// What to keep in flash.
        blob: Zeroizing<Vec<u8>>,
    },
    /// Refused; the set is unchanged.
    Refused {
        /// The version as far as it could be read (0 if not).
        version: u64,
        /// Why.
        why: Refusal,
    },
}

impl Outcome {
    /// The `grants_ack` frame (spec B).
    pub fn ack(&self) -> String {
        #[derive(Serialize)]
        struct Ack<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            version: u64,
            ok: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            grants: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<&'a str>,
        }
        let ack = match self {
            Outcome::Applied {
                version, applied, ..
            } => Ack {
                kind: "grants_ack",
                version: *version,
                ok: true,
                grants: Some(applied.grants),
                error: None,
            },
            Outcome::Refused { version, why } => Ack {
                kind: "grants_ack",
                version: *version,
                ok: false,
                grants: None,
                error: Some(why.code()),
            },
        };
        serde_json::to_string(&ack).unwrap_or_default()
    }
}

/// The door's grants, its key, and the relay pulse its own grants use.
pub struct GrantStore {
    set: GrantSet,
    pulse_ms: u32,
    gateway: VerifyingKey,
    door_key: p256::SecretKey,
}

impl core::fmt::Debug for GrantStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GrantStore")
            .field("set", &self.set)
            .field("pulse_ms", &self.pulse_ms)
            .finish_non_exhaustive()
    }
}

/// The 16 bytes of a UUID written with or without dashes.
pub fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    HEXLOWER_PERMISSIVE.decode(&hex).ok()?.try_into().ok()
}

impl GrantStore {
    /// An empty store for the registered node; `None` if the stored node id or gateway key
    /// cannot be read (the door then stays off, logged by the caller).
    pub fn new(credentials: &Credentials, door_key: p256::SecretKey) -> Option<Self> {
        let door_id = uuid_bytes(&credentials.node_id)?;
        let raw = BASE64
            .decode(credentials.gateway_pubkey.as_bytes())
            .ok()?;
        let gateway = gateway_key(&raw.try_into().ok()?).ok()?;
        Some(Self {
            set: GrantSet::new(door_id),
            pulse_ms: DEFAULT_PULSE_MS,
            gateway,
            door_key,
        })
    }

    /// The grant set.
    pub fn set(&self) -> &GrantSet {
        &self.set
    }

    /// The door id (the node id's 16 bytes).
    pub fn door_id(&self) -> &DoorId {
        self.set.door_id()
    }

    /// What the node advertises (PROTOCOL.md §16).
    pub fn door_tag(&self) -> [u8; DOOR_TAG_LEN] {
        door_tag(self.set.door_id())
    }

    /// The relay pulse of a GRANTED decision.
    pub fn pulse_ms(&self) -> u32 {
        self.pulse_ms
    }

    /// Applies a `grants` frame's fields: base64 snapshot and the endpoint's pulse.
    pub fn apply_frame(&mut self, snapshot: &str, pulse_ms: Option<u64>) -> Outcome {
        if snapshot.len() > MAX_SNAPSHOT_TEXT {
            return Outcome::Refused {
                version: 0,
                why: Refusal::BadSnapshot,
            };
        }
        let mut buf = alloc::vec![0u8; MAX_SNAPSHOT_LEN];
        let Ok(bytes) = from_base64(snapshot, &mut buf) else {
            return Outcome::Refused {
                version: 0,
                why: Refusal::BadSnapshot,
            };
        };
        let version = snapshot_version(bytes);
        match self.set.apply(bytes, &self.gateway, &self.door_key) {
            Ok(applied) => {
                self.pulse_ms = pulse_ms
                    .and_then(|m| u32::try_from(m).ok())
                    .filter(|m| (MIN_PULSE_MS..=MAX_PULSE_MS).contains(m))
                    .unwrap_or(DEFAULT_PULSE_MS);
                Outcome::Applied {
                    version,
                    applied,
                    blob: self.blob(bytes),
                }
            }
            Err(e) => Outcome::Refused {
                version,
                why: Refusal::of(e),
            },
        }
    }

    /// Re-applies a stored blob at start: verified again (a flash that changed under the node
    /// is refused like a forged snapshot), taking `Z` from the cache when the digest holds.
    pub fn boot(&mut self, blob: &[u8]) -> Result<Applied, Error> {
        let Some((pulse_ms, snapshot, zs, digest_ok)) = parse_blob(blob) else {
            return Err(Error::BadLength {
                expected: BLOB_HEAD + DIGEST_LEN,
                actual: blob.len(),
            });
        };
        let keys = distinct_keys(snapshot);
        let cache_ok = digest_ok && zs.len() == keys.len() * 32;
        if !cache_ok {
            log::warn!("grants: cached secrets unusable; recomputing them");
        }
        let cached = |key: &PublicKeyBytes| -> Option<[u8; 32]> {
            if !cache_ok {
                return None;
            }
            let i = keys.iter().position(|k| k == key)?;
            zs.get(i * 32..i * 32 + 32)?.try_into().ok()
        };
        let applied = self
            .set
            .apply_with(snapshot, &self.gateway, &self.door_key, cached)?;
        self.pulse_ms = if (MIN_PULSE_MS..=MAX_PULSE_MS).contains(&pulse_ms) {
            pulse_ms
        } else {
            DEFAULT_PULSE_MS
        };
        Ok(applied)
    }

    /// The blob for the snapshot just applied.
    fn blob(&self, snapshot: &[u8]) -> Zeroizing<Vec<u8>> {
        let keys = distinct_keys(snapshot);
        let mut blob = Zeroizing::new(Vec::with_capacity(
            BLOB_HEAD + snapshot.len() + keys.len() * 32 + DIGEST_LEN,
        ));
        blob.push(BLOB_FORMAT);
        blob.extend_from_slice(&self.pulse_ms.to_be_bytes());
        blob.extend_from_slice(&(snapshot.len() as u32).to_be_bytes());
        blob.extend_from_slice(snapshot);
        for key in &keys {
            let z = self
                .set
                .shared_secrets()
                .find(|(k, _)| *k == key)
                .map_or([0u8; 32], |(_, z)| *z);
            blob.extend_from_slice(&z);
        }
        let digest = Sha256::digest(blob.as_slice());
        blob.extend_from_slice(&digest);
        blob
    }
}

/// A snapshot's version field, read without verifying (for the ack only).
fn snapshot_version(bytes: &[u8]) -> u64 {
    bytes
        .get(18..26)
        .and_then(|v| v.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The distinct phone keys of a snapshot's grants, in the order they first appear (read from
/// the raw layout; `apply` verifies it).
fn distinct_keys(snapshot: &[u8]) -> Vec<PublicKeyBytes> {
    let grants = snapshot.get(SNAPSHOT_HEADER_LEN..).unwrap_or_default();
    let mut keys: Vec<PublicKeyBytes> = Vec::new();
    for grant in grants.chunks_exact(Grant::LEN) {
        let Some(key) = grant
            .get(Grant::LEN - PUBLIC_KEY_LEN..)
            .and_then(|k| PublicKeyBytes::try_from(k).ok())
        else {
            continue;
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// Splits a blob: pulse, snapshot, cached secrets, whether the digest holds.
fn parse_blob(blob: &[u8]) -> Option<(u32, &[u8], &[u8], bool)> {
    let (&format, rest) = blob.split_first()?;
    if format != BLOB_FORMAT || blob.len() < BLOB_HEAD + DIGEST_LEN {
        return None;
    }
    let pulse_ms = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let n = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    let body_end = blob.len() - DIGEST_LEN;
    let snapshot = blob.get(BLOB_HEAD..BLOB_HEAD.checked_add(n)?)?;
    let zs = blob.get(BLOB_HEAD + n..body_end)?;
    let digest_ok = Sha256::digest(blob.get(..body_end)?).as_slice() == blob.get(body_end..)?;
    Some((pulse_ms, snapshot, zs, digest_ok))
}
