//! Atomics used by the shared structures, swapped for loom's under `cfg(loom)`
//! so that the ring and doorbell protocols can be model-checked (the way
//! crossbeam-epoch does it).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(loom)]
pub(crate) use loom::thread::yield_now;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

/// A spin-loop hint that loom understands as "let another thread run".
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
