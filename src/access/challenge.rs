//! Challenge nonces, one live nonce per radio connection (PROTOCOL.md §7.1).
//!
//! A nonce is bound to the connection that read it, valid for 30 s and single-use: the first
//! auth write on the connection consumes it whatever the outcome. The table is bounded: it
//! keeps at most `capacity` connections and evicts idle ones first, so a flood of peers cannot
//! grow it. Pure over `now`; the caller supplies the random bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use latchkey_proto::{Challenge, Nonce, NONCE_LIFETIME_SECS};

use crate::clock::UnixTime;

/// Connections remembered at once. BlueZ serves a handful of LE links per adapter; this is
/// far above that and still tiny.
pub const DEFAULT_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Entry {
    challenge: Challenge,
    issued_at: UnixTime,
    used: bool,
}

/// What an auth write found on its connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The live nonce (issued ≤ 30 s ago and unused), now consumed.
    pub live: Option<Nonce>,
    /// The nonce most recently issued on this connection, live or not, for the result frame
    /// of an attempt that did not decode.
    pub last: Option<Nonce>,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("live", &self.live.is_some())
            .field("last", &self.last.is_some())
            .finish()
    }
}

/// Live challenges by connection key (BlueZ: the peer's device object path).
pub struct Challenges {
    entries: Mutex<HashMap<String, Entry>>,
    capacity: usize,
}

impl Default for Challenges {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Challenges {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map holds no invariant a panic could break halfway.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues `nonce` to `conn` at `now`, replacing its previous challenge.
    pub fn issue(&self, conn: &str, nonce: Nonce, now: UnixTime) -> Challenge {
        let challenge = Challenge {
            nonce,
            gateway_time: u64::try_from(now).unwrap_or(0),
        };
        let mut map = self.lock();
        if !map.contains_key(conn) && map.len() >= self.capacity {
            evict(&mut map, now);
        }
        map.insert(
            conn.to_owned(),
            Entry {
                challenge,
                issued_at: now,
                used: false,
            },
        );
        challenge
    }

    /// The challenge most recently issued to `conn` (for reads at a non-zero offset).
    pub fn current(&self, conn: &str) -> Option<Challenge> {
        self.lock().get(conn).map(|e| e.challenge)
    }

    /// Consumes `conn`'s nonce for an auth write at `now`.
    pub fn take(&self, conn: &str, now: UnixTime) -> Taken {
        let mut map = self.lock();
        let Some(e) = map.get_mut(conn) else {
            return Taken {
                live: None,
                last: None,
            };
        };
        let fresh =
            now >= e.issued_at && now.abs_diff(e.issued_at) <= NONCE_LIFETIME_SECS && !e.used;
        e.used = true;
        Taken {
            live: fresh.then_some(e.challenge.nonce),
            last: Some(e.challenge.nonce),
        }
    }

    /// The connection went away: its nonce goes with it.
    pub fn forget(&self, conn: &str) {
        self.lock().remove(conn);
    }

    /// Drops every connection (the adapter or bluetoothd went away).
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room for one entry: first every entry whose nonce is spent or expired, and if all
/// are live, the oldest one.
fn evict(map: &mut HashMap<String, Entry>, now: UnixTime) {
    let before = map.len();
    map.retain(|_, e| !e.used && now.abs_diff(e.issued_at) <= NONCE_LIFETIME_SECS);
    if map.len() < before {
        return;
    }
    if let Some(oldest) = map
        .iter()
        .min_by_key(|(_, e)| e.issued_at)
        .map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const A: &str = "/org/bluez/hci0/dev_AA_AA_AA_AA_AA_AA";
    const B: &str = "/org/bluez/hci0/dev_BB_BB_BB_BB_BB_BB";

    #[test]
    fn single_use_bound_and_expiring() {
        let t = Challenges::default();
        let c = t.issue(A, [1; 16], 1000);
        assert_eq!(c.gateway_time, 1000);
        // Another connection has no nonce, and does not consume A's.
        assert_eq!(t.take(B, 1001).live, None);
        let first = t.take(A, 1030);
        assert_eq!(first.live, Some([1; 16]));
        let again = t.take(A, 1030);
        assert_eq!(again.live, None, "single use");
        assert_eq!(again.last, Some([1; 16]));
        t.issue(A, [2; 16], 2000);
        assert_eq!(t.take(A, 2031).live, None, "expired after 30 s");
        t.issue(A, [3; 16], 3000);
        assert_eq!(t.take(A, 2999).live, None, "issued in the future");
        t.issue(A, [4; 16], 4000);
        t.issue(A, [5; 16], 4001);
        assert_eq!(t.take(A, 4002).live, Some([5; 16]), "a new read replaces");
        t.forget(A);
        assert_eq!(t.current(A), None);
    }

    #[test]
    fn bounded() {
        let t = Challenges::new(4);
        for i in 0..4u8 {
            t.issue(&format!("c{i}"), [i; 16], 100 + i64::from(i));
        }
        // All live: the oldest goes.
        t.issue("c9", [9; 16], 110);
        assert_eq!(t.len(), 4);
        assert_eq!(t.current("c0"), None);
        // Spent and expired ones go first, all at once.
        t.take("c1", 111);
        t.issue("c10", [10; 16], 200);
        assert_eq!(t.len(), 1);
        assert!(t.current("c10").is_some());
    }
}
