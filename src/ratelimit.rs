//! Per-client attempt throttling (login, pair-token guessing): a fixed number of failures per
//! window, then refusal until the window's oldest failure ages out. Bounded memory.
//!
//! An attempt is *reserved* (counted as a failure) before the expensive check runs, in the
//! same step that decides whether it may run at all, so a burst of concurrent attempts cannot
//! all pass the check before any of them is recorded. An attempt that turns out not to be a
//! failure gives its reservation back (`release`) or clears the client (`reset`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use crate::clock::UnixTime;

/// Keys tracked at most; beyond this the stalest are evicted (an attacker spraying addresses
/// must not grow our memory).
const MAX_KEYS: usize = 10_000;

pub struct RateLimiter<K> {
    max: usize,
    window: i64,
    failures: Mutex<Failures<K>>,
}

type Failures<K> = HashMap<K, VecDeque<UnixTime>>;

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(max: usize, window_secs: i64) -> Self {
        Self {
            max,
            window: window_secs,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt for `key` now, unless `key` has used up its failures in the current
    /// window: then `Err(retry_after_secs)` and nothing is counted.
    pub fn reserve(&self, key: &K, now: UnixTime) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.over(&mut map, key, now)?;
        self.record(&mut map, key, now);
        Ok(())
    }

    /// `Err(retry_after_secs)` if `key` has used up its failures in the current window. For
    /// cheap checks only: concurrent callers may all pass before any `fail` (use `reserve`).
    pub fn check(&self, key: &K, now: UnixTime) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.over(&mut map, key, now)
    }

    /// Records a failure of `key` at `now`.
    pub fn fail(&self, key: &K, now: UnixTime) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.record(&mut map, key, now);
    }

    fn over(&self, map: &mut Failures<K>, key: &K, now: UnixTime) -> Result<(), u64> {
        let Some(q) = map.get_mut(key) else {
            return Ok(());
        };
        while q.front().is_some_and(|t| *t <= now - self.window) {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(u64::try_from(oldest + self.window - now)
                .unwrap_or(1)
                .max(1));
        }
        Ok(())
    }

    fn record(&self, map: &mut Failures<K>, key: &K, now: UnixTime) {
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| *t > now - window));
            if map.len() >= MAX_KEYS {
                // Still full of live entries: drop the one whose last failure is oldest.
                if let Some(k) = map
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied().unwrap_or(i64::MIN))
                    .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
        }
        let q = map.entry(key.clone()).or_default();
        q.push_back(now);
        while q.len() > self.max {
            q.pop_front();
        }
    }

    /// Gives back one reservation of `key` (the attempt was no failure).
    pub fn release(&self, key: &K) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = map.get_mut(key) {
            q.pop_back();
            if q.is_empty() {
                map.remove(key);
            }
        }
    }

    pub fn reset(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_and_recovers_after_window() {
        let rl = RateLimiter::new(5, 60);
        for i in 0..5 {
            assert!(rl.reserve(&"a", 100 + i).is_ok());
        }
        assert_eq!(rl.reserve(&"a", 110), Err(50));
        assert!(rl.reserve(&"b", 110).is_ok());
        assert!(rl.reserve(&"a", 160).is_ok(), "oldest failure aged out");
        rl.reset(&"a");
        assert!(rl.reserve(&"a", 110).is_ok());
    }

    #[test]
    fn a_released_reservation_does_not_count() {
        let rl = RateLimiter::new(2, 60);
        for _ in 0..10 {
            assert!(rl.reserve(&"a", 100).is_ok());
            rl.release(&"a");
        }
        assert!(rl.reserve(&"a", 100).is_ok());
        assert!(rl.reserve(&"a", 100).is_ok());
        assert!(rl.reserve(&"a", 100).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let rl = RateLimiter::new(1, 60);
        for i in 0..(MAX_KEYS as i64 + 50) {
            let _ = rl.reserve(&i, 0);
        }
        assert!(rl.failures.lock().unwrap().len() <= MAX_KEYS);
    }
}
