//! What each uid holds of other clients' pools, and what was taken back.
//!
//! A receiver that never drops its samples pins the sender's chunks: one
//! subscriber that kept every publication left its publisher with an empty
//! pool ("out of pool memory" on every try) and the topic stalled for the
//! honest subscribers too. So the chunks a uid holds of one size class of
//! one pool are bounded (`limits.held_share_percent` of that class, all
//! the uid's connections together: more connections buy nothing). Holds of
//! the owner's own uid are not charged: what a uid does to its own pools is
//! its own business, and an honest subscriber of the publisher's uid loses
//! nothing for another's hoarding. Past the bound the oldest chunk of the
//! uid's largest holder is taken back: the daemon releases it on the
//! holder's behalf, so it can go home to its owner, and tells the holder in
//! ring order (a `Release` of a chunk that is not its own); or, for a topic
//! whose rule is `disconnect`, the holder is cut off.
//!
//! A chunk taken back is still owed a release by its holder (its
//! application may hold the sample): that release is expected, not a
//! violation, and is settled here. A holder that owes more than
//! [`MAX_OWED`] is cut off: it is not reading its ring.
//!
//! Publications and answers are charged; requests and stream items are not
//! (a server holds requests while it works on them, bounded by the
//! in-flight quota; stream items by credits).

use std::collections::VecDeque;

use hybus_layout::idhash::IdMap;
use hybus_layout::ChunkRef;

/// Releases a holder may owe for chunks taken back before it is cut off.
pub const MAX_OWED: u32 = 4096;

/// One chunk one connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// The holding connection.
    pub holder: u32,
    /// The chunk.
    pub chunk: ChunkRef,
    /// Its pool-wide index.
    pub index: u32,
    /// Cut the holder off rather than take the chunk back (a topic whose
    /// slow-subscriber rule is `disconnect`).
    pub strict: bool,
}

/// Key of a uid's holds of one class of one pool: (uid, pool, class).
type ClassKey = (u32, u32, u32);

/// See the module docs.
#[derive(Debug, Default)]
pub struct Holds {
    /// Oldest first.
    by_class: IdMap<ClassKey, VecDeque<Hold>>,
    /// (holder, pool, index) → releases owed for chunks taken back.
    owed: IdMap<(u32, u32, u32), u32>,
    owed_by: IdMap<u32, u32>,
}

impl Holds {
    /// Charges `hold` to `uid`'s share of class `class` of its pool, which
    /// holds at most `limit`. Returns the hold to take back when past it:
    /// the oldest of the uid's connection that holds the most (a hoarder
    /// pays for its hoarding, not an honest connection of the same uid).
    pub fn charge(&mut self, uid: u32, class: u32, limit: usize, hold: Hold) -> Option<Hold> {
        let q = self.by_class.entry((uid, hold.chunk.segment, class)).or_default();
        q.push_back(hold);
        if q.len() <= limit.max(1) {
            return None;
        }
        let mut counts: Vec<(u32, usize)> = Vec::new();
        for h in q.iter() {
            match counts.iter_mut().find(|(c, _)| *c == h.holder) {
                Some((_, n)) => *n += 1,
                None => counts.push((h.holder, 1)),
            }
        }
        // The first to reach the largest count, so ties go to the oldest holder.
        let most = counts.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let victim = counts.iter().find(|&&(_, n)| n == most).map(|&(c, _)| c)?;
        let pos = q.iter().position(|h| h.holder == victim)?;
        q.remove(pos)
    }

    /// `holder` (of `uid`) gave back chunk `index` of `pool` of class `class`.
    pub fn discharge(&mut self, uid: u32, class: u32, holder: u32, pool: u32, index: u32) {
        let key = (uid, pool, class);
        if let Some(q) = self.by_class.get_mut(&key) {
            if let Some(pos) = q.iter().position(|h| h.holder == holder && h.index == index) {
                q.remove(pos);
            }
            if q.is_empty() {
                self.by_class.remove(&key);
            }
        }
    }

    /// Records that chunk `index` of `pool` was taken back from `holder`:
    /// it owes one release more. Returns how many it owes now.
    pub fn taken_back(&mut self, holder: u32, pool: u32, index: u32) -> u32 {
        *self.owed.entry((holder, pool, index)).or_default() += 1;
        let n = self.owed_by.entry(holder).or_default();
        *n += 1;
        *n
    }

    /// A release by `holder` of a chunk it does not hold: whether it was
    /// owed (the chunk was taken back), in which case it is settled.
    pub fn settle(&mut self, holder: u32, pool: u32, index: u32) -> bool {
        let key = (holder, pool, index);
        let Some(n) = self.owed.get_mut(&key) else { return false };
        *n -= 1;
        if *n == 0 {
            self.owed.remove(&key);
        }
        if let Some(m) = self.owed_by.get_mut(&holder) {
            *m = m.saturating_sub(1);
            if *m == 0 {
                self.owed_by.remove(&holder);
            }
        }
        true
    }

    /// Forgets everything of a connection that left.
    pub fn drop_holder(&mut self, holder: u32) {
        self.by_class.retain(|_, q| {
            q.retain(|h| h.holder != holder);
            !q.is_empty()
        });
        if self.owed_by.remove(&holder).is_some() {
            self.owed.retain(|&(h, _, _), _| h != holder);
        }
    }

    /// Forgets every hold of `pool` (its owner left: nothing goes home).
    pub fn drop_pool(&mut self, pool: u32) {
        self.by_class.retain(|&(_, p, _), _| p != pool);
        if self.owed.keys().any(|&(_, p, _)| p == pool) {
            let mut freed: Vec<u32> = Vec::new();
            self.owed.retain(|&(h, p, _), n| {
                if p == pool {
                    freed.extend(std::iter::repeat_n(h, *n as usize));
                }
                p != pool
            });
            for h in freed {
                if let Some(m) = self.owed_by.get_mut(&h) {
                    *m = m.saturating_sub(1);
                }
            }
            self.owed_by.retain(|_, m| *m > 0);
        }
    }

    /// Whether no hold is charged at all (the usual case: receivers of the
    /// owner's own uid are not charged).
    pub fn is_empty(&self) -> bool {
        self.by_class.is_empty()
    }

    /// Chunks held by `uid` of class `class` of `pool` (for tests and stats).
    pub fn held(&self, uid: u32, pool: u32, class: u32) -> usize {
        self.by_class.get(&(uid, pool, class)).map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(holder: u32, index: u32) -> Hold {
        Hold { holder, chunk: ChunkRef { segment: 9, offset: index as u64 * 64, len: 1 }, index, strict: false }
    }

    #[test]
    fn a_uid_past_its_share_gives_back_its_oldest() {
        let mut h = Holds::default();
        // Two connections of uid 5 share one bound of 3; the one that
        // holds the most gives back its oldest.
        for (i, holder) in [(0, 2), (1, 1), (2, 1)] {
            assert_eq!(h.charge(5, 0, 3, hold(holder, i)), None);
        }
        assert_eq!(h.charge(5, 0, 3, hold(1, 3)), Some(hold(1, 1)));
        // Another uid has its own bound.
        assert_eq!(h.charge(6, 0, 3, hold(7, 4)), None);
        h.discharge(5, 0, 2, 9, 0);
        assert_eq!(h.held(5, 9, 0), 2, "1 and 3 of holder 1");
        // The chunk taken back is owed a release, once.
        assert_eq!(h.taken_back(1, 9, 0), 1);
        assert!(h.settle(1, 9, 0));
        assert!(!h.settle(1, 9, 0));
        h.drop_holder(1);
        h.drop_pool(9);
        assert_eq!(h.held(5, 9, 0) + h.held(6, 9, 0), 0);
    }
}
