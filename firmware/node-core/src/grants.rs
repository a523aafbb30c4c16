//! The door's grant store (NODES.md §8, PROTOCOL.md §19–§20): the verified grant set with its
//! relay pulse, what a `grants` frame does to it, and the blob it is kept as in flash.
//!
//! A snapshot is verified before anything is kept ([`GrantSet::apply`] replaces the set only
//! when everything checks); only then is the blob written, and `grants_ack` answered.
//!
//! A vehicle (issue 12) also adds grants on its own: each pairing response a phone writes is a
//! grant signed by the gateway for this node's nonce ([`GrantStore::pair`]). They are kept
//! with the snapshot, verified again at start, and dropped when the next snapshot replaces the
//! set (the gateway's snapshot holds every live key).
//!
//! The blob also caches each phone's ECDH secret `Z` (PROTOCOL.md §20.4): without it a restart
//! redoes one P-256 scalar multiplication per phone, about 37–58 s of CPU for 256 phones on an
//! ESP32-C3, during which a single-threaded node serves nothing. `Z` is as secret as the door
//! key it derives from, which the same flash already holds. A digest over the blob guards the
//! cache: a damaged one is dropped (and `Z` recomputed), since a wrong cached `Z` would survive
//! every later snapshot (known phones keep their secret) and lock that phone out for good.
//!
//! ```text
//! blob = 0x02 ‖ pulse_ms u32 ‖ n u32 ‖ snapshot (n bytes; 0: none yet)
//!        ‖ m u16 ‖ pairing responses (m × 151 bytes) ‖ Z × k ‖ SHA-256(everything before)
//! ```
//! with `k` the distinct phone keys of the snapshot's grants then of the responses, in the
//! order they first appear. Format `0x01` (issue 10: no `m` and no responses) is still read.

use alloc::string::String;
use alloc::vec::Vec;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use latchkey_proto::v2::ed25519_dalek::VerifyingKey;
use latchkey_proto::v2::pairing::{PairingResponse, RESPONSE_LEN};
use latchkey_proto::v2::{
    door_tag, from_base64, gateway_key, Applied, DoorId, Error, Grant, GrantSet, PublicKeyBytes,
    ToolId, DOOR_TAG_LEN, GRANT_CAPACITY, MAX_SNAPSHOT_LEN, PUBLIC_KEY_LEN, SIGNATURE_LEN,
    SNAPSHOT_HEADER_LEN,
};
use latchkey_proto::Nonce;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::relay::{MAX_PULSE_MS, MIN_PULSE_MS};
use crate::storage::{Credentials, GrantBlobStore};

/// The pulse of the node's own (v2) grants when the gateway gives none in range.
pub const DEFAULT_PULSE_MS: u32 = 3_000;
/// Longest `snapshot` text a `grants` frame may carry: base64 of the largest snapshot.
pub const MAX_SNAPSHOT_TEXT: usize = MAX_SNAPSHOT_LEN.div_ceil(3) * 4;

const BLOB_FORMAT: u8 = 2;
/// Issue 10's blob: no pairing responses.
const BLOB_FORMAT_1: u8 = 1;
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

/// Logs what a `grants` frame did and persists an applied snapshot: the only write a `grants`
/// frame causes (a refused one writes nothing). A write that fails is logged: the grants are in
/// force until the next restart, and the gateway sends them again on every session.
pub async fn store_outcome(outcome: &Outcome, store: &mut impl GrantBlobStore) {
    match outcome {
        Outcome::Applied {
            version,
            applied,
            blob,
        } => {
            log::info!(
                "grants: snapshot {version} applied: {} grants ({} ECDH)",
                applied.grants,
                applied.new_keys
            );
            if let Err(e) = store.save_grant_blob(blob).await {
                log::error!("grants: cannot store the snapshot: {e}");
            }
        }
        Outcome::Refused { version, why } => {
            log::warn!("grants: snapshot {version} refused: {}", why.code());
        }
    }
}

/// The door's grants, its key, and the relay pulse its own grants use.
pub struct GrantStore {
    set: GrantSet,
    pulse_ms: u32,
    gateway: VerifyingKey,
    door_key: p256::SecretKey,
    /// The snapshot applied last (empty: none yet): the blob is written again after a pairing.
    snapshot: Vec<u8>,
    /// Pairing responses accepted since that snapshot, oldest first, one per key.
    paired: Vec<Paired>,
}

/// An accepted pairing response.
struct Paired {
    frame: [u8; RESPONSE_LEN],
    key_id: ToolId,
    phone_key: PublicKeyBytes,
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
        let raw = BASE64.decode(credentials.gateway_pubkey.as_bytes()).ok()?;
        let gateway = gateway_key(&raw.try_into().ok()?).ok()?;
        Some(Self {
            set: GrantSet::new(door_id),
            pulse_ms: DEFAULT_PULSE_MS,
            gateway,
            door_key,
            snapshot: Vec::new(),
            paired: Vec::new(),
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
                self.snapshot = bytes.to_vec();
                // The gateway's snapshot holds every live vehicle key: it replaces them.
                self.paired.clear();
                Outcome::Applied {
                    version,
                    applied,
                    blob: self.blob(),
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
        let Some(parsed) = parse_blob(blob) else {
            return Err(Error::BadLength {
                expected: BLOB_HEAD + DIGEST_LEN,
                actual: blob.len(),
            });
        };
        let Parsed {
            pulse_ms,
            snapshot,
            paired,
            zs,
            digest_ok,
        } = parsed;
        // A response that no longer verifies (a flash that changed) is dropped on its own.
        let responses: Vec<(&[u8], PairingResponse)> = paired
            .chunks_exact(RESPONSE_LEN)
            .filter_map(|frame| {
                match PairingResponse::verify(frame, self.set.door_id(), &self.gateway) {
                    Ok(r) => Some((frame, r)),
                    Err(e) => {
                        log::warn!("grants: a stored pairing response refused ({e})");
                        None
                    }
                }
            })
            .collect();
        let mut keys = distinct_keys(snapshot);
        add_keys(&mut keys, responses.iter().map(|(_, r)| r.phone_key));
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
        let mut applied = Applied {
            grants: 0,
            new_keys: 0,
        };
        if !snapshot.is_empty() {
            applied = self
                .set
                .apply_with(snapshot, &self.gateway, &self.door_key, cached)?;
            self.snapshot = snapshot.to_vec();
        }
        for (frame, response) in responses {
            match self.insert(frame, &response, &cached) {
                Ok(a) => {
                    applied.grants = a.grants;
                    applied.new_keys += a.new_keys;
                }
                Err(e) => log::warn!("grants: a stored pairing response refused ({e})"),
            }
        }
        self.pulse_ms = if (MIN_PULSE_MS..=MAX_PULSE_MS).contains(&pulse_ms) {
            pulse_ms
        } else {
            DEFAULT_PULSE_MS
        };
        Ok(applied)
    }

    /// A vehicle's pairing response (issue 12) for the connection's live `nonce`: verified
    /// under the gateway's key for this node, its nonce equal to `nonce`, then its grant added
    /// to the set ([`GrantSet::insert`]: an epoch not below the set's, a phone key on the
    /// curve, `not_before < expires`; the same key again replaces the one held). Persist
    /// [`GrantStore::blob`] afterwards. On any error nothing changes.
    ///
    /// # Errors
    /// The proto's verification error, [`Error::NonceMismatch`], [`Error::StaleEpoch`],
    /// [`Error::TooManyGrants`].
    pub fn pair(
        &mut self,
        frame: &[u8],
        nonce: &Nonce,
    ) -> Result<(PairingResponse, Applied), Error> {
        let response = PairingResponse::verify(frame, self.set.door_id(), &self.gateway)?;
        if !bool::from(response.nonce.ct_eq(nonce)) {
            return Err(Error::NonceMismatch);
        }
        let applied = self.insert(frame, &response, &|_| None)?;
        Ok((response, applied))
    }

    fn insert(
        &mut self,
        frame: &[u8],
        response: &PairingResponse,
        cached: &impl Fn(&PublicKeyBytes) -> Option<[u8; 32]>,
    ) -> Result<Applied, Error> {
        let frame: [u8; RESPONSE_LEN] = frame.try_into().map_err(|_| Error::BadLength {
            expected: RESPONSE_LEN,
            actual: frame.len(),
        })?;
        let known = self.paired.iter().position(|p| p.key_id == response.key_id);
        // Bounds the blob: the snapshot's grants plus one response per key, 256 in all.
        let held = snapshot_grants(&self.snapshot) + self.paired.len();
        if known.is_none() && held >= GRANT_CAPACITY {
            return Err(Error::TooManyGrants(held + 1));
        }
        let grant = response.grant(self.set.door_id())?;
        let applied = self.set.insert_with(grant, &self.door_key, cached)?;
        if let Some(i) = known {
            self.paired.remove(i);
        }
        self.paired.push(Paired {
            frame,
            key_id: response.key_id,
            phone_key: response.phone_key,
        });
        Ok(applied)
    }

    /// What to keep in flash for the grants held now: the snapshot, the accepted pairing
    /// responses, the phones' `Z`.
    pub fn blob(&self) -> Zeroizing<Vec<u8>> {
        let snapshot = self.snapshot.as_slice();
        let mut keys = distinct_keys(snapshot);
        add_keys(&mut keys, self.paired.iter().map(|p| p.phone_key));
        let mut blob = Zeroizing::new(Vec::with_capacity(
            BLOB_HEAD
                + snapshot.len()
                + 2
                + self.paired.len() * RESPONSE_LEN
                + keys.len() * 32
                + DIGEST_LEN,
        ));
        blob.push(BLOB_FORMAT);
        blob.extend_from_slice(&self.pulse_ms.to_be_bytes());
        blob.extend_from_slice(&(snapshot.len() as u32).to_be_bytes());
        blob.extend_from_slice(snapshot);
        // At most GRANT_CAPACITY (see `insert`): fits a u16.
        blob.extend_from_slice(&(self.paired.len() as u16).to_be_bytes());
        for p in &self.paired {
            blob.extend_from_slice(&p.frame);
        }
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

/// The number of grants in a snapshot's raw layout (0 for none).
fn snapshot_grants(snapshot: &[u8]) -> usize {
    snapshot
        .len()
        .saturating_sub(SNAPSHOT_HEADER_LEN + SIGNATURE_LEN)
        / Grant::LEN
}

/// The distinct phone keys of a snapshot's grants, in the order they first appear (read from
/// the raw layout; `apply` verifies it).
fn distinct_keys(snapshot: &[u8]) -> Vec<PublicKeyBytes> {
    let grants = snapshot.get(SNAPSHOT_HEADER_LEN..).unwrap_or_default();
    let mut keys: Vec<PublicKeyBytes> = Vec::new();
    add_keys(
        &mut keys,
        grants.chunks_exact(Grant::LEN).filter_map(|grant| {
            grant
                .get(Grant::LEN - PUBLIC_KEY_LEN..)
                .and_then(|k| PublicKeyBytes::try_from(k).ok())
        }),
    );
    keys
}

/// Appends the keys not yet in `keys`, in order.
fn add_keys(keys: &mut Vec<PublicKeyBytes>, more: impl Iterator<Item = PublicKeyBytes>) {
    for key in more {
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
}

/// A blob's parts.
struct Parsed<'a> {
    pulse_ms: u32,
    snapshot: &'a [u8],
    /// The pairing responses, `RESPONSE_LEN` bytes each.
    paired: &'a [u8],
    zs: &'a [u8],
    digest_ok: bool,
}

/// Splits a blob of either format; `None` if its layout does not hold.
fn parse_blob(blob: &[u8]) -> Option<Parsed<'_>> {
    let (&format, rest) = blob.split_first()?;
    if !(format == BLOB_FORMAT || format == BLOB_FORMAT_1) || blob.len() < BLOB_HEAD + DIGEST_LEN {
        return None;
    }
    let pulse_ms = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let n = u32::from_be_bytes(rest.get(4..8)?.try_into().ok()?) as usize;
    let body_end = blob.len() - DIGEST_LEN;
    let snapshot_end = BLOB_HEAD.checked_add(n)?;
    let snapshot = blob.get(BLOB_HEAD..snapshot_end)?;
    let (paired, zs_start) = if format == BLOB_FORMAT {
        let m = usize::from(u16::from_be_bytes(
            blob.get(snapshot_end..snapshot_end + 2)?.try_into().ok()?,
        ));
        let start = snapshot_end + 2;
        let end = start.checked_add(m.checked_mul(RESPONSE_LEN)?)?;
        (blob.get(start..end)?, end)
    } else {
        (&[][..], snapshot_end)
    };
    let zs = blob.get(zs_start..body_end)?;
    let digest_ok = Sha256::digest(blob.get(..body_end)?).as_slice() == blob.get(body_end..)?;
    Some(Parsed {
        pulse_ms,
        snapshot,
        paired,
        zs,
        digest_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::Door;
    use crate::storage::ram_flash::{RamFlash, PAGE};
    use crate::storage::FlashStore;
    use crate::test_support::*;
    use crate::time::{Instant, WallClock};
    use futures_executor::block_on;
    use latchkey_proto::v2::ed25519_dalek::SigningKey;
    use latchkey_proto::v2::Status;
    use serde_json::{json, Value};

    fn flash_store(flash: RamFlash) -> FlashStore<RamFlash> {
        let pages = 30 * PAGE as u32;
        FlashStore::new(flash, 0..pages, pages..pages + 2 * PAGE as u32).unwrap()
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_forged_stale_or_foreign_snapshot_is_refused_and_nothing_is_written() {
        block_on(async {
            let phone = Phone::new(0x11);
            let grant = phone.grant(DOOR_ID, "front-door");
            let mut store = flash_store(RamFlash::new(32));
            let mut grants = empty_store();
            let good = snapshot(&gateway(), 5, 1, NOW, &[Grant { epoch: 1, ..grant }]);
            let outcome = grants.apply_frame(&good, Some(2000));
            assert_eq!(
                json_of(&outcome.ack()),
                json!({"type":"grants_ack","version":5,"ok":true,"grants":1})
            );
            store_outcome(&outcome, &mut store).await;
            let before = store.into_flash().bytes;
            let mut store = flash_store(RamFlash {
                bytes: before.clone(),
                writes_left: None,
            });
            let forger = SigningKey::from_bytes(&[9; 32]);
            let foreign = Grant {
                node_id: OTHER_DOOR,
                epoch: 1,
                ..grant
            };
            let mut cut = good.clone();
            cut.truncate(good.len() - 8);
            for (frame, version, code) in [
                (
                    snapshot(&forger, 6, 1, NOW, &[Grant { epoch: 1, ..grant }]),
                    6,
                    "BAD_SNAPSHOT",
                ),
                (good.clone(), 5, "STALE"),
                (snapshot(&gateway(), 7, 0, NOW, &[grant]), 7, "STALE"),
                (
                    snapshot(&gateway(), 8, 1, NOW, &[foreign]),
                    8,
                    "BAD_SNAPSHOT",
                ),
                (cut, 5, "BAD_SNAPSHOT"),
                (String::from("not base64!"), 0, "BAD_SNAPSHOT"),
                (String::new(), 0, "BAD_SNAPSHOT"),
                ("A".repeat(MAX_SNAPSHOT_TEXT + 4), 0, "BAD_SNAPSHOT"),
            ] {
                let outcome = grants.apply_frame(&frame, Some(100));
                assert_eq!(
                    json_of(&outcome.ack()),
                    json!({"type":"grants_ack","version":version,"ok":false,"error":code}),
                    "{code} {version}"
                );
                store_outcome(&outcome, &mut store).await;
            }
            assert_eq!((grants.set().version(), grants.set().len()), (5, 1));
            assert_eq!(
                grants.pulse_ms(),
                2000,
                "a refused frame's pulse is not taken"
            );
            assert!(store.into_flash().bytes == before, "the flash is unchanged");
        });
    }

    #[test]
    fn grants_survive_a_restart_clock_unknown_until_hello_then_granted() {
        block_on(async {
            let phone = Phone::new(0x11);
            let mut store = flash_store(RamFlash::new(32));
            let mut grants = empty_store();
            let frame = snapshot(
                &gateway(),
                5,
                0,
                NOW - 600,
                &[phone.grant(DOOR_ID, "front-door")],
            );
            store_outcome(&grants.apply_frame(&frame, Some(2000)), &mut store).await;
            // Power off, power on: the node re-reads its flash.
            let mut store = flash_store(store.into_flash());
            let blob = store.grant_blob().await.unwrap().unwrap();
            let mut grants = empty_store();
            let applied = grants.boot(&blob).unwrap();
            assert_eq!(
                (applied.grants, applied.new_keys),
                (1, 0),
                "Z from the cache"
            );
            assert_eq!(grants.pulse_ms(), 2000);
            let mut wall = WallClock::default();
            wall.raise_floor(grants.set().issued_at() as i64, Instant::default());
            let mut door = Door::default();
            // Before any hello: the grant is there (the answer is sealed), the time is not.
            let t = Instant::from_millis(5_000);
            let (r, pulse) = attempt(&mut door, &grants, &phone, t, wall.now(t));
            assert_eq!(
                (r.status, r.authenticated, pulse),
                (Status::ClockUnknown, true, None)
            );
            // The hello says the time: the same phone, trying again, gets in.
            let t = t + 1_000;
            wall.set(NOW as i64, t);
            let (r, pulse) = attempt(&mut door, &grants, &phone, t, wall.now(t));
            assert_eq!(
                (r.status, r.authenticated, pulse),
                (Status::Granted, true, Some(2000))
            );
        });
    }

    #[test]
    fn a_damaged_blob_drops_the_secret_cache_or_the_grants_never_a_wrong_grant() {
        let phone = Phone::new(0x11);
        let mut grants = empty_store();
        let frame = snapshot(&gateway(), 5, 0, NOW, &[phone.grant(DOOR_ID, "front-door")]);
        let Outcome::Applied { blob, .. } = grants.apply_frame(&frame, None) else {
            panic!("not applied")
        };
        // A flipped bit in the cached Z: the digest catches it, Z is computed again.
        let mut bad_z = blob.to_vec();
        let at = bad_z.len() - DIGEST_LEN - 1;
        bad_z[at] ^= 1;
        let mut again = empty_store();
        let applied = again.boot(&bad_z).unwrap();
        assert_eq!((applied.grants, applied.new_keys), (1, 1));
        let t = Instant::default();
        let (r, _) = attempt(&mut Door::default(), &again, &phone, t, Some(NOW as i64));
        assert_eq!(r.status, Status::Granted);
        // A flipped bit in the snapshot: its signature fails, nothing is held.
        let mut bad_snapshot = blob.to_vec();
        bad_snapshot[BLOB_HEAD + 50] ^= 1;
        let mut again = empty_store();
        assert!(again.boot(&bad_snapshot).is_err());
        assert!(again.set().is_empty());
        for short in [&[][..], &blob[..10], &[2u8; 64][..]] {
            assert!(empty_store().boot(short).is_err());
        }
    }

    #[test]
    fn uuids_parse_with_or_without_dashes_and_nothing_else() {
        assert_eq!(uuid_bytes(NODE_ID), Some(DOOR_ID));
        assert_eq!(uuid_bytes(&NODE_ID.replace('-', "")), Some(DOOR_ID));
        assert_eq!(uuid_bytes("3d9a5c1e"), None);
        assert_eq!(uuid_bytes(&NODE_ID.replace('3', "g")), None);
    }

    proptest::proptest! {
        #[test]
        fn no_grants_text_or_stored_blob_panics_or_is_taken(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            text in ".{0,200}",
        ) {
            let mut grants = empty_store();
            for frame in [BASE64.encode(&bytes), text] {
                let outcome = grants.apply_frame(&frame, Some(2000));
                let refused = matches!(outcome, Outcome::Refused { .. });
                proptest::prop_assert!(refused);
            }
            proptest::prop_assert!(grants.boot(&bytes).is_err());
            proptest::prop_assert!(grants.set().is_empty());
        }
    }
}
