//! Hashing for tables keyed by ids (routes, instances, clients, correlations).
//!
//! The daemon and the clients look up several hash maps per message.
//! std's SipHash resists hash flooding, which these tables do not need:
//! their keys are ids the process itself hands out, or ids a peer chooses
//! in a table of that peer's own, which can only slow down its own
//! lookups. A table shared by many peers and keyed by what they choose
//! must not use this hasher (the daemon's exchange table by caller uses
//! std's). A multiply-rotate hash of the integer costs a few cycles
//! instead of a few dozen. Tables that hold a handful of entries
//! whose keys come and go all the time use [`FewMap`] and [`FewSet`].

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for integer keys (and tuples of them).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // FxHash's step: mix the previous state in, multiply by an odd
        // constant with good bit dispersion; the rotate spreads high bits
        // into the low bits hashbrown uses for its control bytes.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A `HashSet` with [`IdHasher`].
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Entries up to which a [`FewMap`] is a plain vector.
const FEW: usize = 16;

/// A map for tables that usually hold a handful of entries whose keys
/// change all the time: the exchanges in flight on a connection or a channel.
///
/// Up to 16 entries it is a vector searched from the front; beyond that, an
/// [`IdMap`] (and a vector again once it is empty). Why: every call and
/// every request inserts a fresh key and removes it a round trip later, and
/// a hash table pays for that churn (tombstones, probes): 15–22 ns per
/// insert-and-remove on this project's VM against under 2 ns for the
/// vector, and a direct round trip did three of them on each side.
/// The same holds for small tables looked up several times per message (a
/// client's direct channels, its inboxes): a scan of a few keys beats hashing.
/// Iteration order is unspecified, as for a hash map.
#[derive(Debug, Clone)]
pub struct FewMap<K, V> {
    repr: Repr<K, V>,
}

#[derive(Debug, Clone)]
enum Repr<K, V> {
    Few(Vec<(K, V)>),
    Many(IdMap<K, V>),
}

impl<K, V> Default for FewMap<K, V> {
    fn default() -> Self {
        FewMap { repr: Repr::Few(Vec::new()) }
    }
}

impl<K: Copy + Eq + std::hash::Hash, V> FewMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    /// Whether there are no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `k`.
    #[inline]
    pub fn get(&self, k: &K) -> Option<&V> {
        match &self.repr {
            Repr::Few(v) => v.iter().find(|(key, _)| key == k).map(|(_, v)| v),
            Repr::Many(m) => m.get(k),
        }
    }

    /// The value of `k`, to change.
    #[inline]
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        match &mut self.repr {
            Repr::Few(v) => v.iter_mut().find(|(key, _)| key == k).map(|(_, v)| v),
            Repr::Many(m) => m.get_mut(k),
        }
    }

    /// Whether `k` has an entry.
    #[inline]
    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// Sets the value of `k`; returns the one it replaced.
    #[inline]
    pub fn insert(&mut self, k: K, value: V) -> Option<V> {
        match &mut self.repr {
            Repr::Few(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(key, _)| *key == k) {
                    return Some(std::mem::replace(old, value));
                }
                if v.len() < FEW {
                    v.push((k, value));
                    return None;
                }
                let mut m: IdMap<K, V> = v.drain(..).collect();
                m.insert(k, value);
                self.repr = Repr::Many(m);
                None
            }
            Repr::Many(m) => m.insert(k, value),
        }
    }

    /// The value of `k`, inserting `make()` first if there is none.
    #[inline]
    pub fn get_or_insert_with(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if let Repr::Few(v) = &mut self.repr {
            if v.len() >= FEW && !v.iter().any(|(key, _)| *key == k) {
                self.repr = Repr::Many(v.drain(..).collect());
            }
        }
        match &mut self.repr {
            Repr::Few(v) => {
                let i = match v.iter().position(|(key, _)| *key == k) {
                    Some(i) => i,
                    None => {
                        v.push((k, make()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Repr::Many(m) => m.entry(k).or_insert_with(make),
        }
    }

    /// Removes `k`; returns its value.
    #[inline]
    pub fn remove(&mut self, k: &K) -> Option<V> {
        match &mut self.repr {
            Repr::Few(v) => v.iter().position(|(key, _)| key == k).map(|i| v.swap_remove(i).1),
            Repr::Many(m) => {
                let old = m.remove(k);
                if m.is_empty() {
                    self.repr = Repr::Few(Vec::new());
                }
                old
            }
        }
    }

    /// Keeps the entries for which `f` says so.
    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        match &mut self.repr {
            Repr::Few(v) => v.retain_mut(|(k, v)| f(k, v)),
            Repr::Many(m) => m.retain(|k, v| f(k, v)),
        }
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.repr = Repr::Few(Vec::new());
    }

    /// The entries.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let (few, many) = match &self.repr {
            Repr::Few(v) => (Some(v.iter().map(|(k, v)| (k, v))), None),
            Repr::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The entries, values to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        let (few, many) = match &mut self.repr {
            Repr::Few(v) => (Some(v.iter_mut().map(|(k, v)| (&*k, v))), None),
            Repr::Many(m) => (None, Some(m.iter_mut())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// The values.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The values, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }
}

/// A set for ids that come and go all the time, a handful at once (see [`FewMap`]).
#[derive(Debug, Clone, Default)]
pub struct FewSet<K>(FewMap<K, ()>);

impl<K: Copy + Eq + std::hash::Hash> FewSet<K> {
    /// An empty set.
    pub fn new() -> Self {
        FewSet(FewMap::new())
    }

    /// Number of ids.
    #[inline]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `k`; `false` if it was there.
    #[inline]
    pub fn insert(&mut self, k: K) -> bool {
        self.0.insert(k, ()).is_none()
    }

    /// Removes `k`; `false` if it was not there.
    #[inline]
    pub fn remove(&mut self, k: &K) -> bool {
        self.0.remove(k).is_some()
    }

    /// Whether `k` is in.
    #[inline]
    pub fn contains(&self, k: &K) -> bool {
        self.0.contains_key(k)
    }

    /// Keeps the ids for which `f` says so.
    pub fn retain(&mut self, mut f: impl FnMut(&K) -> bool) {
        self.0.retain(|k, _| f(k));
    }

    /// The ids.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.0.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `FewMap` agrees with a `HashMap` through growth past the vector,
    /// churn, and shrinking back, including replaced values.
    #[test]
    fn few_map_behaves_like_a_hash_map() {
        let mut few: FewMap<u64, u64> = FewMap::new();
        let mut reference: HashMap<u64, u64> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys from a small range, so inserts replace and removes hit;
            // phases of mostly-insert and mostly-remove cross the threshold.
            let k = x % 40;
            let inserting = (step / 500) % 2 == 0;
            if x % 5 == 1 {
                // The entry-like path, through the same threshold.
                *few.get_or_insert_with(k, || step) += 1;
                *reference.entry(k).or_insert(step) += 1;
            } else if x % 3 != 0 && inserting || x % 3 == 0 && !inserting {
                assert_eq!(few.insert(k, step), reference.insert(k, step));
            } else {
                assert_eq!(few.remove(&k), reference.remove(&k));
            }
            assert_eq!(few.len(), reference.len());
            assert_eq!(few.get(&k), reference.get(&k));
        }
        let mut got: Vec<(u64, u64)> = few.iter().map(|(k, v)| (*k, *v)).collect();
        let mut want: Vec<(u64, u64)> = reference.iter().map(|(k, v)| (*k, *v)).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        few.retain(|k, v| {
            *v += 1;
            k % 2 == 0
        });
        assert!(few.iter().all(|(k, v)| k % 2 == 0 && *v == reference[k] + 1));
        for v in few.values_mut() {
            *v = 0;
        }
        assert!(few.values().all(|v| *v == 0));
        few.clear();
        assert!(few.is_empty());
    }

    #[test]
    fn few_set_counts_and_grows() {
        let mut s: FewSet<u64> = FewSet::new();
        for i in 0..100 {
            assert!(s.insert(i));
            assert!(!s.insert(i));
        }
        assert_eq!(s.len(), 100);
        assert!(s.contains(&42));
        s.retain(|k| *k < 10);
        assert_eq!(s.len(), 10);
        for i in 0..10 {
            assert!(s.remove(&i));
        }
        assert!(s.is_empty() && !s.remove(&3));
        assert_eq!(s.iter().count(), 0);
    }

    #[test]
    fn maps_work_and_spread() {
        let mut m: IdMap<(u32, u64), u32> = IdMap::default();
        for i in 0..10_000u32 {
            m.insert((i % 7, i as u64 * 3), i);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m[&(3, 30)], 10);
        let mut h = IdHasher::default();
        h.write_u64(1);
        let a = h.finish();
        let mut h = IdHasher::default();
        h.write_u64(2);
        assert_ne!(a & 0x7f, h.finish() & 0x7f, "low bits differ for neighbouring ids");
    }
}
