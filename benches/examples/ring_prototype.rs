//! Prototype of two changes to `shm-layout/src/ring.rs` (and `descriptor.rs`),
//! measured beside the current ring and this machine's floors in one run,
//! through one harness.
//!
//! ```text
//! cargo run --release -p hybus-benches --example ring_prototype [RUNS]
//! ```
//!
//! * **A — wide slot copies** (throughput). `Slot::store`/`Slot::load` move a
//!   descriptor as eight 8-byte atomic stores/loads. A producer streaming to
//!   another core is bound by how many cache-line ownership requests it has
//!   in flight, and each line holds 8 store-queue entries instead of 4 with
//!   16-byte moves (the bare ring's `[u64; 8]` copy), so the queue covers half
//!   as many lines; the consumer's longer loop likewise keeps fewer line
//!   fills in flight. The prototype moves each slot with four 16-byte
//!   loads/stores (SSE2, baseline on x86_64). In `shm-layout` this would be
//!   an `asm!` block (outside the abstract machine, so a racing peer gives a
//!   torn value, never undefined behaviour, exactly as with atomics), with
//!   the atomic path kept for other targets and for loom.
//! * **B — a lap stamp in each slot** (latency). Today the consumer learns of
//!   a descriptor from `tail` and then reads the slot: two cache lines, one
//!   after the other, per message. The prototype writes a lap stamp in the
//!   unused byte 3 of slot word 0 (`to_words` leaves it zero and
//!   `from_words` ignores it), and stores word 0 last, with Release; `pop`
//!   polls that word, so a waiting consumer takes one line transfer per
//!   message, like the cache-line floor. `tail` is still stored after the
//!   stamps (for `pop_batch`, `len` and the park handshake), so it may lag a
//!   consumer that popped by stamp by up to one batch; `pop_batch` treats
//!   that lag as "nothing more ready" instead of a violation.
//!
//! Everything else is the current ring: the same indices, caching and
//! checks, `to_words`/`from_words`, the same header offsets.
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::Arc;
use std::time::Instant;

use hybus_benches::{bare_ring_throughput_2p, cacheline_pingpong_2p, BenchError, ChildProcess, Percentiles, SharedMap};
use hybus_layout::header::HEADER_REGION;
use hybus_layout::ring::{self, Consumer, Producer, PushError, RingError};
use hybus_layout::segment::Segment;
use hybus_layout::{Descriptor, Kind, SegmentKind};

const PINGPONG_CAPACITY: u64 = 256;
const STREAM_CAPACITY: u64 = 1024;
const ROUND_TRIPS: u64 = 50_000;
const WARMUP: u64 = 1_000;
const DESCRIPTORS: u64 = 5_000_000;
const BATCH: usize = 64;

// ---------------------------------------------------------------- prototype

/// Byte 3 of word 0: unused by `Descriptor::to_words`, ignored by `from_words`.
const STAMP_MASK: u64 = 0xff << 24;

/// Stamp of the descriptor at index `i` (change B): the low 7 bits of its lap with the
/// top bit set, so that two consecutive laps of one slot differ and a zeroed
/// slot matches no lap. (The producer is never more than one lap ahead.)
#[inline]
fn stamp(i: u64, shift: u32) -> u64 {
    (((i >> shift) & 0x7f) | 0x80) << 24
}

/// The current `RingHeader` offsets: tail at 128, head at 256, slots at 512.
struct ProtoRing {
    map: SharedMap,
    mask: u64,
    shift: u32,
    stamped: bool,
}

#[derive(Clone, Copy)]
struct ProtoEnds<'a> {
    tail_word: &'a AtomicU64,
    head_word: &'a AtomicU64,
    slots: *const [AtomicU64; 8],
    mask: u64,
    shift: u32,
    /// Whether change B is on (change A always is).
    stamped: bool,
}

impl ProtoRing {
    fn new(capacity: u64, stamped: bool) -> Result<ProtoRing, BenchError> {
        Ok(ProtoRing {
            map: SharedMap::new(ring::memory_size(capacity))?,
            mask: capacity - 1,
            shift: capacity.trailing_zeros(),
            stamped,
        })
    }

    fn ends(&self) -> (ProtoProducer<'_>, ProtoConsumer<'_>) {
        let base = self.map.as_ptr().as_ptr();
        // SAFETY: the mapping holds `memory_size(capacity)` zeroed,
        // page-aligned bytes: the two words and the slots are in bounds,
        // aligned, and atomics (valid when zeroed).
        let raw = unsafe {
            ProtoEnds {
                tail_word: &*(base.add(128) as *const AtomicU64),
                head_word: &*(base.add(256) as *const AtomicU64),
                slots: base.add(512) as *const [AtomicU64; 8],
                mask: self.mask,
                shift: self.shift,
                stamped: self.stamped,
            }
        };
        (ProtoProducer { raw, tail: 0, cached_head: 0 }, ProtoConsumer { raw, head: 0, cached_tail: 0 })
    }
}

impl ProtoEnds<'_> {
    #[inline]
    fn slot(&self, i: u64) -> &[AtomicU64; 8] {
        // SAFETY: masked, so inside the slots of the mapping.
        unsafe { &*self.slots.add((i & self.mask) as usize) }
    }
}

/// Change A: copies `w[words]` into the slot with 16-byte stores (`words` is even-aligned).
#[inline]
fn copy_words_in(s: &[AtomicU64; 8], w: &[u64; 8], words: std::ops::Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
        let dst = s.as_ptr() as *mut __m128i;
        let src = w.as_ptr() as *const __m128i;
        for k in words.start / 2..words.end / 2 {
            // SAFETY: in bounds of the 64-byte slot and of `w`. A prototype:
            // a plain store to memory the consumer does not read until `tail`
            // or the stamp says so (`shm-layout` would use `asm!`).
            unsafe { _mm_storeu_si128(dst.add(k), _mm_loadu_si128(src.add(k))) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for k in words {
        s[k].store(w[k], if k == 0 { Release } else { std::sync::atomic::Ordering::Relaxed });
    }
}

/// Change A: copies the slot out with 16-byte loads.
#[inline]
fn copy_words_out(s: &[AtomicU64; 8]) -> [u64; 8] {
    let mut w = [0u64; 8];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};
        let src = s.as_ptr() as *const __m128i;
        let dst = w.as_mut_ptr() as *mut __m128i;
        for k in 0..4 {
            // SAFETY: in bounds of the slot and of `w`; the slot is published
            // (`shm-layout` would use `asm!`, so that a hostile peer writing
            // concurrently gives a torn value, not undefined behaviour).
            unsafe { _mm_storeu_si128(dst.add(k), _mm_loadu_si128(src.add(k))) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (o, x) in w.iter_mut().zip(s.iter()) {
        *o = x.load(std::sync::atomic::Ordering::Relaxed);
    }
    w
}

struct ProtoProducer<'a> {
    raw: ProtoEnds<'a>,
    tail: u64,
    cached_head: u64,
}

impl ProtoProducer<'_> {
    fn capacity(&self) -> u64 {
        self.raw.mask + 1
    }

    #[cold]
    fn reload_head(&mut self) -> Result<(), RingError> {
        let head = self.raw.head_word.load(Acquire);
        if head.wrapping_sub(self.cached_head) > self.tail - self.cached_head {
            return Err(RingError::Violation { head, tail: self.tail });
        }
        self.cached_head = head;
        Ok(())
    }

    /// A: 16-byte moves. B: word 0, with its stamp, last and Release.
    #[inline]
    fn write(&self, i: u64, d: &Descriptor) {
        let w = d.to_words();
        let s = self.raw.slot(i);
        if self.raw.stamped {
            let mut w = w;
            w[0] = (w[0] & !STAMP_MASK) | stamp(i, self.raw.shift);
            // Words 2..8, then words 0..2 (with the stamp) last: x86 keeps
            // stores in order, and the fence keeps the compiler from moving
            // the stamp's store first (in `asm!` the order is the text's).
            copy_words_in(s, &w, 2..8);
            std::sync::atomic::compiler_fence(Release);
            copy_words_in(s, &w, 0..2);
        } else {
            copy_words_in(s, &w, 0..8);
        }
    }

    #[inline]
    fn push(&mut self, d: &Descriptor) -> Result<(), PushError> {
        if self.tail - self.cached_head == self.capacity() {
            self.reload_head()?;
            if self.tail - self.cached_head == self.capacity() {
                return Err(PushError::Full(*d));
            }
        }
        self.write(self.tail, d);
        self.tail += 1;
        self.raw.tail_word.store(self.tail, Release);
        Ok(())
    }

    #[inline]
    fn push_batch(&mut self, ds: &[Descriptor]) -> Result<usize, RingError> {
        let mut room = self.capacity() - (self.tail - self.cached_head);
        if room < ds.len() as u64 {
            self.reload_head()?;
            room = self.capacity() - (self.tail - self.cached_head);
        }
        let n = (room as usize).min(ds.len());
        let tail = self.tail;
        for (i, d) in ds[..n].iter().enumerate() {
            self.write(tail + i as u64, d);
        }
        self.tail = tail + n as u64;
        if n > 0 {
            self.raw.tail_word.store(self.tail, Release);
        }
        Ok(n)
    }
}

struct ProtoConsumer<'a> {
    raw: ProtoEnds<'a>,
    head: u64,
    cached_tail: u64,
}

impl ProtoConsumer<'_> {
    #[inline]
    fn read(&self, i: u64) -> Descriptor {
        Descriptor::from_words(copy_words_out(self.raw.slot(i)))
    }

    /// B: one line, the slot's, tells whether it is published.
    #[inline]
    fn pop(&mut self) -> Result<Option<Descriptor>, RingError> {
        let s = self.raw.slot(self.head);
        let w0 = s[0].load(Acquire);
        if w0 & STAMP_MASK != stamp(self.head, self.raw.shift) {
            return Ok(None);
        }
        let d = self.read(self.head);
        self.head += 1;
        self.cached_tail = self.cached_tail.max(self.head);
        self.raw.head_word.store(self.head, Release);
        Ok(Some(d))
    }

    #[inline]
    fn pop_batch(&mut self, out: &mut [Descriptor]) -> Result<usize, RingError> {
        let mut ready = self.cached_tail - self.head;
        if ready < out.len() as u64 {
            let tail = self.raw.tail_word.load(Acquire);
            let len = tail.wrapping_sub(self.head);
            if len <= self.raw.mask + 1 {
                self.cached_tail = tail;
                ready = len;
            } else if self.head.wrapping_sub(tail) > self.raw.mask + 1 {
                return Err(RingError::Violation { head: self.head, tail });
            }
            // Otherwise `pop` has already taken, by their stamps, slots
            // whose `tail` store is not visible yet: nothing more is ready.
        }
        let n = (ready as usize).min(out.len());
        let head = self.head;
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.read(head + i as u64);
        }
        self.head = head + n as u64;
        if n > 0 {
            self.raw.head_word.store(self.head, Release);
        }
        Ok(n)
    }
}

// ------------------------------------------------- one harness for both rings

trait Tx {
    fn push1(&mut self, d: &Descriptor) -> bool;
    fn push_n(&mut self, ds: &[Descriptor]) -> usize;
}
trait Rx {
    fn pop1(&mut self) -> Option<Descriptor>;
    fn pop_n(&mut self, out: &mut [Descriptor]) -> usize;
}

impl Tx for Producer {
    #[inline]
    fn push1(&mut self, d: &Descriptor) -> bool {
        self.push(d).is_ok()
    }
    #[inline]
    fn push_n(&mut self, ds: &[Descriptor]) -> usize {
        self.push_batch(ds).expect("ring violation")
    }
}
impl Rx for Consumer {
    #[inline]
    fn pop1(&mut self) -> Option<Descriptor> {
        self.pop().expect("ring violation")
    }
    #[inline]
    fn pop_n(&mut self, out: &mut [Descriptor]) -> usize {
        self.pop_batch(out).expect("ring violation")
    }
}
impl Tx for ProtoProducer<'_> {
    #[inline]
    fn push1(&mut self, d: &Descriptor) -> bool {
        self.push(d).is_ok()
    }
    #[inline]
    fn push_n(&mut self, ds: &[Descriptor]) -> usize {
        self.push_batch(ds).expect("ring violation")
    }
}
impl Rx for ProtoConsumer<'_> {
    #[inline]
    fn pop1(&mut self) -> Option<Descriptor> {
        self.pop().expect("ring violation")
    }
    #[inline]
    fn pop_n(&mut self, out: &mut [Descriptor]) -> usize {
        self.pop_batch(out).expect("ring violation")
    }
}

#[inline]
fn recv(rx: &mut impl Rx) -> Descriptor {
    loop {
        if let Some(d) = rx.pop1() {
            return d;
        }
        std::hint::spin_loop();
    }
}

#[inline]
fn send(tx: &mut impl Tx, d: &Descriptor) {
    while !tx.push1(d) {
        std::hint::spin_loop();
    }
}

/// Ping-pong p50 (ns): parent sends `Request i`, child answers `Response i`.
fn pingpong(mut tx: impl Tx, mut rx: impl Rx, mut ctx: impl Tx, mut crx: impl Rx) -> u64 {
    let total = WARMUP + ROUND_TRIPS;
    // SAFETY: this example is single-threaded.
    let child = unsafe {
        ChildProcess::fork(move || {
            for i in 0..total {
                let mut d = recv(&mut crx);
                if d.correlation != i || d.check() != Ok(Kind::Request) {
                    return 3;
                }
                d.kind = Kind::Response as u8;
                send(&mut ctx, &d);
            }
            0
        })
    }
    .expect("fork");
    let mut samples = vec![1u64; ROUND_TRIPS as usize];
    let mut t0 = Instant::now();
    for i in 0..total {
        send(&mut tx, &Descriptor::new(Kind::Request, 7, i));
        let d = recv(&mut rx);
        assert!(d.correlation == i && d.check() == Ok(Kind::Response));
        let t1 = Instant::now();
        if i >= WARMUP {
            samples[(i - WARMUP) as usize] = (t1 - t0).as_nanos() as u64;
        }
        t0 = t1;
    }
    child.join().expect("child");
    Percentiles::from_samples(&mut samples).expect("samples").p50
}

/// Millions of descriptors per second, child pushing `BATCH` at a time, parent popping.
fn stream(mut tx: impl Tx, mut rx: impl Rx) -> f64 {
    let go = Arc::new(SharedMap::new(8).expect("mmap"));
    // SAFETY: in bounds, aligned (page), zeroed; an atomic.
    let go_word = unsafe { &*(go.as_ptr().as_ptr() as *const AtomicU64) };
    let mut buf = vec![Descriptor::new(Kind::Fire, 7, 0); BATCH];
    // SAFETY: this example is single-threaded.
    let child = unsafe {
        ChildProcess::fork(move || {
            while go_word.load(Acquire) == 0 {
                std::hint::spin_loop();
            }
            let mut next = 0;
            while next < DESCRIPTORS {
                let k = (BATCH as u64).min(DESCRIPTORS - next) as usize;
                for (j, d) in buf[..k].iter_mut().enumerate() {
                    d.correlation = next + j as u64;
                }
                let mut sent = 0;
                while sent < k {
                    let m = tx.push_n(&buf[sent..k]);
                    if m == 0 {
                        std::hint::spin_loop();
                    }
                    sent += m;
                }
                next += k as u64;
            }
            0
        })
    }
    .expect("fork");
    let mut out = vec![Descriptor::new(Kind::Fire, 0, 0); BATCH];
    go_word.store(1, Release);
    let t0 = Instant::now();
    let mut expected = 0;
    while expected < DESCRIPTORS {
        let m = rx.pop_n(&mut out);
        if m == 0 {
            std::hint::spin_loop();
            continue;
        }
        for d in &out[..m] {
            assert_eq!(d.correlation, expected);
            expected += 1;
        }
    }
    let e = t0.elapsed();
    child.join().expect("child");
    DESCRIPTORS as f64 / e.as_secs_f64() / 1e6
}

fn hybus_ring(n: usize, capacity: u64) -> (Arc<Segment>, Vec<(Producer, Consumer)>) {
    let size = HEADER_REGION + n * ring::memory_size(capacity);
    let seg = Arc::new(Segment::create(c"proto", SegmentKind::ClientRings, size, capacity).expect("segment"));
    let ends = (0..n)
        .map(|k| seg.init_ring(HEADER_REGION + k * ring::memory_size(capacity), capacity).expect("ring"))
        .collect();
    (seg, ends)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5).max(1);
    let (mut lat_ring, mut lat_proto) = (Vec::new(), Vec::new());
    let (mut thr_ring, mut thr_a, mut thr_ab) = (Vec::new(), Vec::new(), Vec::new());
    println!("      ping-pong p50 (ns), 2 processes   | throughput (M desc/s), 2 processes, batch {BATCH}");
    println!("run   cacheline   ring   proto A+B    |  bare   ring  proto A  proto A+B");
    for run in 1..=runs {
        let mut floor = cacheline_pingpong_2p(ROUND_TRIPS).expect("cacheline");
        let floor = Percentiles::from_samples(&mut floor).expect("samples").p50;
        let (_seg, mut rings) = hybus_ring(2, PINGPONG_CAPACITY);
        let (btx, brx) = rings.pop().expect("two rings");
        let (atx, arx) = rings.pop().expect("two rings");
        let cur = pingpong(atx, brx, btx, arx);
        let (pa, pb) = (
            ProtoRing::new(PINGPONG_CAPACITY, true).expect("mmap"),
            ProtoRing::new(PINGPONG_CAPACITY, true).expect("mmap"),
        );
        let ((atx, arx), (btx, brx)) = (pa.ends(), pb.ends());
        let proto = pingpong(atx, brx, btx, arx);

        let bare = bare_ring_throughput_2p(DESCRIPTORS, BATCH).expect("bare").per_second() / 1e6;
        let (_seg, mut rings) = hybus_ring(1, STREAM_CAPACITY);
        let (tx, rx) = rings.pop().expect("one ring");
        let cur_t = stream(tx, rx);
        let pr = ProtoRing::new(STREAM_CAPACITY, false).expect("mmap");
        let (tx, rx) = pr.ends();
        let a_t = stream(tx, rx);
        let pr = ProtoRing::new(STREAM_CAPACITY, true).expect("mmap");
        let (tx, rx) = pr.ends();
        let ab_t = stream(tx, rx);
        println!("{run:>3}   {floor:>9} {cur:>6} {proto:>11}    | {bare:>5.1} {cur_t:>6.1} {a_t:>8.1} {ab_t:>10.1}");
        lat_ring.push(cur as f64 / floor as f64);
        lat_proto.push(proto as f64 / floor as f64);
        thr_ring.push(cur_t / bare);
        thr_a.push(a_t / bare);
        thr_ab.push(ab_t / bare);
    }
    println!("median of the per-run ratios to the floor:");
    println!(
        "  ping-pong p50   ring {:.2}x   proto A+B {:.2}x              (target <= 1.5x)",
        median(&mut lat_ring),
        median(&mut lat_proto)
    );
    println!(
        "  throughput      ring {:.2}x   proto A {:.2}x   A+B {:.2}x   (target >= 0.8x)",
        median(&mut thr_ring),
        median(&mut thr_a),
        median(&mut thr_ab)
    );
}
