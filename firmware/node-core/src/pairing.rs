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

#[derive(Clone)]
struct Pending {
    conn: ConnId,
    nonce: Nonce,
    issued: Instant,
}

/// Per-connection pairing nonces.
#[derive(Default, Clone)]
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
        let nonce = self
            .pending
            .get(at)
            .map(|p| p.nonce)
            .ok_or(Refused::NoNonce)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::door::Door;
    use crate::grants::Outcome;
    use crate::test_support::*;
    use latchkey_proto::v2::ed25519_dalek::SigningKey;
    use latchkey_proto::v2::pairing::{PairingResponse, ENDPOINT, RESPONSE_LEN};
    use latchkey_proto::v2::{Grant, Status};

    /// A vehicle (the vectors' node) with one door-style grant at epoch 1, snapshot version 1.
    struct Vehicle {
        pairing: Pairing,
        grants: GrantStore,
        rng: Counter,
    }

    impl Vehicle {
        fn new() -> Self {
            let other = Phone::new(0x22);
            let mut grants = empty_store();
            let frame = snapshot(
                &gateway(),
                1,
                1,
                NOW - 600,
                &[Grant {
                    epoch: 1,
                    ..other.grant(DOOR_ID, ENDPOINT)
                }],
            );
            assert!(matches!(
                grants.apply_frame(&frame, Some(1500)),
                Outcome::Applied { .. }
            ));
            Self {
                pairing: Pairing::default(),
                grants,
                rng: Counter::default(),
            }
        }

        fn read(&mut self, conn: ConnId, now: Instant) -> [u8; CHALLENGE_LEN] {
            self.pairing.challenge(
                conn,
                &self.grants,
                &door_identity().door_key(),
                now,
                WALL,
                &mut self.rng,
            )
        }

        fn write(&mut self, conn: ConnId, frame: &[u8], now: Instant) -> Result<Accepted, Refused> {
            self.pairing
                .respond(conn, frame, Some(&mut self.grants), now)
        }

        /// The phone's unlock of endpoint `vehicle`, offline (no gateway: a door decision).
        fn unlock(&self, phone: &Phone) -> Status {
            let (r, _) = attempt_at(
                &mut Door::default(),
                &self.grants,
                phone,
                ENDPOINT,
                at(1),
                WALL,
            );
            r.status
        }
    }

    /// The gateway's pairing response for `phone`'s key, answering `challenge`.
    fn response(phone: &Phone, challenge: &[u8], epoch: u32) -> PairingResponse {
        let c = PairingChallenge::decode(challenge).unwrap();
        PairingResponse {
            nonce: c.nonce,
            key_id: phone.tool,
            not_before: NOW - 600,
            expires: NOW + 30 * 86_400,
            epoch,
            phone_key: phone.public(),
        }
    }

    fn signed(r: &PairingResponse) -> [u8; RESPONSE_LEN] {
        r.sign(&DOOR_ID, &gateway())
    }

    #[test]
    fn the_challenge_is_signed_by_the_node_key_the_gateway_knows_and_fresh_at_each_read() {
        let mut v = Vehicle::new();
        let first = v.read(1, at(0));
        let c = PairingChallenge::verify(&first, &door_public()).unwrap();
        assert_eq!(c.vehicle_id, DOOR_ID);
        assert_eq!(c.timestamp, NOW);
        let second = v.read(1, at(1));
        assert_ne!(
            PairingChallenge::decode(&second).unwrap().nonce,
            c.nonce,
            "a fresh nonce per read"
        );
        // Wall time unknown: timestamp 0.
        let unknown = v.pairing.challenge(
            2,
            &v.grants,
            &door_identity().door_key(),
            at(2),
            None,
            &mut v.rng,
        );
        assert_eq!(
            PairingChallenge::verify(&unknown, &door_public())
                .unwrap()
                .timestamp,
            0
        );
    }

    #[test]
    fn a_response_is_accepted_once_and_the_phone_then_opens_the_vehicle_offline() {
        let mut v = Vehicle::new();
        let phone = Phone::new(0x11);
        assert_eq!(v.unlock(&phone), Status::UnknownTool);
        let challenge = v.read(1, at(0));
        let frame = signed(&response(&phone, &challenge, 1));
        let accepted = v.write(1, &frame, at(60_000)).unwrap();
        assert_eq!(accepted.key_id, phone.tool);
        assert_eq!(accepted.applied.grants, 2);
        assert_eq!(v.unlock(&phone), Status::Granted);
        // The nonce is consumed: the same response again, on the same connection, is refused.
        assert_eq!(v.write(1, &frame, at(60_001)), Err(Refused::NoNonce));
        assert_eq!(v.pairing.connections(), 0);
    }

    #[test]
    fn responses_for_another_connection_an_expired_nonce_or_a_bad_frame_are_refused_and_nothing_kept(
    ) {
        let phone = Phone::new(0x11);
        let mut v = Vehicle::new();
        let challenge = v.read(1, at(0));
        let good = response(&phone, &challenge, 1);
        let before = v.grants.blob();
        // Connection 2 never read a challenge; connection 3 read its own.
        assert_eq!(v.write(2, &signed(&good), at(10)), Err(Refused::NoNonce));
        v.read(3, at(10));
        assert_eq!(v.write(3, &signed(&good), at(20)), Err(Refused::OtherNonce));
        // Forged: another signer, a flipped byte, another vehicle's response.
        let forger = SigningKey::from_bytes(&[9; 32]);
        let mut flipped = signed(&good);
        flipped[40] ^= 1;
        for bad in [
            good.sign(&DOOR_ID, &forger),
            flipped,
            good.sign(&OTHER_DOOR, &gateway()),
        ] {
            assert_eq!(
                v.write(1, &bad, at(30)),
                Err(Refused::Invalid(Error::BadSignature))
            );
        }
        // A lower epoch than the vehicle's, a cut frame, a key not on the curve.
        assert!(matches!(
            v.write(1, &signed(&PairingResponse { epoch: 0, ..good }), at(40)),
            Err(Refused::Invalid(Error::StaleEpoch {
                stored: 1,
                received: 0
            }))
        ));
        assert!(matches!(
            v.write(1, &signed(&good)[..RESPONSE_LEN - 1], at(40)),
            Err(Refused::Invalid(Error::BadLength { .. }))
        ));
        let off_curve = PairingResponse {
            phone_key: [4; 65],
            ..good
        };
        assert_eq!(
            v.write(1, &signed(&off_curve), at(40)),
            Err(Refused::Invalid(Error::BadPublicKey))
        );
        assert_eq!(v.grants.set().len(), 1);
        assert!(v.grants.blob() == before, "nothing to store");
        assert_eq!(v.unlock(&phone), Status::UnknownTool);
        // Failures do not spend the nonce; 120 s on the monotonic clock do.
        assert!(v.write(1, &signed(&good), at(120_000)).is_ok());
        let challenge = v.read(1, at(200_000));
        let late = signed(&response(&Phone::new(0x33), &challenge, 1));
        assert_eq!(v.write(1, &late, at(320_001)), Err(Refused::NoNonce));
        // A disconnect drops the nonce; the next read replaces it.
        let challenge = v.read(4, at(400_000));
        let r = signed(&response(&Phone::new(0x33), &challenge, 1));
        v.pairing.disconnected(4);
        assert_eq!(v.write(4, &r, at(400_001)), Err(Refused::NoNonce));
        let first = v.read(5, at(400_002));
        v.read(5, at(400_003));
        let stale = signed(&response(&Phone::new(0x33), &first, 1));
        assert_eq!(v.write(5, &stale, at(400_004)), Err(Refused::OtherNonce));
    }

    #[test]
    fn a_paired_key_survives_a_restart_until_a_newer_snapshot_replaces_the_set() {
        let phone = Phone::new(0x11);
        let mut v = Vehicle::new();
        let challenge = v.read(1, at(0));
        v.write(1, &signed(&response(&phone, &challenge, 1)), at(10))
            .unwrap();
        let blob = v.grants.blob();
        // Power off, power on: the snapshot and the response are verified again, Z cached.
        let mut restarted = Vehicle::new();
        restarted.grants = empty_store();
        let applied = restarted.grants.boot(&blob).unwrap();
        assert_eq!((applied.grants, applied.new_keys), (2, 0));
        assert_eq!(restarted.unlock(&phone), Status::Granted);
        assert!(restarted.grants.blob() == blob, "the same blob again");
        // A damaged response is dropped on its own at start; the snapshot stays.
        let mut bad = blob.to_vec();
        let at_response = bad.len() - 32 - 2 * 32 - 10;
        bad[at_response] ^= 1;
        let mut damaged = empty_store();
        assert_eq!(damaged.boot(&bad).unwrap().grants, 1);
        // The gateway's next snapshot replaces the set, the paired key with it.
        let other = Phone::new(0x22);
        let next = snapshot(
            &gateway(),
            2,
            1,
            NOW,
            &[Grant {
                epoch: 1,
                ..other.grant(DOOR_ID, ENDPOINT)
            }],
        );
        let Outcome::Applied { blob, .. } = restarted.grants.apply_frame(&next, None) else {
            panic!("not applied")
        };
        assert_eq!(restarted.unlock(&phone), Status::UnknownTool);
        let mut again = empty_store();
        assert_eq!(again.boot(&blob).unwrap().grants, 1);
    }

    #[test]
    fn a_vehicle_with_no_snapshot_yet_keeps_its_paired_key() {
        let phone = Phone::new(0x11);
        let mut v = Vehicle::new();
        v.grants = empty_store();
        let challenge = v.read(1, at(0));
        v.write(1, &signed(&response(&phone, &challenge, 0)), at(10))
            .unwrap();
        assert_eq!(v.unlock(&phone), Status::Granted);
        let mut restarted = empty_store();
        assert_eq!(restarted.boot(&v.grants.blob()).unwrap().grants, 1);
    }

    proptest::proptest! {
        #[test]
        fn no_written_bytes_panic_or_are_kept(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let mut v = Vehicle::new();
            v.read(1, at(0));
            let mut frame = bytes;
            if frame.len() > 2 {
                frame[0] = 2;
                frame[1] = 0x22;
            }
            proptest::prop_assert!(v.write(1, &frame, at(1)).is_err());
            proptest::prop_assert_eq!(v.grants.set().len(), 1);
        }
    }
}
