//! Self-checking payloads, shared by `hybus-load` and the tests that drive it
//! (the tests include this file with `#[path]`).
//!
//! A payload of at least [`HEADER`] bytes starts with who sent it, for which
//! interaction model, and its sequence number; the rest is a pattern derived
//! from those three, so a receiver can check every byte without knowing
//! anything else. A tiny xorshift generator gives reproducible sizes.

#![allow(dead_code)]

/// Bytes of the header: sender (u32), model (u8), 3 zero bytes, seq (u64).
pub const HEADER: usize = 16;

/// Interaction models, as the header's model byte.
pub mod model {
    /// Request/response.
    pub const CALL: u8 = 1;
    /// Fire-and-forget.
    pub const FIRE: u8 = 2;
    /// A publication.
    pub const PUB: u8 = 3;
    /// Opens a request-stream.
    pub const STREAM: u8 = 4;
    /// An item of a request-stream (server to caller).
    pub const ITEM: u8 = 5;
    /// Opens a request-channel.
    pub const CHANNEL: u8 = 6;
    /// An item of a request-channel (caller to server, echoed back).
    pub const CITEM: u8 = 7;
    /// A flow-control request: "how much of mine have you handled?".
    pub const SYNC: u8 = 8;
}

/// Who sent a payload, for what, and its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender id.
    pub sender: u32,
    /// One of [`model`].
    pub model: u8,
    /// Sequence number, per sender and model (and receiver, where there are several).
    pub seq: u64,
}

fn seed_of(h: Header) -> u64 {
    (h.sender as u64) << 40 ^ (h.model as u64) << 32 ^ h.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Fills `buf` with the pattern of `seed`.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Whether `buf` holds the pattern of `seed`.
pub fn check(buf: &[u8], seed: u64) -> bool {
    let mut x = seed | 1;
    for chunk in buf.chunks(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if chunk != &x.to_le_bytes()[..chunk.len()] {
            return false;
        }
    }
    true
}

/// Writes a header and the matching pattern into `buf` (at least [`HEADER`] bytes).
pub fn write(buf: &mut [u8], h: Header) {
    buf[..4].copy_from_slice(&h.sender.to_le_bytes());
    buf[4] = h.model;
    buf[5..8].fill(0);
    buf[8..16].copy_from_slice(&h.seq.to_le_bytes());
    fill(&mut buf[HEADER..], seed_of(h));
}

/// A payload of `len` bytes (at least [`HEADER`]) with header `h`.
pub fn make(h: Header, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len.max(HEADER)];
    write(&mut v, h);
    v
}

/// The header of `buf`, if it is long enough and every byte matches it.
pub fn parse(buf: &[u8]) -> Option<Header> {
    if buf.len() < HEADER || buf[5..8] != [0, 0, 0] {
        return None;
    }
    let h = Header {
        sender: u32::from_le_bytes(buf[..4].try_into().ok()?),
        model: buf[4],
        seq: u64::from_le_bytes(buf[8..16].try_into().ok()?),
    };
    check(&buf[HEADER..], seed_of(h)).then_some(h)
}

/// A xorshift64 generator: reproducible, no dependencies.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// A payload size between [`HEADER`] and `max`, mostly small: 80 % inline
    /// (≤ 40 B), 15 % up to 4 KiB, 4 % up to 64 KiB, 1 % up to `max`.
    pub fn size(&mut self, max: usize) -> usize {
        let max = max.max(HEADER);
        let hi = |x: usize| x.min(max);
        match self.below(100) {
            0..=79 => self.range(HEADER, hi(40)),
            80..=94 => self.range(hi(41), hi(4096)),
            95..=98 => self.range(hi(4097), hi(64 << 10)),
            _ => self.range(hi((64 << 10) + 1), max),
        }
    }
}
