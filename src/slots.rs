//! Counted places: at most `per_key` held by one key (a source address, a device) and at most
//! `total` by everyone. A place is held by its [`Slot`] and given back when that is dropped, so
//! a connection that ends in any way (error, timeout, upgrade, panic) frees its place.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why no place was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// This key holds `per_key` places already.
    Key,
    /// Everyone together holds `total`.
    Total,
}

pub struct Slots<K: Eq + Hash> {
    per_key: usize,
    total: usize,
    inner: Arc<Mutex<Held<K>>>,
}

struct Held<K> {
    /// Only keys holding at least one place: the map never outgrows `total`.
    by_key: HashMap<K, usize>,
    total: usize,
}

/// One place; dropping it gives the place back.
pub struct Slot<K: Eq + Hash> {
    key: Option<K>,
    inner: Arc<Mutex<Held<K>>>,
}

fn lock<K>(m: &Mutex<Held<K>>) -> MutexGuard<'_, Held<K>> {
    // Counts are updated in one step under the lock, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Eq + Hash + Clone> Slots<K> {
    pub fn new(per_key: usize, total: usize) -> Self {
        Self {
            per_key,
            total,
            inner: Arc::new(Mutex::new(Held {
                by_key: HashMap::new(),
                total: 0,
            })),
        }
    }

    pub fn try_take(&self, key: &K) -> Result<Slot<K>, Full> {
        let mut held = lock(&self.inner);
        if held.total >= self.total {
            return Err(Full::Total);
        }
        let n = held.by_key.entry(key.clone()).or_insert(0);
        if *n >= self.per_key {
            return Err(Full::Key);
        }
        *n += 1;
        held.total += 1;
        Ok(Slot {
            key: Some(key.clone()),
            inner: self.inner.clone(),
        })
    }

    /// Places held by everyone.
    pub fn in_use(&self) -> usize {
        lock(&self.inner).total
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut held = lock(&self.inner);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_key.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                held.by_key.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_key_and_in_total_and_gives_back_on_drop() {
        let slots = Slots::new(2, 3);
        let a1 = slots.try_take(&"a").unwrap();
        let _a2 = slots.try_take(&"a").unwrap();
        assert_eq!(slots.try_take(&"a").err(), Some(Full::Key));
        let _b1 = slots.try_take(&"b").unwrap();
        assert_eq!(slots.try_take(&"c").err(), Some(Full::Total));
        drop(a1);
        assert_eq!(slots.in_use(), 2);
        assert!(slots.try_take(&"c").is_ok());
        assert_eq!(slots.inner.lock().unwrap().by_key.len(), 2, "c gave back");
    }
}
