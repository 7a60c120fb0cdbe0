//! The wake-up protocol: spin, yield, then park.
//!
//! A syscall costs microseconds and a cache-line transfer tens of
//! nanoseconds, so while both sides are busy no one makes a syscall: the
//! consumer spins for a bounded budget, then yields the CPU for a bounded
//! budget (on a 2-core machine with three busy parties pure spinning
//! collapses, see docs/ARCHITECTURE.md §4), then parks. Parking is a handshake on the
//! ring's `parked` word ([`Consumer::prepare_park`], [`Producer::needs_wake`]):
//! the producer makes the wake-up syscall only when the consumer really
//! sleeps.
//!
//! The sleep itself is the caller's: anything that implements [`Wait`] on
//! the consumer side and [`Wake`] on the producer side (an eventfd, see
//! `hybus_os::segment::EventFd` in the `hybus-os` crate; a condvar in the loom model). It must be a
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

/// Polls before yielding from which a strategy counts as holding a core
/// ([`IdleStrategy::holds_core`]): 65 536 polls are milliseconds of
/// spinning, longer than the scheduler lets a contended CPU go.
pub const HOLDS_CORE_SPINS: u32 = 1 << 16;

impl IdleStrategy {
    /// Never sleeps and never yields: pure spinning. Lowest latency while
    /// every spinning party has a CPU of its own, and a core's worth of CPU
    /// for as long as it waits. Where more parties spin than there are
    /// CPUs, the client and the daemon use [`backed_off`](Self::backed_off)
    /// instead (they learn of each other's spinning over the control socket).
    pub const BUSY: IdleStrategy = IdleStrategy { spins: u32::MAX, yields: u32::MAX, park: false };
    /// The default: a short spin (a few microseconds), a short run of
    /// yields, then park. 0 % CPU when idle. Short because on a small
    /// machine the party we wait for may need our core: spinning longer
    /// than a round trip only delays it (three parties on two cores).
    pub const DEFAULT: IdleStrategy = IdleStrategy { spins: 50, yields: 100, park: true };
    /// Sleeps at once: every message is a wake-up syscall. Least CPU.
    pub const PARK: IdleStrategy = IdleStrategy { spins: 0, yields: 0, park: true };
}

impl IdleStrategy {
    /// Whether a waiter following this strategy holds its CPU while it
    /// waits: it spins [`HOLDS_CORE_SPINS`] polls or more before it yields.
    /// The daemon counts such parties. One that yields early does not hold
    /// its CPU even if it never parks: `sched_yield` hands the CPU to
    /// whoever else wants it.
    pub const fn holds_core(&self) -> bool {
        self.spins >= HOLDS_CORE_SPINS
    }

    /// The strategy to follow when more parties spin than there are CPUs:
    /// the spin phase cut to [`DEFAULT`](Self::DEFAULT)'s (some
    /// microseconds, enough for a round trip that is answered at once),
    /// then yields and parking as before. `sched_yield` hands the CPU to
    /// the party we wait for when it shares ours, where a pure spin keeps
    /// it off until the scheduler preempts us. [`BUSY`](Self::BUSY) so
    /// becomes a short spin, then yielding for ever.
    pub const fn backed_off(self) -> IdleStrategy {
        let spins = if self.spins < IdleStrategy::DEFAULT.spins { self.spins } else { IdleStrategy::DEFAULT.spins };
        IdleStrategy { spins, yields: self.yields, park: self.park }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_holds_a_core_and_how_it_backs_off() {
        assert!(IdleStrategy::BUSY.holds_core());
        assert!(!IdleStrategy::DEFAULT.holds_core() && !IdleStrategy::PARK.holds_core());
        // Yields at once, never parks: it gives its CPU away.
        assert!(!IdleStrategy { spins: 0, yields: u32::MAX, park: false }.holds_core());
        assert!(IdleStrategy { spins: HOLDS_CORE_SPINS, yields: 0, park: true }.holds_core());
        let b = IdleStrategy::BUSY.backed_off();
        assert_eq!(b, IdleStrategy { spins: IdleStrategy::DEFAULT.spins, yields: u32::MAX, park: false });
        assert_eq!(IdleStrategy::DEFAULT.backed_off(), IdleStrategy::DEFAULT);
        assert_eq!(IdleStrategy::PARK.backed_off(), IdleStrategy::PARK);
    }
}
