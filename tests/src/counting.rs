//! A counting global allocator: the system allocator, plus how many bytes
//! and allocations are live. A binary or test file that wants the counts
//! installs it with `#[global_allocator] static A: Counting = Counting;`;
//! [`live`] then says what the whole process holds on the heap, so that a
//! test can tell memory the code under test keeps from memory it returns.
//!
//! # Safety
//!
//! [`Counting`] forwards every call to [`System`] unchanged and only adds
//! relaxed counter updates, which allocate nothing.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// The system allocator, counting live bytes and live allocations.
#[derive(Debug)]
pub struct Counting;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_ALLOCS: AtomicI64 = AtomicI64::new(0);

/// What is live on the heap at one moment (zeros unless [`Counting`] is the global allocator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Bytes asked for and not yet freed.
    pub bytes: i64,
    /// Allocations not yet freed.
    pub allocs: i64,
}

/// What is live on the heap now.
pub fn live() -> Live {
    Live { bytes: LIVE_BYTES.load(Relaxed), allocs: LIVE_ALLOCS.load(Relaxed) }
}

fn counted(p: *mut u8, size: usize) -> *mut u8 {
    if !p.is_null() {
        LIVE_BYTES.fetch_add(size as i64, Relaxed);
        LIVE_ALLOCS.fetch_add(1, Relaxed);
    }
    p
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged (so `System`'s guarantees hold), and only adds counter updates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        counted(unsafe { System.alloc(layout) }, layout.size())
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        counted(unsafe { System.alloc_zeroed(layout) }, layout.size())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        }
        p
    }
}
