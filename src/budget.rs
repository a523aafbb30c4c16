//! Token buckets: a steady rate with a burst on top, for budgets that are spent and refill
//! (publishes per device, bad frames per socket). Time is a parameter in milliseconds, so the
//! caller decides which clock counts (the injected clock, or tokio's for per-socket limits).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Keys tracked at most; beyond this, full buckets (which hold nothing worth keeping) are
/// forgotten first.
const MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket: `burst` tokens, refilled at `per_sec`.
    pub fn new(per_sec: f64, burst: f64, now_ms: i64) -> Self {
        Self {
            per_sec,
            burst,
            tokens: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        // A clock that went backwards refills nothing (and does not drain either).
        let elapsed = now_ms.saturating_sub(self.at_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes one token; `Err(ms)` says how long until one is there.
    pub fn take(&mut self, now_ms: i64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = if self.per_sec > 0.0 {
            ((1.0 - self.tokens) / self.per_sec * 1000.0).ceil() as u64
        } else {
            u64::MAX
        };
        Err(wait.max(1))
    }

    fn is_full(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.tokens >= self.burst
    }
}

/// One bucket per key (a device, an admin credential), in bounded memory.
pub struct Budgets<K> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Eq + Hash + Clone> Budgets<K> {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        Self {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one unit of `key`'s budget; `Err(ms)` until the next one is there.
    pub fn take(&self, key: &K, now_ms: i64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = map.get_mut(key) {
            return b.take(now_ms);
        }
        if map.len() >= MAX_KEYS {
            map.retain(|_, b| !b.is_full(now_ms));
            if map.len() >= MAX_KEYS {
                // Still full of busy keys: one of them starts over with a full bucket, which
                // costs at most one burst; memory stays bounded.
                if let Some(k) = map.keys().next().cloned() {
                    map.remove(&k);
                }
            }
        }
        let mut b = TokenBucket::new(self.per_sec, self.burst, now_ms);
        let r = b.take(now_ms);
        map.insert(key.clone(), b);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let b = Budgets::new(20, 40);
        for _ in 0..40 {
            assert!(b.take(&"a", 1_000).is_ok());
        }
        assert_eq!(b.take(&"a", 1_000), Err(50));
        assert!(b.take(&"b", 1_000).is_ok(), "keys are independent");
        // 20 a second: one more every 50 ms.
        assert!(b.take(&"a", 1_050).is_ok());
        assert!(b.take(&"a", 1_050).is_err());
        // A second later: 20 more, not 40.
        let ok = (0..40).filter(|_| b.take(&"a", 2_050).is_ok()).count();
        assert_eq!(ok, 20);
        // Time going backwards gives nothing.
        assert!(b.take(&"a", 0).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let b = Budgets::new(1, 1);
        for i in 0..(MAX_KEYS as i64 + 10) {
            let _ = b.take(&i, 0);
        }
        assert!(b.buckets.lock().unwrap().len() <= MAX_KEYS);
    }
}
