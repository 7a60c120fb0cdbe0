//! A second process over shared memory: anonymous shared mappings and a forked child.
//!
//! # Safety
//!
//! This module owns the `mmap`/`munmap` of [`SharedMap`] and the `fork` of
//! [`ChildProcess`]. A mapping made with `MAP_SHARED` before `fork` is the
//! same memory in parent and child, so the two processes talk through
//! atomics in it exactly as two threads would. The child runs one function
//! and leaves with `_exit`: it never returns into the parent's code, never
//! runs the destructors of the parent's copied state, and never flushes
//! the parent's copied stdio buffers.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, getppid, ForkResult, Pid};

use crate::error::{os, PANIC_EXIT};
use crate::spin::Peer;
use crate::BenchError;

/// Zero-filled memory that a forked child shares with its parent (`MAP_SHARED | MAP_ANONYMOUS`).
///
/// Make it before [`ChildProcess::fork`]; both processes then see the same
/// bytes at the same address. Unmapped on drop (in each process separately).
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the struct is an address and a length; what is done with the
// memory is the business of the typed views, which use atomics or are
// single-owner (see `bare_ring`).
unsafe impl Send for SharedMap {}
// SAFETY: as above; `&SharedMap` only hands out the pointer.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` zeroed bytes, page-aligned, readable and writable, shared across `fork`.
    pub fn new(len: usize) -> Result<SharedMap, BenchError> {
        let nz =
            NonZeroUsize::new(len).ok_or(BenchError::Os { op: "mmap of 0 bytes", errno: nix::errno::Errno::EINVAL })?;
        // SAFETY: a fresh anonymous mapping; the kernel picks the address,
        // so no existing memory is replaced.
        let ptr =
            unsafe { mmap_anonymous(None, nz, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
                .map_err(os("mmap shared anonymous"))?;
        Ok(SharedMap { ptr: ptr.cast(), len })
    }

    /// Start of the mapping (page-aligned).
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a mapping has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; every view into it
        // borrows `self`, so none outlives this.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Types a shared reference may point at while another process writes them.
///
/// # Safety
///
/// The type is `#[repr(C)]`, made only of atomics (and padding), and every
/// bit pattern — in particular all zeros — is a valid value.
pub(crate) unsafe trait AtomicsOnly: Sync {}

/// One `T` alone in a [`SharedMap`], zero-initialised.
pub(crate) struct Shared<T: AtomicsOnly> {
    map: SharedMap,
    _t: PhantomData<T>,
}

impl<T: AtomicsOnly> Shared<T> {
    /// A zeroed `T` in fresh shared memory.
    pub(crate) fn new() -> Result<Shared<T>, BenchError> {
        const { assert!(std::mem::align_of::<T>() <= 4096) };
        Ok(Shared { map: SharedMap::new(std::mem::size_of::<T>().max(1))?, _t: PhantomData })
    }
}

impl<T: AtomicsOnly> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mapping is page-aligned (enough for `T`, asserted in
        // `new`), at least `size_of::<T>()` long, zero-filled (a valid `T`
        // by the `AtomicsOnly` contract) and lives as long as `self`; `T` is
        // atomics only, so sharing it with a writer is sound.
        unsafe { self.map.as_ptr().cast::<T>().as_ref() }
    }
}

/// A forked child process, killed and reaped when dropped.
///
/// The guard makes sure no measurement leaves a spinning process behind:
/// dropping it without [`join`](Self::join) sends `SIGKILL` and waits. The
/// child also dies with its parent (`PR_SET_PDEATHSIG`), so a parent killed
/// mid-run does not leave it spinning either.
#[derive(Debug)]
pub struct ChildProcess {
    pid: Pid,
    /// The exit code once reaped (or 128 + signal); `None` while it may run.
    code: Cell<Option<i32>>,
}

impl ChildProcess {
    /// Forks; the child runs `f` and exits with the code it returns (101 if it panics).
    ///
    /// Returns in the parent only. `f` runs on a copy of the parent's memory
    /// at the moment of the fork: it sees later changes only through
    /// mappings shared before the fork ([`SharedMap`], a hybus
    /// [`Segment`](hybus_os::segment::Segment)), and the parent sees
    /// nothing of what it does except through them and its exit code.
    ///
    /// # Safety
    ///
    /// If the calling process has other threads, the child has only a copy
    /// of this one, and any lock another thread held at the fork stays held
    /// forever in the child. `f` must then avoid everything that may take
    /// such a lock: no allocation, no stdio, no environment access, no
    /// `std::thread`. Spinning on atomics in shared memory and returning is
    /// always fine. In a single-threaded process `f` may do anything.
    pub unsafe fn fork<F: FnOnce() -> i32>(f: F) -> Result<ChildProcess, BenchError> {
        let parent = getpid();
        // SAFETY: the caller guarantees `f` does only what is sound after a
        // fork (see `# Safety`); the child never returns from this function.
        match unsafe { fork() }.map_err(os("fork"))? {
            ForkResult::Parent { child } => Ok(ChildProcess { pid: child, code: Cell::new(None) }),
            ForkResult::Child => {
                // Die with the parent; if it is already gone, do not start.
                let orphan = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent;
                let code = if orphan {
                    BenchError::PeerGone.exit_code()
                } else {
                    catch_unwind(AssertUnwindSafe(f)).unwrap_or(PANIC_EXIT)
                };
                // SAFETY: ends this process at once, without unwinding into
                // or running destructors of the parent's copied frames.
                unsafe { libc::_exit(code) }
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Whether the child has exited (reaps it if so). Never blocks.
    pub fn has_exited(&self) -> bool {
        if self.code.get().is_some() {
            return true;
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(WaitStatus::Exited(_, c)) => {
                self.code.set(Some(c));
                true
            }
            Ok(WaitStatus::Signaled(_, s, _)) => {
                self.code.set(Some(128 + s as i32));
                true
            }
            // Stopped, continued, traced: still there.
            Ok(_) => false,
            // ECHILD: someone else reaped it; it is gone either way.
            Err(_) => {
                self.code.set(Some(-1));
                true
            }
        }
    }

    /// Waits for the child to exit (at most [`STALL`](crate::pingpong::STALL),
    /// then kills it) and turns a non-zero exit into [`BenchError::ChildFailed`].
    pub fn join(self) -> Result<(), BenchError> {
        let start = Instant::now();
        while !self.has_exited() {
            if start.elapsed() > crate::pingpong::STALL {
                return Err(BenchError::Stalled); // `Drop` kills and reaps it.
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        match self.code.get() {
            Some(0) => Ok(()),
            Some(code) => Err(BenchError::ChildFailed { code }),
            None => unreachable!("has_exited sets the code"),
        }
    }
}

impl Peer for ChildProcess {
    fn gone(&self) -> bool {
        self.has_exited()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.code.get().is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}

/// Ends a two-process exchange: joins the child, and prefers its failure
/// (it says what went wrong) over the parent's "the peer went away".
pub(crate) fn finish(result: Result<(), BenchError>, child: ChildProcess) -> Result<(), BenchError> {
    match result {
        Ok(()) => child.join(),
        Err(BenchError::PeerGone) => child.join().and(Err(BenchError::PeerGone)),
        Err(e) => Err(e), // dropping `child` kills and reaps it
    }
}

/// The exit code for a child's result.
pub(crate) fn exit_code(r: Result<(), BenchError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => e.exit_code(),
    }
}
