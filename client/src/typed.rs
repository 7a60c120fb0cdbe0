//! Typed payloads: values archived with [rkyv], checked where they arrive.
//!
//! A sender turns a value into payload bytes with [`to_payload`] and sends
//! them like any other payload (a call, a fire, a publication, a stream
//! item, or copied into a [`Loan`](crate::Loan)); the receiver reads them
//! back with [`Sample::checked`] (the archived form, read in place without
//! deserializing) or [`Sample::decode`] (an owned value).
//!
//! **Checked on a private copy.** A payload lives in the sender's pool,
//! which the sender can still write while the receiver reads it. A check
//! made on that memory says nothing about what is read after it, so both
//! readers first copy the payload into memory of their own, then check it
//! (rkyv's `bytecheck`: every offset, length, enum tag and `char` of the
//! archive), and only then hand it out. Malformed bytes are an
//! [`Error::BadPayload`], never a panic or an out-of-bounds read. The copy
//! is the price of trusting nothing a peer controls; a receiver that only
//! streams through raw bytes once reads the [`Sample`] directly.
//!
//! Both ends must agree on the type, as with any serialization format;
//! [`rkyv`] is re-exported so that they can derive with the same version.
//!
//! # Examples
//!
//! ```
//! # fn main() -> Result<(), hybus::Error> {
//! use hybus::rkyv;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
//! #[rkyv(crate = hybus::rkyv)]
//! struct Reading {
//!     sensor: u32,
//!     celsius: f32,
//!     label: String,
//! }
//!
//! let bytes = hybus::typed::to_payload(&Reading { sensor: 7, celsius: 21.5, label: "hall".into() })?;
//! // bus.fire(&route, &bytes)?; and where it arrives: sample.decode::<Reading>()?
//! let back: Reading = hybus::typed::decode(&bytes)?;
//! assert_eq!(back.label, "hall");
//! let seen = hybus::typed::checked::<Reading>(&bytes)?;
//! assert_eq!(seen.sensor, 7);
//! # Ok(()) }
//! ```

use std::marker::PhantomData;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sample::Sample;

/// The payload bytes of `value`, archived (send them as any payload).
pub fn to_payload<T>(value: &T) -> Result<AlignedVec>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(value).map_err(|e| Error::BadPayload(format!("cannot archive the value: {e}")))
}

/// `bytes` decoded as a `T`, checked first (on a private copy, see the module docs).
pub fn decode<T>(bytes: &[u8]) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(&private_copy(bytes)).map_err(bad::<T>)
}

/// `bytes` checked as the archived form of a `T`, kept in a private copy
/// (see the module docs); the result derefs to `T`'s archived form.
pub fn checked<T>(bytes: &[u8]) -> Result<Checked<T>>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    let bytes = private_copy(bytes);
    rkyv::access::<T::Archived, rancor::Error>(&bytes).map_err(bad::<T>)?;
    Ok(Checked { bytes, _type: PhantomData })
}

/// A payload checked as the archived form of a `T` (see [`checked`]):
/// a private copy, read in place through `Deref`.
pub struct Checked<T: Archive> {
    bytes: AlignedVec,
    _type: PhantomData<fn() -> T>,
}

impl<T: Archive> std::ops::Deref for Checked<T> {
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: `checked` validated these bytes as a `T::Archived` at its
        // root, and they are ours and immutable since (no one else maps them).
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.bytes) }
    }
}

impl<T: Archive> std::fmt::Debug for Checked<T>
where
    T::Archived: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Sample {
    /// The payload decoded as a `T` (see [`typed`](crate::typed)): checked
    /// on a private copy first; [`Error::BadPayload`] if it is not one.
    pub fn decode<T>(&self) -> Result<T>
    where
        T: Archive,
        T::Archived:
            for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
    {
        decode(self)
    }

    /// The payload checked as the archived form of a `T`, on a private copy
    /// (see [`typed`](crate::typed)); [`Error::BadPayload`] if it is not one.
    pub fn checked<T>(&self) -> Result<Checked<T>>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        checked(self)
    }
}

/// `bytes` copied into memory of ours, aligned as rkyv wants its archives.
fn private_copy(bytes: &[u8]) -> AlignedVec {
    let mut copy = AlignedVec::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    copy
}

fn bad<T>(e: rancor::Error) -> Error {
    Error::BadPayload(format!("not a {}: {e}", std::any::type_name::<T>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Circle { r: f64 },
        Named(String),
    }

    #[test]
    fn round_trips_and_refuses_garbage() {
        let shapes = vec![Shape::Circle { r: 1.5 }, Shape::Named("triangle".into())];
        let bytes = to_payload(&shapes).unwrap();
        assert_eq!(decode::<Vec<Shape>>(&bytes).unwrap(), shapes);
        // Misaligned input is copied, not refused.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let seen = checked::<Vec<Shape>>(&shifted[1..]).unwrap();
        assert!(matches!(&seen[1], ArchivedShape::Named(n) if n.as_str() == "triangle"));
        // Every single-byte corruption is either still a valid archive or refused: never a panic.
        for i in 0..bytes.len() {
            for v in [0x00, 0x7f, 0xff] {
                let mut bad = bytes.to_vec();
                bad[i] = v;
                let _ = decode::<Vec<Shape>>(&bad);
                let _ = checked::<Vec<Shape>>(&bad);
            }
        }
        assert!(matches!(decode::<Vec<Shape>>(b"definitely not an archive"), Err(Error::BadPayload(_))));
        assert!(matches!(decode::<Vec<Shape>>(&[]), Err(Error::BadPayload(_))));
    }
}
