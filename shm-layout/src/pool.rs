//! The chunk pool: size-classed payload chunks in a segment only its owner writes.
//!
//! The geometry ([`PoolGeometry`]) is a pure function of the size classes,
//! so the daemon, the owner and every receiver compute the same offsets
//! from the same class list and a receiver can check any [`ChunkRef`]
//! against it without reading the pool. The allocator ([`PoolAllocator`])
//! lives in the owner's private memory: there is no free list in shared
//! memory for a peer to corrupt.

use std::fmt;

use crate::descriptor::ChunkRef;
use crate::header::HEADER_REGION;

/// Every chunk size and class region is a multiple of this (one cache line).
pub const CHUNK_ALIGN: usize = 64;

/// Most size classes a pool may have.
pub const MAX_CLASSES: usize = 8;

/// Largest chunk (and so largest payload): 64 MiB.
pub const MAX_CHUNK: u32 = 64 << 20;

/// Largest pool segment: 1 GiB.
pub const MAX_POOL_BYTES: u64 = 1 << 30;

/// One size class: `count` chunks of `chunk_size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SizeClass {
    /// Bytes per chunk; a multiple of [`CHUNK_ALIGN`].
    pub chunk_size: u32,
    /// Number of chunks.
    pub count: u32,
}

/// The classes a pool gets unless configured otherwise: 8.6 MiB of address
/// space, of which only touched pages cost memory.
pub const DEFAULT_CLASSES: [SizeClass; 4] = [
    SizeClass { chunk_size: 256, count: 1024 },
    SizeClass { chunk_size: 4096, count: 256 },
    SizeClass { chunk_size: 64 << 10, count: 32 },
    SizeClass { chunk_size: 1 << 20, count: 4 },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClassRegion {
    class: SizeClass,
    offset: u64,
    /// Index of this class's first chunk in the pool-wide numbering.
    first: u32,
}

/// Where every chunk of a pool lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGeometry {
    regions: Vec<ClassRegion>,
    size: u64,
    chunks: u32,
}

/// Why a pool geometry could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// No classes, or more than [`MAX_CLASSES`].
    ClassCount(usize),
    /// A class's chunk size is zero, unaligned, above [`MAX_CHUNK`], or not larger than the previous one.
    ChunkSize(u32),
    /// A class has no chunks.
    EmptyClass,
    /// The pool would exceed [`MAX_POOL_BYTES`].
    TooLarge,
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClassCount(n) => write!(f, "a pool needs 1..={MAX_CLASSES} size classes, got {n}"),
            Self::ChunkSize(s) => write!(
                f,
                "chunk size {s} must be a multiple of {CHUNK_ALIGN}, at most {MAX_CHUNK}, and increase from class to class"
            ),
            Self::EmptyClass => f.write_str("a size class has zero chunks"),
            Self::TooLarge => write!(f, "pool would exceed {MAX_POOL_BYTES} bytes"),
        }
    }
}

impl std::error::Error for GeometryError {}

/// Why a chunk reference was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The offset is not the start of any chunk of the pool.
    OutOfPool {
        /// The offending offset.
        offset: u64,
    },
    /// The length exceeds the chunk's size.
    TooLong {
        /// The claimed length.
        len: u32,
        /// The chunk's size.
        chunk_size: u32,
    },
    /// The chunk is not allocated (double free, or a chunk its sender does not hold).
    NotHeld {
        /// The offending offset.
        offset: u64,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfPool { offset } => write!(f, "offset {offset} is not a chunk of the pool"),
            Self::TooLong { len, chunk_size } => {
                write!(f, "length {len} exceeds the chunk size {chunk_size}")
            }
            Self::NotHeld { offset } => write!(f, "chunk at offset {offset} is not held"),
        }
    }
}

impl std::error::Error for ChunkError {}

impl PoolGeometry {
    /// Lays out `classes` (ascending chunk sizes) after the segment header.
    pub fn new(classes: &[SizeClass]) -> Result<PoolGeometry, GeometryError> {
        if classes.is_empty() || classes.len() > MAX_CLASSES {
            return Err(GeometryError::ClassCount(classes.len()));
        }
        let mut regions = Vec::with_capacity(classes.len());
        let mut offset = HEADER_REGION as u64;
        let mut first = 0u32;
        let mut prev = 0u32;
        for &class in classes {
            let s = class.chunk_size;
            if s == 0 || s as usize % CHUNK_ALIGN != 0 || s > MAX_CHUNK || s <= prev {
                return Err(GeometryError::ChunkSize(s));
            }
            if class.count == 0 {
                return Err(GeometryError::EmptyClass);
            }
            prev = s;
            // Page-align each class so large chunks map to whole pages.
            offset = offset.next_multiple_of(4096);
            regions.push(ClassRegion { class, offset, first });
            offset += s as u64 * class.count as u64;
            first = first.checked_add(class.count).ok_or(GeometryError::TooLarge)?;
            if offset > MAX_POOL_BYTES {
                return Err(GeometryError::TooLarge);
            }
        }
        Ok(PoolGeometry { regions, size: offset.next_multiple_of(4096), chunks: first })
    }

    /// The default geometry ([`DEFAULT_CLASSES`]).
    pub fn default_classes() -> PoolGeometry {
        match PoolGeometry::new(&DEFAULT_CLASSES) {
            Ok(g) => g,
            Err(e) => unreachable!("default classes are valid: {e}"),
        }
    }

    /// The size classes, smallest first.
    pub fn classes(&self) -> impl Iterator<Item = SizeClass> + '_ {
        self.regions.iter().map(|r| r.class)
    }

    /// Bytes the pool segment needs, header included.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Total number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunks
    }

    /// The largest payload a chunk can hold.
    pub fn max_payload(&self) -> u32 {
        self.regions.last().map_or(0, |r| r.class.chunk_size)
    }

    /// Checks that `c` lies on a chunk of this pool and fits in it; returns
    /// the chunk's pool-wide index. `c.segment` is not checked here.
    #[inline]
    pub fn check(&self, c: ChunkRef) -> Result<u32, ChunkError> {
        let offset = c.offset;
        // Regions are ascending: the last one starting at or below `offset`.
        let r = self.regions.iter().rev().find(|r| r.offset <= offset).ok_or(ChunkError::OutOfPool { offset })?;
        let rel = offset - r.offset;
        let size = r.class.chunk_size as u64;
        let idx = rel / size;
        if rel % size != 0 || idx >= r.class.count as u64 {
            return Err(ChunkError::OutOfPool { offset });
        }
        if c.len > r.class.chunk_size {
            return Err(ChunkError::TooLong { len: c.len, chunk_size: r.class.chunk_size });
        }
        Ok(r.first + idx as u32)
    }

    /// The size class of pool-wide chunk index `index` (its number, from
    /// the smallest, and the class), or `None` past the last chunk.
    pub fn class_of(&self, index: u32) -> Option<(usize, SizeClass)> {
        self.regions
            .iter()
            .enumerate()
            .rev()
            .find(|(_, r)| r.first <= index)
            .filter(|(_, r)| index - r.first < r.class.count)
            .map(|(i, r)| (i, r.class))
    }

    /// The chunk reference for pool-wide index `index` holding `len` bytes.
    fn chunk_at(&self, class: usize, idx: u32, len: u32, segment: u32) -> ChunkRef {
        let r = &self.regions[class];
        ChunkRef { segment, len, offset: r.offset + idx as u64 * r.class.chunk_size as u64 }
    }
}

/// The owner's allocator over its pool: free stacks per class and a held bitmap.
#[derive(Debug)]
pub struct PoolAllocator {
    geometry: PoolGeometry,
    segment: u32,
    /// Free chunk indices within each class.
    free: Vec<Vec<u32>>,
    /// One bit per chunk (pool-wide index): set while allocated.
    held: Vec<u64>,
    in_use: u32,
}

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The payload is larger than the largest chunk.
    TooLarge {
        /// Requested bytes.
        len: usize,
        /// Largest chunk.
        max: u32,
    },
    /// Every chunk large enough is in use.
    Exhausted {
        /// Requested bytes.
        len: usize,
    },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the largest chunk ({max} bytes)")
            }
            Self::Exhausted { len } => write!(f, "out of pool memory for a {len}-byte payload"),
        }
    }
}

impl std::error::Error for AllocError {}

impl PoolAllocator {
    /// An allocator with every chunk free; chunk references name `segment`.
    pub fn new(geometry: PoolGeometry, segment: u32) -> PoolAllocator {
        let free = geometry.regions.iter().map(|r| (0..r.class.count).rev().collect()).collect();
        let held = vec![0; (geometry.chunks as usize).div_ceil(64)];
        PoolAllocator { geometry, segment, free, held, in_use: 0 }
    }

    /// The pool's geometry.
    pub fn geometry(&self) -> &PoolGeometry {
        &self.geometry
    }

    /// Chunks currently allocated.
    pub fn in_use(&self) -> u32 {
        self.in_use
    }

    /// Allocates the smallest free chunk that holds `len` bytes.
    ///
    /// Falls back to larger classes when the fitting one is exhausted.
    #[inline]
    pub fn alloc(&mut self, len: usize) -> Result<ChunkRef, AllocError> {
        let max = self.geometry.max_payload();
        if len > max as usize {
            return Err(AllocError::TooLarge { len, max });
        }
        let start = self
            .geometry
            .regions
            .iter()
            .position(|r| r.class.chunk_size as usize >= len)
            .ok_or(AllocError::TooLarge { len, max })?;
        for class in start..self.free.len() {
            if let Some(idx) = self.free[class].pop() {
                let global = self.geometry.regions[class].first + idx;
                self.held[global as usize / 64] |= 1 << (global % 64);
                self.in_use += 1;
                return Ok(self.geometry.chunk_at(class, idx, len as u32, self.segment));
            }
        }
        Err(AllocError::Exhausted { len })
    }

    /// Returns a chunk. Refuses chunks outside the pool and chunks not allocated.
    pub fn free(&mut self, c: ChunkRef) -> Result<(), ChunkError> {
        let global = self.geometry.check(ChunkRef { len: 0, ..c })?;
        let (word, bit) = (global as usize / 64, global % 64);
        if self.held[word] & (1 << bit) == 0 {
            return Err(ChunkError::NotHeld { offset: c.offset });
        }
        self.held[word] &= !(1 << bit);
        self.in_use -= 1;
        let class = self.geometry.regions.iter().rposition(|r| r.first <= global).unwrap_or(0);
        self.free[class].push(global - self.geometry.regions[class].first);
        Ok(())
    }

    /// Renames the pool (after a daemon restart gave this client a new id):
    /// chunk references allocated from now on carry `segment`.
    pub fn set_segment(&mut self, segment: u32) {
        self.segment = segment;
    }

    /// Every allocated chunk (length 0), for reclaiming after a restart.
    pub fn held(&self) -> Vec<ChunkRef> {
        let mut out = Vec::with_capacity(self.in_use as usize);
        for (class, r) in self.geometry.regions.iter().enumerate() {
            for idx in 0..r.class.count {
                let g = r.first + idx;
                if self.held[g as usize / 64] & (1 << (g % 64)) != 0 {
                    out.push(self.geometry.chunk_at(class, idx, 0, self.segment));
                }
            }
        }
        out
    }

    /// Whether `c` is currently allocated.
    pub fn is_held(&self, c: ChunkRef) -> bool {
        match self.geometry.check(ChunkRef { len: 0, ..c }) {
            Ok(g) => self.held[g as usize / 64] & (1 << (g % 64)) != 0,
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PoolGeometry {
        PoolGeometry::new(&[SizeClass { chunk_size: 64, count: 3 }, SizeClass { chunk_size: 4096, count: 2 }]).unwrap()
    }

    #[test]
    fn geometry_is_deterministic_and_checked() {
        let g = small();
        assert_eq!(g, small());
        assert_eq!(g.chunk_count(), 5);
        assert_eq!(g.check(ChunkRef { segment: 0, len: 64, offset: 4096 }), Ok(0));
        assert_eq!(g.check(ChunkRef { segment: 0, len: 1, offset: 4096 + 128 }), Ok(2));
        assert_eq!(g.check(ChunkRef { segment: 0, len: 1, offset: 8192 + 4096 }), Ok(4));
        assert!(matches!(
            g.check(ChunkRef { segment: 0, len: 1, offset: 4096 + 1 }),
            Err(ChunkError::OutOfPool { .. })
        ));
        assert!(matches!(
            g.check(ChunkRef { segment: 0, len: 1, offset: 4096 + 192 }),
            Err(ChunkError::OutOfPool { .. })
        ));
        assert!(matches!(g.check(ChunkRef { segment: 0, len: 1, offset: 0 }), Err(ChunkError::OutOfPool { .. })));
        assert!(matches!(
            g.check(ChunkRef { segment: 0, len: 1, offset: u64::MAX }),
            Err(ChunkError::OutOfPool { .. })
        ));
        assert!(matches!(g.check(ChunkRef { segment: 0, len: 65, offset: 4096 }), Err(ChunkError::TooLong { .. })));
        assert!(g.size() >= 8192 + 2 * 4096);
    }

    /// A class whose chunk size is a multiple of 64 but not a power of two
    /// checks the same way.
    #[test]
    fn odd_chunk_sizes_check_like_powers_of_two() {
        let g = PoolGeometry::new(&[SizeClass { chunk_size: 192, count: 4 }]).unwrap();
        let base = g.check(ChunkRef { segment: 0, len: 1, offset: 4096 }).map(|_| 4096).unwrap();
        for i in 0..4u64 {
            assert_eq!(g.check(ChunkRef { segment: 0, len: 192, offset: base + i * 192 }), Ok(i as u32));
        }
        for off in [base + 64, base + 191, base + 4 * 192] {
            assert!(matches!(g.check(ChunkRef { segment: 0, len: 1, offset: off }), Err(ChunkError::OutOfPool { .. })));
        }
    }

    #[test]
    fn bad_geometries() {
        assert_eq!(PoolGeometry::new(&[]), Err(GeometryError::ClassCount(0)));
        assert_eq!(PoolGeometry::new(&[SizeClass { chunk_size: 100, count: 1 }]), Err(GeometryError::ChunkSize(100)));
        assert_eq!(PoolGeometry::new(&[SizeClass { chunk_size: 64, count: 0 }]), Err(GeometryError::EmptyClass));
        assert_eq!(PoolGeometry::new(&[SizeClass { chunk_size: MAX_CHUNK, count: 100 }]), Err(GeometryError::TooLarge));
    }

    #[test]
    fn alloc_free_and_fallback() {
        let mut a = PoolAllocator::new(small(), 9);
        let c: Vec<_> = (0..3).map(|_| a.alloc(10).unwrap()).collect();
        assert!(c.iter().all(|c| c.segment == 9 && c.len == 10));
        let big = a.alloc(10).unwrap();
        assert_eq!(a.geometry().check(big).unwrap(), 3, "falls back to the next class");
        let _ = a.alloc(4000).unwrap();
        assert_eq!(a.alloc(1), Err(AllocError::Exhausted { len: 1 }));
        assert_eq!(a.alloc(5000), Err(AllocError::TooLarge { len: 5000, max: 4096 }));
        assert_eq!(a.in_use(), 5);
        a.free(c[1]).unwrap();
        assert_eq!(a.free(c[1]), Err(ChunkError::NotHeld { offset: c[1].offset }));
        assert!(!a.is_held(c[1]));
        assert_eq!(a.alloc(64).unwrap().offset, c[1].offset);
        assert_eq!(a.in_use(), 5);
    }
}
