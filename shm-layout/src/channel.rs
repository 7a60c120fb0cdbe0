//! The direct-channel segment: four rings and two counter lines.
//!
//! A direct channel joins a caller (side A) and one service instance
//! (side B) without the daemon in the path. The segment holds:
//!
//! * `a_to_b`, `b_to_a` — descriptor rings for requests, answers, fires,
//!   stream items and fences;
//! * `a_release`, `b_release` — the return rings: side A hands B's chunks
//!   back on `a_release`, B hands A's back on `b_release`. Separate from
//!   the data rings so that returning a chunk never waits behind data;
//! * one [`ChannelCounters`] line per side, written only by that side, so
//!   the daemon (which maps the segment too) can show traffic it no longer
//!   carries.
//!
//! Geometry is a pure function of the ring capacity ([`ChannelLayout`]),
//! which the segment header's `param` carries.

use std::sync::atomic::Ordering::Relaxed;

use crate::header::HEADER_REGION;
use crate::ring;
use crate::shm::Line;
use crate::sync::AtomicU64;

/// Traffic counters of one side, on a line of their own.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SideCounters {
    /// Descriptors this side sent on its data ring.
    pub messages: AtomicU64,
    /// Payload bytes this side sent.
    pub bytes: AtomicU64,
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, two atomics; every bit pattern is valid.
unsafe impl crate::shm::ShmSafe for SideCounters {}

/// Both sides' counters.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Written by side A only.
    pub a: Line<SideCounters>,
    /// Written by side B only.
    pub b: Line<SideCounters>,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ChannelCounters>() == 256);
    assert!(offset_of!(ChannelCounters, b) == 128);
};

impl SideCounters {
    /// Counts one sent descriptor carrying `bytes` of payload.
    ///
    /// Only the owning side writes, so a load and a store suffice (no
    /// read-modify-write on the hot path); readers tolerate a stale value.
    #[inline]
    pub fn count(&self, bytes: u64) {
        self.messages.store(self.messages.load(Relaxed).wrapping_add(1), Relaxed);
        self.bytes.store(self.bytes.load(Relaxed).wrapping_add(bytes), Relaxed);
    }

    /// `(messages, bytes)` as last written.
    pub fn read(&self) -> (u64, u64) {
        (self.messages.load(Relaxed), self.bytes.load(Relaxed))
    }
}

/// Where everything lies in a channel segment of a given ring capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Slots per ring.
    pub capacity: u64,
    /// Offset of the [`ChannelCounters`].
    pub counters: usize,
    /// Offset of the A → B data ring.
    pub a_to_b: usize,
    /// Offset of the B → A data ring.
    pub b_to_a: usize,
    /// Offset of A's return ring (B's chunks going back to B).
    pub a_release: usize,
    /// Offset of B's return ring (A's chunks going back to A).
    pub b_release: usize,
    /// Total segment size.
    pub size: usize,
}

impl ChannelLayout {
    /// The layout for rings of `capacity` slots (checked by the ring constructors).
    pub const fn new(capacity: u64) -> ChannelLayout {
        let ring = ring::memory_size(capacity);
        // Keep each ring page-aligned so they never share a page with the counters.
        let stride = ring.div_ceil(4096) * 4096;
        let a_to_b = HEADER_REGION;
        ChannelLayout {
            capacity,
            counters: 1024,
            a_to_b,
            b_to_a: a_to_b + stride,
            a_release: a_to_b + 2 * stride,
            b_release: a_to_b + 3 * stride,
            size: a_to_b + 4 * stride,
        }
    }
}

/// Which end of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller.
    A,
    /// The service instance.
    B,
}

impl ChannelLayout {
    /// `(my data ring out, peer's data ring in, my return ring out, peer's return ring in)` for `side`.
    pub fn rings(&self, side: Side) -> (usize, usize, usize, usize) {
        match side {
            Side::A => (self.a_to_b, self.b_to_a, self.a_release, self.b_release),
            Side::B => (self.b_to_a, self.a_to_b, self.b_release, self.a_release),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_disjoint_and_aligned() {
        let l = ChannelLayout::new(1024);
        let ring = ring::memory_size(1024);
        let mut offs = [l.a_to_b, l.b_to_a, l.a_release, l.b_release];
        offs.sort();
        for w in offs.windows(2) {
            assert!(w[0] + ring <= w[1]);
        }
        assert!(offs.iter().all(|o| o % 4096 == 0));
        assert!(l.counters + std::mem::size_of::<ChannelCounters>() <= HEADER_REGION);
        assert!(l.b_release + ring <= l.size);
        let (a_out, a_in, a_rel, a_rel_in) = l.rings(Side::A);
        let (b_out, b_in, b_rel, b_rel_in) = l.rings(Side::B);
        assert_eq!((a_out, a_in, a_rel, a_rel_in), (b_in, b_out, b_rel_in, b_rel));
    }
}
