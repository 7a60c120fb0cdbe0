//! The single-producer single-consumer descriptor ring.
//!
//! The ring is a [`RingHeader`] followed by `capacity` [`Slot`]s. `tail` and
//! `head` are free-running `u64` counters (they never wrap in practice: at
//! 10⁹ descriptors per second a `u64` lasts 584 years); the slot of index
//! `i` is `i & (capacity - 1)`. The producer owns `tail`, the consumer owns
//! `head`.
//!
//! **Lap stamps.** A consumer waiting for the next descriptor does not
//! learn from `tail` that it is there. The producer writes each slot's
//! header word (word 7: kind, flags, route) last, with Release, and puts
//! in its spare byte a stamp of the index's lap (`index >> log2 capacity`,
//! seven bits, top bit set so that a zeroed slot matches no lap).
//! [`Consumer::pop`] loads the header word of the slot at `head` with
//! Acquire and takes the slot if the stamp is the one `head` expects. A
//! waiting consumer so polls one cache line, the slot's, and a hand-over
//! costs one line transfer as in a bare cache-line ping-pong, where reading
//! `tail` first and the slot next costs two, one after the other (measured
//! with `benches/examples/ring_report.rs` over 1024-slot rings: p50 round
//! trip 1.6–1.9× the cache-line floor, from 1.8–2.1× before; 1.25–1.27×
//! over 64-slot rings). A slot still holding the previous lap has the
//! previous stamp, so it is never taken for the new one. This is how
//! Vyukov's bounded queue and Aeron's log buffers mark an entry complete,
//! with one byte instead of a sequence or length word.
//!
//! The producer still stores `tail` after each push or batch. The park
//! handshake and the checks below read it, and so does
//! [`Consumer::pop_batch`]: a bulk reader that polled stamps would sit at
//! the producer's write frontier and pull each line away from it mid-batch
//! (measured: 0.6× the bare ring's throughput that way, 0.75–0.8× trailing
//! `tail`, 0.92–0.95× since batches are stored with four 16-byte stores a
//! slot, see `descriptor::BatchStores`). `tail` may lag behind slots that
//! `pop` took by their stamps, by at most one batch.
//!
//! The producer keeps a private copy of `head` that it reloads only when the
//! ring looks full, so a busy ring costs it one cache-line transfer per
//! lap, not per descriptor.
//!
//! Either side may be a hostile process. Every index read from shared
//! memory is checked: `head` must lie in the producer's `head..=tail`, and
//! `tail` within `capacity` of the consumer's `head` either way (behind
//! only by what stamps already delivered). A value outside is a
//! [`RingError::Violation`], and a `tail` that says a slot is ready whose
//! stamp says otherwise is a [`RingError::Unstamped`]; never an
//! out-of-bounds read, a panic or an endless loop. Slot indices are always
//! masked, so even an unchecked index could not leave the ring.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::Arc;

use crate::descriptor::{stamp_of, BatchStores, Descriptor, Slot};
use crate::shm::Line;
use crate::sync::{fence, AtomicU32, AtomicU64};

/// The largest capacity a ring may have (2²⁰ descriptors, 64 MiB of slots).
pub const MAX_CAPACITY: u64 = 1 << 20;

/// The control words of a ring, each on its own [`Line`].
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Number of slots; written once by the creator, read once by each side and then kept privately.
    capacity: Line<AtomicU64>,
    /// Next index the producer will write. Written only by the producer; always in `head..=head + capacity`.
    tail: Line<AtomicU64>,
    /// Next index the consumer will read. Written only by the consumer.
    head: Line<AtomicU64>,
    /// Non-zero while the consumer sleeps or is about to (the doorbell handshake, see [`crate::doorbell`]).
    parked: Line<AtomicU32>,
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, only atomics on padded lines; every bit pattern is valid.
unsafe impl crate::shm::ShmSafe for RingHeader {}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<RingHeader>() == 4 * crate::shm::LINE);
    assert!(align_of::<RingHeader>() == crate::shm::LINE);
    assert!(offset_of!(RingHeader, capacity) == 0);
    assert!(offset_of!(RingHeader, tail) == 128);
    assert!(offset_of!(RingHeader, head) == 256);
    assert!(offset_of!(RingHeader, parked) == 384);
};

impl RingHeader {
    /// Descriptors pushed and not yet taken, as an onlooker sees them (a
    /// daemon reading a direct channel's rings for its statistics), in a
    /// ring of `capacity` slots as the onlooker knows it (the header's own
    /// word is the ends' to write, like the indices); `None` if the indices
    /// the two ends wrote make no sense for it.
    ///
    /// Approximate by nature: `tail` may lag behind what the consumer took
    /// by stamps, by at most one batch (module docs).
    pub fn depth(&self, capacity: u64) -> Option<u64> {
        // SYNC: Acquire for both; the figure is a snapshot either way.
        let head = self.head.load(Acquire);
        let tail = self.tail.load(Acquire);
        if tail.wrapping_sub(head) <= capacity {
            Some(tail.wrapping_sub(head))
        } else if head.wrapping_sub(tail) <= capacity {
            Some(0) // the consumer took by stamps past a `tail` not stored yet
        } else {
            None
        }
    }

    /// A header for a ring of `capacity` slots, all indices zero.
    pub fn new(capacity: u64) -> RingHeader {
        RingHeader {
            capacity: Line(AtomicU64::new(capacity)),
            tail: Line(AtomicU64::new(0)),
            head: Line(AtomicU64::new(0)),
            parked: Line(AtomicU32::new(0)),
        }
    }
}

/// Bytes a ring of `capacity` slots occupies: header plus slots.
pub const fn memory_size(capacity: u64) -> usize {
    (capacity as usize).saturating_mul(std::mem::size_of::<Slot>()).saturating_add(std::mem::size_of::<RingHeader>())
}

/// What went wrong with a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The capacity is zero, not a power of two, or above [`MAX_CAPACITY`].
    BadCapacity(u64),
    /// The memory given is too small or misaligned for the ring.
    BadRegion {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        len: usize,
    },
    /// The peer broke the index invariant: it is hostile or its memory is corrupt.
    Violation {
        /// The head index seen.
        head: u64,
        /// The tail index seen.
        tail: u64,
    },
    /// The producer's `tail` says the slot of `index` is ready, but the
    /// slot's stamp says it was not written: the producer is hostile or its
    /// memory is corrupt.
    Unstamped {
        /// The index whose slot is not stamped.
        index: u64,
        /// The tail index seen.
        tail: u64,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCapacity(c) => {
                write!(f, "ring capacity {c} is not a power of two in 1..={MAX_CAPACITY}")
            }
            Self::BadRegion { needed, len } => {
                write!(f, "ring region of {len} bytes is too small or misaligned (needs {needed}, 128-aligned)")
            }
            Self::Violation { head, tail } => write!(
                f,
                "ring protocol violation by peer: head {head}, tail {tail} breaks 0 <= tail - head <= capacity"
            ),
            Self::Unstamped { index, tail } => write!(
                f,
                "ring protocol violation by peer: tail {tail} says slot {index} is ready but its stamp says it was not written"
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// The producer could not push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The ring is full; the descriptor was not written and may be pushed again.
    Full(Descriptor),
    /// The consumer broke the protocol.
    Ring(RingError),
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("ring is full"),
            Self::Ring(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PushError {}

impl From<RingError> for PushError {
    fn from(e: RingError) -> Self {
        PushError::Ring(e)
    }
}

/// Keeps the memory under a ring alive (a mapping, or a heap allocation in tests).
pub type KeepAlive = Arc<dyn Send + Sync>;

/// Where a ring's slots are and how an index maps onto them: a private copy
/// of the geometry, never re-read from shared memory after attach. `Copy`,
/// so that a batch loop keeps it in registers (through a reference, the
/// compiler must reload it after every wide-store block, which clobbers
/// memory).
#[derive(Clone, Copy)]
struct Slots {
    base: NonNull<Slot>,
    mask: u64,
    /// `log2(capacity)`: an index's lap is `index >> shift`.
    shift: u32,
}

impl Slots {
    #[inline]
    fn slot(&self, index: u64) -> &Slot {
        // SAFETY: `index & mask` < capacity, so the slot is in bounds (the
        // ring's constructor contract); slots are atomics only, so sharing
        // them with a writer is sound.
        unsafe { &*self.base.as_ptr().add((index & self.mask) as usize) }
    }

    #[inline]
    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The stamp that marks the slot of `index` as written for `index`: the
    /// low seven bits of its lap, top bit set (a zeroed slot matches no lap).
    #[inline]
    fn stamp(&self, index: u64) -> u8 {
        (index >> self.shift) as u8 | 0x80
    }
}

/// A validated view of a ring: pointers plus a private copy of its geometry.
#[derive(Clone)]
struct RawRing {
    header: NonNull<RingHeader>,
    slots: Slots,
    _keep: Option<KeepAlive>,
}

impl RawRing {
    /// # Safety
    ///
    /// `header` and `slots` point to a live `RingHeader` and `capacity` slots
    /// that stay valid while `keep` (or, if `None`, the caller) keeps them.
    unsafe fn new(
        header: NonNull<RingHeader>,
        slots: NonNull<Slot>,
        capacity: u64,
        keep: Option<KeepAlive>,
    ) -> RawRing {
        debug_assert!(capacity.is_power_of_two());
        let slots = Slots { base: slots, mask: capacity - 1, shift: capacity.trailing_zeros() };
        RawRing { header, slots, _keep: keep }
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: valid for the life of `self` (constructor contract); every
        // field is an atomic, so a shared reference is sound even though the
        // peer writes to it concurrently.
        unsafe { self.header.as_ref() }
    }

    #[inline]
    fn slot(&self, index: u64) -> &Slot {
        self.slots.slot(index)
    }

    #[inline]
    fn capacity(&self) -> u64 {
        self.slots.capacity()
    }

    #[inline]
    fn stamp(&self, index: u64) -> u8 {
        self.slots.stamp(index)
    }

    /// The header word of the slot of `index`, if its stamp says it holds `index`.
    #[inline]
    fn stamped(&self, index: u64) -> Option<u64> {
        let header = self.slot(index).header();
        (stamp_of(header) == self.stamp(index)).then_some(header)
    }

    /// Checks the invariant `0 <= tail - head <= capacity` on indices that a peer wrote.
    #[inline]
    fn check(&self, head: u64, tail: u64) -> Result<u64, RingError> {
        let len = tail.wrapping_sub(head);
        if len > self.capacity() {
            return Err(RingError::Violation { head, tail });
        }
        Ok(len)
    }
}

// SAFETY: the raw pointers refer to shared memory made only of atomics; the
// keep-alive is `Send + Sync`. Moving the handle to another thread is sound.
unsafe impl Send for RawRing {}

/// Builds a producer/consumer pair over a ring in memory.
#[derive(Debug)]
pub struct Ring;

impl Ring {
    /// Initialises a new ring of `capacity` slots at `base` and returns its two ends.
    ///
    /// # Safety
    ///
    /// `base` points to `len` writable bytes, 128-byte aligned, that no one
    /// else uses yet and that stay mapped while `keep` (or the caller, if
    /// `keep` is `None`) holds them. The memory must be zeroed or otherwise
    /// hold valid atomics (a fresh memfd does).
    pub unsafe fn init(
        base: NonNull<u8>,
        len: usize,
        capacity: u64,
        keep: Option<KeepAlive>,
    ) -> Result<(Producer, Consumer), RingError> {
        check_capacity(capacity)?;
        let raw = region(base, len, capacity)?;
        let header = raw.0.cast::<RingHeader>();
        // SAFETY: in bounds and aligned (checked by `region`); atomics are
        // valid for every bit pattern, so the reference is sound.
        let h = unsafe { header.as_ref() };
        h.capacity.store(capacity, Relaxed);
        h.tail.store(0, Relaxed);
        h.head.store(0, Relaxed);
        h.parked.store(0, Relaxed);
        // SAFETY: forwarded from the caller's contract.
        let ring = unsafe { RawRing::new(header, raw.1, capacity, keep) };
        // Memory that held a ring before may hold stamps of lap 0.
        for i in 0..capacity {
            ring.slot(i).clear();
        }
        Ok((Producer::from_raw(ring.clone(), 0, 0), Consumer::from_raw(ring, 0)))
    }

    /// Attaches to an existing ring as its producer, checking what the memory says.
    ///
    /// # Safety
    ///
    /// As for [`Ring::init`], except that the memory already holds a ring
    /// (possibly a corrupt one: that is checked, not trusted).
    pub unsafe fn attach_producer(
        base: NonNull<u8>,
        len: usize,
        keep: Option<KeepAlive>,
    ) -> Result<Producer, RingError> {
        // SAFETY: forwarded.
        let (raw, head, tail) = unsafe { attach(base, len, keep)? };
        Ok(Producer::from_raw(raw, tail, head))
    }

    /// Attaches to an existing ring as its consumer, checking what the memory says.
    ///
    /// # Safety
    ///
    /// As for [`Ring::attach_producer`].
    pub unsafe fn attach_consumer(
        base: NonNull<u8>,
        len: usize,
        keep: Option<KeepAlive>,
    ) -> Result<Consumer, RingError> {
        // SAFETY: forwarded.
        let (raw, head, _) = unsafe { attach(base, len, keep)? };
        Ok(Consumer::from_raw(raw, head))
    }

    /// Builds both ends over a header and slots that live elsewhere (tests, loom, benches).
    ///
    /// # Safety
    ///
    /// `header` and `slots` (of `capacity` elements) stay valid while `keep` holds them.
    pub unsafe fn from_parts(
        header: NonNull<RingHeader>,
        slots: NonNull<Slot>,
        capacity: u64,
        keep: Option<KeepAlive>,
    ) -> Result<(Producer, Consumer), RingError> {
        check_capacity(capacity)?;
        // SAFETY: forwarded.
        let ring = unsafe { RawRing::new(header, slots, capacity, keep) };
        let h = ring.header();
        let (head, tail) = (h.head.load(Acquire), h.tail.load(Acquire));
        ring.check(head, tail)?;
        Ok((Producer::from_raw(ring.clone(), tail, head), Consumer::from_raw(ring, head)))
    }
}

fn check_capacity(capacity: u64) -> Result<(), RingError> {
    if capacity == 0 || !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
        return Err(RingError::BadCapacity(capacity));
    }
    Ok(())
}

fn region(base: NonNull<u8>, len: usize, capacity: u64) -> Result<(NonNull<u8>, NonNull<Slot>), RingError> {
    let needed = memory_size(capacity);
    if len < needed || base.as_ptr() as usize % crate::shm::LINE != 0 {
        return Err(RingError::BadRegion { needed, len });
    }
    // SAFETY: `size_of::<RingHeader>()` < `needed` <= `len`, so the slots start inside the region.
    let slots = unsafe { base.add(std::mem::size_of::<RingHeader>()) };
    Ok((base, slots.cast()))
}

/// # Safety
///
/// See [`Ring::attach_producer`].
unsafe fn attach(base: NonNull<u8>, len: usize, keep: Option<KeepAlive>) -> Result<(RawRing, u64, u64), RingError> {
    if len < std::mem::size_of::<RingHeader>() || base.as_ptr() as usize % crate::shm::LINE != 0 {
        return Err(RingError::BadRegion { needed: std::mem::size_of::<RingHeader>(), len });
    }
    let header = base.cast::<RingHeader>();
    // SAFETY: in bounds and aligned (checked above); only atomics inside.
    let capacity = unsafe { header.as_ref() }.capacity.load(Relaxed);
    check_capacity(capacity)?;
    let (_, slots) = region(base, len, capacity)?;
    // SAFETY: the region holds the header and `capacity` slots (checked by `region`).
    let ring = unsafe { RawRing::new(header, slots, capacity, keep) };
    let h = ring.header();
    let (head, tail) = (h.head.load(Acquire), h.tail.load(Acquire));
    ring.check(head, tail)?;
    Ok((ring, head, tail))
}

/// The writing end of a ring. Not `Clone`: there is exactly one producer.
pub struct Producer {
    ring: RawRing,
    /// Private copy of `tail`; always `cached_head..=cached_head + capacity`.
    tail: u64,
    /// Last `head` read from the consumer; reloaded only when the ring looks full.
    cached_head: u64,
}

impl fmt::Debug for Producer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.ring.capacity())
            .field("tail", &self.tail)
            .field("cached_head", &self.cached_head)
            .finish()
    }
}

impl Producer {
    fn from_raw(ring: RawRing, tail: u64, head: u64) -> Producer {
        Producer { ring, tail, cached_head: head }
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    /// Free slots, reloading the consumer's index.
    #[inline]
    pub fn free(&mut self) -> Result<u64, RingError> {
        self.reload_head()?;
        Ok(self.capacity() - (self.tail.wrapping_sub(self.cached_head)))
    }

    #[cold]
    fn reload_head(&mut self) -> Result<(), RingError> {
        // SYNC: Acquire pairs with the consumer's Release store of `head`:
        // it has finished copying out every slot below `head`, so we may
        // overwrite them.
        let head = self.ring.header().head.load(Acquire);
        // The consumer may only move `head` forward, up to our `tail`.
        if head.wrapping_sub(self.cached_head) > self.tail.wrapping_sub(self.cached_head) {
            return Err(RingError::Violation { head, tail: self.tail });
        }
        self.cached_head = head;
        Ok(())
    }

    /// Pushes one descriptor and publishes it at once.
    #[inline]
    pub fn push(&mut self, d: &Descriptor) -> Result<(), PushError> {
        if self.tail.wrapping_sub(self.cached_head) == self.capacity() {
            self.reload_head()?;
            if self.tail.wrapping_sub(self.cached_head) == self.capacity() {
                return Err(PushError::Full(*d));
            }
        }
        self.ring.slot(self.tail).publish(d, self.ring.stamp(self.tail));
        self.tail = self.tail.wrapping_add(1);
        // SYNC: Release keeps this store after the stamp's, so a consumer
        // that sees the new `tail` (Acquire) sees the stamp too.
        self.ring.header().tail.store(self.tail, Release);
        Ok(())
    }

    /// Pushes as many of `ds` as fit and publishes them with one index store.
    ///
    /// Returns how many were pushed (0 when full).
    #[inline]
    pub fn push_batch(&mut self, ds: &[Descriptor]) -> Result<usize, RingError> {
        let mut room = self.capacity() - (self.tail.wrapping_sub(self.cached_head));
        if room < ds.len() as u64 {
            self.reload_head()?;
            room = self.capacity() - (self.tail.wrapping_sub(self.cached_head));
        }
        let n = (room as usize).min(ds.len());
        // Locals, so that they stay in registers across the store blocks.
        let (slots, stores, mut tail) = (self.ring.slots, BatchStores::detect(), self.tail);
        for d in &ds[..n] {
            slots.slot(tail).publish_from_memory(d, slots.stamp(tail), stores);
            tail = tail.wrapping_add(1);
        }
        self.tail = tail;
        if n > 0 {
            // SYNC: as in `push`.
            self.ring.header().tail.store(self.tail, Release);
        }
        Ok(n)
    }

    /// Whether the consumer has parked and must be woken; if so, claims the
    /// wake-up (clears the flag) so that exactly one producer call rings.
    ///
    /// Call after publishing. The `SeqCst` fence is the producer half of a
    /// Dekker handshake: we store the stamp (and `tail`), fence, load
    /// `parked`; the consumer stores `parked`, fences, loads the stamp (and
    /// `tail`). Two SeqCst fences cannot both miss the other side's store,
    /// so either the consumer sees our descriptor before it sleeps, or we see
    /// it parked and wake it. Without the fence, our stores could sit in our
    /// store buffer while we read a stale `parked == 0`, and the consumer
    /// would sleep on a full ring (a lost wake-up). This is io_uring's
    /// `NEED_WAKEUP` protocol.
    #[inline]
    pub fn needs_wake(&self) -> bool {
        fence(SeqCst);
        let parked = &self.ring.header().parked;
        // Claim the wake-up with a CAS from the value seen rather than a
        // swap: equivalent here, and loom models it faithfully (its swap
        // does not order against a later store from the other thread,
        // tokio-rs/loom#254). Any non-zero value, even garbage from a
        // hostile peer, is claimed and cleared.
        let v = parked.load(Relaxed);
        v != 0 && parked.compare_exchange(v, 0, Relaxed, Relaxed).is_ok()
    }

    /// Rings `bell` if the consumer is parked. Call after a push or a batch.
    #[inline]
    pub fn notify<W: crate::doorbell::Wake + ?Sized>(&self, bell: &W) {
        if self.needs_wake() {
            bell.wake();
        }
    }
}

/// The reading end of a ring. Not `Clone`: there is exactly one consumer.
pub struct Consumer {
    ring: RawRing,
    /// Private copy of `head`.
    head: u64,
    /// The highest `tail` seen, or `head` if the stamps ran ahead of it.
    /// [`pop_batch`](Self::pop_batch) takes up to here without reloading it.
    cached_tail: u64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.ring.capacity())
            .field("head", &self.head)
            .field("cached_tail", &self.cached_tail)
            .finish()
    }
}

impl Consumer {
    fn from_raw(ring: RawRing, head: u64) -> Consumer {
        Consumer { ring, head, cached_tail: head }
    }

    /// Number of slots.
    #[inline]
    pub fn capacity(&self) -> u64 {
        self.ring.capacity()
    }

    /// Loads and checks the producer's `tail`: how many descriptors it says
    /// are ready at `head` (0 when it lags behind slots taken by stamp).
    #[inline]
    fn tail_ready(&mut self) -> Result<u64, RingError> {
        // SYNC: Acquire pairs with the producer's Release store of `tail`,
        // which follows its stamp stores: every slot below it is stamped.
        let tail = self.ring.header().tail.load(Acquire);
        let ahead = tail.wrapping_sub(self.head);
        if ahead <= self.capacity() {
            self.cached_tail = tail;
            return Ok(ahead);
        }
        // Behind `head`: we took slots by their stamps before the producer
        // stored `tail` (at most a batch, so at most `capacity`).
        if self.head.wrapping_sub(tail) <= self.capacity() {
            self.cached_tail = self.head;
            return Ok(0);
        }
        Err(RingError::Violation { head: self.head, tail })
    }

    /// The header word of the slot at `head` if it is ready; `None` if the ring is empty.
    ///
    /// The stamp decides. Only when it says "not yet" do we read `tail`: to
    /// catch a producer whose `tail` lies, and to close the race where the
    /// stamp landed between our two loads.
    #[inline]
    fn ready_header(&mut self) -> Result<Option<u64>, RingError> {
        if let Some(header) = self.ring.stamped(self.head) {
            return Ok(Some(header));
        }
        if self.tail_ready()? == 0 {
            return Ok(None);
        }
        // `tail` was loaded with Acquire after the producer stored the stamp
        // (it stores `tail` after the stamp): the stamp must be visible now.
        match self.ring.stamped(self.head) {
            Some(header) => Ok(Some(header)),
            None => Err(RingError::Unstamped { index: self.head, tail: self.cached_tail }),
        }
    }

    /// Descriptors the producer's `tail` says are ready.
    ///
    /// May lag behind [`pop`](Self::pop) by the last batch the producer is
    /// still publishing (then it says 0 although a descriptor is there).
    #[inline]
    pub fn len(&mut self) -> Result<u64, RingError> {
        self.tail_ready()
    }

    /// How many descriptors were taken off the ring so far (its `head`).
    #[inline]
    pub fn taken(&self) -> u64 {
        self.head
    }

    /// The position the producer has published up to: every descriptor
    /// pushed before the producer's last `tail` store this call sees is
    /// below it, so it is read once [`taken`](Self::taken) reaches it.
    #[inline]
    pub fn published(&mut self) -> Result<u64, RingError> {
        Ok(self.head.wrapping_add(self.tail_ready()?))
    }

    /// Whether nothing is ready.
    #[inline]
    pub fn is_empty(&mut self) -> Result<bool, RingError> {
        Ok(self.ready_header()?.is_none())
    }

    /// Consumes the `n` slots from `head` on, telling the producer.
    #[inline]
    fn advance(&mut self, n: u64) {
        self.head = self.head.wrapping_add(n);
        if self.cached_tail.wrapping_sub(self.head) > self.capacity() {
            // Taken by stamp, past the last `tail` seen.
            self.cached_tail = self.head;
        }
        // SYNC: Release tells the producer we are done with the slots; pairs
        // with its Acquire load of `head` in `reload_head`.
        self.ring.header().head.store(self.head, Release);
    }

    /// Copies out and consumes one descriptor, if any.
    ///
    /// The descriptor is unchecked: call [`Descriptor::check`] before acting on it.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<Descriptor>, RingError> {
        let Some(header) = self.ready_header()? else {
            return Ok(None);
        };
        let d = self.ring.slot(self.head).read(header);
        self.advance(1);
        Ok(Some(d))
    }

    /// Copies out up to `out.len()` descriptors and consumes them with one index store.
    ///
    /// Takes what the producer's `tail` says is ready (reloading it only
    /// when what it said last is used up), each slot checked against its
    /// stamp; returns how many (0 when empty). A bulk reader trails the
    /// producer by its last `tail` store instead of polling the slot it is
    /// writing: polling stamps at the producer's frontier would pull each
    /// line away from it mid-batch (measured: 0.57× the bare ring's
    /// throughput that way, against 0.92–0.95× this way).
    #[inline]
    pub fn pop_batch(&mut self, out: &mut [Descriptor]) -> Result<usize, RingError> {
        let mut ready = self.cached_tail.wrapping_sub(self.head);
        if ready < out.len() as u64 {
            ready = self.tail_ready()?;
        }
        if ready == 0 && !out.is_empty() {
            // `tail` (just checked) may not say yet what the stamps do: take one, as `pop`.
            let Some(header) = self.ring.stamped(self.head) else {
                return Ok(0);
            };
            out[0] = self.ring.slot(self.head).read(header);
            self.advance(1);
            return Ok(1);
        }
        let n = (ready as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            let index = self.head.wrapping_add(i as u64);
            let Some(header) = self.ring.stamped(index) else {
                return Err(RingError::Unstamped { index, tail: self.cached_tail });
            };
            *o = self.ring.slot(index).read(header);
        }
        if n > 0 {
            self.advance(n as u64);
        }
        Ok(n)
    }

    /// First half of parking: announces that the consumer is about to
    /// sleep, then re-checks the ring. Returns `true` if it is empty and the
    /// caller may sleep on the doorbell; `false` if descriptors arrived (the
    /// announcement is withdrawn). Call [`finish_park`](Self::finish_park)
    /// after waking.
    ///
    /// The `SeqCst` fence is the consumer half of the handshake described at
    /// [`Producer::needs_wake`]: the store of `parked` must be visible to the
    /// producer before we read the stamp, or a producer that published just
    /// before our read could miss the flag and never ring.
    pub fn prepare_park(&mut self) -> Result<bool, RingError> {
        self.ring.header().parked.store(1, Relaxed);
        fence(SeqCst);
        if self.is_empty()? {
            return Ok(true);
        }
        self.ring.header().parked.store(0, Relaxed);
        Ok(false)
    }

    /// Announces parking without looking at the ring: for a consumer that
    /// several waiters share, when one of them looked ([`prepare_park`](Self::prepare_park)),
    /// found data and so withdrew the announcement that another waiter,
    /// still asleep, relies on. The one that looked reads what it found.
    #[inline]
    pub fn stay_parked(&self) {
        self.ring.header().parked.store(1, Relaxed);
        fence(SeqCst);
    }

    /// Second half of parking: withdraws the announcement after waking.
    #[inline]
    pub fn finish_park(&self) {
        self.ring.header().parked.store(0, Relaxed);
    }

    /// Whether the consumer currently says it is parked (for tests and statistics).
    pub fn is_parked(&self) -> bool {
        self.ring.header().parked.load(Relaxed) != 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::descriptor::Kind;

    pub(crate) struct HeapRing {
        pub header: Box<RingHeader>,
        pub slots: Vec<Slot>,
    }

    fn heap(capacity: u64) -> (Producer, Consumer, Arc<HeapRing>) {
        let mem = Arc::new(HeapRing {
            header: Box::new(RingHeader::new(capacity)),
            slots: (0..capacity).map(|_| Slot::default()).collect(),
        });
        let h = NonNull::from(&*mem.header);
        let s = NonNull::new(mem.slots.as_ptr() as *mut Slot).unwrap();
        // SAFETY: `mem` is kept alive by the returned Arc and the keep-alive.
        let (p, c) = unsafe { Ring::from_parts(h, s, capacity, Some(mem.clone())) }.unwrap();
        (p, c, mem)
    }

    fn d(i: u64) -> Descriptor {
        Descriptor::new(Kind::Fire, 1, i)
    }

    #[test]
    fn fifo_and_full() {
        let (mut p, mut c, _m) = heap(4);
        for i in 0..4 {
            p.push(&d(i)).unwrap();
        }
        assert_eq!(p.push(&d(9)), Err(PushError::Full(d(9))));
        for i in 0..4 {
            assert_eq!(c.pop().unwrap().unwrap().correlation, i);
        }
        assert_eq!(c.pop().unwrap(), None);
        p.push(&d(4)).unwrap();
        assert_eq!(c.pop().unwrap().unwrap().correlation, 4);
    }

    #[test]
    fn batches_wrap_around() {
        let (mut p, mut c, _m) = heap(8);
        let mut next = 0;
        let mut expect = 0;
        let mut buf = [d(0); 5];
        for _ in 0..100 {
            let batch: Vec<_> = (next..next + 5).map(d).collect();
            let n = p.push_batch(&batch).unwrap();
            next += n as u64;
            let m = c.pop_batch(&mut buf).unwrap();
            for x in &buf[..m] {
                assert_eq!(x.correlation, expect);
                expect += 1;
            }
        }
        assert!(expect > 300);
    }

    #[test]
    fn bad_capacity() {
        let h = RingHeader::new(3);
        let s = [Slot::default(), Slot::default(), Slot::default()];
        // SAFETY: locals outlive the (failed) call.
        let r = unsafe { Ring::from_parts(NonNull::from(&h), NonNull::from(&s[0]), 3, None) };
        assert!(matches!(r, Err(RingError::BadCapacity(3))));
    }

    #[test]
    fn park_handshake_withdraws_when_not_empty() {
        let (mut p, mut c, _m) = heap(4);
        assert!(c.prepare_park().unwrap());
        assert!(c.is_parked());
        p.push(&d(1)).unwrap();
        assert!(p.needs_wake(), "parked consumer must be woken");
        assert!(!p.needs_wake(), "the wake-up is claimed once");
        c.finish_park();
        assert!(!c.prepare_park().unwrap(), "ring not empty: do not sleep");
        assert!(!c.is_parked());
    }
}
