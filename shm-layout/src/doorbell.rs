//! The wake-up protocol: spin, yield, then park.
//!
//! A syscall costs microseconds and a cache-line transfer tens of
//! nanoseconds, so while both sides are busy no one makes a syscall: the
//! consumer spins for a bounded budget, then yields the CPU for a bounded
//! budget (on a 2-core machine with three busy parties pure spinning
//! collapses, see DESIGN.md §4), then parks. Parking is a handshake on the
//! ring's `parked` word ([`Consumer::prepare_park`], [`Producer::needs_wake`]):
//! the producer makes the wake-up syscall only when the consumer really
//! sleeps.
//!
//! The sleep itself is the caller's: anything that implements [`Wait`] on
//! the consumer side and [`Wake`] on the producer side (an eventfd, see
//! [`crate::segment::EventFd`]; a condvar in the loom model). It must be a
//! counting or latching primitive — a wake that comes before the wait must
//! make the wait return — which eventfd and futex-on-a-word both are.
//!
//! [`Producer::needs_wake`]: crate::ring::Producer::needs_wake

use std::time::{Duration, Instant};

use crate::ring::{Consumer, RingError};
use crate::sync::{spin_hint, yield_now};

/// The longest a waiter yields before it parks, whatever `yields` says.
pub const MAX_YIELD: Duration = Duration::from_millis(1);

/// Producer side of a doorbell.
pub trait Wake {
    /// Wakes the consumer (a syscall, typically).
    fn wake(&self);
}

/// Consumer side of a doorbell.
pub trait Wait {
    /// Sleeps until woken or until `timeout` passes. Spurious returns are allowed.
    fn wait(&self, timeout: Option<Duration>);
}

/// How a waiting consumer spends its time before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleStrategy {
    /// Polls of the ring with a spin-loop hint between them.
    pub spins: u32,
    /// Polls of the ring with `sched_yield` between them (and at most [`MAX_YIELD`] of them).
    pub yields: u32,
    /// Whether to sleep on the doorbell afterwards; `false` keeps yielding
    /// (never 0 % CPU: only for benchmarks and dedicated cores).
    pub park: bool,
}

impl IdleStrategy {
    /// Never sleeps: spin, then yield forever. Lowest latency, burns a core.
    pub const BUSY: IdleStrategy = IdleStrategy { spins: u32::MAX, yields: u32::MAX, park: false };
    /// The default: a short spin (a few microseconds), a short run of
    /// yields, then park. 0 % CPU when idle. Short because on a small
    /// machine the party we wait for may need our core: spinning longer
    /// than a round trip only delays it (three parties on two cores).
    pub const DEFAULT: IdleStrategy = IdleStrategy { spins: 50, yields: 100, park: true };
    /// Sleeps at once: every message is a wake-up syscall. Least CPU.
    pub const PARK: IdleStrategy = IdleStrategy { spins: 0, yields: 0, park: true };
}

impl Default for IdleStrategy {
    fn default() -> Self {
        IdleStrategy::DEFAULT
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The ring has descriptors.
    Ready,
    /// The deadline passed with the ring empty.
    TimedOut,
}

impl Consumer {
    /// Waits until the ring is non-empty or `deadline` passes, following `idle`.
    #[inline]
    pub fn wait<W: Wait + ?Sized>(
        &mut self,
        idle: &IdleStrategy,
        bell: &W,
        deadline: Option<Instant>,
    ) -> Result<WaitOutcome, RingError> {
        if !self.is_empty()? {
            return Ok(WaitOutcome::Ready);
        }
        self.wait_slow(idle, bell, deadline)
    }

    #[cold]
    fn wait_slow<W: Wait + ?Sized>(
        &mut self,
        idle: &IdleStrategy,
        bell: &W,
        deadline: Option<Instant>,
    ) -> Result<WaitOutcome, RingError> {
        let expired = |n: u32| n % 64 == 0 && deadline.is_some_and(|d| Instant::now() >= d);
        for i in 0..idle.spins {
            if !self.is_empty()? {
                return Ok(WaitOutcome::Ready);
            }
            if expired(i) {
                return Ok(WaitOutcome::TimedOut);
            }
            spin_hint();
        }
        let mut i = 0u32;
        // Bounded in time too: on a saturated machine one yield can take a
        // whole time slice.
        let yield_start = Instant::now();
        while (i < idle.yields && yield_start.elapsed() < MAX_YIELD) || !idle.park {
            if !self.is_empty()? {
                return Ok(WaitOutcome::Ready);
            }
            if expired(i) {
                return Ok(WaitOutcome::TimedOut);
            }
            yield_now();
            i = i.wrapping_add(1);
        }
        loop {
            if self.prepare_park()? {
                let timeout = match deadline {
                    None => None,
                    Some(d) => match d.checked_duration_since(Instant::now()) {
                        Some(t) if !t.is_zero() => Some(t),
                        _ => {
                            self.finish_park();
                            return Ok(WaitOutcome::TimedOut);
                        }
                    },
                };
                bell.wait(timeout);
                self.finish_park();
            }
            if !self.is_empty()? {
                return Ok(WaitOutcome::Ready);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(WaitOutcome::TimedOut);
            }
        }
    }
}
