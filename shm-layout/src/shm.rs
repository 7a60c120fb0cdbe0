//! What may live in shared memory.

/// Marker for types that may be placed in memory shared between processes.
///
/// # Safety
///
/// An implementor must be `#[repr(C)]` (or a primitive), have a layout that
/// is asserted at compile time, and contain no pointers, references, file
/// descriptors or addresses: only plain integers, atomics and offsets,
/// because every process maps the segment at a different address. Every
/// bit pattern a peer can write must be a valid value of the type (no
/// `bool`, no `enum`, no `char`), since a hostile peer controls the bytes.
pub unsafe trait ShmSafe: Sized {}

// SAFETY: plain integers have no pointers and every bit pattern is valid.
unsafe impl ShmSafe for u8 {}
// SAFETY: as above.
unsafe impl ShmSafe for u32 {}
// SAFETY: as above.
unsafe impl ShmSafe for u64 {}
#[cfg(not(loom))]
// SAFETY: an atomic has the layout of its integer and every bit pattern is valid.
unsafe impl ShmSafe for std::sync::atomic::AtomicU32 {}
#[cfg(not(loom))]
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicU64 {}

/// One value on a cache line of its own.
///
/// 128 bytes, not 64: x86's adjacent-line prefetcher pulls cache lines in
/// pairs, so two hot words 64 bytes apart still bounce together (the same
/// reason crossbeam's `CachePadded` is 128 bytes on x86_64). Fixed here
/// rather than taken from crossbeam so that the shared layout does not
/// change with a dependency's choice.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Line<T>(pub T);

// SAFETY: `#[repr(C)]` wrapper adding only padding around a `ShmSafe` value.
unsafe impl<T: ShmSafe> ShmSafe for Line<T> {}

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Size of [`Line`]: the unit that separates words written by different processes.
pub const LINE: usize = 128;

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Line<u64>>() == LINE);
    assert!(std::mem::align_of::<Line<u64>>() == LINE);
};
