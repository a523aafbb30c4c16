//! The door's side of version 2, as pure functions of their inputs: the grant set that
//! snapshots replace, the challenge with its precomputed hints, and [`decide`].
//!
//! ```text
//!             apply(snapshot)                issue(nonce, now_mono)
//!  GrantSet ──────────────────▶ GrantSet  ───────────────────────────▶ IssuedChallenge
//!  (verified, ECDH done)                    one hint per grant          (per connection,
//!                                                                        single use, 30 s)
//!  decide(set, taken challenge, request, now_mono, now_wall) ──▶ Decision { status, effects }
//!  Decision::reply(final status, door_time) ──▶ result frame (sealed when the request decrypted)
//! ```
//!
//! Nothing here reads a clock, a radio or storage: the node core passes monotonic and wall
//! time, keeps one `Option<IssuedChallenge>` per connection (and `take`s it for a request, so
//! a nonce is used once and only on its connection), runs the effects and persists the
//! snapshot bytes it applied.

use alloc::vec::Vec;

use ed25519_dalek::VerifyingKey;
use zeroize::Zeroize;

use super::frame::{Challenge, Request, RequestBody, ResultFrame};
use super::grant::{verify_snapshot, Grant};
use super::{
    DoorId, EndpointId, Error, Hint, HintMac, PeerSecret, PublicKeyBytes, SessionKeys, Status,
    ToolId,
};
use crate::{mac, Nonce, NONCE_LIFETIME_SECS};

#[derive(Clone)]
struct Entry {
    grant: Grant,
    secret: PeerSecret,
    hint: HintMac,
}

/// The grants of one door, each with its precomputed [`PeerSecret`]. At most
/// [`super::GRANT_CAPACITY`] grants; replaced only by a newer verified snapshot.
#[derive(Clone)]
pub struct GrantSet {
    door_id: DoorId,
    version: u64,
    epoch: u32,
    issued_at: u64,
    generation: u64,
    entries: Vec<Entry>,
}

impl core::fmt::Debug for GrantSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The grants are public, the secrets are not: print the state only.
        f.debug_struct("GrantSet")
            .field("version", &self.version)
            .field("epoch", &self.epoch)
            .field("issued_at", &self.issued_at)
            .field("grants", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// What applying a snapshot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Grants now held.
    pub grants: usize,
    /// ECDH computations it took (phone keys the door did not hold before).
    pub new_keys: usize,
}

impl GrantSet {
    /// An empty set for the door `door_id` (version 0, epoch 0).
    #[must_use]
    pub fn new(door_id: DoorId) -> GrantSet {
        GrantSet {
            door_id,
            version: 0,
            epoch: 0,
            issued_at: 0,
            generation: 0,
            entries: Vec::new(),
        }
    }

    /// Verifies `snapshot` (see [`verify_snapshot`]), checks that it is newer than the set
    /// (a higher version, an epoch not lower), computes the ECDH secret of every phone key not
    /// already held, and only then replaces the whole set. On any error the set is unchanged.
    ///
    /// A node persists the snapshot bytes it applied and applies them again at start.
    ///
    /// # Errors
    /// A verification error, [`Error::StaleVersion`], [`Error::StaleEpoch`].
    pub fn apply(
        &mut self,
        snapshot: &[u8],
        gateway: &VerifyingKey,
        door_key: &p256::SecretKey,
    ) -> Result<Applied, Error> {
        self.apply_with(snapshot, gateway, door_key, |_| None)
    }

    /// [`GrantSet::apply`], taking the shared secret `Z` of a phone key from `cached` when it
    /// has one (kept in the node's storage, see [`GrantSet::shared_secrets`]), so that a
    /// restart does not redo one ECDH per phone. A wrong cached value only locks that phone
    /// out (its requests no longer decrypt).
    ///
    /// # Errors
    /// As [`GrantSet::apply`].
    pub fn apply_with(
        &mut self,
        snapshot: &[u8],
        gateway: &VerifyingKey,
        door_key: &p256::SecretKey,
        cached: impl Fn(&PublicKeyBytes) -> Option<[u8; 32]>,
    ) -> Result<Applied, Error> {
        let verified = verify_snapshot(snapshot, gateway, &self.door_id)?;
        let header = verified.header;
        if header.version <= self.version {
            return Err(Error::StaleVersion {
                stored: self.version,
                received: header.version,
            });
        }
        if header.epoch < self.epoch {
            return Err(Error::StaleEpoch {
                stored: self.epoch,
                received: header.epoch,
            });
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(verified.len());
        let mut new_keys = 0;
        for grant in verified.grants() {
            let entry = self.entry(&entries, grant, door_key, &cached, &mut new_keys)?;
            entries.push(entry);
        }
        self.entries = entries;
        self.version = header.version;
        self.epoch = header.epoch;
        self.issued_at = header.issued_at;
        self.generation = self.generation.wrapping_add(1);
        Ok(Applied {
            grants: self.entries.len(),
            new_keys,
        })
    }

    /// Adds one grant the node verified on its own (a vehicle's pairing response, issue 12),
    /// keeping the snapshot's version and epoch: a grant for this door, with an epoch not below
    /// the set's, a valid phone key and validity. A grant with the same (tool, endpoint)
    /// replaces the one held; otherwise the set grows, up to [`super::GRANT_CAPACITY`].
    /// Computes the phone's ECDH secret unless the set or `cached` has it. On any error the
    /// set is unchanged. The next applied snapshot replaces the whole set, this grant included.
    ///
    /// # Errors
    /// [`Error::WrongNode`], [`Error::StaleEpoch`], [`Error::EmptyValidity`],
    /// [`Error::BadPublicKey`], [`Error::TooManyGrants`].
    pub fn insert_with(
        &mut self,
        grant: Grant,
        door_key: &p256::SecretKey,
        cached: impl Fn(&PublicKeyBytes) -> Option<[u8; 32]>,
    ) -> Result<Applied, Error> {
        if grant.node_id != self.door_id {
            return Err(Error::WrongNode);
        }
        if grant.epoch < self.epoch {
            return Err(Error::StaleEpoch {
                stored: self.epoch,
                received: grant.epoch,
            });
        }
        // What a snapshot's grant must pass: canonical endpoint, validity, a point on P-256.
        Grant::decode(&grant.to_bytes())?;
        let at = self
            .entries
            .iter()
            .position(|e| e.grant.tool_id == grant.tool_id && e.grant.endpoint == grant.endpoint);
        if at.is_none() && self.entries.len() >= super::GRANT_CAPACITY {
            return Err(Error::TooManyGrants(self.entries.len() + 1));
        }
        let mut new_keys = 0;
        let entry = self.entry(&[], grant, door_key, &cached, &mut new_keys)?;
        match at.and_then(|i| self.entries.get_mut(i)) {
            Some(held) => *held = entry,
            None => self.entries.push(entry),
        }
        // Challenges issued before recompute their hints (see `decide`).
        self.generation = self.generation.wrapping_add(1);
        Ok(Applied {
            grants: self.entries.len(),
            new_keys,
        })
    }

    /// [`GrantSet::insert_with`] without a cache.
    ///
    /// # Errors
    /// As [`GrantSet::insert_with`].
    pub fn insert(&mut self, grant: Grant, door_key: &p256::SecretKey) -> Result<Applied, Error> {
        self.insert_with(grant, door_key, |_| None)
    }

    /// The entry of `grant`, its secret taken from `fresh` (entries being built), the set, or
    /// `cached`, else computed (counted in `new_keys`).
    fn entry(
        &self,
        fresh: &[Entry],
        grant: Grant,
        door_key: &p256::SecretKey,
        cached: &impl Fn(&PublicKeyBytes) -> Option<[u8; 32]>,
        new_keys: &mut usize,
    ) -> Result<Entry, Error> {
        let known = fresh
            .iter()
            .chain(self.entries.iter())
            .find(|e| e.grant.phone_key == grant.phone_key)
            .map(|e| e.secret.clone());
        let secret = match (known, cached(&grant.phone_key)) {
            (Some(s), _) => s,
            (None, Some(mut z)) => {
                let s = PeerSecret::from_shared(&z, &self.door_id);
                z.zeroize();
                s
            }
            (None, None) => {
                *new_keys += 1;
                PeerSecret::derive(door_key, &grant.phone_key, &self.door_id)?
            }
        };
        let hint = secret.hint_mac();
        Ok(Entry {
            grant,
            secret,
            hint,
        })
    }

    /// The door's id.
    #[must_use]
    pub fn door_id(&self) -> &DoorId {
        &self.door_id
    }

    /// Version of the snapshot applied last (0: none).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The revocation epoch of the snapshot applied last.
    #[must_use]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The gateway's signing time of the snapshot applied last: a floor for the door's clock.
    #[must_use]
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// Number of grants held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no grant is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The grants held.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.entries.iter().map(|e| &e.grant)
    }

    /// Each phone key held with its shared secret `Z`, for a node that caches them in its
    /// storage (as secret as the door's private key, from which they derive).
    pub fn shared_secrets(&self) -> impl Iterator<Item = (&PublicKeyBytes, &[u8; 32])> {
        self.entries
            .iter()
            .map(|e| (&e.grant.phone_key, e.secret.shared()))
    }

    fn hints(&self, nonce: &Nonce) -> Vec<Hint> {
        self.entries.iter().map(|e| e.hint.hint(nonce)).collect()
    }
}

/// A challenge as the door issued it, with the hint of every grant for its nonce. Bound to
/// one connection by whoever holds it; valid [`NONCE_LIFETIME_SECS`]; used once.
pub struct IssuedChallenge {
    nonce: Nonce,
    issued_mono: u64,
    generation: u64,
    hints: Vec<Hint>,
}

impl IssuedChallenge {
    /// Issues a challenge for a fresh `nonce` (from the door's CSPRNG) at monotonic time
    /// `now_mono` (seconds); returns it with the frame to send.
    #[must_use]
    pub fn issue(
        set: &GrantSet,
        nonce: Nonce,
        now_mono: u64,
        door_time: Option<u64>,
    ) -> (IssuedChallenge, [u8; Challenge::LEN]) {
        let frame = Challenge {
            door_id: set.door_id,
            nonce,
            door_time: door_time.unwrap_or(0),
        }
        .to_bytes();
        let issued = IssuedChallenge {
            nonce,
            issued_mono: now_mono,
            generation: set.generation,
            hints: set.hints(&nonce),
        };
        (issued, frame)
    }

    /// The nonce.
    #[must_use]
    pub fn nonce(&self) -> &Nonce {
        &self.nonce
    }

    /// Whether the challenge may still be answered at monotonic time `now_mono`.
    #[must_use]
    pub fn is_live(&self, now_mono: u64) -> bool {
        now_mono >= self.issued_mono && now_mono - self.issued_mono <= NONCE_LIFETIME_SECS
    }
}

/// What the door decided about a request, and what to do about it.
pub struct Decision {
    /// The decision.
    pub status: Status,
    /// What the node core does next.
    pub effects: Effects,
    nonce: Nonce,
    keys: Option<SessionKeys>,
}

/// The effects of a [`Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Open this endpoint (only with [`Status::Granted`]); answer with
    /// [`Decision::reply`] once the action has run (or failed: [`Status::ActionFailed`]).
    pub open: Option<EndpointId>,
    /// The entry for the decision log (kept while offline, uploaded on reconnect).
    pub record: Record,
}

/// One line of the door's decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The decision.
    pub status: Status,
    /// The tool, when the request decrypted (so it is proven).
    pub tool_id: Option<ToolId>,
    /// The endpoint asked for, when the request decrypted.
    pub endpoint: Option<EndpointId>,
    /// The phone's claimed time, when the request decrypted (not trusted).
    pub phone_time: Option<u64>,
    /// The door's wall time at the decision, when known.
    pub door_time: Option<u64>,
}

impl Decision {
    fn new(
        status: Status,
        nonce: Nonce,
        keys: Option<SessionKeys>,
        body: Option<&RequestBody>,
        now_wall: Option<u64>,
    ) -> Decision {
        Decision {
            status,
            effects: Effects {
                open: body.filter(|_| status.is_granted()).map(|b| b.endpoint),
                record: Record {
                    status,
                    tool_id: body.map(|b| b.tool_id),
                    endpoint: body.map(|b| b.endpoint),
                    phone_time: body.map(|b| b.phone_time),
                    door_time: now_wall,
                },
            },
            nonce,
            keys,
        }
    }

    /// Whether the reply will be sealed (the request decrypted under a grant's keys).
    #[must_use]
    pub fn authenticated(&self) -> bool {
        self.keys.is_some()
    }

    /// The result frame for `status` (normally [`Decision::status`], or
    /// [`Status::ActionFailed`] when the action failed): sealed when the request decrypted,
    /// else plain. Consumes the decision: a session key encrypts one result only (the IV is
    /// fixed). A plain reply never grants: [`Status::Granted`] without keys (which
    /// `decide` never produces) is sent as `ACTION_FAILED`.
    #[must_use]
    pub fn reply(self, status: Status, door_time: Option<u64>) -> ReplyFrame {
        let mut reply = ReplyFrame {
            bytes: [0; ResultFrame::MAX_LEN],
            len: 0,
        };
        let sealed = self
            .keys
            .as_ref()
            .and_then(|k| ResultFrame::seal(status, door_time, k, &self.nonce).ok());
        if let Some(frame) = sealed {
            reply.bytes = frame;
            reply.len = frame.len();
            return reply;
        }
        let status = if status.is_granted() {
            Status::ActionFailed
        } else {
            status
        };
        if let Ok(frame) = ResultFrame::plain(status, &self.nonce) {
            for (dst, src) in reply.bytes.iter_mut().zip(frame.iter()) {
                *dst = *src;
            }
            reply.len = frame.len();
        }
        reply
    }
}

/// A result frame, sealed or plain.
#[derive(Clone, Copy)]
pub struct ReplyFrame {
    bytes: [u8; ResultFrame::MAX_LEN],
    len: usize,
}

impl ReplyFrame {
    /// The frame to notify.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

/// Decides a request written on a connection whose challenge was `challenge` (taken from the
/// connection, so it is used once), at monotonic time `now_mono` and wall time `now_wall`
/// (`None`: the door does not know the wall time).
///
/// Checks, in order (the first failure is the answer):
/// 1. a live challenge (issued, ≤ 30 s old) → else `NONCE_INVALID`;
/// 2. the frame's version, kind, length → `UNSUPPORTED` / `MALFORMED`;
/// 3. a grant whose hint for this nonce equals the frame's → else `UNKNOWN_TOOL`;
/// 4. the frame decrypts under a matching grant's session keys → else `BAD_TAG`;
///    (from here on the reply is sealed)
/// 5. the body is canonical → else `MALFORMED`;
/// 6. this phone holds a grant with the body's tool id → else `UNKNOWN_TOOL`;
/// 7. one of those grants is for the body's endpoint → else `ENDPOINT_DENIED`;
/// 8. its epoch is the set's → else `TOOL_REVOKED`;
/// 9. the wall time is known → else `CLOCK_UNKNOWN`;
/// 10. `now_wall ≥ not_before` → else `TOOL_NOT_YET_VALID`; `now_wall < expires` → else
///     `TOOL_EXPIRED`;
/// 11. `GRANTED`: open the endpoint.
#[must_use]
pub fn decide(
    set: &GrantSet,
    challenge: Option<&IssuedChallenge>,
    request: &[u8],
    now_mono: u64,
    now_wall: Option<u64>,
) -> Decision {
    let nonce = challenge.map_or([0; 16], |c| c.nonce);
    let plain = |status| Decision::new(status, nonce, None, None, now_wall);
    let Some(challenge) = challenge.filter(|c| c.is_live(now_mono)) else {
        return plain(Status::NonceInvalid);
    };
    let hint = match Request::hint(request) {
        Ok(h) => h,
        Err(e) => return plain(e.status()),
    };
    let recomputed;
    let hints = if challenge.generation == set.generation {
        &challenge.hints
    } else {
        // The set changed since the challenge: its hints no longer line up with the entries.
        recomputed = set.hints(&nonce);
        &recomputed
    };
    let mut matched = false;
    let mut opened: Option<(usize, SessionKeys, Result<RequestBody, Error>)> = None;
    for (i, (entry, candidate)) in set.entries.iter().zip(hints.iter()).enumerate() {
        if !mac::ct_eq(candidate, &hint) {
            continue;
        }
        matched = true;
        let keys = entry.secret.session(&nonce, &set.door_id);
        match Request::open(request, &keys, &nonce) {
            Err(Error::Decrypt) => {}
            body => {
                opened = Some((i, keys, body));
                break;
            }
        }
    }
    let Some((index, keys, body)) = opened else {
        return plain(if matched {
            Status::BadTag
        } else {
            Status::UnknownTool
        });
    };
    let body = match body {
        Ok(b) => b,
        Err(_) => return Decision::new(Status::Malformed, nonce, Some(keys), None, now_wall),
    };
    let status = check_grant(set, index, &body, now_wall);
    Decision::new(status, nonce, Some(keys), Some(&body), now_wall)
}

/// Steps 6–11 of [`decide`], for the phone whose grant at `index` decrypted the request.
fn check_grant(set: &GrantSet, index: usize, body: &RequestBody, now_wall: Option<u64>) -> Status {
    let Some(phone_key) = set.entries.get(index).map(|e| &e.grant.phone_key) else {
        return Status::UnknownTool;
    };
    // Only this phone's grants: a phone cannot borrow another phone's tool id.
    let mut tools = set
        .entries
        .iter()
        .map(|e| &e.grant)
        .filter(|g| g.phone_key == *phone_key && g.tool_id == body.tool_id)
        .peekable();
    if tools.peek().is_none() {
        return Status::UnknownTool;
    }
    let Some(grant) = tools.find(|g| g.endpoint == body.endpoint) else {
        return Status::EndpointDenied;
    };
    if grant.epoch < set.epoch {
        return Status::ToolRevoked;
    }
    let Some(now) = now_wall else {
        return Status::ClockUnknown;
    };
    if now < grant.not_before {
        return Status::ToolNotYetValid;
    }
    if now >= grant.expires {
        return Status::ToolExpired;
    }
    Status::Granted
}
