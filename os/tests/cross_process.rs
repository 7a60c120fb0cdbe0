//! The ring and its eventfd doorbell work between two real processes.
//!
//! The test creates a sealed memfd segment with one ring of 1024 slots and
//! an eventfd, then forks. The child is the producer: it pushes N
//! descriptors (correlation `i`, aux `i * 7`, `i`'s bytes inline) with
//! `push_batch` in batches of pseudo-random size, and rings the doorbell
//! through `notify` after each batch. The parent is the consumer: it sleeps
//! in `Consumer::wait` (spin, yield, park on the eventfd) and drains with
//! `pop_batch`, checking that every descriptor arrives once, intact and in
//! order. This proves the memory ordering of the ring across address spaces
//! and that the child exits cleanly.
//!
//! It also proves the park/notify handshake across processes: ten times
//! during the run the child stops until it sees the parent's `parked` word
//! set (the parent has gone to sleep on the eventfd), and only then pushes
//! and notifies. The parent's wait deadline is the 20 s watchdog, so a lost
//! wake-up cannot be papered over by a timeout: it fails the test. The
//! child counts the parks it saw in a spare word of the segment, and the
//! parent checks that at least one happened. Nothing here asserts a duration.
#![cfg(not(loom))]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::header::HEADER_REGION;
use hybus_layout::ring;
use hybus_layout::{Consumer, Descriptor, IdleStrategy, Kind, Producer, SegmentKind, WaitOutcome};
use hybus_os::segment::{EventFd, Segment};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

const CAPACITY: u64 = 1024;

/// Descriptors to send (about 2-3 s in a debug build, 40 ms in release, on 2 cores).
const N: u64 = if cfg!(miri) { 20_000 } else { 2_000_000 };

/// No progress for this long means something hangs: kill the child, fail.
const WATCHDOG: Duration = Duration::from_secs(20);

/// Largest batch the child pushes at once (larger than some ring states allow).
const MAX_BATCH: usize = 96;

/// Times the child waits for the parent to park before it goes on (at 0, N/10, 2N/10, ...).
const PAUSES: u64 = 10;

/// Offsets in the segment: the ring, then a spare word where the child counts parks it saw.
const RING: usize = HEADER_REGION;
const PARKED_WORD: usize = RING + 384;
const PARKS_SEEN: usize = RING + ring::memory_size(CAPACITY);
const SEGMENT_SIZE: usize = PARKS_SEEN + 4096;

/// A 64-bit word of the mapping, accessed atomically by both processes.
fn word64(seg: &Segment, offset: usize) -> &AtomicU64 {
    assert!(offset % 8 == 0 && offset + 8 <= seg.len());
    // SAFETY: 8-aligned (the mapping is page-aligned) and in bounds (asserted);
    // mapped while `seg` lives; only ever accessed atomically.
    unsafe { AtomicU64::from_ptr(seg.as_ptr().as_ptr().add(offset).cast()) }
}

/// The ring's `parked` word (the consumer sets it while it sleeps on the bell).
fn parked_word(seg: &Segment) -> &AtomicU32 {
    // SAFETY: 4-aligned and inside the ring header, which lies in the
    // mapping (`init_ring` checked it); mapped while `seg` lives; the ring
    // accesses it only atomically.
    unsafe { AtomicU32::from_ptr(seg.as_ptr().as_ptr().add(PARKED_WORD).cast()) }
}

fn descriptor(i: u64) -> Descriptor {
    Descriptor::new(Kind::Fire, 42, i)
        .with_aux(i.wrapping_mul(7))
        .with_inline(&i.to_le_bytes())
        .expect("8 bytes fit inline")
}

/// Waits up to a second for the parent to park; returns whether it did.
fn parent_parks(seg: &Segment) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        if parked_word(seg).load(SeqCst) != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    false
}

/// The child: push `N` descriptors in batches, notifying after each; then exit.
///
/// Runs in a forked copy of a multi-threaded process, so it does as little
/// as it can: no allocation, no locks, no test-harness state. Exit codes:
/// 0 done, 2 ring violation, 3 stuck (the parent stopped consuming), 101 panic.
fn child(mut p: Producer, bell: &EventFd, seg: &Segment) -> ! {
    let run = AssertUnwindSafe(|| -> i32 {
        let mut batch = [descriptor(0); MAX_BATCH];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = 0u64;
        let mut next_pause = 0;
        let mut last_progress = Instant::now();
        while next < N {
            if next >= next_pause {
                next_pause += N / PAUSES;
                if parent_parks(seg) {
                    word64(seg, PARKS_SEEN).fetch_add(1, SeqCst);
                }
                last_progress = Instant::now();
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (1 + rng % MAX_BATCH as u64).min(N - next) as usize;
            for (k, d) in batch[..len].iter_mut().enumerate() {
                *d = descriptor(next + k as u64);
            }
            let mut sent = 0;
            while sent < len {
                match p.push_batch(&batch[sent..len]) {
                    Ok(0) => {
                        if last_progress.elapsed() > WATCHDOG {
                            return 3;
                        }
                        std::thread::yield_now();
                    }
                    Ok(k) => {
                        sent += k;
                        last_progress = Instant::now();
                        p.notify(bell);
                    }
                    Err(_) => return 2,
                }
            }
            next += len as u64;
        }
        0
    });
    let code = std::panic::catch_unwind(run).unwrap_or(101);
    std::process::exit(code);
}

/// Kills and reaps the child if the parent leaves early (a failed assertion).
struct ChildGuard {
    pid: Pid,
    reaped: bool,
}

impl ChildGuard {
    /// Waits for the child and returns its status.
    fn wait(mut self) -> WaitStatus {
        let status = waitpid(self.pid, None).expect("waitpid");
        self.reaped = true;
        status
    }

    /// The child's status if it has already exited.
    fn try_wait(&mut self) -> Option<WaitStatus> {
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive => None,
            s => {
                self.reaped = true;
                Some(s)
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// The parent: consume and check all `N` descriptors, with the watchdog.
fn parent(mut c: Consumer, bell: &EventFd, guard: &mut ChildGuard) {
    let mut buf = [descriptor(0); 256];
    let mut next = 0u64;
    let mut last_progress = Instant::now();
    while next < N {
        // The deadline is the watchdog itself: the child never pauses for
        // long, so timing out means a lost wake-up or a dead or stuck child.
        match c.wait(&IdleStrategy::DEFAULT, bell, Some(last_progress + WATCHDOG)) {
            Ok(WaitOutcome::Ready) => {}
            Ok(WaitOutcome::TimedOut) => panic!(
                "no descriptor for {WATCHDOG:?} at {next} of {N} (lost wake-up or stuck child; \
                 child status {:?})",
                guard.try_wait()
            ),
            Err(e) => panic!("ring violation from an honest child: {e}"),
        }
        let n = c.pop_batch(&mut buf).expect("honest producer");
        assert!(n > 0, "wait said Ready but nothing could be popped");
        for d in &buf[..n] {
            assert_eq!(d.check(), Ok(Kind::Fire), "descriptor {next}");
            assert_eq!(d.correlation, next, "lost, duplicated or reordered");
            assert_eq!(d.aux, next.wrapping_mul(7), "descriptor {next}: aux");
            assert_eq!(d.route, 42, "descriptor {next}: route");
            assert_eq!(d.inline(), next.to_le_bytes(), "descriptor {next}: payload");
            next += 1;
        }
        last_progress = Instant::now();
    }
    assert_eq!(c.pop(), Ok(None), "nothing beyond the N descriptors");
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot fork")]
fn child_process_pushes_parent_consumes_in_order() {
    let seg = Arc::new(Segment::create(c"x", SegmentKind::ClientRings, SEGMENT_SIZE, CAPACITY).expect("segment"));
    let (p, c) = seg.init_ring(RING, CAPACITY).expect("ring");
    let bell = EventFd::new().expect("eventfd");
    let start = Instant::now();

    // SAFETY: the child touches only the ring and a spare word (atomics in a
    // MAP_SHARED mapping that fork keeps), the eventfd, the clock,
    // `nanosleep`, `sched_yield` and `exit`: no locks or allocator state
    // that another thread of the test harness could have held at the fork.
    let pid = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => child(p, &bell, &seg),
        ForkResult::Parent { child } => child,
    };
    drop(p); // the parent is only the consumer
    let mut guard = ChildGuard { pid, reaped: false };
    parent(c, &bell, &mut guard);
    let status = guard.wait();
    assert_eq!(status, WaitStatus::Exited(pid, 0), "child exit status");
    let parks = word64(&seg, PARKS_SEEN).load(SeqCst);
    eprintln!(
        "{N} descriptors across processes in {:?}; the child saw the parent parked {parks} of {PAUSES} times",
        start.elapsed()
    );
    assert!(parks > 0, "the parent never parked: the wake-up path was not exercised");
}
