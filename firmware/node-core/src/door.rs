//! The door service (NODES.md §8, PROTOCOL.md §20): a pure machine over the radio's
//! [`DoorEvent`]s. The caller hands it the grant store, the clocks and the CSPRNG, performs the
//! returned [`DoorAction`]s in order, and drives the relay through the `open` callback.
//!
//! ```text
//!  ReadChallenge ──▶ new nonce (or, within 100 ms of the last one, the same frame again)
//!                    └─ one live challenge per connection: 30 s, single use
//!  Request ──▶ take the connection's challenge ─▶ decide ─▶ GRANTED? open(pulse_ms)
//!              └─▶ Notify(result) ─▶ Record(decision)        (ACTION_FAILED if the pin failed)
//!  Disconnected ──▶ the connection's challenge is gone
//! ```

use alloc::vec::Vec;

use latchkey_proto::v2::{decide, Challenge, IssuedChallenge, Record, Status};

use crate::board::{ConnId, DoorEvent, Rng};
use crate::grants::GrantStore;
use crate::time::{Instant, UnixTime};

/// Shortest time between two challenges issued to one connection; a read sooner gets the same
/// challenge again (each issue computes one HMAC per grant).
pub const CHALLENGE_INTERVAL_MS: u64 = 100;
/// Connections the door keeps a challenge for; beyond that the least recently active one is
/// forgotten (its next request is answered `NONCE_INVALID`).
pub const MAX_CONNECTIONS: usize = 8;

/// What the caller does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorAction {
    /// Answer the pending Challenge read of `conn`.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The challenge frame.
        value: [u8; Challenge::LEN],
    },
    /// Notify the Result characteristic to `conn`.
    Notify {
        /// The connection.
        conn: ConnId,
        /// The result frame (sealed or plain).
        value: Vec<u8>,
    },
    /// Append this decision to the decision ring.
    Record(Record),
}

struct Conn {
    id: ConnId,
    challenge: Option<IssuedChallenge>,
    frame: [u8; Challenge::LEN],
    issued: Instant,
    active: Instant,
}

/// The door's per-connection state.
#[derive(Default)]
pub struct Door {
    conns: Vec<Conn>,
}

impl core::fmt::Debug for Door {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Door")
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Door {
    /// Connections with state.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Handles one radio event at monotonic `now` and wall time `wall` (`None`: unknown).
    /// `open(ms)` pulses the relay and says whether the pin could be driven.
    pub fn on(
        &mut self,
        event: DoorEvent,
        grants: &GrantStore,
        now: Instant,
        wall: Option<UnixTime>,
        rng: &mut impl Rng,
        open: impl FnOnce(u32) -> bool,
    ) -> Vec<DoorAction> {
        let wall = wall.and_then(|t| u64::try_from(t).ok());
        match event {
            DoorEvent::ReadChallenge { conn } => {
                let value = self.challenge(conn, grants, now, wall, rng);
                alloc::vec![DoorAction::Reply { conn, value }]
            }
            DoorEvent::Request { conn, value } => {
                // Single use: whatever the outcome, the connection's challenge is spent.
                let challenge = self.conn_mut(conn).and_then(|c| {
                    c.active = now;
                    c.challenge.take()
                });
                let decision = decide(
                    grants.set(),
                    challenge.as_ref(),
                    &value,
                    now.as_millis() / 1000,
                    wall,
                );
                let mut record = decision.effects.record;
                let status = if decision.effects.open.is_some() {
                    if open(grants.pulse_ms()) {
                        Status::Granted
                    } else {
                        Status::ActionFailed
                    }
                } else {
                    decision.status
                };
                record.status = status;
                let reply = decision.reply(status, wall);
                alloc::vec![
                    DoorAction::Notify {
                        conn,
                        value: reply.as_bytes().to_vec(),
                    },
                    DoorAction::Record(record),
                ]
            }
            DoorEvent::Disconnected { conn } => {
                self.conns.retain(|c| c.id != conn);
                Vec::new()
            }
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn challenge(
        &mut self,
        id: ConnId,
        grants: &GrantStore,
        now: Instant,
        wall: Option<u64>,
        rng: &mut impl Rng,
    ) -> [u8; Challenge::LEN] {
        if let Some(c) = self.conn_mut(id) {
            c.active = now;
            if now.millis_since(c.issued) < CHALLENGE_INTERVAL_MS {
                return c.frame;
            }
        }
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let (issued, frame) =
            IssuedChallenge::issue(grants.set(), nonce, now.as_millis() / 1000, wall);
        if let Some(c) = self.conn_mut(id) {
            c.challenge = Some(issued);
            c.frame = frame;
            c.issued = now;
            return frame;
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = self
                .conns
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.active)
                .map(|(i, _)| i)
            {
                self.conns.swap_remove(oldest);
            }
        }
        self.conns.push(Conn {
            id,
            challenge: Some(issued),
            frame,
            issued: now,
            active: now,
        });
        frame
    }
}
