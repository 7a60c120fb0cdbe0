//! Shared-memory segments (sealed memfds) and eventfd doorbells.
//!
//! # Safety
//!
//! This module owns the `mmap`/`munmap` of every segment. A [`Segment`]
//! maps the whole memfd once and unmaps it on drop; views into it (rings,
//! headers) hold an `Arc<Segment>`, so the mapping outlives them. A peer
//! cannot shrink the file under us: [`Segment::open`] refuses any memfd
//! that is not sealed against shrinking and growing, so no access inside
//! the mapped length can raise SIGBUS.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use hybus_layout::doorbell::{Wait, Wake};
use hybus_layout::header::{HeaderError, HeaderInfo, SegmentHeader, SegmentKind, HEADER_REGION};
use hybus_layout::ring::{self, Consumer, Producer, Ring, RingError};

/// The seals every segment must carry before it is mapped by anyone.
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_SEAL);

/// The mode of every segment's inode: read for its owner (the creating
/// process's uid), nothing for anyone else.
///
/// Why: a memfd is born with mode 0777, and a read-only descriptor is no
/// protection by itself: `open("/proc/self/fd/N", O_RDWR)` reopens the
/// inode, checked against its mode only, and so hands a receiver a writable
/// descriptor of the sender's pool. With 0400 that reopen needs the owner's
/// write bit, which nobody has, so it fails with `EACCES` for every uid but
/// the owner's — and the owner (the daemon's uid) must first `fchmod` its own
/// inode, which only it (or `CAP_FOWNER`) may. Nobody needs the write bit:
/// the writer got its writable descriptor from the daemon and `mmap` checks
/// the descriptor's access mode, not the inode's. The other ways to a
/// writable mapping are closed by the kernel on their own: `mprotect`
/// cannot add `PROT_WRITE` to a shared mapping of a read-only descriptor
/// (`EACCES`); `/proc/<pid>/fd/*` and `pidfd_getfd` of another process need
/// ptrace rights over it (same uid, or `CAP_SYS_PTRACE`), and the reopen is
/// still checked against 0400; `/proc/<pid>/map_files/*` needs
/// `CAP_SYS_ADMIN` (or `CAP_CHECKPOINT_RESTORE`); `fchmod` needs the owner.
/// `tests/tests/segment_access.rs` tries each of them as a second uid.
pub const OWNER_READ_ONLY: u32 = 0o400;

fn restrict(fd: &OwnedFd) -> Result<(), SegmentError> {
    nix::sys::stat::fchmod(fd, nix::sys::stat::Mode::from_bits_truncate(OWNER_READ_ONLY)).map_err(os("fchmod"))
}

/// Largest segment this crate will create or map (4 GiB).
pub const MAX_SEGMENT: usize = 4 << 30;

/// Why a segment could not be created or mapped.
#[derive(Debug)]
pub enum SegmentError {
    /// A system call failed.
    Os {
        /// What was being done.
        op: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The memfd lacks a required seal: its owner could truncate it under us.
    NotSealed {
        /// The seals found.
        found: i32,
    },
    /// The size is zero, above [`MAX_SEGMENT`], or not what was expected.
    BadSize {
        /// The size found or asked for.
        size: u64,
    },
    /// The header does not validate.
    Header(HeaderError),
    /// A ring inside the segment does not validate.
    Ring(RingError),
    /// The memfd's inode belongs to another uid: we cannot make it private.
    NotOurs {
        /// The uid that owns it.
        owner: u32,
    },
}

impl fmt::Display for SegmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Os { op, errno } => write!(f, "{op} failed: {}", errno.desc()),
            Self::NotSealed { found } => {
                write!(f, "segment is not sealed against resizing (seals {found:#x}); refusing to map it")
            }
            Self::BadSize { size } => write!(f, "segment size {size} is out of range"),
            Self::Header(e) => write!(f, "bad segment header: {e}"),
            Self::Ring(e) => write!(f, "bad ring in segment: {e}"),
            Self::NotOurs { owner } => write!(f, "segment belongs to uid {owner}, not to us; refusing to hand it out"),
        }
    }
}

impl std::error::Error for SegmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Header(e) => Some(e),
            Self::Ring(e) => Some(e),
            _ => None,
        }
    }
}

impl From<HeaderError> for SegmentError {
    fn from(e: HeaderError) -> Self {
        SegmentError::Header(e)
    }
}

impl From<RingError> for SegmentError {
    fn from(e: RingError) -> Self {
        SegmentError::Ring(e)
    }
}

fn os(op: &'static str) -> impl FnOnce(Errno) -> SegmentError {
    move |errno| SegmentError::Os { op, errno }
}

/// How a segment is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write (rings; the owner's pool).
    ReadWrite,
    /// Read only (another client's pool).
    ReadOnly,
}

/// A mapped memfd segment. Unmapped on drop.
pub struct Segment {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
    access: Access,
}

// SAFETY: the mapping is plain shared memory; the struct only hands out
// atomics-based views and raw byte reads, which are sound from any thread.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.len)
            .field("access", &self.access)
            .finish()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`; every
        // view into it holds an `Arc<Segment>`, so none outlives this.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

impl Segment {
    /// Creates a sealed memfd of `len` bytes, maps it read-write, and writes its header.
    pub fn create(name: &CStr, kind: SegmentKind, len: usize, param: u64) -> Result<Segment, SegmentError> {
        if !(HEADER_REGION..=MAX_SEGMENT).contains(&len) {
            return Err(SegmentError::BadSize { size: len as u64 });
        }
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(os("memfd_create"))?;
        restrict(&fd)?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(os("ftruncate"))?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(os("F_ADD_SEALS"))?;
        let seg = Segment::map(fd, len, Access::ReadWrite)?;
        seg.header().init(kind, len as u64, param);
        Ok(seg)
    }

    /// Maps a segment received from elsewhere, after checking its seals and size,
    /// and validates its header. Returns the validated header too.
    pub fn open(fd: OwnedFd, access: Access, kind: SegmentKind) -> Result<(Segment, HeaderInfo), SegmentError> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(os("F_GET_SEALS"))?;
        if !SealFlag::from_bits_truncate(seals).contains(REQUIRED_SEALS) {
            return Err(SegmentError::NotSealed { found: seals });
        }
        let st = nix::sys::stat::fstat(&fd).map_err(os("fstat"))?;
        let size = st.st_size as u64;
        if size < HEADER_REGION as u64 || size > MAX_SEGMENT as u64 {
            return Err(SegmentError::BadSize { size });
        }
        let seg = Segment::map(fd, size as usize, access)?;
        let info = seg.header().validate(kind, seg.len)?;
        Ok((seg, info))
    }

    fn map(fd: OwnedFd, len: usize, access: Access) -> Result<Segment, SegmentError> {
        let prot = match access {
            Access::ReadWrite => ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            Access::ReadOnly => ProtFlags::PROT_READ,
        };
        let nz = NonZeroUsize::new(len).ok_or(SegmentError::BadSize { size: 0 })?;
        // SAFETY: a fresh shared mapping of a file we hold; the kernel picks
        // the address, so no existing memory is replaced.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, &fd, 0) }.map_err(os("mmap"))?;
        Ok(Segment { fd, ptr: ptr.cast(), len, access })
    }

    /// Makes a segment someone handed us (a pool brought back after a
    /// restart) as safe to hand out as one we created: refused unless its
    /// inode belongs to our effective uid, then set to mode 0400 (see
    /// [`OWNER_READ_ONLY`]).
    pub fn restrict(&self) -> Result<(), SegmentError> {
        let st = nix::sys::stat::fstat(&self.fd).map_err(os("fstat"))?;
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            return Err(SegmentError::NotOurs { owner: st.st_uid });
        }
        restrict(&self.fd)
    }

    /// The memfd (to pass to a peer with SCM_RIGHTS).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new read-only descriptor of the same memory, for a peer that may only read it.
    ///
    /// Reopens the memfd through `/proc/self/fd` with `O_RDONLY`: a mapping
    /// made from that descriptor can never be writable, whatever the peer does.
    pub fn read_only_fd(&self) -> Result<OwnedFd, SegmentError> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map_err(os("reopen read-only"))
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a valid segment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the segment is mapped.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The segment header.
    pub fn header(&self) -> &SegmentHeader {
        // SAFETY: every mapping is at least HEADER_REGION bytes and page
        // aligned; the header is atomics only, so sharing it with a writer is sound.
        unsafe { self.ptr.cast::<SegmentHeader>().as_ref() }
    }

    fn ring_region(&self, offset: usize, len: usize) -> Result<NonNull<u8>, SegmentError> {
        if offset % hybus_layout::shm::LINE != 0 || offset.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(SegmentError::BadSize { size: (offset as u64).saturating_add(len as u64) });
        }
        // SAFETY: `offset + len <= self.len` (checked above).
        Ok(unsafe { self.ptr.add(offset) })
    }

    /// Initialises a ring of `capacity` slots at `offset` and returns both ends.
    pub fn init_ring(self: &Arc<Self>, offset: usize, capacity: u64) -> Result<(Producer, Consumer), SegmentError> {
        let len = ring::memory_size(capacity);
        let base = self.ring_region(offset, len)?;
        self.require_writable()?;
        // SAFETY: the region is inside this writable mapping, which the
        // keep-alive Arc holds open for as long as either end lives.
        Ok(unsafe { Ring::init(base, len, capacity, Some(self.clone())) }?)
    }

    /// Attaches to the ring of `capacity` slots at `offset` as its producer.
    pub fn ring_producer(self: &Arc<Self>, offset: usize, capacity: u64) -> Result<Producer, SegmentError> {
        let len = ring::memory_size(capacity);
        let base = self.ring_region(offset, len)?;
        self.require_writable()?;
        // SAFETY: as in `init_ring`; the ring's contents are checked by attach.
        let p = unsafe { Ring::attach_producer(base, len, Some(self.clone())) }?;
        if p.capacity() != capacity {
            return Err(SegmentError::Ring(RingError::BadCapacity(p.capacity())));
        }
        Ok(p)
    }

    /// Attaches to the ring of `capacity` slots at `offset` as its consumer.
    pub fn ring_consumer(self: &Arc<Self>, offset: usize, capacity: u64) -> Result<Consumer, SegmentError> {
        let len = ring::memory_size(capacity);
        let base = self.ring_region(offset, len)?;
        self.require_writable()?;
        // SAFETY: as in `init_ring`; the ring's contents are checked by attach.
        let c = unsafe { Ring::attach_consumer(base, len, Some(self.clone())) }?;
        if c.capacity() != capacity {
            return Err(SegmentError::Ring(RingError::BadCapacity(c.capacity())));
        }
        Ok(c)
    }

    fn require_writable(&self) -> Result<(), SegmentError> {
        match self.access {
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(SegmentError::Os { op: "ring on a read-only mapping", errno: Errno::EACCES }),
        }
    }

    /// Descriptors waiting in the ring of `capacity` slots at `offset` (see
    /// [`RingHeader::depth`](hybus_layout::ring::RingHeader::depth)), read without
    /// attaching to it, so on a read-only mapping too; `None` if `offset`
    /// is out of bounds or the indices make no sense.
    pub fn ring_depth(&self, offset: usize, capacity: u64) -> Option<u64> {
        let base = self.ring_region(offset, std::mem::size_of::<hybus_layout::ring::RingHeader>()).ok()?;
        // SAFETY: in bounds and line-aligned (`ring_region`), mapped while
        // `self` lives; the header is atomics only, valid for any bits.
        let header = unsafe { base.cast::<hybus_layout::ring::RingHeader>().as_ref() };
        header.depth(capacity)
    }

    /// The direct-channel counters of a [`SegmentKind::Channel`] segment.
    pub fn channel_counters(&self) -> &hybus_layout::channel::ChannelCounters {
        const OFF: usize = hybus_layout::channel::ChannelLayout::new(1).counters;
        const _: () = assert!(
            OFF % 128 == 0 && OFF + std::mem::size_of::<hybus_layout::channel::ChannelCounters>() <= HEADER_REGION
        );
        // SAFETY: every mapping is at least HEADER_REGION bytes (checked at
        // create/open) and page aligned, so the counters at OFF are in
        // bounds and 128-aligned; they are atomics only.
        unsafe { self.ptr.add(OFF).cast::<hybus_layout::channel::ChannelCounters>().as_ref() }
    }

    /// The bytes at `offset..offset + len`, or `None` if out of bounds.
    ///
    /// The slice aliases memory another process may write (the pool's
    /// owner can still scribble on a chunk it sent). The bytes are plain
    /// `u8`, so any value is valid, but they may change while read: copy
    /// them first when a decision must rest on them (rkyv validation).
    pub fn bytes(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len as u64)?;
        if end > self.len as u64 || offset < HEADER_REGION as u64 {
            return None;
        }
        // SAFETY: in bounds (checked above) and mapped while `self` lives.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset as usize), len) })
    }

    /// Starts fetching the cache line at `offset` into this CPU's cache: a
    /// hint, for a payload that will be read shortly. The line was written
    /// by another core, so reading it costs a transfer; begun when the
    /// descriptor is popped, the transfer overlaps with the bookkeeping done
    /// before the application reads the bytes. Nothing happens out of bounds
    /// or off x86-64.
    #[inline]
    pub fn prefetch(&self, offset: u64) {
        #[cfg(target_arch = "x86_64")]
        if offset < self.len as u64 {
            let p = self.ptr.as_ptr().wrapping_add(offset as usize);
            // SAFETY: SSE is part of x86-64; a prefetch neither reads nor
            // faults (and `p` is inside our mapping anyway).
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>().cast_const())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = offset;
    }

    /// Mutable bytes at `offset..offset + len` of a read-write mapping.
    ///
    /// # Safety
    ///
    /// The caller must own this range exclusively (an allocated pool chunk
    /// no one else writes) for the lifetime of the slice.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, offset: u64, len: usize) -> Option<&mut [u8]> {
        if self.access != Access::ReadWrite {
            return None;
        }
        let end = offset.checked_add(len as u64)?;
        if end > self.len as u64 || offset < HEADER_REGION as u64 {
            return None;
        }
        // SAFETY: in bounds and writable; exclusivity is the caller's contract.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset as usize), len) })
    }
}

/// An eventfd used as a doorbell: [`Wake`] writes 1, [`Wait`] reads (and so resets) it.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd, counter zero, blocking reads.
    pub fn new() -> Result<EventFd, SegmentError> {
        let fd = nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .map_err(os("eventfd"))?;
        Ok(EventFd { fd: fd.into() })
    }

    /// Wraps an eventfd received from a peer.
    pub fn from_fd(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    /// The descriptor (for epoll, or to pass to a peer).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Consumes a wake-up that poll/epoll reported as ready (one `read`).
    pub fn consume_ready(&self) {
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&self.fd, &mut b);
    }

    /// Consumes a pending wake-up without blocking; returns whether there was one.
    pub fn try_consume(&self) -> bool {
        let mut pfd = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        if matches!(nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0) {
            let mut b = [0u8; 8];
            return nix::unistd::read(&self.fd, &mut b).is_ok();
        }
        false
    }
}

impl Wake for EventFd {
    #[inline]
    fn wake(&self) {
        // Fails only if the counter would overflow (2^64 - 2 pending
        // wake-ups), in which case the consumer is awake anyway.
        let _ = nix::unistd::write(&self.fd, &1u64.to_ne_bytes());
    }
}

impl Wait for EventFd {
    fn wait(&self, timeout: Option<Duration>) {
        let mut b = [0u8; 8];
        match timeout {
            // One syscall: a blocking read returns once the counter is non-zero.
            None => {
                let _ = nix::unistd::read(&self.fd, &mut b);
            }
            Some(t) => {
                let ms = t.as_millis().clamp(1, i32::MAX as u128) as i32;
                let ms = nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
                let mut pfd = [nix::poll::PollFd::new(self.fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                if matches!(nix::poll::poll(&mut pfd, ms), Ok(n) if n > 0) {
                    let _ = nix::unistd::read(&self.fd, &mut b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybus_layout::descriptor::{Descriptor, Kind};

    #[test]
    fn create_seal_and_reopen() {
        let seg = Segment::create(c"t", SegmentKind::Pool, 16384, 5).unwrap();
        let ro = seg.read_only_fd().unwrap();
        let (view, info) = Segment::open(ro, Access::ReadOnly, SegmentKind::Pool).unwrap();
        assert_eq!(info.param, 5);
        assert_eq!(view.len(), 16384);
        // SAFETY: nobody else writes this range in the test.
        unsafe { seg.bytes_mut(4096, 4).unwrap() }.copy_from_slice(b"ping");
        assert_eq!(view.bytes(4096, 4).unwrap(), b"ping");
        assert!(view.bytes(16384 - 2, 4).is_none());
        assert!(view.bytes(0, 4).is_none(), "the header is not payload");
        // A read-only descriptor cannot be mapped writable.
        let ro2 = seg.read_only_fd().unwrap();
        assert!(matches!(Segment::map(ro2, 16384, Access::ReadWrite), Err(SegmentError::Os { op: "mmap", .. })));
        let ro3 = seg.read_only_fd().unwrap();
        assert!(matches!(
            Segment::open(ro3, Access::ReadOnly, SegmentKind::Channel),
            Err(SegmentError::Header(HeaderError::WrongKind { .. }))
        ));
    }

    #[test]
    fn segments_are_private_to_their_owner() {
        let seg = Segment::create(c"m", SegmentKind::Pool, 16384, 1).unwrap();
        let st = nix::sys::stat::fstat(seg.fd()).unwrap();
        assert_eq!(st.st_mode & 0o7777, OWNER_READ_ONLY, "a memfd is born 0777: it must not leave us so");
        assert_eq!(st.st_uid, nix::unistd::geteuid().as_raw());
        seg.restrict().unwrap();
    }

    #[test]
    fn unsealed_memfd_is_refused() {
        let fd = memfd_create(c"u", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 8192).unwrap();
        assert!(matches!(Segment::open(fd, Access::ReadOnly, SegmentKind::Pool), Err(SegmentError::NotSealed { .. })));
    }

    #[test]
    fn ring_in_segment_with_eventfd() {
        let cap = 64;
        let size = HEADER_REGION + ring::memory_size(cap);
        let seg = Arc::new(Segment::create(c"r", SegmentKind::ClientRings, size, cap).unwrap());
        let (mut p, _c) = seg.init_ring(HEADER_REGION, cap).unwrap();
        let mut c = seg.ring_consumer(HEADER_REGION, cap).unwrap();
        let bell = EventFd::new().unwrap();
        assert!(c.prepare_park().unwrap());
        p.push(&Descriptor::new(Kind::Fire, 1, 1)).unwrap();
        p.notify(&bell);
        bell.wait(Some(Duration::from_secs(5)));
        c.finish_park();
        assert_eq!(c.pop().unwrap().unwrap().correlation, 1);
        assert!(!bell.try_consume());
    }
}
