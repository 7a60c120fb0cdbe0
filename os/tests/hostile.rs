//! A hostile peer cannot make the other side read out of bounds, loop
//! forever or panic.
//!
//! Each test builds rings in a real sealed memfd [`Segment`] and then plays
//! the hostile side by writing the shared control words and slots directly
//! through raw pointers into the mapping, the way another process with a
//! writable mapping could. The honest side must report the exact error
//! ([`RingError::Violation`], [`RingError::BadCapacity`], a
//! [`DescriptorError`] or a [`HeaderError`]) and nothing worse.
#![cfg(not(loom))]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hybus_layout::descriptor::{flags, DescriptorError, INLINE_CAPACITY};
use hybus_layout::header::{HeaderError, HEADER_REGION, LAYOUT_HASH, MAGIC};
use hybus_layout::ring::{self, MAX_CAPACITY};
use hybus_layout::{
    Consumer, Descriptor, IdleStrategy, Kind, Producer, PushError, Ring, RingError, SegmentKind, Wake, ABI_VERSION,
};
use hybus_os::segment::{Access, EventFd, Segment, SegmentError};

/// Offsets of the ring's shared words from the ring's base (asserted in `ring.rs`).
const CAPACITY: usize = 0;
const TAIL: usize = 128;
const HEAD: usize = 256;
const PARKED: usize = 384;
const SLOTS: usize = 512;
const SLOT_SIZE: usize = 64;

/// Offsets of the segment header's words (asserted in `header.rs`).
const H_MAGIC: usize = 0;
const H_LAYOUT_HASH: usize = 8;
const H_SIZE: usize = 16;
const H_ABI_VERSION: usize = 24;
const H_KIND: usize = 28;

/// Generous bound for anything that must not hang; never a timing assertion.
const DEADLINE: Duration = Duration::from_secs(10);

/// The hostile side's view of a segment: raw writes at byte offsets.
struct Hostile {
    seg: Arc<Segment>,
}

impl Hostile {
    fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset + 8 <= self.seg.len());
        // SAFETY: the offset is 8-aligned (the mapping is page-aligned) and in
        // bounds (asserted above); the mapping lives as long as `self.seg`,
        // and every word of a segment is only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.seg.as_ptr().as_ptr().add(offset).cast()) }
    }

    fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= self.seg.len());
        // SAFETY: as in `u64_at`, for a 4-aligned 32-bit word.
        unsafe { AtomicU32::from_ptr(self.seg.as_ptr().as_ptr().add(offset).cast()) }
    }

    /// A word of the ring whose header starts at `HEADER_REGION`.
    fn ring_word(&self, offset: usize) -> &AtomicU64 {
        self.u64_at(HEADER_REGION + offset)
    }

    fn set_capacity(&self, v: u64) {
        self.ring_word(CAPACITY).store(v, SeqCst);
    }

    fn set_tail(&self, v: u64) {
        self.ring_word(TAIL).store(v, SeqCst);
    }

    fn set_head(&self, v: u64) {
        self.ring_word(HEAD).store(v, SeqCst);
    }

    fn parked(&self) -> &AtomicU32 {
        self.u32_at(HEADER_REGION + PARKED)
    }

    /// Writes raw words into slot `i` (not masked: the caller keeps it in range).
    fn write_slot(&self, i: usize, words: [u64; 8]) {
        for (w, v) in words.into_iter().enumerate() {
            self.ring_word(SLOTS + i * SLOT_SIZE + w * 8).store(v, SeqCst);
        }
    }
}

/// A ClientRings segment holding one ring of `cap` slots at `HEADER_REGION`.
fn ring_segment(cap: u64) -> Arc<Segment> {
    let size = HEADER_REGION + ring::memory_size(cap);
    Arc::new(Segment::create(c"x", SegmentKind::ClientRings, size, cap).expect("memfd segment"))
}

/// A fresh ring of `cap` slots, both honest ends, and the hostile view of its memory.
fn setup(cap: u64) -> (Producer, Consumer, Hostile) {
    let seg = ring_segment(cap);
    let (p, c) = seg.init_ring(HEADER_REGION, cap).expect("init ring");
    (p, c, Hostile { seg })
}

fn d(i: u64) -> Descriptor {
    Descriptor::new(Kind::Fire, 3, i).with_aux(!i).with_inline(&i.to_le_bytes()).expect("8 bytes fit inline")
}

fn violation(head: u64, tail: u64) -> RingError {
    RingError::Violation { head, tail }
}

/// The header word of a descriptor on the wire (word 7 of its slot):
/// `kind | flags << 8 | inline_len << 16 | stamp << 24 | route << 32`, stamp 0.
fn header(kind: u8, flags: u8, inline_len: u8, route: u32) -> u64 {
    kind as u64 | (flags as u64) << 8 | (inline_len as u64) << 16 | (route as u64) << 32
}

/// Index of the header word in a slot.
const HEADER: usize = 7;

/// `header` with the lap stamp that marks the slot of `index` in a ring of `cap` slots as written.
fn stamped(header: u64, index: u64, cap: u64) -> u64 {
    let stamp = (index >> cap.trailing_zeros()) as u8 | 0x80;
    header & !(0xff << 24) | (stamp as u64) << 24
}

/// xorshift64: deterministic garbage.
fn garbage(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

// ---------------------------------------------------------------- consumer side

#[test]
fn tail_more_than_capacity_ahead_is_a_violation() {
    let (_p, mut c, evil) = setup(4);
    evil.set_tail(5);
    assert_eq!(c.pop(), Err(violation(0, 5)));
    assert_eq!(c.len(), Err(violation(0, 5)));
    assert_eq!(c.is_empty(), Err(violation(0, 5)));
    let mut out = [d(0); 4];
    assert_eq!(c.pop_batch(&mut out), Err(violation(0, 5)));
    assert_eq!(c.prepare_park(), Err(violation(0, 5)));

    // Far ahead, after some honest traffic.
    let (mut p, mut c, evil) = setup(4);
    for i in 0..3 {
        p.push(&d(i)).unwrap();
        assert_eq!(c.pop(), Ok(Some(d(i))));
    }
    evil.set_tail(3 + (1 << 40));
    assert_eq!(c.pop(), Err(violation(3, 3 + (1 << 40))));
}

#[test]
fn tail_ahead_of_unstamped_slots_is_a_violation() {
    // Within the invariant (a full ring), but the slots were never written:
    // their stamps give the lie away, on every path that reads `tail`.
    let (_p, mut c, evil) = setup(4);
    evil.set_tail(4);
    let unstamped = RingError::Unstamped { index: 0, tail: 4 };
    let mut out = [d(0); 8];
    assert_eq!(c.pop_batch(&mut out), Err(unstamped));
    assert_eq!(c.pop(), Err(unstamped));
    assert_eq!(c.is_empty(), Err(unstamped));
    assert_eq!(c.prepare_park(), Err(unstamped));

    // Slots of the previous lap carry the previous stamp: not taken either.
    let (mut p, mut c, evil) = setup(4);
    for i in 0..4 {
        p.push(&d(i)).unwrap();
        assert_eq!(c.pop(), Ok(Some(d(i))));
    }
    evil.set_tail(6);
    assert_eq!(c.pop_batch(&mut out), Err(RingError::Unstamped { index: 4, tail: 6 }));
}

#[test]
fn tail_far_behind_head_is_a_violation() {
    let (mut p, mut c, evil) = setup(4);
    for i in 0..3 {
        p.push(&d(i)).unwrap();
    }
    for i in 0..3 {
        assert_eq!(c.pop(), Ok(Some(d(i))));
    }
    // More than a lap below head: no honest lag explains it.
    evil.set_tail(u64::MAX - 5);
    assert_eq!(c.pop(), Err(violation(3, u64::MAX - 5)));
    assert_eq!(c.len(), Err(violation(3, u64::MAX - 5)));
    let mut out = [d(0); 2];
    assert_eq!(c.pop_batch(&mut out), Err(violation(3, u64::MAX - 5)));
    // "Negative" from the start.
    let (_p, mut c, evil) = setup(8);
    evil.set_tail(u64::MAX - 8);
    assert_eq!(c.pop(), Err(violation(0, u64::MAX - 8)));
}

#[test]
fn tail_lagging_behind_stamps_reads_as_empty() {
    // `pop` takes slots by their stamps, so `tail` may trail `head` by up to
    // a lap (the producer stores it after the stamps). Within that window a
    // `tail` going back is harmless: nothing is read twice, nothing waits on it.
    let (mut p, mut c, evil) = setup(4);
    for i in 0..3 {
        p.push(&d(i)).unwrap();
        assert_eq!(c.pop(), Ok(Some(d(i))));
    }
    evil.set_tail(0);
    assert_eq!(c.pop(), Ok(None));
    assert_eq!(c.len(), Ok(0));
    assert_eq!(c.is_empty(), Ok(true));
    let mut out = [d(0); 4];
    assert_eq!(c.pop_batch(&mut out), Ok(0));
    // The producer goes on; its next `tail` store heals the view.
    p.push(&d(3)).unwrap();
    assert_eq!(c.pop_batch(&mut out), Ok(1));
    assert_eq!(out[0], d(3));
}

#[test]
fn cached_descriptors_come_out_before_the_violation_is_seen() {
    // The consumer reloads `tail` only when its cached view is drained: what
    // it had already validated is still delivered, then the lie is caught.
    let (mut p, mut c, evil) = setup(4);
    p.push(&d(0)).unwrap();
    p.push(&d(1)).unwrap();
    assert_eq!(c.pop(), Ok(Some(d(0)))); // caches tail = 2
    evil.set_tail(100);
    assert_eq!(c.pop(), Ok(Some(d(1))));
    assert_eq!(c.pop(), Err(violation(2, 100)));
}

// ---------------------------------------------------------------- producer side

#[test]
fn head_past_tail_is_a_violation_when_the_ring_looks_full() {
    let (mut p, _c, evil) = setup(4);
    for i in 0..4 {
        p.push(&d(i)).unwrap();
    }
    // The consumer claims to have read more than was ever written.
    evil.set_head(5);
    assert_eq!(p.push(&d(4)), Err(PushError::Ring(violation(5, 4))));
    assert_eq!(p.push_batch(&[d(4), d(5)]), Err(violation(5, 4)));
    assert_eq!(p.free(), Err(violation(5, 4)));
    evil.set_head(u64::MAX);
    assert_eq!(p.push(&d(4)), Err(PushError::Ring(violation(u64::MAX, 4))));
}

#[test]
fn head_moving_backwards_is_a_violation() {
    let (mut p, mut c, evil) = setup(4);
    for i in 0..4 {
        p.push(&d(i)).unwrap();
    }
    assert_eq!(c.pop(), Ok(Some(d(0))));
    assert_eq!(c.pop(), Ok(Some(d(1))));
    p.push(&d(4)).unwrap(); // reloads head = 2
    p.push(&d(5)).unwrap();
    // Head goes back below what the producer already saw.
    evil.set_head(1);
    assert_eq!(p.push(&d(6)), Err(PushError::Ring(violation(1, 6))));
    assert_eq!(p.free(), Err(violation(1, 6)));
}

#[test]
fn honest_head_inside_the_window_is_accepted() {
    let (mut p, _c, evil) = setup(4);
    for i in 0..4 {
        p.push(&d(i)).unwrap();
    }
    evil.set_head(4); // the consumer read everything
    assert_eq!(p.free(), Ok(4));
    assert_eq!(p.push_batch(&[d(4), d(5), d(6), d(7), d(8)]), Ok(4));
    assert_eq!(p.push(&d(9)), Err(PushError::Full(d(9))));
}

// ---------------------------------------------------------------- capacity word

#[test]
fn capacity_rewritten_after_attach_does_not_matter() {
    for bad in [0, 3, u64::MAX, 1 << 40, 8] {
        let (mut p, mut c, evil) = setup(4);
        evil.set_capacity(bad);
        // Three laps around the ring: every index stays masked by the
        // private capacity, FIFO order holds, and full is still at 4.
        let mut next = 0;
        for _ in 0..3 {
            for _ in 0..4 {
                p.push(&d(next)).unwrap();
                next += 1;
            }
            assert_eq!(p.push(&d(99)), Err(PushError::Full(d(99))));
            for k in (next - 4)..next {
                assert_eq!(c.pop(), Ok(Some(d(k))));
            }
            assert_eq!(c.pop(), Ok(None));
        }
        assert_eq!(p.capacity(), 4);
        assert_eq!(c.capacity(), 4);
    }
}

#[test]
fn capacity_garbage_before_attach_is_refused() {
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    let evil = Hostile { seg: seg.clone() };
    for bad in [0, 3, 6, u64::MAX, 1 << 40, MAX_CAPACITY * 2] {
        evil.set_capacity(bad);
        assert!(
            matches!(
                seg.ring_consumer(HEADER_REGION, 4),
                Err(SegmentError::Ring(RingError::BadCapacity(c))) if c == bad
            ),
            "capacity {bad} accepted by ring_consumer"
        );
        assert!(
            matches!(
                seg.ring_producer(HEADER_REGION, 4),
                Err(SegmentError::Ring(RingError::BadCapacity(c))) if c == bad
            ),
            "capacity {bad} accepted by ring_producer"
        );
        let base = seg.as_ptr().as_ptr().wrapping_add(HEADER_REGION);
        let base = std::ptr::NonNull::new(base).unwrap();
        // SAFETY: the region lies inside the mapping, which `seg` keeps alive
        // for the duration of the (failing) call.
        let r = unsafe { Ring::attach_consumer(base, ring::memory_size(4), None) };
        assert_eq!(r.err(), Some(RingError::BadCapacity(bad)));
    }
    // A valid power of two that does not match what the caller expects.
    evil.set_capacity(2);
    assert!(matches!(seg.ring_consumer(HEADER_REGION, 4), Err(SegmentError::Ring(RingError::BadCapacity(2)))));
    // Larger than the memory the caller set aside for it.
    evil.set_capacity(8);
    assert!(matches!(
        seg.ring_consumer(HEADER_REGION, 4),
        Err(SegmentError::Ring(RingError::BadRegion { needed, len }))
            if needed == ring::memory_size(8) && len == ring::memory_size(4)
    ));
}

#[test]
fn inconsistent_indices_before_attach_are_refused() {
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    let evil = Hostile { seg: seg.clone() };
    for (head, tail) in [(0, 5), (7, 2), (0, u64::MAX), (u64::MAX, 10)] {
        evil.set_head(head);
        evil.set_tail(tail);
        assert!(matches!(
            seg.ring_consumer(HEADER_REGION, 4),
            Err(SegmentError::Ring(RingError::Violation { head: h, tail: t })) if (h, t) == (head, tail)
        ));
        assert!(matches!(
            seg.ring_producer(HEADER_REGION, 4),
            Err(SegmentError::Ring(RingError::Violation { head: h, tail: t })) if (h, t) == (head, tail)
        ));
    }
}

#[test]
fn ring_outside_the_segment_is_refused() {
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    for offset in [HEADER_REGION + 128, HEADER_REGION + 1, seg.len()] {
        assert!(matches!(seg.ring_consumer(offset, 4), Err(SegmentError::BadSize { .. })), "offset {offset}");
    }
}

#[test]
fn absurd_expected_capacity_is_refused() {
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    for cap in [0, 3, 8, MAX_CAPACITY * 2, 1 << 40] {
        assert!(seg.ring_consumer(HEADER_REGION, cap).is_err(), "capacity {cap}");
        assert!(seg.ring_producer(HEADER_REGION, cap).is_err(), "capacity {cap}");
        assert!(seg.init_ring(HEADER_REGION, cap).is_err(), "capacity {cap}");
    }
}

// The three tests below pass in release builds (where integer overflow
// wraps) but panic with "attempt to ... with overflow" in debug builds, a
// panic on peer-controlled input. Un-ignore them once `ring.rs` uses
// wrapping index arithmetic and `memory_size` / `Segment::ring_region`
// saturate.

#[test]
fn ring_offset_near_usize_max_is_refused() {
    let seg = ring_segment(4);
    for offset in [usize::MAX - 127, usize::MAX & !127] {
        assert!(matches!(seg.ring_consumer(offset, 4), Err(SegmentError::BadSize { .. })), "offset {offset}");
    }
}

#[test]
fn capacity_that_overflows_memory_size_is_refused() {
    // The capacity a caller expects may itself come from peer-written memory
    // (the segment header's `param`): it must be refused, not overflow.
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    for cap in [1 << 58, (1 << 63) + 4, u64::MAX] {
        assert!(seg.ring_consumer(HEADER_REGION, cap).is_err(), "capacity {cap}");
        assert!(seg.ring_producer(HEADER_REGION, cap).is_err(), "capacity {cap}");
        assert!(seg.init_ring(HEADER_REGION, cap).is_err(), "capacity {cap}");
    }
}

#[test]
fn indices_near_u64_max_at_attach_still_work() {
    // A peer that prepares the ring may start the free-running counters
    // anywhere, as long as they are consistent (attach accepts them).
    // Crossing 2^64 must neither panic nor break FIFO order.
    let seg = ring_segment(4);
    let (_p, _c) = seg.init_ring(HEADER_REGION, 4).unwrap();
    let evil = Hostile { seg: seg.clone() };
    let start = u64::MAX - 5;
    evil.set_head(start);
    evil.set_tail(start);
    let mut p = seg.ring_producer(HEADER_REGION, 4).unwrap();
    let mut c = seg.ring_consumer(HEADER_REGION, 4).unwrap();
    let mut out = [d(0); 3];
    let mut expect = 0;
    for i in 0..12 {
        p.push(&d(i)).unwrap();
        if i % 3 == 2 {
            let n = c.pop_batch(&mut out).unwrap();
            for x in &out[..n] {
                assert_eq!(*x, d(expect));
                expect += 1;
            }
        }
    }
    assert_eq!(expect, 12);
    assert_eq!(p.free(), Ok(4));
    assert_eq!(c.pop(), Ok(None));
}

// ---------------------------------------------------------------- slots

#[test]
fn garbage_slots_are_rejected_by_check_never_trusted() {
    let (_p, mut c, evil) = setup(8);
    let credit_with_payload = header(Kind::Credit as u8, 0, 3, 1);
    let crafted: [(u64, DescriptorError); 5] = [
        (header(200, 0, 0, 1), DescriptorError::UnknownKind(200)),
        (header(0, 0, 0, 1), DescriptorError::UnknownKind(0)),
        (header(Kind::Fire as u8, 0x80, 0, 1), DescriptorError::UnknownFlags(0x80)),
        (header(Kind::Fire as u8, 0, 255, 1), DescriptorError::InlineTooLong(255)),
        (credit_with_payload, DescriptorError::UnexpectedPayload(Kind::Credit)),
    ];
    for (i, (h, _)) in crafted.iter().enumerate() {
        let h = stamped(*h, i as u64, 8);
        evil.write_slot(i, [1, 2, u64::MAX, u64::MAX, u64::MAX, u64::MAX, u64::MAX, h]);
    }
    evil.set_tail(crafted.len() as u64);
    for (_, expected) in crafted {
        let got = c.pop().expect("indices are honest").expect("published");
        assert_eq!(got.check(), Err(expected));
        assert!(got.inline().len() <= INLINE_CAPACITY, "inline() is clamped");
        let _ = format!("{got:?}");
    }
    assert_eq!(c.pop(), Ok(None));
}

#[test]
fn random_garbage_slots_never_panic() {
    let (_p, mut c, evil) = setup(8);
    let mut state = 0x2545_f491_4f6c_dd1d;
    let mut tail = 0u64;
    let mut out = [d(0); 8];
    let rounds = if cfg!(miri) { 20 } else { 2_000 };
    for _ in 0..rounds {
        let n = (garbage(&mut state) % 9) as usize; // 0..=8, within the invariant
        for k in 0..n {
            let mut w = [0u64; 8];
            for v in &mut w {
                *v = garbage(&mut state);
            }
            if k % 3 == 0 {
                // Mostly valid kinds, so that the later checks get exercised too.
                w[HEADER] = (w[HEADER] & !0xff) | (1 + garbage(&mut state) % 12);
            }
            // Garbage, but published: stamped for its index.
            w[HEADER] = stamped(w[HEADER], tail + k as u64, 8);
            evil.write_slot(((tail + k as u64) % 8) as usize, w);
        }
        tail += n as u64;
        evil.set_tail(tail);
        let got = c.pop_batch(&mut out).expect("indices are honest");
        assert_eq!(got, n);
        for x in &out[..got] {
            let _ = x.check();
            let _ = x.chunk();
            assert!(x.inline().len() <= INLINE_CAPACITY);
            if x.flags & flags::CHUNK != 0 {
                assert!(x.inline().is_empty());
            }
        }
    }
}

// ---------------------------------------------------------------- parked word

#[test]
fn garbage_in_parked_costs_at_most_one_spurious_wake() {
    let (mut p, _c, evil) = setup(4);
    p.push(&d(0)).unwrap();
    evil.parked().store(0xdead_beef, SeqCst);
    assert!(p.needs_wake(), "any non-zero value means parked");
    assert!(!p.needs_wake(), "and the claim clears it");
    assert_eq!(evil.parked().load(SeqCst), 0);
}

// ---------------------------------------------------------------- Consumer::wait

#[test]
fn wait_with_hostile_tail_returns_err_at_once() {
    let (_p, mut c, evil) = setup(4);
    let bell = EventFd::new().unwrap();
    evil.set_tail(u64::MAX - 100);
    let r = c.wait(&IdleStrategy::DEFAULT, &bell, Some(Instant::now() + DEADLINE));
    assert_eq!(r, Err(violation(0, u64::MAX - 100)));
}

/// Writes a hostile tail after `delay`, from another thread, ringing `bell` if given.
fn hostile_tail_later(
    seg: Arc<Segment>,
    tail: u64,
    delay: Duration,
    bell: Option<Arc<EventFd>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(delay);
        Hostile { seg }.set_tail(tail);
        if let Some(b) = bell {
            b.wake();
        }
    })
}

#[test]
fn parked_wait_sees_hostile_tail_after_wake() {
    let (_p, mut c, evil) = setup(4);
    let bell = Arc::new(EventFd::new().unwrap());
    let t = hostile_tail_later(evil.seg.clone(), 9, Duration::from_millis(50), Some(bell.clone()));
    let start = Instant::now();
    let r = c.wait(&IdleStrategy::PARK, &*bell, Some(start + DEADLINE));
    t.join().unwrap();
    assert_eq!(r, Err(violation(0, 9)));
    assert!(start.elapsed() < DEADLINE, "woken by the bell, not the deadline");
}

#[test]
fn parked_wait_sees_hostile_tail_even_without_a_wake() {
    // The peer lies and never rings: the consumer sleeps to its deadline,
    // then re-checks the ring and still reports the lie (not `TimedOut`).
    let (_p, mut c, evil) = setup(4);
    let bell = EventFd::new().unwrap();
    let t = hostile_tail_later(evil.seg.clone(), 1 << 50, Duration::from_millis(30), None);
    let r = c.wait(&IdleStrategy::PARK, &bell, Some(Instant::now() + Duration::from_millis(300)));
    t.join().unwrap();
    assert_eq!(r, Err(violation(0, 1 << 50)));
}

#[test]
fn spinning_wait_sees_hostile_tail() {
    // BUSY never parks: without the index check it would spin forever.
    let (_p, mut c, evil) = setup(4);
    let bell = EventFd::new().unwrap();
    let t = hostile_tail_later(evil.seg.clone(), 6, Duration::from_millis(20), None);
    let r = c.wait(&IdleStrategy::BUSY, &bell, Some(Instant::now() + DEADLINE));
    t.join().unwrap();
    assert_eq!(r, Err(violation(0, 6)));
}

#[test]
fn default_wait_sees_hostile_tail_written_while_it_parks() {
    let (_p, mut c, evil) = setup(4);
    let bell = Arc::new(EventFd::new().unwrap());
    let t = hostile_tail_later(evil.seg.clone(), u64::MAX - 100, Duration::from_millis(30), Some(bell.clone()));
    let r = c.wait(&IdleStrategy::DEFAULT, &*bell, Some(Instant::now() + DEADLINE));
    t.join().unwrap();
    assert_eq!(r, Err(violation(0, u64::MAX - 100)));
}

// ---------------------------------------------------------------- segment header

/// A second descriptor of the same memfd, as a peer would receive it.
fn dup(seg: &Segment) -> OwnedFd {
    seg.fd().try_clone_to_owned().expect("dup")
}

fn corrupt_and_open(corrupt: impl FnOnce(&Hostile)) -> Result<(), SegmentError> {
    let seg = ring_segment(4);
    let evil = Hostile { seg: seg.clone() };
    corrupt(&evil);
    Segment::open(dup(&seg), Access::ReadWrite, SegmentKind::ClientRings).map(|_| ())
}

#[test]
fn untouched_segment_opens() {
    let seg = ring_segment(4);
    let (view, info) =
        Segment::open(dup(&seg), Access::ReadWrite, SegmentKind::ClientRings).expect("a valid segment opens");
    assert_eq!(info.param, 4);
    assert_eq!(view.len(), seg.len());
}

#[test]
fn bad_magic_is_refused() {
    let r = corrupt_and_open(|e| e.u64_at(H_MAGIC).store(0x1234, SeqCst));
    assert!(matches!(r, Err(SegmentError::Header(HeaderError::BadMagic(0x1234)))));
    let r = corrupt_and_open(|e| e.u64_at(H_MAGIC).store(MAGIC.swap_bytes(), SeqCst));
    assert!(matches!(r, Err(SegmentError::Header(HeaderError::BadMagic(m))) if m == MAGIC.swap_bytes()));
}

#[test]
fn wrong_size_is_refused() {
    let len = (HEADER_REGION + ring::memory_size(4)) as u64;
    for lie in [0, len - 1, len + 4096, u64::MAX] {
        let r = corrupt_and_open(|e| e.u64_at(H_SIZE).store(lie, SeqCst));
        assert!(
            matches!(
                r,
                Err(SegmentError::Header(HeaderError::SizeMismatch { header, mapping }))
                    if header == lie && mapping as u64 == len
            ),
            "size {lie}: {r:?}"
        );
    }
}

#[test]
fn wrong_kind_is_refused() {
    for bad in [0, SegmentKind::Pool as u32, SegmentKind::Channel as u32, 77, u32::MAX] {
        let r = corrupt_and_open(|e| e.u32_at(H_KIND).store(bad, SeqCst));
        assert!(
            matches!(
                r,
                Err(SegmentError::Header(HeaderError::WrongKind {
                    found,
                    expected: SegmentKind::ClientRings
                })) if found == bad
            ),
            "kind {bad}: {r:?}"
        );
    }
}

#[test]
fn wrong_layout_hash_is_refused() {
    let r = corrupt_and_open(|e| e.u64_at(H_LAYOUT_HASH).store(LAYOUT_HASH ^ 1, SeqCst));
    assert!(matches!(
        r,
        Err(SegmentError::Header(HeaderError::LayoutHash { found, expected }))
            if found == LAYOUT_HASH ^ 1 && expected == LAYOUT_HASH
    ));
}

#[test]
fn wrong_abi_version_is_refused() {
    let r = corrupt_and_open(|e| e.u32_at(H_ABI_VERSION).store(ABI_VERSION + 1, SeqCst));
    assert!(matches!(
        r,
        Err(SegmentError::Header(HeaderError::AbiVersion { found, expected }))
            if found == ABI_VERSION + 1 && expected == ABI_VERSION
    ));
}

#[test]
fn unsealed_or_tiny_memfds_are_refused() {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};

    // A peer that kept the right to shrink the file could SIGBUS us.
    let fd = memfd_create(c"evil", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, 8192).unwrap();
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW)).unwrap();
    assert!(matches!(Segment::open(fd, Access::ReadOnly, SegmentKind::Pool), Err(SegmentError::NotSealed { .. })));

    // Sealed, but smaller than a header.
    let fd = memfd_create(c"tiny", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, 100).unwrap();
    fcntl(&fd, FcntlArg::F_ADD_SEALS(hybus_os::segment::REQUIRED_SEALS)).unwrap();
    assert!(matches!(Segment::open(fd, Access::ReadOnly, SegmentKind::Pool), Err(SegmentError::BadSize { size: 100 })));
}

#[test]
fn header_rewritten_after_open_is_not_reread() {
    let seg = ring_segment(4);
    let (view, info) = Segment::open(dup(&seg), Access::ReadWrite, SegmentKind::ClientRings).unwrap();
    let evil = Hostile { seg: seg.clone() };
    evil.u64_at(H_MAGIC).store(0, SeqCst);
    evil.u64_at(H_SIZE).store(u64::MAX, SeqCst);
    // The validated copy is private; the view is still the length it was mapped with.
    assert_eq!(info.size, seg.len() as u64);
    assert_eq!(view.len(), seg.len());
    assert!(view.bytes(seg.len() as u64 - 8, 16).is_none());
}
