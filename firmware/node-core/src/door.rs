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
            // The vehicle's pairing service: [`crate::pairing`], not the door's.
            DoorEvent::PairingChallenge { .. } | DoorEvent::PairingResponse { .. } => Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use latchkey_proto::v2::ResultFrame;
    use proptest::prelude::*;

    struct Bench {
        door: Door,
        grants: GrantStore,
        rng: Counter,
        pulses: Vec<u32>,
        pin_ok: bool,
    }

    impl Bench {
        fn new(grants: GrantStore) -> Self {
            Self {
                door: Door::default(),
                grants,
                rng: Counter::default(),
                pulses: Vec::new(),
                pin_ok: true,
            }
        }

        fn event(
            &mut self,
            event: DoorEvent,
            now: Instant,
            wall: Option<UnixTime>,
        ) -> Vec<DoorAction> {
            let pulses = &mut self.pulses;
            let ok = self.pin_ok;
            self.door
                .on(event, &self.grants, now, wall, &mut self.rng, |ms| {
                    pulses.push(ms);
                    ok
                })
        }

        fn read(&mut self, conn: ConnId, now: Instant, wall: Option<UnixTime>) -> Vec<u8> {
            match &self.event(DoorEvent::ReadChallenge { conn }, now, wall)[..] {
                [DoorAction::Reply { conn: c, value }] if *c == conn => value.to_vec(),
                other => panic!("{other:?}"),
            }
        }

        /// Writes `value` on `conn`: the notified result and the recorded decision.
        fn write(
            &mut self,
            conn: ConnId,
            value: &[u8],
            now: Instant,
            wall: Option<UnixTime>,
        ) -> (Vec<u8>, Record) {
            let event = DoorEvent::Request {
                conn,
                value: value.to_vec(),
            };
            match &self.event(event, now, wall)[..] {
                [DoorAction::Notify { conn: c, value }, DoorAction::Record(r)] if *c == conn => {
                    (value.clone(), *r)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    fn plain_status(frame: &[u8]) -> Status {
        assert_eq!(frame.len(), ResultFrame::PLAIN_LEN, "a plain result");
        Status::try_from(frame[18]).unwrap()
    }

    fn one_phone() -> (Bench, Phone) {
        let phone = Phone::new(0x11);
        let bench = Bench::new(store_with(&[phone.grant(DOOR_ID, "front-door")]));
        (bench, phone)
    }

    #[test]
    fn a_granted_request_pulses_the_relay_for_the_grant_pulse_and_is_answered_sealed() {
        let (mut b, phone) = one_phone();
        let challenge = b.read(1, at(1_000), WALL);
        assert_eq!(&challenge[2..18], &DOOR_ID);
        assert_eq!(&challenge[34..42], &NOW.to_be_bytes());
        let (request, keys, nonce) = phone.request(&challenge, "front-door");
        let (result, record) = b.write(1, &request, at(1_200), WALL);
        assert_eq!(b.pulses, [1500]);
        let r = open_result(&result, &keys, &nonce);
        assert!(r.authenticated);
        assert_eq!(r.status, Status::Granted);
        assert_eq!(r.door_time, Some(NOW));
        assert_eq!(record.status, Status::Granted);
        assert_eq!(record.tool_id, Some(phone.tool));
        assert_eq!(
            record.endpoint.map(|e| e.to_string()).as_deref(),
            Some("front-door")
        );
        assert_eq!(record.phone_time, Some(NOW + 12));
        assert_eq!(record.door_time, Some(NOW));
    }

    #[test]
    fn a_relay_that_fails_is_answered_action_failed() {
        let (mut b, phone) = one_phone();
        b.pin_ok = false;
        let challenge = b.read(1, at(0), WALL);
        let (request, keys, nonce) = phone.request(&challenge, "front-door");
        let (result, record) = b.write(1, &request, at(10), WALL);
        assert_eq!(
            open_result(&result, &keys, &nonce).status,
            Status::ActionFailed
        );
        assert_eq!(record.status, Status::ActionFailed);
    }

    #[test]
    fn an_expired_tool_is_refused_offline_with_a_sealed_tool_expired() {
        let (mut b, phone) = one_phone();
        let late = Some(EXPIRES as i64);
        let challenge = b.read(1, at(0), late);
        let (request, keys, nonce) = phone.request(&challenge, "front-door");
        let (result, record) = b.write(1, &request, at(10), late);
        let r = open_result(&result, &keys, &nonce);
        assert_eq!((r.status, r.authenticated), (Status::ToolExpired, true));
        assert_eq!(record.status, Status::ToolExpired);
        assert!(b.pulses.is_empty());
    }

    #[test]
    fn a_tool_for_another_door_or_endpoint_is_refused() {
        let (mut b, _) = one_phone();
        // This phone's tool opens another node: this door holds no grant of it.
        let stranger = Phone::new(0x33);
        let challenge = b.read(2, at(0), WALL);
        let (request, _, _) = stranger.request(&challenge, "front-door");
        let (result, record) = b.write(2, &request, at(10), WALL);
        assert_eq!(plain_status(&result), Status::UnknownTool);
        assert_eq!(record.status, Status::UnknownTool);
        assert_eq!(record.tool_id, None);
        // A known phone asking for an endpoint its tool does not open here.
        let (mut b, phone) = one_phone();
        let challenge = b.read(1, at(0), WALL);
        let (request, keys, nonce) = phone.request(&challenge, "garage");
        let (result, _) = b.write(1, &request, at(10), WALL);
        assert_eq!(
            open_result(&result, &keys, &nonce).status,
            Status::EndpointDenied
        );
        assert!(b.pulses.is_empty());
    }

    #[test]
    fn a_replayed_request_is_nonce_invalid() {
        let (mut b, phone) = one_phone();
        let challenge = b.read(1, at(0), WALL);
        let (request, _, _) = phone.request(&challenge, "front-door");
        b.write(1, &request, at(10), WALL);
        let (again, record) = b.write(1, &request, at(20), WALL);
        assert_eq!(plain_status(&again), Status::NonceInvalid);
        assert_eq!(
            &again[2..18],
            &[0u8; 16],
            "no challenge left on the connection"
        );
        assert_eq!(record.status, Status::NonceInvalid);
        assert_eq!(b.pulses, [1500], "one open only");
    }

    #[test]
    fn a_request_moved_to_another_connection_is_refused() {
        let (mut b, phone) = one_phone();
        let challenge = b.read(1, at(0), WALL);
        let (request, _, _) = phone.request(&challenge, "front-door");
        // Connection 2 never read a challenge.
        let (result, _) = b.write(2, &request, at(10), WALL);
        assert_eq!(plain_status(&result), Status::NonceInvalid);
        // Connection 3 has its own challenge: the hint is for another nonce.
        b.read(3, at(20), WALL);
        let (result, _) = b.write(3, &request, at(30), WALL);
        assert_eq!(plain_status(&result), Status::UnknownTool);
        assert!(b.pulses.is_empty());
        // The challenge of connection 1 is still its own.
        let (result, _) = b.write(1, &request, at(40), WALL);
        assert_eq!(result.len(), ResultFrame::SEALED_LEN);
        assert_eq!(b.pulses, [1500]);
    }

    #[test]
    fn a_tampered_request_is_bad_tag() {
        let (mut b, phone) = one_phone();
        let challenge = b.read(1, at(0), WALL);
        let (mut request, _, _) = phone.request(&challenge, "front-door");
        request[40] ^= 0x01;
        let (result, record) = b.write(1, &request, at(10), WALL);
        assert_eq!(plain_status(&result), Status::BadTag);
        assert_eq!(record.status, Status::BadTag);
        assert!(b.pulses.is_empty());
    }

    #[test]
    fn challenges_are_rate_limited_expire_after_30_s_and_die_with_the_connection() {
        let (mut b, phone) = one_phone();
        let first = b.read(1, at(1_000), WALL);
        assert_eq!(
            b.read(1, at(1_099), WALL),
            first,
            "same challenge within 100 ms"
        );
        let second = b.read(1, at(1_100), WALL);
        assert_ne!(second[18..34], first[18..34]);
        // 31 s later the challenge is dead.
        let (request, _, _) = phone.request(&second, "front-door");
        let (result, _) = b.write(1, &request, at(32_100), WALL);
        assert_eq!(plain_status(&result), Status::NonceInvalid);
        // A disconnect drops the challenge even if the peer comes back with the same id.
        let third = b.read(1, at(40_000), WALL);
        let (request, _, _) = phone.request(&third, "front-door");
        assert!(b
            .event(DoorEvent::Disconnected { conn: 1 }, at(40_010), WALL)
            .is_empty());
        assert_eq!(b.door.connections(), 0);
        let (result, _) = b.write(1, &request, at(40_020), WALL);
        assert_eq!(plain_status(&result), Status::NonceInvalid);
        assert!(b.pulses.is_empty());
    }

    #[test]
    fn connections_beyond_the_limit_evict_the_least_recently_active() {
        let (mut b, _) = one_phone();
        for conn in 0..(MAX_CONNECTIONS as u32 + 3) {
            b.read(conn, at(u64::from(conn)), WALL);
        }
        assert_eq!(b.door.connections(), MAX_CONNECTIONS);
    }

    fn event() -> impl Strategy<Value = DoorEvent> {
        prop_oneof![
            (0u32..4).prop_map(|conn| DoorEvent::ReadChallenge { conn }),
            (0u32..4).prop_map(|conn| DoorEvent::Disconnected { conn }),
            (
                0u32..4,
                proptest::collection::vec(any::<u8>(), 0..crate::board::MAX_WRITE)
            )
                .prop_map(|(conn, value)| DoorEvent::Request { conn, value }),
            // Well-formed headers, so that the hint and decryption paths run too.
            (0u32..4, proptest::collection::vec(any::<u8>(), 81..=81)).prop_map(|(conn, rest)| {
                let mut value = alloc::vec![2u8, 2];
                value.extend(rest);
                DoorEvent::Request { conn, value }
            }),
        ]
    }

    proptest! {
        #[test]
        fn no_write_or_event_sequence_panics_and_each_request_gets_one_answer(
            events in proptest::collection::vec((event(), 0u64..40_000), 1..40),
            wall in proptest::option::of(0i64..=i64::MAX),
        ) {
            let (mut b, _) = one_phone();
            let mut now = 0;
            for (event, step) in events {
                now += step;
                let request = matches!(event, DoorEvent::Request { .. });
                let actions = b.event(event, at(now), wall);
                if request {
                    let answered = matches!(
                        &actions[..],
                        [DoorAction::Notify { .. }, DoorAction::Record(r)] if r.status != Status::Granted
                    );
                    prop_assert!(answered, "{:?}", actions);
                }
            }
            prop_assert!(b.pulses.is_empty());
        }
    }
}
