//! The machine's other limits, beside [`cacheline_pingpong_2p`](crate::cacheline_pingpong_2p):
//!
//! * [`cacheline_relay_3p`] — A → D → B → D → A over four cache lines,
//!   three processes spinning with yield: the floor for a brokered path
//!   (client → daemon → server → daemon → client) on this machine;
//! * [`eventfd_pingpong_2p`] — two processes blocking on eventfds: the floor
//!   for anything that sleeps between messages;
//! * [`uds_pingpong_2p`] — a Unix stream socket ping-pong carrying the
//!   payload: what a user would otherwise write.
//!
//! Children are forked from a process that may have other threads (an
//! embedded daemon), so they allocate nothing and take no lock: they spin
//! on atomics or make plain `read`/`write` system calls on fds and on
//! buffers allocated before the fork.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::Instant;

use hybus_layout::shm::Line;

use crate::error::os;
use crate::pingpong::WARMUP;
use crate::placement::Pinned;
use crate::process::{exit_code, finish, AtomicsOnly, ChildProcess, Shared};
use crate::spin::Spinner;
use crate::BenchError;

/// Spins before a waiter starts yielding. Zero: with three parties on two
/// cores, every spin only delays the party that needs the core; yielding at
/// once is the fastest relay measured here (as for the bus's "spin" strategy).
const SPINS: u64 = 0;

/// Four hops of the relay, each word alone on its line.
#[repr(C)]
struct Relay {
    a_to_d: Line<AtomicU64>,
    d_to_b: Line<AtomicU64>,
    b_to_d: Line<AtomicU64>,
    d_to_a: Line<AtomicU64>,
}

// SAFETY: `#[repr(C)]`, four atomics on padded lines; zero is the start value.
unsafe impl AtomicsOnly for Relay {}

fn await_value(word: &AtomicU64, want: u64, peer: Option<&dyn crate::spin::Peer>) -> Result<(), BenchError> {
    let mut spin = Spinner::with_spins(peer, SPINS);
    loop {
        let v = word.load(Acquire);
        if v == want {
            return Ok(());
        }
        if v != want - 1 {
            return Err(BenchError::Mismatch { expected: want, got: v });
        }
        if let Err(e) = spin.pause() {
            if word.load(Acquire) != want {
                return Err(e);
            }
        }
    }
}

/// Round trips of a cache line relayed A → D → B → D → A by three
/// processes, each spinning with yield. Returns `round_trips` samples (ns).
pub fn cacheline_relay_3p(round_trips: u64) -> Result<Vec<u64>, BenchError> {
    let relay = Shared::<Relay>::new()?;
    let r: &Relay = &relay;
    let total = WARMUP + round_trips;
    // SAFETY: the children only spin on atomics in shared memory and return.
    let d = unsafe {
        ChildProcess::fork(|| {
            exit_code((1..=total).try_for_each(|i| {
                await_value(&r.a_to_d, i, None)?;
                r.d_to_b.store(i, Release);
                await_value(&r.b_to_d, i, None)?;
                r.d_to_a.store(i, Release);
                Ok(())
            }))
        })
    }?;
    // SAFETY: as above.
    let b = unsafe {
        ChildProcess::fork(|| {
            exit_code((1..=total).try_for_each(|i| {
                await_value(&r.d_to_b, i, None)?;
                r.b_to_d.store(i, Release);
                Ok(())
            }))
        })
    }?;
    let mut samples = Vec::with_capacity(round_trips as usize);
    let result = (|| {
        let mut t0 = Instant::now();
        for i in 1..=total {
            // SYNC: each store is read by the next hop's Acquire load.
            r.a_to_d.store(i, Release);
            await_value(&r.d_to_a, i, Some(&d))?;
            let t1 = Instant::now();
            if i > WARMUP {
                samples.push((t1 - t0).as_nanos() as u64);
            }
            t0 = t1;
        }
        Ok(())
    })();
    finish(result, d)?;
    b.join()?;
    Ok(samples)
}

fn eventfd() -> Result<OwnedFd, BenchError> {
    nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
        .map(OwnedFd::from)
        .map_err(os("eventfd"))
}

fn efd_write(fd: &OwnedFd) -> Result<(), BenchError> {
    nix::unistd::write(fd, &1u64.to_ne_bytes()).map(drop).map_err(os("eventfd write"))
}

fn efd_read(fd: &OwnedFd) -> Result<(), BenchError> {
    let mut b = [0u8; 8];
    loop {
        match nix::unistd::read(fd, &mut b) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map(drop).map_err(os("eventfd read")),
        }
    }
}

/// Round trips between two processes that block on eventfds (every message
/// is a wake-up system call). Returns `round_trips` samples (ns).
pub fn eventfd_pingpong_2p(round_trips: u64) -> Result<Vec<u64>, BenchError> {
    let (ping, pong) = (eventfd()?, eventfd()?);
    let total = WARMUP + round_trips;
    // SAFETY: the child only makes read/write system calls on fds it inherited.
    let child = unsafe {
        ChildProcess::fork(|| {
            exit_code((0..total).try_for_each(|_| {
                efd_read(&ping)?;
                efd_write(&pong)
            }))
        })
    }?;
    let _pinned = Pinned::pair_with(child.pid())?;
    let mut samples = Vec::with_capacity(round_trips as usize);
    let result = (|| {
        for i in 0..total {
            let t = Instant::now();
            efd_write(&ping)?;
            efd_read(&pong)?;
            if i >= WARMUP {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(())
    })();
    finish(result, child)?;
    Ok(samples)
}

fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> Result<(), BenchError> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(os("socket write")(e)),
        }
    }
    Ok(())
}

fn read_exact(fd: &OwnedFd, mut buf: &mut [u8]) -> Result<(), BenchError> {
    while !buf.is_empty() {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return Err(BenchError::PeerGone),
            Ok(n) => buf = &mut buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(os("socket read")(e)),
        }
    }
    Ok(())
}

/// Round trips of a `payload`-byte message over a Unix stream socket pair
/// between two processes (blocking reads): the child reads the whole
/// message and sends it back. Returns `round_trips` samples (ns).
pub fn uds_pingpong_2p(round_trips: u64, payload: usize) -> Result<Vec<u64>, BenchError> {
    uds_pingpong_2p_placed(round_trips, payload).map(|(samples, _)| samples)
}

/// The CPUs each party of a two-process measurement was seen on (bit `i`:
/// CPU `i`; CPUs from 63 up all count as 63), looked at every 64 round trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    /// The measuring process.
    pub near: u64,
    /// Its peer.
    pub far: u64,
}

impl Placement {
    /// Whether both parties stayed on one and the same CPU throughout.
    pub fn same_cpu(&self) -> bool {
        self.near == self.far && self.near.count_ones() == 1
    }

    /// The CPUs of a mask as a list, e.g. `0` or `0,1`.
    pub fn cpus(mask: u64) -> String {
        let v: Vec<String> = (0..64).filter(|i| mask & (1 << i) != 0).map(|i| i.to_string()).collect();
        if v.is_empty() {
            "?".into()
        } else {
            v.join(",")
        }
    }
}

/// The bit of the CPU the caller runs on now (0 if the kernel will not say).
fn cpu_bit() -> u64 {
    nix::sched::sched_getcpu().map_or(0, |c| 1 << c.min(63))
}

/// [`uds_pingpong_2p`], and where the two processes ran: left to the
/// scheduler, a forked child often shares its parent's CPU, and a blocking
/// ping-pong on one CPU is a context switch per message (a few µs), across
/// two an interrupt to a sleeping CPU (tens of µs on a VM).
pub fn uds_pingpong_2p_placed(round_trips: u64, payload: usize) -> Result<(Vec<u64>, Placement), BenchError> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    let (near, far) =
        socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(os("socketpair"))?;
    let payload = payload.max(1);
    // Both buffers exist before the fork: the child allocates nothing.
    let mut child_buf = vec![0u8; payload];
    let mut buf = vec![0u8; payload];
    let total = WARMUP + round_trips;
    let child = {
        let far = &far;
        let cb = &mut child_buf;
        // SAFETY: the child makes read/write system calls on an inherited fd
        // and its own copy of a buffer allocated before the fork.
        unsafe {
            ChildProcess::fork(move || {
                let mut seen = 0u64;
                exit_code(
                    (0..total)
                        .try_for_each(|i| {
                            read_exact(far, cb)?;
                            if i % 64 == 0 {
                                seen |= cpu_bit();
                            }
                            write_all(far, cb)
                        })
                        .and_then(|()| write_all(far, &(seen | cpu_bit()).to_le_bytes())),
                )
            })
        }?
    };
    drop(far);
    let mut samples = Vec::with_capacity(round_trips as usize);
    let mut placement = Placement::default();
    let result = (|| {
        for i in 0..total {
            let n = payload.min(8);
            buf[..n].copy_from_slice(&i.to_le_bytes()[..n]);
            if i % 64 == 0 {
                placement.near |= cpu_bit();
            }
            let t = Instant::now();
            write_all(&near, &buf)?;
            read_exact(&near, &mut buf)?;
            if buf[..n] != i.to_le_bytes()[..n] {
                return Err(BenchError::Mismatch { expected: i, got: 0 });
            }
            if i >= WARMUP {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        let mut far_seen = [0u8; 8];
        read_exact(&near, &mut far_seen)?;
        placement.far = u64::from_le_bytes(far_seen);
        Ok(())
    })();
    let _ = near.as_fd();
    finish(result, child)?;
    Ok((samples, placement))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_measures_what_it_says() {
        assert_eq!(cacheline_relay_3p(200).unwrap().len(), 200);
        assert_eq!(eventfd_pingpong_2p(200).unwrap().len(), 200);
        assert_eq!(uds_pingpong_2p(200, 8).unwrap().len(), 200);
        assert_eq!(uds_pingpong_2p(20, 1 << 20).unwrap().len(), 20);
    }
}
