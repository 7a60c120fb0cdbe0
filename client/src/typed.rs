//! Typed payloads: values archived with [rkyv], checked where they arrive.
//!
//! A sender turns a value into payload bytes with [`to_payload`] and sends
//! them like any other payload (a call, a fire, a publication, a stream
//! item, or copied into a [`Loan`](crate::Loan)); the receiver reads them
//! back with [`Sample::checked`] (the archived form, read in place without
//! deserializing) or [`Sample::decode`] (an owned value). A service reads
//! its requests with [`Request::decode`] / [`Request::checked`] and answers
//! with [`Request::reply_typed`] (or [`Reply::typed`](crate::Reply::typed)
//! in a serving loop); a caller does both at once with [`Bus::call_typed`].
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
use rkyv::rancor::BoxedError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use std::time::Duration;

use crate::error::{Error, Result};
use crate::sample::Sample;
use crate::{Bus, Request, Route};

/// What archives a typed value (`T: for<'a> Serialize<Serializer<'a>>`).
///
/// Errors are rkyv's boxed ones, which keep what failed in every build
/// (its default error type keeps nothing in release builds: "failed
/// without error information").
pub type Serializer<'a> = HighSerializer<AlignedVec, ArenaHandle<'a>, BoxedError>;

/// What checks an archive (`T::Archived: for<'a> CheckBytes<Validator<'a>>`).
pub type Validator<'a> = HighValidator<'a, BoxedError>;

/// What deserializes a checked archive (`T::Archived: Deserialize<T, Deserializer>`).
pub type Deserializer = HighDeserializer<BoxedError>;

/// The payload bytes of `value`, archived (send them as any payload).
pub fn to_payload<T>(value: &T) -> Result<AlignedVec>
where
    T: for<'a> Serialize<Serializer<'a>>,
{
    rkyv::to_bytes::<BoxedError>(value)
        .map_err(|e| Error::BadPayload(format!("cannot archive a {}: {e}", std::any::type_name::<T>())))
}

/// `bytes` decoded as a `T`, checked first (on a private copy, see the module docs).
pub fn decode<T>(bytes: &[u8]) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<Validator<'a>> + Deserialize<T, Deserializer>,
{
    rkyv::from_bytes::<T, BoxedError>(&private_copy(bytes)).map_err(|e| bad::<T>(bytes.len(), e))
}

/// `bytes` checked as the archived form of a `T`, kept in a private copy
/// (see the module docs); the result derefs to `T`'s archived form.
pub fn checked<T>(bytes: &[u8]) -> Result<Checked<T>>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<Validator<'a>>,
{
    let copy = private_copy(bytes);
    rkyv::access::<T::Archived, BoxedError>(&copy).map_err(|e| bad::<T>(bytes.len(), e))?;
    Ok(Checked { bytes: copy, _type: PhantomData })
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
        T::Archived: for<'a> CheckBytes<Validator<'a>> + Deserialize<T, Deserializer>,
    {
        decode(self)
    }

    /// The payload checked as the archived form of a `T`, on a private copy
    /// (see [`typed`](crate::typed)); [`Error::BadPayload`] if it is not one.
    pub fn checked<T>(&self) -> Result<Checked<T>>
    where
        T: Archive,
        T::Archived: for<'a> CheckBytes<Validator<'a>>,
    {
        checked(self)
    }
}

impl Request {
    /// Answers with `value`, archived (see [`typed`](crate::typed)): the
    /// caller reads it with [`Sample::decode`] or
    /// [`Bus::call_typed`](crate::Bus::call_typed).
    pub fn reply_typed<T>(self, value: &T) -> Result<()>
    where
        T: for<'a> rkyv::Serialize<Serializer<'a>>,
    {
        match to_payload(value) {
            Ok(bytes) => self.reply(&bytes),
            Err(e) => {
                let text = e.to_string();
                self.fail(&text)?;
                Err(e)
            }
        }
    }

    /// The payload decoded as a `T`, checked on a private copy first (see
    /// [`typed`](crate::typed)); [`Error::BadPayload`] saying which type,
    /// how many bytes and what failed if it is not one.
    pub fn decode<T>(&self) -> Result<T>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<Validator<'a>> + rkyv::Deserialize<T, Deserializer>,
    {
        decode(self.payload())
    }

    /// The payload checked as the archived form of a `T`, on a private copy
    /// (see [`typed`](crate::typed)).
    pub fn checked<T>(&self) -> Result<Checked<T>>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> rkyv::bytecheck::CheckBytes<Validator<'a>>,
    {
        checked(self.payload())
    }
}

impl Bus {
    /// Calls `route` with `request` archived, and decodes the answer as a
    /// `Resp` (checked on a private copy first): [`Bus::call`] for typed
    /// values. A service error comes back as [`Error::Service`], an answer
    /// that is not a `Resp` as [`Error::BadPayload`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// use hybus::rkyv;
    /// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
    /// #[rkyv(crate = hybus::rkyv)]
    /// struct Sum { a: i64, b: i64 }
    ///
    /// let bus = hybus::Bus::connect()?;
    /// let route = bus.resolve("calc.sum")?;
    /// let total: i64 = bus.call_typed(&route, &Sum { a: 2, b: 3 }, std::time::Duration::from_secs(1))?;
    /// # let _ = total; Ok(()) }
    /// ```
    pub fn call_typed<Req, Resp>(&self, route: &Route, request: &Req, timeout: Duration) -> Result<Resp>
    where
        Req: for<'a> Serialize<Serializer<'a>>,
        Resp: Archive,
        Resp::Archived: for<'a> CheckBytes<Validator<'a>> + Deserialize<Resp, Deserializer>,
    {
        let bytes = to_payload(request)?;
        self.call(route, &bytes, timeout)?.decode()
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncBus {
    /// [`Bus::call_typed`], awaited (see [`AsyncBus::call`](crate::AsyncBus::call)).
    pub async fn call_typed<Req, Resp>(&self, route: &Route, request: &Req, timeout: Duration) -> Result<Resp>
    where
        Req: for<'a> Serialize<Serializer<'a>>,
        Resp: Archive,
        Resp::Archived: for<'a> CheckBytes<Validator<'a>> + Deserialize<Resp, Deserializer>,
    {
        let bytes = to_payload(request)?;
        self.call(route, &bytes, timeout).await?.decode()
    }
}

/// `bytes` copied into memory of ours, aligned as rkyv wants its archives.
fn private_copy(bytes: &[u8]) -> AlignedVec {
    let mut copy = AlignedVec::with_capacity(bytes.len());
    copy.extend_from_slice(bytes);
    copy
}

/// What a failed check says: which type, how many bytes, and what rkyv
/// found wrong where (its trace names the field).
fn bad<T>(len: usize, e: BoxedError) -> Error {
    let what = e.to_string();
    let what = if what.is_empty() { "the archive does not check".to_owned() } else { what };
    Error::BadPayload(format!("a {len}-byte payload is not an archived {}: {what}", std::any::type_name::<T>()))
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

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
    struct Reading {
        sensor: u32,
        label: String,
    }

    #[test]
    fn a_wrong_type_says_which_how_long_and_what() {
        let bytes = to_payload(&Reading { sensor: 7, label: "hall".into() }).unwrap();
        let Err(Error::BadPayload(m)) = decode::<Vec<Shape>>(&bytes) else {
            panic!("a Reading decoded as shapes");
        };
        assert!(m.contains("Vec<") && m.contains("Shape"), "{m}");
        assert!(m.contains(&format!("{}-byte", bytes.len())), "{m}");
        assert!(!m.contains("without error information"), "{m}");
        let Err(Error::BadPayload(m)) = checked::<Reading>(b"short") else {
            panic!("five bytes checked as a Reading");
        };
        assert!(m.contains("Reading") && m.contains("5-byte"), "{m}");
        assert!(!m.contains("without error information"), "{m}");
        println!("{m}");
    }
}
