//! Who holds which payload chunk: the daemon's reference counts.
//!
//! A chunk enters the table when its owner sends it and leaves when the
//! last receiver releases it; then the daemon hands it back to the owner.
//! The table lives in the daemon's private memory, so no client can forge
//! a count. A chunk in the table cannot be sent again by its owner (it
//! does not hold it), and only a listed holder may release it.

use hybus_layout::idhash::IdMap;

use hybus_layout::ChunkRef;

/// Key: (pool id, chunk index within the pool).
type Key = (u32, u32);

#[derive(Debug)]
struct Loan {
    chunk: ChunkRef,
    holders: Vec<u32>,
}

/// The reference-count table.
#[derive(Debug, Default)]
pub struct Chunks {
    loans: IdMap<Key, Loan>,
}

/// What a release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Others still hold it.
    Held,
    /// That was the last holder: return `ChunkRef` to its owner.
    Last(ChunkRef),
}

impl Chunks {
    /// Whether the chunk is lent out.
    #[inline]
    pub fn is_lent(&self, pool: u32, index: u32) -> bool {
        self.loans.contains_key(&(pool, index))
    }

    /// Records that `holders` now hold the chunk. Returns false if it was already lent.
    #[inline]
    pub fn lend(&mut self, index: u32, chunk: ChunkRef, holders: Vec<u32>) -> bool {
        use std::collections::hash_map::Entry;
        match self.loans.entry((chunk.segment, index)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(Loan { chunk, holders });
                true
            }
        }
    }

    /// `holder` gives the chunk back. `None` if it did not hold it.
    #[inline]
    pub fn release(&mut self, pool: u32, index: u32, holder: u32) -> Option<Released> {
        let loan = self.loans.get_mut(&(pool, index))?;
        let pos = loan.holders.iter().position(|&h| h == holder)?;
        loan.holders.swap_remove(pos);
        if loan.holders.is_empty() {
            let chunk = loan.chunk;
            self.loans.remove(&(pool, index));
            return Some(Released::Last(chunk));
        }
        Some(Released::Held)
    }

    /// Removes `client` as a holder everywhere (it died); returns the chunks
    /// whose last holder it was, to be returned to their owners.
    pub fn drop_holder(&mut self, client: u32) -> Vec<ChunkRef> {
        let mut back = Vec::new();
        self.loans.retain(|_, loan| {
            loan.holders.retain(|&h| h != client);
            if loan.holders.is_empty() {
                back.push(loan.chunk);
                return false;
            }
            true
        });
        back
    }

    /// Forgets every chunk of `pool` (its owner died); holders may still read
    /// their mapping, and their later releases are ignored.
    pub fn drop_pool(&mut self, pool: u32) {
        self.loans.retain(|(p, _), _| *p != pool);
    }

    /// Chunks of `pool` currently lent out.
    pub fn lent_from(&self, pool: u32) -> usize {
        self.loans.keys().filter(|(p, _)| *p == pool).count()
    }

    /// Chunks lent out in all.
    pub fn len(&self) -> usize {
        self.loans.len()
    }

    /// Whether nothing is lent out.
    pub fn is_empty(&self) -> bool {
        self.loans.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_out_returns_after_last_release() {
        let mut t = Chunks::default();
        let c = ChunkRef { segment: 1, len: 10, offset: 4096 };
        assert!(t.lend(0, c, vec![2, 3]));
        assert!(!t.lend(0, c, vec![4]), "owner cannot send a chunk it lent");
        assert_eq!(t.release(1, 0, 9), None, "not a holder");
        assert_eq!(t.release(1, 0, 2), Some(Released::Held));
        assert_eq!(t.release(1, 0, 2), None, "released twice");
        assert_eq!(t.release(1, 0, 3), Some(Released::Last(c)));
        assert!(t.is_empty());
    }

    #[test]
    fn dead_holder_and_dead_owner() {
        let mut t = Chunks::default();
        let c = ChunkRef { segment: 1, len: 10, offset: 4096 };
        t.lend(0, c, vec![2]);
        t.lend(1, ChunkRef { offset: 4096 + 256, ..c }, vec![2, 3]);
        assert_eq!(t.drop_holder(2), vec![c]);
        assert_eq!(t.lent_from(1), 1);
        t.drop_pool(1);
        assert!(t.is_empty());
    }
}
