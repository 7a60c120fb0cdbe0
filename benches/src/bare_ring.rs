//! The throughput floor: a ring of 64-byte slots with nothing but two indices.
//!
//! It does what any single-producer single-consumer ring must do and
//! nothing more: the producer copies slots in and publishes its index with
//! one Release store per batch, the consumer copies slots out and publishes
//! its own the same way, and each side caches the other's index, reloading
//! it only when the ring looks full (producer) or empty (consumer). No
//! index is checked against a hostile peer, there is no doorbell and no
//! parked word, and slots are copied with plain 64-byte moves. Whatever
//! [`hybus_layout::ring`] costs beyond this is the price of its checks and
//! of its representation.
//!
//! # Safety
//!
//! The peer is trusted: it is our own forked child running this module's
//! code. Slots are read and written with plain (non-atomic) copies, which is
//! sound because the indices order them: the producer writes a slot only
//! below `head + capacity` (it has seen the consumer's Release of `head`
//! with Acquire, so the consumer is done with it) and the consumer reads it
//! only below `tail` (it has seen the producer's Release of `tail` with
//! Acquire, so the copy is complete). Slot positions are always masked, so
//! even a wrong index stays inside the mapping.
#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};

use hybus_layout::shm::Line;

use crate::process::SharedMap;
use crate::BenchError;

/// One slot: eight words, the size of a hybus descriptor.
pub type Words = [u64; 8];

/// The two indices, each alone on its line.
#[repr(C)]
#[derive(Debug)]
struct Indices {
    /// Next position the producer writes; written only by the producer.
    tail: Line<AtomicU64>,
    /// Next position the consumer reads; written only by the consumer.
    head: Line<AtomicU64>,
}

/// Bytes before the first slot.
const SLOTS_AT: usize = std::mem::size_of::<Indices>();

const _: () = assert!(SLOTS_AT % 64 == 0);

/// A bare SPSC ring of [`Words`] in memory shared across `fork`.
#[derive(Debug)]
pub struct BareRing {
    map: SharedMap,
    mask: u64,
}

impl BareRing {
    /// A ring of `capacity` slots, in a fresh shared mapping.
    ///
    /// # Panics
    ///
    /// If `capacity` is not a power of two.
    pub fn new(capacity: u64) -> Result<BareRing, BenchError> {
        assert!(capacity.is_power_of_two(), "capacity must be a power of two");
        let map = SharedMap::new(SLOTS_AT + capacity as usize * std::mem::size_of::<Words>())?;
        Ok(BareRing { map, mask: capacity - 1 })
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The two ends. Taking `&mut self` makes them the only ones in this process.
    pub fn split(&mut self) -> (BareProducer<'_>, BareConsumer<'_>) {
        // SAFETY: the mapping is page-aligned and at least `SLOTS_AT` long;
        // `Indices` is two atomics, valid when zeroed (a fresh mapping) and
        // sound to share with a writer.
        let idx = unsafe { self.map.as_ptr().cast::<Indices>().as_ref() };
        // SAFETY: `SLOTS_AT` is inside the mapping (the slots follow it).
        let slots = unsafe { self.map.as_ptr().add(SLOTS_AT) }.cast::<Words>();
        let (head, tail) = (idx.head.load(Acquire), idx.tail.load(Acquire));
        (
            BareProducer { idx, slots, mask: self.mask, tail, cached_head: head },
            BareConsumer { idx, slots, mask: self.mask, head, cached_tail: tail },
        )
    }
}

/// The writing end of a [`BareRing`].
#[derive(Debug)]
pub struct BareProducer<'a> {
    idx: &'a Indices,
    slots: NonNull<Words>,
    mask: u64,
    /// Private copy of `tail`.
    tail: u64,
    /// Last `head` seen; reloaded only when the ring looks full.
    cached_head: u64,
}

impl BareProducer<'_> {
    /// Copies in as many of `src` as fit and publishes them with one store; returns how many.
    #[inline]
    pub fn push_batch(&mut self, src: &[Words]) -> usize {
        let capacity = self.mask + 1;
        let mut room = capacity - (self.tail - self.cached_head);
        if room < src.len() as u64 {
            // SYNC: Acquire pairs with the consumer's Release of `head`: it
            // is done reading every slot below it.
            self.cached_head = self.idx.head.load(Acquire);
            room = capacity - (self.tail - self.cached_head);
        }
        let n = (room as usize).min(src.len());
        for w in &src[..n] {
            // SAFETY: masked, so in bounds; the slot is free (see the module's `# Safety`).
            unsafe { self.slots.as_ptr().add((self.tail & self.mask) as usize).write(*w) };
            self.tail += 1;
        }
        if n > 0 {
            // SYNC: Release publishes the slots written above; pairs with
            // the consumer's Acquire load of `tail`.
            self.idx.tail.store(self.tail, Release);
        }
        n
    }
}

/// The reading end of a [`BareRing`].
#[derive(Debug)]
pub struct BareConsumer<'a> {
    idx: &'a Indices,
    slots: NonNull<Words>,
    mask: u64,
    /// Private copy of `head`.
    head: u64,
    /// Last `tail` seen; reloaded only when fewer than asked for are known to be ready.
    cached_tail: u64,
}

impl BareConsumer<'_> {
    /// Copies out up to `out.len()` slots and frees them with one store; returns how many.
    #[inline]
    pub fn pop_batch(&mut self, out: &mut [Words]) -> usize {
        let mut ready = self.cached_tail - self.head;
        if ready < out.len() as u64 {
            // SYNC: Acquire pairs with the producer's Release of `tail`: the
            // slots below it are fully written.
            self.cached_tail = self.idx.tail.load(Acquire);
            ready = self.cached_tail - self.head;
        }
        let n = (ready as usize).min(out.len());
        for o in &mut out[..n] {
            // SAFETY: masked, so in bounds; the slot is published (see the module's `# Safety`).
            *o = unsafe { self.slots.as_ptr().add((self.head & self.mask) as usize).read() };
            self.head += 1;
        }
        if n > 0 {
            // SYNC: Release tells the producer we are done with the slots;
            // pairs with its Acquire load of `head`.
            self.idx.head.store(self.head, Release);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_wraps_and_fills() {
        let mut ring = BareRing::new(8).unwrap();
        let (mut p, mut c) = ring.split();
        let mut next = 0u64;
        let mut expect = 0u64;
        let mut out = [[0u64; 8]; 5];
        for _ in 0..100 {
            let batch: Vec<Words> = (next..next + 5).map(|i| [0, i, 0, 0, 0, 0, 0, 0]).collect();
            next += p.push_batch(&batch) as u64;
            let m = c.pop_batch(&mut out);
            for w in &out[..m] {
                assert_eq!(w[1], expect);
                expect += 1;
            }
        }
        assert!(expect > 300);
        assert_eq!(p.push_batch(&[[0; 8]; 9]), 8 - (next - expect) as usize);
    }
}
