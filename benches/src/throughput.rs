//! Throughput: a child process streams `n` descriptors to the parent, which checks their order.
//!
//! The clock starts when the child, set up and waiting at a start line,
//! is released, and stops when the parent has taken and checked the last
//! descriptor. The producer writes all 64 bytes of every descriptor and the
//! consumer copies all 64 out and reads each one's sequence number, so both
//! sides really move what they claim to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::header::HEADER_REGION;
use hybus_layout::ring::{self, Producer, PushError};
use hybus_layout::{Descriptor, Kind, SegmentKind};
use hybus_os::segment::Segment;

use crate::bare_ring::{BareProducer, BareRing, Words};
use crate::gate::Gate;
use crate::pingpong::ROUTE;
use crate::process::{exit_code, finish, ChildProcess, Shared};
use crate::spin::{Peer, Spinner};
use crate::BenchError;

/// Slots in the ring of a throughput run (64 KiB of slots: fits in L2).
pub const THROUGHPUT_CAPACITY: u64 = 1024;

/// Pauses a waiting side spins before it starts yielding the CPU.
///
/// While both sides run, a wait lasts far less than this. When the machine
/// has more runnable threads than cores, the side that waits may be keeping
/// the other from running; spinning on then only burns the time slice, so
/// after this budget each pause yields (the collapse docs/ARCHITECTURE.md §4 describes).
pub const SPINS: u64 = 10_000;

/// How many items moved in how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Items moved.
    pub items: u64,
    /// Wall time from the start line to the last item checked.
    pub elapsed: Duration,
}

impl Rate {
    /// Items per second.
    pub fn per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }
}

/// Streams `n` descriptors through a hybus ring from a child to the parent.
///
/// With `batch == 1` the producer uses [`Producer::push`] and the consumer
/// [`Consumer::pop`](hybus_layout::ring::Consumer::pop) (one index store per descriptor on each side); with a
/// larger `batch` they use [`Producer::push_batch`] and
/// [`Consumer::pop_batch`](hybus_layout::ring::Consumer::pop_batch) with up to `batch` descriptors per call. No
/// doorbell: a side that waits spins (then yields, after [`SPINS`] pauses), as
/// it does while traffic flows. `batch == 0` counts as 1.
pub fn ring_throughput_2p(n: u64, batch: usize) -> Result<Rate, BenchError> {
    let batch = batch.max(1);
    let size = HEADER_REGION + ring::memory_size(THROUGHPUT_CAPACITY);
    let segment =
        Arc::new(Segment::create(c"hybus-bench-stream", SegmentKind::ClientRings, size, THROUGHPUT_CAPACITY)?);
    let (tx, rx) = segment.init_ring(HEADER_REGION, THROUGHPUT_CAPACITY)?;
    let gate = Shared::<Gate>::new()?;
    let gate: &Gate = &gate;
    // Allocated before the fork: the child must not allocate (or free).
    let mut buf = vec![Descriptor::new(Kind::Fire, ROUTE, 0); batch];
    // Borrowed, so that the child never frees it.
    let buf = &mut buf[..];
    // SAFETY: the child only pushes on a ring in shared memory and spins
    // (no allocation, no locks), so it is sound even with other threads here.
    let child = unsafe { ChildProcess::fork(move || exit_code(ring_produce(tx, gate, n, buf))) }?;
    let mut out = vec![Descriptor::new(Kind::Fire, 0, 0); batch];
    let mut rx = rx;
    let mut elapsed = Duration::ZERO;
    let result = if batch == 1 {
        consume(
            gate,
            n,
            &child,
            &mut out,
            &mut elapsed,
            |o| {
                Ok(match rx.pop()? {
                    Some(d) => {
                        o[0] = d;
                        1
                    }
                    None => 0,
                })
            },
            |d| d.correlation,
        )
    } else {
        consume(gate, n, &child, &mut out, &mut elapsed, |o| Ok(rx.pop_batch(o)?), |d| d.correlation)
    };
    finish(result, child)?;
    Ok(Rate { items: n, elapsed })
}

fn ring_produce(mut tx: Producer, gate: &Gate, n: u64, buf: &mut [Descriptor]) -> Result<(), BenchError> {
    gate.arrive(None)?;
    let mut spin = Spinner::with_spins(None, SPINS);
    if buf.len() == 1 {
        let mut d = buf[0];
        for i in 0..n {
            d.correlation = i;
            loop {
                match tx.push(&d) {
                    Ok(()) => break,
                    Err(PushError::Full(_)) => spin.pause()?,
                    Err(PushError::Ring(e)) => return Err(e.into()),
                }
            }
            spin.reset();
        }
        return Ok(());
    }
    produce_batches(n, buf, &mut spin, |d, i| d.correlation = i, |b| Ok(tx.push_batch(b)?))
}

/// Streams `n` 64-byte slots through a [`BareRing`] from a child to the
/// parent, `batch` per call on each side: the floor for [`ring_throughput_2p`].
/// `batch == 0` counts as 1.
pub fn bare_ring_throughput_2p(n: u64, batch: usize) -> Result<Rate, BenchError> {
    let batch = batch.max(1);
    let mut ring = BareRing::new(THROUGHPUT_CAPACITY)?;
    let (tx, mut rx) = ring.split();
    let gate = Shared::<Gate>::new()?;
    let gate: &Gate = &gate;
    // The same words a hybus descriptor puts in its slot.
    let template = Descriptor::new(Kind::Fire, ROUTE, 0).to_words();
    let mut buf = vec![template; batch];
    // Borrowed, so that the child never frees it.
    let buf = &mut buf[..];
    // SAFETY: the child only pushes on a ring in shared memory and spins
    // (no allocation, no locks), so it is sound even with other threads here.
    let child = unsafe { ChildProcess::fork(move || exit_code(bare_produce(tx, gate, n, buf))) }?;
    let mut out = vec![[0u64; 8]; batch];
    let mut elapsed = Duration::ZERO;
    let result = consume(gate, n, &child, &mut out, &mut elapsed, |o| Ok(rx.pop_batch(o)), |w| w[1]);
    finish(result, child)?;
    Ok(Rate { items: n, elapsed })
}

fn bare_produce(mut tx: BareProducer<'_>, gate: &Gate, n: u64, buf: &mut [Words]) -> Result<(), BenchError> {
    gate.arrive(None)?;
    let mut spin = Spinner::with_spins(None, SPINS);
    produce_batches(n, buf, &mut spin, |w, i| w[1] = i, |b| Ok(tx.push_batch(b)))
}

/// Pushes items numbered `0..n`, `buf.len()` per batch: `number` writes an
/// item's number into an element of `buf`, `push` pushes a slice and says
/// how many went (0 when the ring is full: then we pause).
#[inline]
fn produce_batches<T>(
    n: u64,
    buf: &mut [T],
    spin: &mut Spinner<'_>,
    number: impl Fn(&mut T, u64),
    mut push: impl FnMut(&[T]) -> Result<usize, BenchError>,
) -> Result<(), BenchError> {
    let mut next = 0;
    while next < n {
        let k = (buf.len() as u64).min(n - next) as usize;
        for (j, x) in buf[..k].iter_mut().enumerate() {
            number(x, next + j as u64);
        }
        let mut sent = 0;
        while sent < k {
            let m = push(&buf[sent..k])?;
            if m == 0 {
                spin.pause()?;
            } else {
                spin.reset();
            }
            sent += m;
        }
        next += k as u64;
    }
    Ok(())
}

/// The parent's side of a stream: opens the gate, takes `n` items with
/// `pop`, checks that `seq` of each counts up from 0, and times it all.
fn consume<T>(
    gate: &Gate,
    n: u64,
    child: &ChildProcess,
    out: &mut [T],
    elapsed: &mut Duration,
    mut pop: impl FnMut(&mut [T]) -> Result<usize, BenchError>,
    seq: impl Fn(&T) -> u64,
) -> Result<(), BenchError> {
    let peer: &dyn Peer = child;
    gate.open(Some(peer))?;
    let t0 = Instant::now();
    let mut expected = 0;
    let mut spin = Spinner::with_spins(Some(peer), SPINS);
    while expected < n {
        let mut m = pop(out)?;
        if m == 0 {
            match spin.pause() {
                Ok(()) => continue,
                Err(e) => {
                    // The child may have pushed its last items just before it went.
                    m = pop(out)?;
                    if m == 0 {
                        return Err(e);
                    }
                }
            }
        }
        spin.reset();
        for item in &out[..m] {
            let got = seq(item);
            if got != expected {
                return Err(BenchError::Mismatch { expected, got });
            }
            expected += 1;
        }
    }
    *elapsed = t0.elapsed();
    Ok(())
}
