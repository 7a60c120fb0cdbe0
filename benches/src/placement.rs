//! Where the two parties of a two-process measurement run.
//!
//! Left to the scheduler, two processes that block on each other sometimes
//! share a CPU (each wake-up is then a context switch: an eventfd round trip
//! took 5.4–5.8 µs on this project's 2-CPU VM) and sometimes do not (each
//! wake-up is then an interrupt to a halted virtual CPU: 45–60 µs). A
//! forked child tends to start beside its parent and an exec'd worker on the
//! idle CPU, so a limit and the hybus figure set beside it could be measured
//! in different placements, and their ratio said more about the scheduler
//! than about hybus (9× in one run, 1.1× in the next). With
//! [`pin_pairs`] on, every two-party measurement runs its near party on one
//! CPU and its far party on another, the same for the limits and for hybus.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

use crate::error::os;
use crate::BenchError;

static PIN_PAIRS: AtomicBool = AtomicBool::new(false);

/// Two distinct CPUs: one for the party that measures, one for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    /// The CPU of the measuring thread.
    pub near: usize,
    /// The CPU of the peer process.
    pub far: usize,
}

/// Turns pinning of two-party measurements on or off (off by default).
pub fn pin_pairs(on: bool) {
    PIN_PAIRS.store(on, Relaxed);
}

/// The CPUs two-party measurements run on: the first two this process may
/// use, if pinning is on and it may use two.
pub fn pair() -> Option<Pair> {
    if !PIN_PAIRS.load(Relaxed) {
        return None;
    }
    let set = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let mut cpus = (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false));
    Some(Pair { near: cpus.next()?, far: cpus.next()? })
}

/// Pins process (or thread) `pid` to `cpu`; 0 is the calling thread.
pub fn pin(pid: i32, cpu: usize) -> Result<(), BenchError> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(os("CPU set"))?;
    sched_setaffinity(Pid::from_raw(pid), &set).map_err(os("sched_setaffinity"))
}

/// The calling thread pinned to a CPU until this is dropped, when it gets
/// back the CPUs it had.
#[derive(Debug)]
pub struct Pinned {
    before: CpuSet,
}

impl Pinned {
    /// Pins the calling thread to `cpu`.
    pub fn here(cpu: usize) -> Result<Pinned, BenchError> {
        let before = sched_getaffinity(Pid::from_raw(0)).map_err(os("sched_getaffinity"))?;
        pin(0, cpu)?;
        Ok(Pinned { before })
    }

    /// For a measurement with `peer`: the calling thread goes to the near
    /// CPU of [`pair`] and `peer` to the far one; nothing if pinning is off.
    pub fn pair_with(peer: i32) -> Result<Option<Pinned>, BenchError> {
        let Some(p) = pair() else { return Ok(None) };
        pin(peer, p.far)?;
        Pinned::here(p.near).map(Some)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.before);
    }
}
