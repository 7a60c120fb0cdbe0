//! The segment header: what every shared-memory segment starts with.
//!
//! A process that receives a segment from elsewhere validates the header
//! with [`SegmentHeader::validate`] before it believes anything else in it,
//! and keeps the validated [`HeaderInfo`] privately: the peer may rewrite
//! the header afterwards, and nothing is re-read from it.

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;

use crate::sync::{AtomicU32, AtomicU64};

/// `"HYBUSSEG"` as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"HYBUSSEG");

/// Bumped on every incompatible change of a shared structure or of the control protocol.
pub const ABI_VERSION: u32 = 3;

/// Size of the header region at the start of every segment (one page, so
/// that what follows is page-aligned).
pub const HEADER_REGION: usize = 4096;

/// What a segment holds.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    /// A client's ring to the daemon followed by its ring from the daemon.
    ClientRings = 1,
    /// A client's chunk pool.
    Pool = 2,
    /// A direct channel between two clients.
    Channel = 3,
}

impl SegmentKind {
    /// Decodes a kind word.
    pub const fn from_u32(v: u32) -> Option<SegmentKind> {
        match v {
            1 => Some(SegmentKind::ClientRings),
            2 => Some(SegmentKind::Pool),
            3 => Some(SegmentKind::Channel),
            _ => None,
        }
    }
}

/// The first bytes of every segment.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SegmentHeader {
    magic: AtomicU64,
    layout_hash: AtomicU64,
    size: AtomicU64,
    abi_version: AtomicU32,
    kind: AtomicU32,
    /// Kind-specific parameter (ring capacity, pool id, ...).
    param: AtomicU64,
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, atomics only, every bit pattern valid.
unsafe impl crate::shm::ShmSafe for SegmentHeader {}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SegmentHeader>() == 128);
    assert!(align_of::<SegmentHeader>() == 128);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, layout_hash) == 8);
    assert!(offset_of!(SegmentHeader, size) == 16);
    assert!(offset_of!(SegmentHeader, abi_version) == 24);
    assert!(offset_of!(SegmentHeader, kind) == 28);
    assert!(offset_of!(SegmentHeader, param) == 32);
};

/// A hash of every shared structure's size, alignment and field offsets.
///
/// Two builds that disagree on any of them disagree on this value, so a
/// client built against another layout is refused at the first mapping
/// instead of misreading memory.
pub const LAYOUT_HASH: u64 = {
    use std::mem::{align_of, size_of};
    let parts: [u64; 10] = [
        size_of::<SegmentHeader>() as u64,
        align_of::<SegmentHeader>() as u64,
        size_of::<crate::ring::RingHeader>() as u64,
        align_of::<crate::ring::RingHeader>() as u64,
        size_of::<crate::descriptor::Slot>() as u64,
        align_of::<crate::descriptor::Slot>() as u64,
        crate::descriptor::INLINE_CAPACITY as u64,
        HEADER_REGION as u64,
        crate::pool::CHUNK_ALIGN as u64,
        ABI_VERSION as u64,
    ];
    fnv1a(&parts)
};

/// FNV-1a over the little-endian bytes of `parts` (for the build hashes:
/// [`LAYOUT_HASH`], [`SCHEMA_HASH`](crate::control::SCHEMA_HASH)).
pub(crate) const fn fnv1a(parts: &[u64]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut i = 0;
    while i < parts.len() {
        let mut b = 0;
        while b < 8 {
            h ^= (parts[i] >> (b * 8)) & 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
            b += 1;
        }
        i += 1;
    }
    h
}

/// What a validated header says, copied into private memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderInfo {
    /// The segment's kind.
    pub kind: SegmentKind,
    /// The segment's size in bytes.
    pub size: u64,
    /// The kind-specific parameter.
    pub param: u64,
}

/// Why a segment's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The mapping is smaller than the header region.
    TooSmall(usize),
    /// The magic number is wrong: this is not a hybus segment.
    BadMagic(u64),
    /// The segment was made by a daemon of another ABI version.
    AbiVersion {
        /// Version in the segment.
        found: u32,
        /// Version of this build.
        expected: u32,
    },
    /// The structures' layout differs between the two builds.
    LayoutHash {
        /// Hash in the segment.
        found: u64,
        /// Hash of this build.
        expected: u64,
    },
    /// The kind word is unknown or not the one expected.
    WrongKind {
        /// Kind word in the segment.
        found: u32,
        /// The kind the caller expected.
        expected: SegmentKind,
    },
    /// The header's size disagrees with the mapping's.
    SizeMismatch {
        /// Size in the header.
        header: u64,
        /// Size of the mapping.
        mapping: usize,
    },
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall(n) => {
                write!(f, "segment of {n} bytes is smaller than its {HEADER_REGION}-byte header")
            }
            Self::BadMagic(m) => write!(f, "not a hybus segment (magic {m:#018x})"),
            Self::AbiVersion { found, expected } => {
                write!(f, "segment has ABI version {found}, this build speaks {expected}")
            }
            Self::LayoutHash { found, expected } => write!(
                f,
                "segment layout hash {found:#018x} differs from this build's {expected:#018x}: rebuild against the same hybus-layout"
            ),
            Self::WrongKind { found, expected } => {
                write!(f, "segment kind {found} is not the expected {expected:?}")
            }
            Self::SizeMismatch { header, mapping } => {
                write!(f, "segment header says {header} bytes but the mapping has {mapping}")
            }
        }
    }
}

impl std::error::Error for HeaderError {}

impl SegmentHeader {
    /// Writes a header describing a segment of `size` bytes. Done once, by the creator.
    pub fn init(&self, kind: SegmentKind, size: u64, param: u64) {
        self.layout_hash.store(LAYOUT_HASH, Relaxed);
        self.size.store(size, Relaxed);
        self.abi_version.store(ABI_VERSION, Relaxed);
        self.kind.store(kind as u32, Relaxed);
        self.param.store(param, Relaxed);
        // Magic last: a half-written header never validates.
        self.magic.store(MAGIC, std::sync::atomic::Ordering::Release);
    }

    /// Checks a header found at the start of a mapping of `mapping_len` bytes.
    pub fn validate(&self, expected: SegmentKind, mapping_len: usize) -> Result<HeaderInfo, HeaderError> {
        if mapping_len < HEADER_REGION {
            return Err(HeaderError::TooSmall(mapping_len));
        }
        let magic = self.magic.load(std::sync::atomic::Ordering::Acquire);
        if magic != MAGIC {
            return Err(HeaderError::BadMagic(magic));
        }
        let found = self.abi_version.load(Relaxed);
        if found != ABI_VERSION {
            return Err(HeaderError::AbiVersion { found, expected: ABI_VERSION });
        }
        let hash = self.layout_hash.load(Relaxed);
        if hash != LAYOUT_HASH {
            return Err(HeaderError::LayoutHash { found: hash, expected: LAYOUT_HASH });
        }
        let kind_word = self.kind.load(Relaxed);
        let kind = match SegmentKind::from_u32(kind_word) {
            Some(k) if k == expected => k,
            _ => return Err(HeaderError::WrongKind { found: kind_word, expected }),
        };
        let size = self.size.load(Relaxed);
        if size != mapping_len as u64 {
            return Err(HeaderError::SizeMismatch { header: size, mapping: mapping_len });
        }
        Ok(HeaderInfo { kind, size, param: self.param.load(Relaxed) })
    }

    /// A zeroed header (for tests and for in-memory segments).
    pub fn zeroed() -> SegmentHeader {
        SegmentHeader {
            magic: AtomicU64::new(0),
            layout_hash: AtomicU64::new(0),
            size: AtomicU64::new(0),
            abi_version: AtomicU32::new(0),
            kind: AtomicU32::new(0),
            param: AtomicU64::new(0),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn valid_header_round_trips() {
        let h = SegmentHeader::zeroed();
        h.init(SegmentKind::Pool, 8192, 7);
        let info = h.validate(SegmentKind::Pool, 8192).unwrap();
        assert_eq!(info, HeaderInfo { kind: SegmentKind::Pool, size: 8192, param: 7 });
    }

    #[test]
    fn each_fault_has_its_error() {
        let h = SegmentHeader::zeroed();
        assert_eq!(h.validate(SegmentKind::Pool, 100), Err(HeaderError::TooSmall(100)));
        assert_eq!(h.validate(SegmentKind::Pool, 8192), Err(HeaderError::BadMagic(0)));
        h.init(SegmentKind::Pool, 8192, 0);
        assert!(matches!(h.validate(SegmentKind::Channel, 8192), Err(HeaderError::WrongKind { found: 2, .. })));
        assert!(matches!(
            h.validate(SegmentKind::Pool, 4096),
            Err(HeaderError::SizeMismatch { header: 8192, mapping: 4096 })
        ));
        h.abi_version.store(99, Relaxed);
        assert!(matches!(h.validate(SegmentKind::Pool, 8192), Err(HeaderError::AbiVersion { found: 99, .. })));
        h.abi_version.store(ABI_VERSION, Relaxed);
        h.layout_hash.store(1, Relaxed);
        assert!(matches!(h.validate(SegmentKind::Pool, 8192), Err(HeaderError::LayoutHash { found: 1, .. })));
        h.layout_hash.store(LAYOUT_HASH, Relaxed);
        h.kind.store(77, Relaxed);
        assert!(matches!(h.validate(SegmentKind::Pool, 8192), Err(HeaderError::WrongKind { found: 77, .. })));
        for e in [HeaderError::TooSmall(1), HeaderError::BadMagic(3)] {
            assert!(!e.to_string().is_empty());
        }
    }
}
