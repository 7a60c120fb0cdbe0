//! Round-trip latency: one sample per round trip, in nanoseconds.
//!
//! The near side (the caller's thread) sends, waits for the answer, and
//! reads the clock once per round trip: each sample runs from the previous
//! clock read to this one, so the samples tile the run and their sum is its
//! wall time. The first [`WARMUP`] round trips (page faults, a cold cache,
//! the child still being scheduled in) are not recorded.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::header::HEADER_REGION;
use hybus_layout::ring::{self, Consumer, Producer, PushError};
use hybus_layout::shm::Line;
use hybus_layout::{Descriptor, IdleStrategy, Kind, SegmentKind, WaitOutcome};
use hybus_os::segment::{EventFd, Segment};

use crate::placement::Pinned;
use crate::process::{exit_code, finish, AtomicsOnly, ChildProcess, Shared};
use crate::spin::{Peer, Spinner};
use crate::BenchError;

/// How long a side may wait with no progress from the other before the run fails.
pub const STALL: Duration = Duration::from_secs(30);

/// Round trips run before recording starts.
pub const WARMUP: u64 = 1_000;

/// Slots in each ring of a ping-pong (one descriptor is ever in flight).
///
/// The round trip depends on the rings' footprint, not only on the
/// protocol: each message lands in the next slot, so a ring a lap of which
/// does not stay in L1 pays a miss on top of the line transfer. On this
/// project's VM (AMD EPYC, 32 KiB L1d per core), in interleaved runs of
/// `ring_report`, the p50 round trip was 1.17–1.25× the cache-line floor
/// with 16 slots, 1.17–1.58× with 64 and 1.62–1.83× with 256 (2 × 16 KiB
/// of slots: all of L1). 64 slots (4 KiB a ring) is the size a
/// latency-bound pair would configure; `ring_report` also prints the
/// daemon's default of 1024.
pub const PINGPONG_CAPACITY: u64 = 64;

/// Route id carried by the benchmark descriptors.
pub(crate) const ROUTE: u32 = 7;

/// The cache-line floor: one [`Way`] each way.
#[repr(C)]
struct Lines {
    ping: Way,
    pong: Way,
}

/// One direction of the floor: a flag alone on its 128-byte line, and two
/// payload lines used in turn.
#[repr(C)]
struct Way {
    flag: Line<Flag>,
    payload: [Line<AtomicU64>; 2],
}

/// A flag and, beside it on its line, which payload line goes with it: the
/// reader learns where the payload is from what it polled, as it learns a
/// chunk's offset from a descriptor.
#[repr(C)]
struct Flag {
    seq: AtomicU64,
    at: AtomicU64,
}

// SAFETY: `#[repr(C)]`, atomics only on padded lines; zero is the start value.
unsafe impl AtomicsOnly for Lines {}

impl Way {
    /// Sends round `i`: with `payload`, the payload word first, on the line
    /// named beside the flag.
    #[inline]
    fn send(&self, i: u64, payload: bool) {
        if payload {
            let k = (i & 1) as usize;
            self.payload[k].store(i, Relaxed);
            self.flag.at.store(k as u64, Relaxed);
        }
        // SYNC: Release publishes the payload word (if any) with the flag;
        // pairs with the other side's Acquire load of the flag. Plain moves on x86.
        self.flag.seq.store(i, Release);
        if payload {
            // Take back the line the other side is done with (it read it
            // before its last answer), while waiting: it is the next one written.
            self.payload[((i + 1) & 1) as usize].store(0, Relaxed);
        }
    }

    /// The round the flag says was sent last.
    #[inline]
    fn seq(&self) -> u64 {
        self.flag.seq.load(Acquire)
    }

    /// Checks the payload word of round `i`, read from the line the flag names.
    #[inline]
    fn check_payload(&self, i: u64) -> Result<(), BenchError> {
        let got = self.payload[self.flag.at.load(Relaxed) as usize & 1].load(Relaxed);
        if got != i {
            return Err(BenchError::Mismatch { expected: i, got });
        }
        Ok(())
    }
}

/// Round trips of a bare cache line between two processes: the floor for anything that spins.
///
/// The parent stores `i` in one word and spins until the child stores `i`
/// in the other; no ring, no descriptor, nothing but two cache-line
/// transfers per round trip. Returns `round_trips` samples in nanoseconds.
pub fn cacheline_pingpong_2p(round_trips: u64) -> Result<Vec<u64>, BenchError> {
    cacheline_rounds(round_trips, false)
}

/// [`cacheline_pingpong_2p`] where each side first writes a payload word on
/// a line of its own, which the other side reads after it sees the flag:
/// the floor for a round trip that moves a payload out of line each way (a
/// chunk), beside the one whose payload rides in the flag's line (an
/// inline descriptor). As with a chunk, the reader learns which line holds
/// the payload from the flag's line (two lines each way, used in turn), so
/// its read of the payload cannot start before the flag has come: the two
/// transfers are one after the other. Each side takes a payload line back
/// (writes it) while it waits for the answer, once the other side is done
/// with it, as the client library does with a returned chunk: writing it
/// cold just before the flag would hold the flag back by one more transfer.
///
/// Why the dependency: with the payload always on the same line, the
/// reader's CPU issued the payload load ahead of the flag's arrival and
/// the round trip measured only 10–30 ns over the plain ping-pong on this
/// project's VM, a floor no descriptor-and-chunk protocol can reach.
pub fn cacheline_payload_pingpong_2p(round_trips: u64) -> Result<Vec<u64>, BenchError> {
    cacheline_rounds(round_trips, true)
}

fn cacheline_rounds(round_trips: u64, payload: bool) -> Result<Vec<u64>, BenchError> {
    let lines = Shared::<Lines>::new()?;
    let lines: &Lines = &lines;
    let total = WARMUP + round_trips;
    // SAFETY: the child only spins on atomics in shared memory and returns
    // (no allocation, no locks), so it is sound even if this process has
    // other threads.
    let child = unsafe { ChildProcess::fork(|| exit_code(cacheline_echo(lines, total, payload))) }?;
    let _pinned = Pinned::pair_with(child.pid())?;
    let mut samples = sample_buffer(round_trips);
    let result = cacheline_drive(lines, total, payload, &child, &mut samples);
    finish(result, child)?;
    Ok(samples)
}

fn cacheline_drive(
    l: &Lines,
    total: u64,
    payload: bool,
    child: &ChildProcess,
    samples: &mut [u64],
) -> Result<(), BenchError> {
    let mut t0 = Instant::now();
    for i in 1..=total {
        l.ping.send(i, payload);
        let mut spin = Spinner::new(Some(child));
        loop {
            let v = l.pong.seq();
            if v == i {
                break;
            }
            if v != i - 1 {
                return Err(BenchError::Mismatch { expected: i, got: v });
            }
            if let Err(e) = spin.pause() {
                if l.pong.seq() != i {
                    return Err(e);
                }
            }
        }
        if payload {
            l.pong.check_payload(i)?;
        }
        let t1 = Instant::now();
        if i > WARMUP {
            samples[(i - WARMUP - 1) as usize] = nanos(t1 - t0);
        }
        t0 = t1;
    }
    Ok(())
}

fn cacheline_echo(l: &Lines, total: u64, payload: bool) -> Result<(), BenchError> {
    for i in 1..=total {
        let mut spin = Spinner::new(None);
        loop {
            let v = l.ping.seq();
            if v == i {
                break;
            }
            if v != i - 1 {
                return Err(BenchError::Mismatch { expected: i, got: v });
            }
            spin.pause()?;
        }
        if payload {
            l.ping.check_payload(i)?;
        }
        l.pong.send(i, payload);
    }
    Ok(())
}

/// Round trips of a descriptor over two hybus rings between two processes.
///
/// One segment holds a ring each way. The parent pushes a `Request` with
/// correlation `i`; the child pops it, checks it, and pushes it back as a
/// `Response`; the parent pops and checks that. Waiting follows `idle`:
///
/// * a strategy that never parks (`park: false`, e.g. [`IdleStrategy::BUSY`])
///   is a plain pop loop — spin `spins` times, then yield — and the sender
///   never calls [`Producer::notify`], whose `SeqCst` fence only a parking
///   receiver needs. This is the variant to set beside [`cacheline_pingpong_2p`];
/// * a strategy that parks spins `spins` times, then waits with
///   [`Consumer::wait`] on an eventfd doorbell, and every send calls `notify`.
///
/// Returns `round_trips` samples in nanoseconds.
pub fn ring_pingpong_2p(round_trips: u64, capacity: u64, idle: IdleStrategy) -> Result<Vec<u64>, BenchError> {
    let rings = RingPair::new(capacity)?;
    let (mut near, mut far) = rings.ends(idle)?;
    let total = WARMUP + round_trips;
    // SAFETY: the child only pushes and pops on rings in shared memory,
    // spins, and at most reads the clock (vDSO) or waits on an eventfd: no
    // allocation, no locks, so it is sound even with other threads here.
    let child = unsafe { ChildProcess::fork(move || exit_code(far.echo(total, None))) }?;
    let mut samples = sample_buffer(round_trips);
    let result = near.drive(total, Some(&child), &mut samples);
    finish(result, child)?;
    Ok(samples)
}

/// [`ring_pingpong_2p`] between two threads of this process.
pub fn ring_pingpong_threads(round_trips: u64, capacity: u64, idle: IdleStrategy) -> Result<Vec<u64>, BenchError> {
    let rings = RingPair::new(capacity)?;
    let (mut near, mut far) = rings.ends(idle)?;
    let total = WARMUP + round_trips;
    let mut samples = sample_buffer(round_trips);
    // Tells the echo thread to stop waiting if the near side gives up.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let echo = s.spawn(|| far.echo(total, Some(&done)));
        let result = near.drive(total, Some(&echo), &mut samples);
        done.store(true, Release);
        let echoed = echo.join().unwrap_or(Err(BenchError::PeerGone));
        match (result, echoed) {
            (Ok(()), r) => r,
            (Err(BenchError::PeerGone), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
        }
    })?;
    Ok(samples)
}

/// The floor of a direct call (`limit/ring-2p` in `hybusctl bench`): round
/// trips of one descriptor each way over a pair of hybus rings of
/// `capacity` between two processes, spinning ([`IdleStrategy::BUSY`]),
/// pinned like the two parties of `direct/rpc` (each on a CPU of its own,
/// see [`Pinned`]). Only the rings: no pool, no lock, no table.
///
/// With `payload` (`limit/ring-2p-payload`), each side also writes one
/// payload word on a line of its own before it pushes, and the other reads
/// it after the pop, from the line the descriptor names (two lines each
/// way, used in turn, each taken back while waiting, as in
/// [`cacheline_payload_pingpong_2p`]): the floor of a round trip whose
/// payloads travel in chunks, one line of each read.
pub fn ring_floor_2p(round_trips: u64, capacity: u64, payload: bool) -> Result<Vec<u64>, BenchError> {
    let rings = RingPair::new(capacity)?;
    let (mut near, mut far) = rings.ends(IdleStrategy::BUSY)?;
    let lines = Shared::<PayloadLines>::new()?;
    let lines: &PayloadLines = &lines;
    if payload {
        near.payload = Some((&lines.a, &lines.b));
        far.payload = Some((&lines.b, &lines.a));
    }
    let total = WARMUP + round_trips;
    // SAFETY: as in `ring_pingpong_2p`; the payload lines are atomics in
    // shared memory.
    let child = unsafe { ChildProcess::fork(move || exit_code(far.echo(total, None))) }?;
    let _pinned = Pinned::pair_with(child.pid())?;
    let mut samples = sample_buffer(round_trips);
    let result = near.drive(total, Some(&child), &mut samples);
    finish(result, child)?;
    Ok(samples)
}

/// The two payload lines of one direction of [`ring_floor_2p`], used in turn.
type PayloadPair = [Line<AtomicU64>; 2];

/// The payload lines of [`ring_floor_2p`]: two each way.
#[repr(C)]
struct PayloadLines {
    /// Written by the near side.
    a: PayloadPair,
    /// Written by the far side.
    b: PayloadPair,
}

// SAFETY: `#[repr(C)]`, atomics only on padded lines; zero is the start value.
unsafe impl AtomicsOnly for PayloadLines {}

/// A segment with one ring each way, and a doorbell for each receiver.
struct RingPair {
    segment: Arc<Segment>,
    capacity: u64,
    /// Rung by the near side, waited on by the far side.
    far_bell: EventFd,
    /// Rung by the far side, waited on by the near side.
    near_bell: EventFd,
}

impl RingPair {
    fn new(capacity: u64) -> Result<RingPair, BenchError> {
        let size = HEADER_REGION + 2 * ring::memory_size(capacity);
        let segment = Segment::create(c"hybus-bench-pingpong", SegmentKind::ClientRings, size, capacity)?;
        Ok(RingPair { segment: Arc::new(segment), capacity, far_bell: EventFd::new()?, near_bell: EventFd::new()? })
    }

    /// The near end (sends on ring A, receives on ring B) and the far end.
    fn ends(&self, idle: IdleStrategy) -> Result<(End<'_>, End<'_>), BenchError> {
        // `memory_size` is a multiple of 128 for any capacity >= 2, so ring B is aligned.
        let a = HEADER_REGION;
        let b = a + ring::memory_size(self.capacity);
        let (a_tx, a_rx) = self.segment.init_ring(a, self.capacity)?;
        let (b_tx, b_rx) = self.segment.init_ring(b, self.capacity)?;
        let near =
            End { tx: a_tx, rx: b_rx, peer_bell: &self.far_bell, own_bell: &self.near_bell, idle, payload: None };
        let far = End { tx: b_tx, rx: a_rx, peer_bell: &self.near_bell, own_bell: &self.far_bell, idle, payload: None };
        Ok((near, far))
    }
}

/// One side of a ring ping-pong.
struct End<'a> {
    tx: Producer,
    rx: Consumer,
    peer_bell: &'a EventFd,
    own_bell: &'a EventFd,
    idle: IdleStrategy,
    /// Payload lines this side writes and those it reads (see [`ring_floor_2p`]).
    payload: Option<(&'a PayloadPair, &'a PayloadPair)>,
}

impl End<'_> {
    /// Sends `Request`s `0..total`, expects each back as a `Response`, records round trips.
    fn drive(&mut self, total: u64, peer: Option<&dyn Peer>, samples: &mut [u64]) -> Result<(), BenchError> {
        let mut t0 = Instant::now();
        for i in 0..total {
            self.send_payload(Descriptor::new(Kind::Request, ROUTE, i), peer)?;
            let d = self.recv(peer)?;
            expect(&d, Kind::Response, i)?;
            self.check_payload(&d)?;
            let t1 = Instant::now();
            if i >= WARMUP {
                samples[(i - WARMUP) as usize] = nanos(t1 - t0);
            }
            t0 = t1;
        }
        Ok(())
    }

    /// Answers `total` requests, checking each.
    fn echo(&mut self, total: u64, peer: Option<&dyn Peer>) -> Result<(), BenchError> {
        for i in 0..total {
            let mut d = self.recv(peer)?;
            expect(&d, Kind::Request, i)?;
            self.check_payload(&d)?;
            d.kind = Kind::Response as u8;
            self.send_payload(d, peer)?;
        }
        Ok(())
    }

    /// Sends `d`; with payload lines, its payload word first, on the line
    /// `d.aux` names, and the other line taken back once `d` is out.
    #[inline]
    fn send_payload(&mut self, mut d: Descriptor, peer: Option<&dyn Peer>) -> Result<(), BenchError> {
        let Some((out, _)) = self.payload else {
            return self.send(&d, peer);
        };
        let k = (d.correlation & 1) as usize;
        out[k].store(d.correlation, Relaxed);
        d.aux = k as u64;
        // (The push's Release publishes the word; the pop's Acquire pairs.)
        self.send(&d, peer)?;
        out[k ^ 1].store(0, Relaxed);
        Ok(())
    }

    /// With payload lines: checks the payload word of `d`, read from the line it names.
    #[inline]
    fn check_payload(&self, d: &Descriptor) -> Result<(), BenchError> {
        let Some((_, input)) = self.payload else {
            return Ok(());
        };
        let got = input[(d.aux & 1) as usize].load(Relaxed);
        if got != d.correlation {
            return Err(BenchError::Mismatch { expected: d.correlation, got });
        }
        Ok(())
    }

    #[inline]
    fn send(&mut self, d: &Descriptor, peer: Option<&dyn Peer>) -> Result<(), BenchError> {
        let mut spin = Spinner::new(peer);
        loop {
            match self.tx.push(d) {
                Ok(()) => break,
                Err(PushError::Full(_)) => spin.pause()?,
                Err(PushError::Ring(e)) => return Err(e.into()),
            }
        }
        // A receiver that never parks needs no wake-up, and the `SeqCst`
        // fence in `notify` would cost a store-buffer drain per message.
        if self.idle.park {
            self.tx.notify(self.peer_bell);
        }
        Ok(())
    }

    #[inline]
    fn recv(&mut self, peer: Option<&dyn Peer>) -> Result<Descriptor, BenchError> {
        let spins = self.idle.spins as u64;
        let mut spin = Spinner::with_spins(peer, spins);
        let mut n = 0u64;
        loop {
            if let Some(d) = self.rx.pop()? {
                return Ok(d);
            }
            if self.idle.park && n >= spins {
                return self.recv_parked(peer);
            }
            n += 1;
            if let Err(e) = spin.pause() {
                return self.rx.pop()?.ok_or(e);
            }
        }
    }

    /// The yield-then-park part of a parking strategy, in slices so that a
    /// dead peer is noticed.
    #[cold]
    fn recv_parked(&mut self, peer: Option<&dyn Peer>) -> Result<Descriptor, BenchError> {
        const SLICE: Duration = Duration::from_millis(100);
        let rest = IdleStrategy { spins: 0, ..self.idle };
        let start = Instant::now();
        loop {
            let deadline = Instant::now() + SLICE;
            if self.rx.wait(&rest, self.own_bell, Some(deadline))? == WaitOutcome::Ready {
                if let Some(d) = self.rx.pop()? {
                    return Ok(d);
                }
                continue;
            }
            if peer.is_some_and(|p| p.gone()) {
                return self.rx.pop()?.ok_or(BenchError::PeerGone);
            }
            if start.elapsed() > STALL {
                return Err(BenchError::Stalled);
            }
        }
    }
}

/// Checks a received descriptor: valid, of `kind`, on our route, number `seq`.
#[inline]
fn expect(d: &Descriptor, kind: Kind, seq: u64) -> Result<(), BenchError> {
    if d.correlation != seq {
        return Err(BenchError::Mismatch { expected: seq, got: d.correlation });
    }
    if d.check() != Ok(kind) || d.route != ROUTE {
        return Err(BenchError::Corrupt { seq });
    }
    Ok(())
}

/// Room for one sample per round trip, written once now so that no page
/// fault lands inside a measured round trip.
fn sample_buffer(round_trips: u64) -> Vec<u64> {
    vec![u64::MAX; round_trips as usize]
}

#[inline]
fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
