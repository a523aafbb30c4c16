//! The vehicle's pairing service (issue 12, NODES.md §8.4): a vehicle hands a phone a signed
//! challenge, and takes back the gateway's pairing response for it, which adds the phone's
//! vehicle key to the grant set with no network at all.
//!
//! ```text
//!  PairingChallenge ──▶ fresh nonce, signed with the node key ─▶ Reply
//!                       └─ one per connection: 120 s monotonic, replaced by the next read
//!  PairingResponse ──▶ a live nonce here? ─▶ GrantStore::pair (gateway signature, nonce equal,
//!                      epoch, phone key, validity) ─▶ nonce consumed ─▶ Accepted
//!                      └─ any failure: Refused, nothing kept, the nonce stays
//!  Disconnected ──▶ the connection's nonce is gone
//! ```
//!
//! Like [`crate::door`], a pure machine: the caller persists the grant blob of an accepted
//! response before it answers the write.

use alloc::vec::Vec;
use core::fmt;

use latchkey_proto::v2::pairing::{PairingChallenge, CHALLENGE_LEN};
use latchkey_proto::v2::{Applied, Error, ToolId};
use latchkey_proto::Nonce;

use crate::board::{ConnId, Rng};
use crate::grants::GrantStore;
use crate::time::{Instant, UnixTime};

/// How long a pairing nonce may be answered, on the vehicle's monotonic clock (the phone asks
/// the gateway and its user in between).
pub const NONCE_LIFETIME_MS: u64 = 120_000;
/// Connections with a pairing nonce; beyond that the oldest is forgotten.
pub const MAX_CONNECTIONS: usize = 8;

struct Pending {
    conn: ConnId,
    nonce: Nonce,
    issued: Instant,
}

/// Per-connection pairing nonces.
#[derive(Default)]
pub struct Pairing {
    pending: Vec<Pending>,
}

impl fmt::Debug for Pairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pairing")
            .field("connections", &self.pending.len())
            .finish()
    }
}

/// An accepted pairing response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The vehicle key's id.
    pub key_id: ToolId,
    /// Grants held now.
    pub applied: Applied,
}

/// Why a pairing response was refused (for the log; the phone gets an ATT error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This connection holds no live pairing nonce (none read, expired, or already used).
    NoNonce,
    /// The response is for another nonce.
    OtherNonce,
    /// Layout, gateway signature, epoch, phone key, validity or capacity.
    Invalid(Error),
    /// The node has no grant store (unregistered).
    NoGrants,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NoNonce => f.write_str("no live pairing challenge on this connection"),
            Refused::OtherNonce => f.write_str("the response answers another challenge"),
            Refused::Invalid(e) => write!(f, "{e}"),
            Refused::NoGrants => f.write_str("the node is not registered"),
        }
    }
}

impl Pairing {
    /// Connections holding a nonce.
    pub fn connections(&self) -> usize {
        self.pending.len()
    }

    /// A Pairing Challenge read on `conn` at monotonic `now`: a fresh nonce (replacing the
    /// connection's previous one), the vehicle's wall time `wall` (0 when unknown), signed
    /// with the node's key.
    pub fn challenge(
        &mut self,
        conn: ConnId,
        grants: &GrantStore,
        node_key: &p256::SecretKey,
        now: Instant,
        wall: Option<UnixTime>,
        rng: &mut impl Rng,
    ) -> [u8; CHALLENGE_LEN] {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        self.pending.retain(|p| p.conn != conn);
        if self.pending.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.issued)
                .map(|(i, _)| i)
            {
                self.pending.swap_remove(oldest);
            }
        }
        self.pending.push(Pending {
            conn,
            nonce,
            issued: now,
        });
        PairingChallenge {
            vehicle_id: *grants.door_id(),
            nonce,
            timestamp: wall.and_then(|t| u64::try_from(t).ok()).unwrap_or(0),
        }
        .sign(node_key)
    }

    /// A Pairing Response written on `conn` at monotonic `now`. Checks a live nonce on this
    /// connection first (no signature work for a connection that never read one), then
    /// [`GrantStore::pair`] verifies the frame and its nonce is compared with the
    /// connection's; on success the grant is in the set and the nonce is consumed.
    pub fn respond(
        &mut self,
        conn: ConnId,
        frame: &[u8],
        grants: Option<&mut GrantStore>,
        now: Instant,
    ) -> Result<Accepted, Refused> {
        let at = self
            .pending
            .iter()
            .position(|p| p.conn == conn && now.millis_since(p.issued) <= NONCE_LIFETIME_MS)
            .ok_or(Refused::NoNonce)?;
        let nonce = self.pending.get(at).map(|p| p.nonce).ok_or(Refused::NoNonce)?;
        let grants = grants.ok_or(Refused::NoGrants)?;
        let (response, applied) = grants.pair(frame, &nonce).map_err(|e| match e {
            Error::NonceMismatch => Refused::OtherNonce,
            e => Refused::Invalid(e),
        })?;
        self.pending.swap_remove(at);
        Ok(Accepted {
            key_id: response.key_id,
            applied,
        })
    }

    /// The connection ended: its nonce goes.
    pub fn disconnected(&mut self, conn: ConnId) {
        self.pending.retain(|p| p.conn != conn);
    }
}
