//! latchkey-node-core, fed where a node takes bytes from outside: the door's BLE writes (with
//! a grant store holding a real grant, so a request that decodes reaches `decide`), a vehicle's
//! pairing write, the gateway's `grants` snapshot and its text frames, the setup access
//! point's provisioning body, and what flash gives back at boot (the grant blob, ring entries).

use latchkey_node_core::ap::{self, ApShared};
use latchkey_node_core::board::DoorEvent;
use latchkey_node_core::door::Door;
use latchkey_node_core::grants::GrantStore;
use latchkey_node_core::lifecycle::Lifecycle;
use latchkey_node_core::pairing::Pairing;
use latchkey_node_core::ring::Entry;
use latchkey_node_core::session::{Session, SessionEvent};
use latchkey_node_core::storage::Credentials;
use latchkey_node_core::test_support::{
    at, credentials, door_identity, store_with, Counter, Phone, DOOR_ID, WALL,
};
use latchkey_node_core::time::WallClock;
use latchkey_node_core::Kind;

/// What every run shares, made once: signature checks and ECDH in the set-up would otherwise
/// take most of each execution.
struct Fixtures {
    /// A door holding phone 1's grant for `front-door`.
    granted: GrantStore,
    credentials: Credentials,
    door_key: p256::SecretKey,
    /// A vehicle that has sent connection 1 its pairing challenge (an ECDSA signature).
    challenged: Pairing,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    FIXTURES.get_or_init(|| {
        let credentials = credentials();
        let door_key = door_identity().door_key();
        let mut challenged = Pairing::default();
        if let Some(grants) = GrantStore::new(&credentials, door_key.clone()) {
            challenged.challenge(
                1,
                &grants,
                &door_key,
                at(1_000),
                WALL,
                &mut Counter::default(),
            );
        }
        Fixtures {
            granted: store_with(&[Phone::new(1).grant(DOOR_ID, "front-door")]),
            credentials,
            door_key,
            challenged,
        }
    })
}

/// A door with no grants yet, as at first boot.
fn empty_store() -> Option<GrantStore> {
    let f = fixtures();
    GrantStore::new(&f.credentials, f.door_key.clone())
}

/// A BLE write on a connection that read a challenge first (byte 0 even) or did not.
pub fn door(data: &[u8]) {
    let Some((first, value)) = data.split_first() else {
        return;
    };
    let grants = &fixtures().granted;
    let mut door = Door::default();
    let mut rng = Counter::default();
    if first % 2 == 0 {
        let _ = door.on(
            DoorEvent::ReadChallenge { conn: 1 },
            grants,
            at(1_000),
            WALL,
            &mut rng,
            |_| true,
        );
    }
    let event = DoorEvent::Request {
        conn: 1,
        value: value.to_vec(),
    };
    let _ = door.on(event, grants, at(1_500), WALL, &mut rng, |_| true);
}

/// A vehicle's Pairing Response write after its challenge was read.
pub fn pairing(data: &[u8]) {
    let Some(mut grants) = empty_store() else {
        return;
    };
    let mut pairing = fixtures().challenged.clone();
    let _ = pairing.respond(1, data, Some(&mut grants), at(1_500));
}

/// The gateway's `grants` frame (its base64 snapshot text), and a grant blob read from flash.
pub fn grants(data: &[u8]) {
    if let (Ok(text), Some(mut store)) = (core::str::from_utf8(data), empty_store()) {
        let _ = store.apply_frame(text, Some(1_500));
    }
    if let Some(mut store) = empty_store() {
        let _ = store.boot(data);
    }
}

/// Text frames from the gateway's socket, one per line, in one session.
pub fn session(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut session = Session::new(Kind::Door, false, at(0));
    let mut wall = WallClock::default();
    for (i, frame) in text.split('\n').enumerate() {
        let now = at(1_000 * (i as u64 + 1));
        let _ = session.on(SessionEvent::Text(frame), now, &mut wall);
    }
}

/// `POST /api/v1/provision` on the setup access point.
pub fn ap(data: &[u8]) {
    let mut shared = ApShared {
        lifecycle: Lifecycle::boot(None),
        networks: Vec::new(),
        kind: Kind::Door,
        pubkey: String::from("AAAA"),
    };
    let _ = ap::provision(&mut shared, data);
}

/// A decision ring entry read back from flash.
pub fn ring(data: &[u8]) {
    let _ = Entry::decode(data);
}
