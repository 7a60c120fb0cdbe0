//! Batches: many small stream items packed into one chunk.
//!
//! A stream of small messages would otherwise pay a descriptor, a chunk
//! and a release per message. A batch packs items back to back in one
//! chunk: each is a native-endian `u32` length, its bytes, and padding to
//! the next multiple of 8. The descriptor (flag [`BATCH`](crate::descriptor::flags::BATCH))
//! says how many items the chunk holds; they count one credit each.
//!
//! The reader ([`BatchReader`]) checks every length against the bytes
//! that are left, so a hostile or torn batch yields an error, never an
//! out-of-bounds read.

use std::fmt;

/// Bytes an item of `len` bytes takes in a batch.
#[inline]
pub const fn item_size(len: usize) -> usize {
    (4 + len + 7) & !7
}

/// Writes items into a batch buffer (a loaned chunk).
#[derive(Debug)]
pub struct BatchWriter<'a> {
    buf: &'a mut [u8],
    used: usize,
    items: u32,
}

impl<'a> BatchWriter<'a> {
    /// A writer over `buf`.
    pub fn new(buf: &'a mut [u8]) -> BatchWriter<'a> {
        BatchWriter { buf, used: 0, items: 0 }
    }

    /// Appends an item; `false` (and nothing written) if it does not fit.
    #[inline]
    pub fn push(&mut self, item: &[u8]) -> bool {
        let need = item_size(item.len());
        if item.len() > u32::MAX as usize || self.buf.len() - self.used < need {
            return false;
        }
        let at = self.used;
        self.buf[at..at + 4].copy_from_slice(&(item.len() as u32).to_ne_bytes());
        self.buf[at + 4..at + 4 + item.len()].copy_from_slice(item);
        self.used += need;
        self.items += 1;
        true
    }

    /// Items written.
    pub fn items(&self) -> u32 {
        self.items
    }

    /// Bytes used.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }
}

/// A batch did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadBatch {
    /// The item that did not fit.
    pub item: u32,
}

impl fmt::Display for BadBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch item {} overruns its chunk", self.item)
    }
}

impl std::error::Error for BadBatch {}

/// Reads the items of a batch, checking each against what is left.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    buf: &'a [u8],
    at: usize,
    left: u32,
    index: u32,
}

impl<'a> BatchReader<'a> {
    /// A reader of `items` items in `buf`.
    pub fn new(buf: &'a [u8], items: u32) -> BatchReader<'a> {
        BatchReader { buf, at: 0, left: items, index: 0 }
    }

    /// Items not read yet.
    pub fn remaining(&self) -> u32 {
        self.left
    }

    /// The byte range of the next item in the buffer, or `None` at the end.
    #[inline]
    pub fn next_range(&mut self) -> Option<Result<std::ops::Range<usize>, BadBatch>> {
        if self.left == 0 {
            return None;
        }
        let bad = BadBatch { item: self.index };
        let Some(head) = self.buf.get(self.at..self.at + 4) else {
            self.left = 0;
            return Some(Err(bad));
        };
        let len = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let start = self.at + 4;
        let end = match start.checked_add(len) {
            Some(e) if e <= self.buf.len() => e,
            _ => {
                self.left = 0;
                return Some(Err(bad));
            }
        };
        self.at = self.at.saturating_add(item_size(len));
        self.left -= 1;
        self.index += 1;
        Some(Ok(start..end))
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<&'a [u8], BadBatch>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.buf;
        self.next_range().map(|r| r.map(|r| &buf[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_full() {
        let mut buf = [0u8; 64];
        let mut w = BatchWriter::new(&mut buf);
        assert!(w.push(b"abc"));
        assert!(w.push(b""));
        assert!(w.push(&[7; 20]));
        assert!(!w.push(&[1; 40]), "does not fit");
        let (n, used) = (w.items(), w.len());
        assert_eq!((n, used), (3, 8 + 8 + 24));
        let items: Vec<_> = BatchReader::new(&buf[..used], n).map(Result::unwrap).collect();
        assert_eq!(items, vec![&b"abc"[..], &b""[..], &[7u8; 20][..]]);
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut buf = [0u8; 16];
        buf[..4].copy_from_slice(&1000u32.to_ne_bytes());
        let mut r = BatchReader::new(&buf, 2);
        assert_eq!(r.next(), Some(Err(BadBatch { item: 0 })));
        assert_eq!(r.next(), None, "stops after an error");
        let mut r = BatchReader::new(&buf[..2], 1);
        assert!(matches!(r.next(), Some(Err(_))));
        buf[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(BatchReader::new(&buf, 1).next(), Some(Err(_))));
        // Claims more items than there are bytes.
        let buf = [0u8; 8];
        let r: Vec<_> = BatchReader::new(&buf, 5).collect();
        assert!(r.last().unwrap().is_err());
    }
}
