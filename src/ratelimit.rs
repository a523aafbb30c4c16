//! Per-client attempt throttling (login, pair-token guessing): a fixed number of failures per
//! window, then refusal until the window's oldest failure ages out. Bounded memory.

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
    failures: Mutex<HashMap<K, VecDeque<UnixTime>>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(max: usize, window_secs: i64) -> Self {
        Self {
            max,
            window: window_secs,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after_secs)` if `key` has used up its failures in the current window.
    pub fn check(&self, key: &K, now: UnixTime) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
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

    pub fn fail(&self, key: &K, now: UnixTime) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
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
            assert!(rl.check(&"a", 100 + i).is_ok());
            rl.fail(&"a", 100 + i);
        }
        assert_eq!(rl.check(&"a", 110), Err(50));
        assert!(rl.check(&"b", 110).is_ok());
        assert!(rl.check(&"a", 160).is_ok(), "oldest failure aged out");
        rl.reset(&"a");
        assert!(rl.check(&"a", 110).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let rl = RateLimiter::new(1, 60);
        for i in 0..(MAX_KEYS as i64 + 50) {
            rl.fail(&i, 0);
        }
        assert!(rl.failures.lock().unwrap().len() <= MAX_KEYS);
    }
}
