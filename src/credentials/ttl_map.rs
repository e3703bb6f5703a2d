//! A bounded map whose inserts and evictions are O(1): entries leave when they expire or, past
//! the capacity, oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// Insertion-ordered, bounded, with a time to live per entry.
///
/// A queue remembers the order of writes; a rewritten key leaves its old queue slot behind,
/// which is skipped (its sequence number no longer matches) when it reaches the front. Each
/// insert pops at most a few slots, so no call ever walks the whole map.
#[derive(Debug)]
pub(crate) struct TtlMap<V> {
    map: HashMap<Arc<str>, Slot<V>>,
    order: VecDeque<(Arc<str>, u64)>,
    seq: u64,
    capacity: usize,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    expires: Option<SystemTime>,
    seq: u64,
}

impl<V: Clone> TtlMap<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        TtlMap {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            capacity: capacity.max(1),
        }
    }

    /// The live value of `key`.
    pub(crate) fn get(&self, key: &str, now: SystemTime) -> Option<V> {
        self.map
            .get(key)
            .filter(|s| s.expires.is_none_or(|e| e > now))
            .map(|s| s.value.clone())
    }

    /// Writes `key` (it becomes the newest) and evicts what must go.
    pub(crate) fn insert(
        &mut self,
        key: &str,
        value: V,
        expires: Option<SystemTime>,
        now: SystemTime,
    ) {
        self.insert_reporting(key, value, expires, now, |_| {});
    }

    /// [`insert`](Self::insert), calling `gone` with each live key it evicts (expired, or the
    /// oldest past the capacity), so the caller can drop what it keeps beside the entry.
    pub(crate) fn insert_reporting(
        &mut self,
        key: &str,
        value: V,
        expires: Option<SystemTime>,
        now: SystemTime,
        mut gone: impl FnMut(&str),
    ) {
        self.seq += 1;
        let seq = self.seq;
        let key: Arc<str> = match self.map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.map.insert(
            key.clone(),
            Slot {
                value,
                expires,
                seq,
            },
        );
        self.order.push_back((key, seq));
        // Expired or superseded slots at the front go first (at most two per insert keeps
        // each call O(1) and the queue within a constant factor of the map)...
        for _ in 0..2 {
            let stale =
                |slot: Option<&Slot<V>>| slot.is_none_or(|s| s.expires.is_some_and(|e| e <= now));
            if !self.pop_front_if(stale, &mut gone) {
                break;
            }
        }
        // ...then the oldest live ones while over capacity.
        while self.map.len() > self.capacity {
            self.pop_front_if(|_| true, &mut gone);
        }
        // A key rewritten over and over behind a live front leaves superseded slots the front
        // pops never reach: drop them all once they outnumber the live entries. That walk
        // happens once per `len` inserts, so an insert stays O(1) amortised.
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|s| s.seq == *seq));
        }
    }

    /// Pops the front slot when it is stale or `evict` says so (`gone` hears of a live entry
    /// that leaves); whether it popped.
    fn pop_front_if(
        &mut self,
        evict: impl Fn(Option<&Slot<V>>) -> bool,
        gone: &mut impl FnMut(&str),
    ) -> bool {
        let Some((key, seq)) = self.order.front() else {
            return false;
        };
        let current = self.map.get(key).filter(|s| s.seq == *seq);
        if current.is_some() && !evict(current) {
            return false;
        }
        let (key, _) = self.order.pop_front().expect("front exists");
        if current.is_some() {
            self.map.remove(&key);
            gone(&key);
        }
        true
    }

    /// Up to `limit` live keys, newest first (a shared store re-reads the keys in use).
    // The Redis store's view refresh is its only reader.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn live_keys(&self, now: SystemTime, limit: usize) -> Vec<Arc<str>> {
        self.order
            .iter()
            .rev()
            .filter(|(k, seq)| {
                self.map
                    .get(k)
                    .is_some_and(|s| s.seq == *seq && s.expires.is_none_or(|e| e > now))
            })
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn evicts_the_oldest_and_keeps_rewritten_keys() {
        let now = SystemTime::now();
        let mut m = TtlMap::new(3);
        for k in ["a", "b", "c"] {
            m.insert(k, k.to_string(), None, now);
        }
        m.insert("a", "a2".into(), None, now); // a is now the newest
        m.insert("d", "d".into(), None, now); // b, the oldest, goes
        assert_eq!(m.get("b", now), None);
        assert_eq!(m.get("a", now).as_deref(), Some("a2"));
        assert_eq!(m.get("c", now).as_deref(), Some("c"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn evictions_are_reported_once_each() {
        let now = SystemTime::now();
        let mut m = TtlMap::new(2);
        let mut gone = Vec::new();
        for k in ["a", "b", "a", "c", "d"] {
            m.insert_reporting(k, (), None, now, |k| gone.push(k.to_owned()));
        }
        // "a" was rewritten (newest again), so "b" left first, then "a".
        assert_eq!(gone, ["b", "a"]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn expired_entries_are_invisible_and_leave() {
        let now = SystemTime::now();
        let mut m = TtlMap::new(100);
        m.insert("old", 1, Some(now + Duration::from_secs(1)), now);
        let later = now + Duration::from_secs(2);
        assert_eq!(m.get("old", later), None);
        m.insert("new", 2, None, later);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_queue_stays_bounded_under_rewrites() {
        let now = SystemTime::now();
        let mut m = TtlMap::new(10);
        for i in 0..100_000u32 {
            m.insert(&format!("k{}", i % 20), i, None, now);
            assert!(m.len() <= 10);
            assert!(m.order.len() <= 40, "queue {} at {i}", m.order.len());
        }
        // One hot key behind a cold one that never leaves.
        let mut m = TtlMap::new(1000);
        m.insert("cold", 0, None, now);
        for i in 0..100_000u32 {
            m.insert("hot", i, None, now);
            assert!(
                m.order.len() <= 2 * m.len() + 17,
                "queue {} at {i}",
                m.order.len()
            );
        }
        assert_eq!(m.get("cold", now), Some(0));
    }
}
