//! The 64-byte descriptor: the only thing that travels on a ring.
//!
//! A [`Descriptor`] is a plain value in private memory. In shared memory it
//! lives in a [`Slot`] of eight atomic words; the ring copies it in and out
//! word by word, so no reference to peer-writable memory is ever formed and
//! a torn or hostile slot is just a strange value that [`Descriptor::check`]
//! rejects.

use std::fmt;

use crate::sync::AtomicU64;

/// Bytes of payload that travel inside the descriptor itself.
pub const INLINE_CAPACITY: usize = 40;

/// What a descriptor means. Stored as a `u8`; unknown values are a protocol violation.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A request that expects a [`Kind::Response`] or [`Kind::Error`] with the same correlation id.
    /// `aux` carries the caller's deadline: microseconds of the host's
    /// `CLOCK_MONOTONIC`, never earlier than the caller's own (0: none).
    /// Nothing checks it: it tells the server (and a bridge, which passes
    /// it on as its query's timeout) how long the answer is still wanted.
    Request = 1,
    /// The successful answer to a request.
    Response = 2,
    /// A failed answer; `aux` carries the error code.
    Error = 3,
    /// Fire-and-forget: no answer.
    Fire = 4,
    /// A message on a topic, delivered to every subscriber. On its way to
    /// them the daemon sets `aux` to the publisher's client id, whatever
    /// the publisher wrote there (a relay tells its own publications by it).
    Publish = 5,
    /// Opens a stream (request-stream or request-channel); `aux` carries the
    /// initial credits in its low 32 bits and [`STREAM_CHANNEL`] for a channel.
    StreamOpen = 6,
    /// One item of a stream.
    StreamItem = 7,
    /// The end of a stream, from either side.
    StreamEnd = 8,
    /// Grants `aux` more items to the other side of a stream.
    Credit = 9,
    /// Cancels the request or stream with this correlation id.
    Cancel = 10,
    /// Hands back the chunk in the body to its owner.
    Release = 11,
    /// Marks a point in the per-sender order (used when switching paths).
    Fence = 12,
}

impl Kind {
    /// Decodes a kind byte; `None` for values no sender may use.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Error,
            4 => Kind::Fire,
            5 => Kind::Publish,
            6 => Kind::StreamOpen,
            7 => Kind::StreamItem,
            8 => Kind::StreamEnd,
            9 => Kind::Credit,
            10 => Kind::Cancel,
            11 => Kind::Release,
            12 => Kind::Fence,
            _ => return None,
        })
    }

    /// Whether descriptors of this kind may carry a payload (inline or chunk).
    #[inline]
    pub const fn carries_payload(self) -> bool {
        matches!(
            self,
            Kind::Request
                | Kind::Response
                | Kind::Error
                | Kind::Fire
                | Kind::Publish
                | Kind::StreamOpen
                | Kind::StreamItem
                | Kind::Release
        )
    }
}

/// Bit of a [`Kind::StreamOpen`]'s `aux`: the caller sends items too (request-channel).
pub const STREAM_CHANNEL: u64 = 1 << 63;

/// Flag bits of [`Descriptor::flags`].
pub mod flags {
    /// The body holds a [`ChunkRef`](super::ChunkRef) instead of inline bytes.
    pub const CHUNK: u8 = 1 << 0;
    /// The descriptor belongs to an exchange (request, stream, channel) that
    /// the client at this end of the hop *serves*; without it, one the client
    /// started. Correlation ids live in two namespaces per client (its own,
    /// and the daemon's for exchanges it serves); this bit says which.
    pub const SERVER: u8 = 1 << 1;
    /// A [`Kind::StreamItem`](super::Kind::StreamItem) whose chunk packs `aux` items, each a
    /// native-endian `u32` length followed by its bytes, padded to 8 (see
    /// [`batch`](crate::batch)). Counts as `aux` items against the credits.
    pub const BATCH: u8 = 1 << 2;
    /// All flag bits a sender may set; any other bit is a violation.
    pub const ALL: u8 = CHUNK | SERVER | BATCH;
}

/// A reference to a payload chunk in some client's pool: `(segment, offset, len)`.
///
/// `segment` names the pool (the daemon's id of the owning client), `offset`
/// is from the start of that pool segment. A receiver checks it against the
/// pool's geometry before touching a byte ([`PoolGeometry::check`](crate::pool::PoolGeometry::check)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The id of the pool segment.
    pub segment: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Byte offset of the chunk in the pool segment.
    pub offset: u64,
}

/// One descriptor, as a private value.
///
/// Wire layout (eight native-endian `u64` words): word 0 = `correlation`,
/// word 1 = `aux`, words 2..7 = `body`, word 7 (the *header word*) =
/// `kind | flags << 8 | inline_len << 16 | stamp << 24 | route << 32` (the
/// stamp belongs to the ring's [`Slot`], not to the descriptor). The header
/// word is last because the ring writes it last (see [`Slot`]).
///
/// In memory the fields sit in wire order (`#[repr(C)]`), so that on
/// x86-64 the ring copies words 0..7 straight from the descriptor (see
/// [`Slot`]); the header word is always built from the fields.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Correlates requests with responses and stream items with their stream.
    pub correlation: u64,
    /// Kind-specific word: credits, error code, deadline, sender id.
    pub aux: u64,
    /// Inline payload, or a [`ChunkRef`] in the first 16 bytes.
    pub body: [u8; INLINE_CAPACITY],
    /// A [`Kind`] as a byte (unchecked until [`check`](Self::check)).
    pub kind: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// Number of inline payload bytes in `body` (when not [`flags::CHUNK`]).
    pub inline_len: u8,
    /// Route id: which service instance, topic or stream this is for.
    pub route: u32,
}

const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Descriptor>() == 64);
    assert!(offset_of!(Descriptor, correlation) == 0);
    assert!(offset_of!(Descriptor, aux) == 8);
    assert!(offset_of!(Descriptor, body) == 16);
    assert!(offset_of!(Descriptor, kind) == 8 * HEADER);
};

/// Why a descriptor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorError {
    /// The kind byte is not a [`Kind`].
    UnknownKind(u8),
    /// Flag bits outside [`flags::ALL`] are set.
    UnknownFlags(u8),
    /// `inline_len` is larger than [`INLINE_CAPACITY`].
    InlineTooLong(u8),
    /// A kind that carries no payload has one.
    UnexpectedPayload(Kind),
    /// A batch that is not a stream item in a chunk, or counts no item.
    BadBatch,
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind(k) => write!(f, "unknown descriptor kind {k}"),
            Self::UnknownFlags(x) => write!(f, "unknown descriptor flags {x:#04x}"),
            Self::InlineTooLong(n) => {
                write!(f, "inline payload of {n} bytes exceeds {INLINE_CAPACITY}")
            }
            Self::UnexpectedPayload(k) => write!(f, "a {k:?} descriptor carries a payload"),
            Self::BadBatch => f.write_str("a batch must be a stream item in a chunk with at least one item"),
        }
    }
}

impl std::error::Error for DescriptorError {}

impl Descriptor {
    /// A descriptor of `kind` with everything else zero.
    #[inline]
    pub const fn new(kind: Kind, route: u32, correlation: u64) -> Descriptor {
        Descriptor { kind: kind as u8, flags: 0, inline_len: 0, route, correlation, aux: 0, body: [0; INLINE_CAPACITY] }
    }

    /// Sets an inline payload. Returns `None` if `bytes` is longer than [`INLINE_CAPACITY`].
    #[inline]
    pub fn with_inline(mut self, bytes: &[u8]) -> Option<Descriptor> {
        if bytes.len() > INLINE_CAPACITY {
            return None;
        }
        self.flags &= !flags::CHUNK;
        self.inline_len = bytes.len() as u8;
        self.body[..bytes.len()].copy_from_slice(bytes);
        Some(self)
    }

    /// Sets a chunk reference as the payload.
    #[inline]
    pub fn with_chunk(mut self, chunk: ChunkRef) -> Descriptor {
        self.flags |= flags::CHUNK;
        self.inline_len = 0;
        self.body[0..4].copy_from_slice(&chunk.segment.to_ne_bytes());
        self.body[4..8].copy_from_slice(&chunk.len.to_ne_bytes());
        self.body[8..16].copy_from_slice(&chunk.offset.to_ne_bytes());
        self
    }

    /// Sets the kind-specific word.
    #[inline]
    pub const fn with_aux(mut self, aux: u64) -> Descriptor {
        self.aux = aux;
        self
    }

    /// The chunk reference, if the payload is a chunk.
    #[inline]
    pub fn chunk(&self) -> Option<ChunkRef> {
        if self.flags & flags::CHUNK == 0 {
            return None;
        }
        let b = &self.body;
        Some(ChunkRef {
            segment: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
            len: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            offset: u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        })
    }

    /// The inline payload (empty for chunk payloads). Clamped, so safe on an unchecked descriptor.
    #[inline]
    pub fn inline(&self) -> &[u8] {
        if self.flags & flags::CHUNK != 0 {
            return &[];
        }
        &self.body[..(self.inline_len as usize).min(INLINE_CAPACITY)]
    }

    /// Validates a descriptor that came from a peer and returns its kind.
    #[inline]
    pub fn check(&self) -> Result<Kind, DescriptorError> {
        let kind = Kind::from_u8(self.kind).ok_or(DescriptorError::UnknownKind(self.kind))?;
        if self.flags & !flags::ALL != 0 {
            return Err(DescriptorError::UnknownFlags(self.flags));
        }
        if self.inline_len as usize > INLINE_CAPACITY {
            return Err(DescriptorError::InlineTooLong(self.inline_len));
        }
        let has_payload = self.flags & flags::CHUNK != 0 || self.inline_len != 0;
        if has_payload && !kind.carries_payload() {
            return Err(DescriptorError::UnexpectedPayload(kind));
        }
        if self.flags & flags::BATCH != 0
            && (kind != Kind::StreamItem
                || self.flags & flags::CHUNK == 0
                || self.aux == 0
                || self.aux > u32::MAX as u64)
        {
            return Err(DescriptorError::BadBatch);
        }
        Ok(kind)
    }

    /// How many stream items this descriptor counts for (a batch counts its items).
    #[inline]
    pub fn items(&self) -> u64 {
        if self.flags & flags::BATCH != 0 {
            self.aux
        } else {
            1
        }
    }

    /// The eight wire words.
    #[inline]
    pub fn to_words(&self) -> [u64; 8] {
        let mut w = [0u64; 8];
        w[0] = self.correlation;
        w[1] = self.aux;
        for (i, c) in self.body.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            w[2 + i] = u64::from_ne_bytes(b);
        }
        w[HEADER] = self.header_word();
        w
    }

    /// Word 7 on the wire, stamp byte zero.
    #[inline]
    fn header_word(&self) -> u64 {
        self.kind as u64 | (self.flags as u64) << 8 | (self.inline_len as u64) << 16 | (self.route as u64) << 32
    }

    /// Rebuilds a descriptor from wire words. Any words give some descriptor; [`check`](Self::check) it.
    #[inline]
    pub fn from_words(w: [u64; 8]) -> Descriptor {
        let mut body = [0u8; INLINE_CAPACITY];
        for (i, c) in body.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&w[2 + i].to_ne_bytes());
        }
        let h = w[HEADER];
        Descriptor {
            kind: h as u8,
            flags: (h >> 8) as u8,
            inline_len: (h >> 16) as u8,
            route: (h >> 32) as u32,
            correlation: w[0],
            aux: w[1],
            body,
        }
    }
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Descriptor");
        match Kind::from_u8(self.kind) {
            Some(k) => d.field("kind", &k),
            None => d.field("kind", &self.kind),
        };
        d.field("route", &self.route).field("correlation", &self.correlation).field("aux", &self.aux);
        match self.chunk() {
            Some(c) => d.field("chunk", &c),
            None => d.field("inline_len", &self.inline_len),
        };
        d.finish()
    }
}

/// A descriptor's home in shared memory: one 64-byte cache line of atomic words.
///
/// Byte 3 of the header word, word 7 (zero in [`Descriptor::to_words`],
/// ignored by [`Descriptor::from_words`]), holds the slot's *lap stamp*: the
/// ring writes words 0..7 and then the header word, stamp included, as a
/// release store (on x86-64 with wide moves, see `store_slot_x86_64`;
/// elsewhere and under loom with relaxed atomic stores and a Release one);
/// the consumer loads the header word with Acquire and takes the slot only
/// if the stamp is the one its index expects (see [`crate::ring`]). So one
/// cache line, the slot's, both carries the descriptor and says that it is
/// there. The consumer copies the slot out with atomic loads.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct Slot {
    words: [AtomicU64; 8],
}

#[cfg(not(loom))]
// SAFETY: `#[repr(C)]`, eight atomics, no pointers; every bit pattern is valid.
unsafe impl crate::shm::ShmSafe for Slot {}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Slot>() == 64);
    assert!(std::mem::align_of::<Slot>() == 64);
};

/// How a batch's slots are stored on x86-64, decided once per batch by
/// [`BatchStores::detect`].
///
/// Why not eight atomic 8-byte stores: a producer streaming to another core
/// waits on line ownership, and how many lines it can have in flight is
/// bounded by its store queue, so the fewer entries a slot takes, the
/// further ahead it runs. Eight atomic stores measured 0.63–0.80× of the
/// bare ring's batched throughput; five (three 16-byte, two 8-byte)
/// 0.69–0.97× (median 0.74×); four 16-byte stores, as the bare ring itself
/// makes, which is what [`BatchStores::Wide`] does, 0.92–0.95× (medians of
/// `ring_report` runs of three). Only for batches: a descriptor built just
/// before a single push sits in 8-byte and smaller stores that 16-byte
/// loads would wait for (a store-forwarding stall); a batch was written
/// well before.
/// (For the same reason, packing the words into an array first and copying
/// that with 16-byte moves measured slower than eight atomic stores.)
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchStores {
    /// Four aligned 16-byte stores, the last one carrying word 6 and the
    /// header word together. Only where aligned 16-byte SSE stores are
    /// single-copy atomic: every CPU that reports AVX (Intel SDM vol. 3
    /// §9.1.1; AMD APM vol. 2 §7.3.2, "Access Atomicity"). There a consumer
    /// that sees the new header word sees word 6 of the same store.
    Wide,
    /// Three 16-byte stores, then word 6, then the header word with 8-byte
    /// stores: without the guarantee above, a 16-byte store may land as two
    /// 8-byte halves in either order, so the header word must be a store
    /// of its own.
    Split,
}

#[cfg(all(target_arch = "x86_64", not(loom)))]
impl BatchStores {
    /// [`Wide`](Self::Wide) if this CPU reports AVX, else [`Split`](Self::Split).
    /// (std caches the CPUID answer: this is one load and a test.)
    #[inline]
    pub(crate) fn detect() -> BatchStores {
        if std::arch::is_x86_feature_detected!("avx") {
            BatchStores::Wide
        } else {
            BatchStores::Split
        }
    }
}

/// Stand-in on targets where batches use atomic stores.
#[cfg(not(all(target_arch = "x86_64", not(loom))))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchStores;

#[cfg(not(all(target_arch = "x86_64", not(loom))))]
impl BatchStores {
    /// There is nothing to choose.
    #[inline]
    pub(crate) fn detect() -> BatchStores {
        BatchStores
    }
}

/// Writes a descriptor into a slot with SSE stores straight from the
/// descriptor's memory, words in ascending order and the header word in the
/// last store (see [`BatchStores`] for the two ways).
///
/// What the consumer may assume is what eight atomic stores would give it:
/// on x86-64 every store is a release store (TSO keeps stores in program
/// order) and an aligned 16-byte SSE store is at least two single-copy
/// atomic 8-byte stores (with [`BatchStores::Wide`], one 16-byte one), so
/// once the consumer's Acquire load of the header word sees the stamp,
/// words 0..7 are the new ones. The blocks are opaque to the compiler and
/// clobber memory, so nothing moves across them.
///
/// # Safety
///
/// `dst` is valid for writes of 64 bytes, 16-aligned, and only ever accessed
/// atomically or through this function by anyone else.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[inline(always)]
unsafe fn store_slot_x86_64(dst: *mut u64, d: &Descriptor, header: u64, stores: BatchStores) {
    let src = d as *const Descriptor;
    // Words 0..5, then word 6 and the header word. Each block clobbers
    // memory, so their stores stay in this order.
    // SAFETY: `d` is 64 readable bytes and we read its first 56, which hold
    // no padding; `dst` per the contract above.
    unsafe {
        std::arch::asm!(
            "movups {a}, [{src}]",
            "movups {b}, [{src} + 16]",
            "movups {c}, [{src} + 32]",
            "movaps [{dst}], {a}",
            "movaps [{dst} + 16], {b}",
            "movaps [{dst} + 32], {c}",
            src = in(reg) src,
            dst = in(reg) dst,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            c = out(xmm_reg) _,
            options(nostack, preserves_flags),
        );
    }
    match stores {
        // SAFETY: as above.
        BatchStores::Wide => unsafe {
            std::arch::asm!(
                "movq {w}, qword ptr [{src} + 48]",
                "movq {h}, {header}",
                "punpcklqdq {w}, {h}",
                "movaps [{dst} + 48], {w}",
                src = in(reg) src,
                dst = in(reg) dst,
                header = in(reg) header,
                w = out(xmm_reg) _,
                h = out(xmm_reg) _,
                options(nostack, preserves_flags),
            );
        },
        // SAFETY: as above.
        BatchStores::Split => unsafe {
            std::arch::asm!(
                "mov {w6}, [{src} + 48]",
                "mov [{dst} + 48], {w6}",
                "mov [{dst} + 56], {header}",
                src = in(reg) src,
                dst = in(reg) dst,
                header = in(reg) header,
                w6 = out(reg) _,
                options(nostack, preserves_flags),
            );
        },
    }
}

/// Index of the header word (kind, flags, inline length, stamp, route) in a slot.
pub const HEADER: usize = 7;

/// Where the lap stamp sits in the header word.
const STAMP_SHIFT: u32 = 24;

/// The lap stamp in a slot's header word.
#[inline]
pub(crate) const fn stamp_of(header: u64) -> u8 {
    (header >> STAMP_SHIFT) as u8
}

impl Slot {
    /// Copies `d` into the slot and then publishes it with `stamp`: words
    /// 0..7 relaxed, in order, and the header word (with the stamp in byte
    /// 3) last, with Release.
    #[inline]
    pub(crate) fn publish(&self, d: &Descriptor, stamp: u8) {
        use std::sync::atomic::Ordering::{Relaxed, Release};
        let w = d.to_words();
        for (slot, w) in self.words[..HEADER].iter().zip(&w[..HEADER]) {
            slot.store(*w, Relaxed);
        }
        // SYNC: Release publishes words 0..7 with the stamp; pairs with the
        // consumer's Acquire load of the header word in `header`.
        self.words[HEADER].store(w[HEADER] | (stamp as u64) << STAMP_SHIFT, Release);
    }

    /// [`publish`](Self::publish) for descriptors of a batch, which sit in
    /// memory written well before: on x86-64 words 0..7 move with wide
    /// stores straight from the descriptor, as `stores` says (see `store_slot_x86_64`).
    #[inline]
    pub(crate) fn publish_from_memory(&self, d: &Descriptor, stamp: u8, stores: BatchStores) {
        #[cfg(all(target_arch = "x86_64", not(loom)))]
        // SAFETY: the slot pointer comes from `&self.words`, the whole
        // 64-byte, 64-aligned slot, whose bytes all live in `UnsafeCell`s
        // (atomics); `d` is a whole descriptor, whose first 56 bytes are
        // words 0..7 without padding (asserted at its definition).
        unsafe {
            let header = d.header_word() | (stamp as u64) << STAMP_SHIFT;
            store_slot_x86_64((&self.words as *const [AtomicU64; 8]).cast_mut().cast(), d, header, stores)
        };
        #[cfg(not(all(target_arch = "x86_64", not(loom))))]
        {
            let BatchStores = stores;
            self.publish(d, stamp);
        }
    }

    /// Loads the header word (the stamp, kind, flags, route) with Acquire.
    #[inline]
    pub(crate) fn header(&self) -> u64 {
        use std::sync::atomic::Ordering::Acquire;
        // SYNC: pairs with the Release store of the header word in `publish`
        // (or the last store of `store_slot_x86_64`): if the stamp is the
        // expected one, words 0..7 of that descriptor are visible.
        self.words[HEADER].load(Acquire)
    }

    /// Copies the rest of the slot out and rebuilds the descriptor whose header word was `header`.
    #[inline]
    pub(crate) fn read(&self, header: u64) -> Descriptor {
        use std::sync::atomic::Ordering::Relaxed;
        let mut w = [0u64; 8];
        for (o, slot) in w[..HEADER].iter_mut().zip(&self.words[..HEADER]) {
            *o = slot.load(Relaxed);
        }
        w[HEADER] = header;
        Descriptor::from_words(w)
    }

    /// Clears the header word, and with it the stamp (a new ring over reused memory).
    #[inline]
    pub(crate) fn clear(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.words[HEADER].store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let d = Descriptor::new(Kind::Request, 7, 0xdead_beef).with_aux(42).with_inline(b"hello").unwrap();
        let back = Descriptor::from_words(d.to_words());
        assert_eq!(back, d);
        assert_eq!(back.inline(), b"hello");
        assert_eq!(back.check(), Ok(Kind::Request));
    }

    #[test]
    fn chunk_round_trip() {
        let c = ChunkRef { segment: 3, len: 1000, offset: 1 << 40 };
        let d = Descriptor::new(Kind::Publish, 1, 2).with_chunk(c);
        let back = Descriptor::from_words(d.to_words());
        assert_eq!(back.chunk(), Some(c));
        assert!(back.inline().is_empty());
    }

    #[test]
    fn inline_too_long_is_refused() {
        assert!(Descriptor::new(Kind::Fire, 0, 0).with_inline(&[0; 41]).is_none());
    }

    #[test]
    fn garbage_is_rejected_not_trusted() {
        let mut d = Descriptor::new(Kind::Fire, 0, 0);
        d.kind = 200;
        assert_eq!(d.check(), Err(DescriptorError::UnknownKind(200)));
        d.kind = Kind::Fire as u8;
        d.flags = 0x80;
        assert_eq!(d.check(), Err(DescriptorError::UnknownFlags(0x80)));
        d.flags = 0;
        d.inline_len = 255;
        assert_eq!(d.check(), Err(DescriptorError::InlineTooLong(255)));
        assert_eq!(d.inline().len(), INLINE_CAPACITY, "accessor clamps");
        let mut c = Descriptor::new(Kind::Credit, 0, 0);
        c.inline_len = 3;
        assert_eq!(c.check(), Err(DescriptorError::UnexpectedPayload(Kind::Credit)));
    }

    /// Both ways of storing a batch's slot put every word where `publish` does.
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    #[test]
    fn batch_stores_write_what_publish_writes() {
        let d = Descriptor::new(Kind::Request, 0xabcd_ef01, 0x1122_3344_5566_7788)
            .with_aux(0x99)
            .with_inline(&[7; 40])
            .unwrap();
        let reference = Slot::default();
        reference.publish(&d, 0x85);
        for stores in [BatchStores::Wide, BatchStores::Split] {
            let slot = Slot::default();
            slot.publish_from_memory(&d, 0x85, stores);
            assert_eq!(slot.header(), reference.header(), "{stores:?}");
            assert_eq!(stamp_of(slot.header()), 0x85);
            assert_eq!(slot.read(slot.header()), d, "{stores:?}");
        }
    }

    #[test]
    fn every_word_pattern_decodes_without_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut w = [0u64; 8];
            for v in &mut w {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *v = x;
            }
            let d = Descriptor::from_words(w);
            let _ = d.check();
            let _ = d.chunk();
            assert!(d.inline().len() <= INLINE_CAPACITY);
        }
    }
}
