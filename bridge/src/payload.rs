//! Payloads between a hybus bus and Zenoh, each crossing copied once.
//!
//! * Out to Zenoh: a received [`Sample`] is lent to Zenoh as it lies in
//!   the sender's pool ([`lend`]); Zenoh's serialization into its
//!   transmission batch is the one copy (the network copy), and the chunk
//!   goes back to its sender when Zenoh drops the bytes, right after that.
//! * In from Zenoh: a received [`ZBytes`], which may come in several
//!   slices (a large payload is reassembled from fragments), is written
//!   slice by slice into a loaned chunk ([`loan_from`]), never first made
//!   contiguous.

use std::time::Duration;

use hybus::{Bus, Loan, Sample};
use std::io::Read;

use zenoh::bytes::{ZBytes, ZBytesReader};

/// A hybus sample as the owner of Zenoh bytes.
struct Lent(Sample);

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// `sample`'s bytes as Zenoh bytes, without copying them.
///
/// The sample (and its chunk) lives as long as Zenoh holds the bytes: for
/// a put or a reply, until they are serialized onto the link. A peer that
/// keeps a writable mapping of the chunk could change the bytes meanwhile;
/// the bridge only relays them, so that changes nothing it relies on.
pub fn lend(sample: Sample) -> ZBytes {
    ZBytes::from(bytes::Bytes::from_owner(Lent(sample)))
}

/// A chunk of `bus`'s pool holding `z` (waiting up to `wait` for room);
/// [`hybus::Error::PayloadTooLarge`] if the pool cannot carry it.
pub fn loan_from(bus: &Bus, z: &ZBytes, wait: Duration) -> hybus::Result<Loan> {
    loan_read(bus, &mut z.reader(), z.len(), wait)
}

/// A chunk of `bus`'s pool holding the next `len` bytes of `reader`
/// (which must have them: the caller counted them), read slice by slice.
pub fn loan_read(bus: &Bus, reader: &mut ZBytesReader<'_>, len: usize, wait: Duration) -> hybus::Result<Loan> {
    let max = bus.max_payload();
    if len > max as usize {
        // Skipped, so that what follows in the reader stays in step.
        skip(reader, len);
        return Err(hybus::Error::PayloadTooLarge { len, max });
    }
    let mut loan = match bus.loan(len, wait) {
        Ok(l) => l,
        Err(e) => {
            skip(reader, len);
            return Err(e);
        }
    };
    read_exact(reader, &mut loan)?;
    Ok(loan)
}

/// Fills `buf` from `reader`, which must have that many bytes (the
/// caller counted them): a shorter payload is a protocol error.
pub fn read_exact(reader: &mut ZBytesReader<'_>, buf: &mut [u8]) -> hybus::Result<()> {
    reader.read_exact(buf).map_err(|e| hybus::Error::Protocol(format!("a payload shorter than it says: {e}")))
}

/// Reads past the next `len` bytes of `reader`.
fn skip(reader: &mut ZBytesReader<'_>, len: usize) {
    let _ = std::io::copy(&mut Read::take(&mut *reader, len as u64), &mut std::io::sink());
}
