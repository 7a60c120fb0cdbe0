//! Hashing for tables keyed by ids (routes, instances, clients, correlations).
//!
//! The daemon and the clients look up several hash maps per message.
//! std's SipHash resists hash flooding, which these tables do not need:
//! their keys are ids the process itself hands out (or, for correlation
//! ids a peer chooses, ids scoped to that peer, which can only slow down
//! its own lookups). A multiply-rotate hash of the integer costs a few
//! cycles instead of a few dozen.

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

#[cfg(test)]
mod tests {
    use super::*;

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
