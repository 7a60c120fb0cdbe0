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
//!   carries; and an [`RttHistogram`] of the round trips the caller timed.
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
    /// Exchanges open on the channel now: the caller's calls and streams
    /// waiting for their end (side A), the requests and streams the
    /// service is serving (side B). A gauge.
    pub in_flight: AtomicU64,
    /// Error answers this side sent.
    pub errors: AtomicU64,
}

/// What one side's [`SideCounters`] said when read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideFigures {
    /// Descriptors sent.
    pub messages: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Exchanges open.
    pub in_flight: u64,
    /// Error answers sent.
    pub errors: u64,
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, four atomics; every bit pattern is valid.
unsafe impl crate::shm::ShmSafe for SideCounters {}

/// Both sides' counters.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Written by side A only.
    pub a: Line<SideCounters>,
    /// Written by side B only.
    pub b: Line<SideCounters>,
    /// Round trips of calls, timed by side A (the caller) on a sample of them; written by A only.
    pub rtt: RttHistogram,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<ChannelCounters>() == 256 + 8 * RTT_BUCKETS);
    assert!(offset_of!(ChannelCounters, b) == 128);
    assert!(offset_of!(ChannelCounters, rtt) == 256);
};

/// Buckets of an [`RttHistogram`].
pub const RTT_BUCKETS: usize = 128;

/// A caller times one direct call in this many (the first of each run):
/// two clock reads on one call in 64 cost the others nothing measurable,
/// where a clock read per call was 6 % of a spinning round trip here.
pub const RTT_SAMPLE_EVERY: u32 = 64;

/// Round-trip times in nanoseconds, counted in buckets four to a power of
/// two (none wider than a quarter of its floor): 0–3 ns one each,
/// then `[2^e, 2^(e+1))` split in quarters for `e` in 2..32; 2^32 ns
/// (4.3 s) and up in the last. HdrHistogram's log-linear buckets with a
/// 2-bit mantissa: 1 KiB, written with a load and a store per sample (one
/// writer), read without stopping it.
#[repr(C)]
#[derive(Debug)]
pub struct RttHistogram {
    counts: [AtomicU64; RTT_BUCKETS],
}

impl Default for RttHistogram {
    fn default() -> Self {
        RttHistogram { counts: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, atomics only; every bit pattern is valid.
unsafe impl crate::shm::ShmSafe for RttHistogram {}

/// The bucket of `ns`.
const fn rtt_bucket(ns: u64) -> usize {
    if ns < 4 {
        return ns as usize;
    }
    let e = 63 - ns.leading_zeros() as usize;
    let i = e * 4 + ((ns >> (e - 2)) & 3) as usize;
    if i < RTT_BUCKETS {
        i
    } else {
        RTT_BUCKETS - 1
    }
}

/// The smallest value of bucket `i`.
const fn rtt_floor(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let e = i / 4;
    if e < 2 {
        // Buckets 4..8 are never used (2 and 3 have buckets of their own).
        return 4;
    }
    (4 + (i % 4) as u64) << (e - 2)
}

impl RttHistogram {
    /// Counts one round trip of `ns` nanoseconds. Only the owning side
    /// writes: a load and a store, no read-modify-write.
    #[inline]
    pub fn record(&self, ns: u64) {
        let c = &self.counts[rtt_bucket(ns)];
        c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// The counts as they are now (the writer may be mid-way: each count is
    /// exact or one behind).
    pub fn snapshot(&self) -> RttSnapshot {
        RttSnapshot { counts: std::array::from_fn(|i| self.counts[i].load(Relaxed)) }
    }
}

/// A copy of an [`RttHistogram`], in private memory. The writer is a peer
/// process: the counts may be anything, and nothing here trusts them
/// beyond arithmetic that cannot overflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RttSnapshot {
    counts: [u64; RTT_BUCKETS],
}

impl RttSnapshot {
    /// Round trips counted.
    pub fn samples(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, &c| a.saturating_add(c))
    }

    /// The round trip below which a fraction `q` (0..=1) of the samples
    /// lie, as the middle of its bucket; `None` with no samples.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.samples();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return Some(rtt_middle(i));
            }
        }
        Some(rtt_middle(RTT_BUCKETS - 1))
    }

    /// The middle of the highest bucket with a sample; `None` with none.
    pub fn max(&self) -> Option<u64> {
        self.counts.iter().rposition(|&c| c > 0).map(rtt_middle)
    }

    /// `[p50, p99, p99.9, max]`, zeros with no samples (as the daemon's own latency figures).
    pub fn figures(&self) -> [u64; 4] {
        let q = |q| self.quantile(q).unwrap_or(0);
        [q(0.5), q(0.99), q(0.999), self.max().unwrap_or(0)]
    }
}

/// The middle of bucket `i` (the last bucket: its floor).
fn rtt_middle(i: usize) -> u64 {
    if i + 1 >= RTT_BUCKETS {
        return rtt_floor(i);
    }
    let (lo, hi) = (rtt_floor(i), rtt_floor(i + 1));
    lo + (hi - lo) / 2
}

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

    /// Counts one error answer sent (besides [`count`](Self::count)).
    #[inline]
    pub fn count_error(&self) {
        self.errors.store(self.errors.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// Sets the number of exchanges open.
    #[inline]
    pub fn set_in_flight(&self, n: u64) {
        self.in_flight.store(n, Relaxed);
    }

    /// The figures as last written.
    pub fn read(&self) -> SideFigures {
        SideFigures {
            messages: self.messages.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
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
    fn rtt_buckets_are_ordered_and_narrow() {
        for ns in (0..100_000u64).chain((0..40).map(|e| 1u64 << e)).chain([u64::MAX]) {
            let i = rtt_bucket(ns);
            assert!(rtt_floor(i) <= ns, "{ns} below its bucket {i}");
            if i + 1 < RTT_BUCKETS {
                assert!(ns < rtt_floor(i + 1), "{ns} above its bucket {i}");
                // Under 19 % wide from 8 ns up (a quarter of a power of two, over its floor).
                assert!(ns < 8 || (rtt_floor(i + 1) - rtt_floor(i)) * 100 <= rtt_floor(i) * 25, "bucket {i}");
            }
        }
        let h = RttHistogram::default();
        assert_eq!(h.snapshot().quantile(0.5), None);
        for ns in 1..=1000u64 {
            h.record(ns * 1000);
        }
        let s = h.snapshot();
        assert_eq!(s.samples(), 1000);
        let within = |got: u64, want: u64| got.abs_diff(want) * 100 <= want * 13;
        assert!(within(s.quantile(0.5).unwrap(), 500_000), "{:?}", s.quantile(0.5));
        assert!(within(s.quantile(0.99).unwrap(), 990_000), "{:?}", s.quantile(0.99));
        assert!(within(s.max().unwrap(), 1_000_000), "{:?}", s.max());
    }

    #[test]
    fn a_hostile_histogram_gives_figures_not_panics() {
        let h = RttHistogram::default();
        for c in &h.counts {
            c.store(u64::MAX, Relaxed);
        }
        let s = h.snapshot();
        assert_eq!(s.samples(), u64::MAX);
        assert_eq!(s.figures()[3], rtt_floor(RTT_BUCKETS - 1));
    }

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
