//! The serving loop: [`Service::serve`] and [`Serving`], what a handler
//! answers ([`Reply`]) and how it fails ([`ServiceError`]).
//!
//! A loop written by hand around [`Service::next`] has to get a dozen
//! things right (wait without a timeout, go on after a fire, a stream, a
//! caller's cancel or a failed answer, stop once drained, answer every
//! request even when the handler fails); this one does, and the handler
//! only says what the answer is.

use std::borrow::Cow;
use std::fmt;

use crate::error::Result;
use crate::sample::{Loan, Sample};
use crate::service::{Incoming, Request, Service, StreamRequest};

/// What a serving handler answers with: bytes (borrowed from the request,
/// or owned), or a [`Loan`] written in place (zero-copy). Made with
/// `.into()` from `&[u8]`, `Vec<u8>`, `&str`, `String`, an archived value
/// ([`Reply::typed`]) or a [`Loan`].
#[derive(Debug)]
pub enum Reply<'a> {
    /// These bytes (inline up to 40, else copied into a chunk of our pool).
    Bytes(Cow<'a, [u8]>),
    /// A loaned chunk of our pool, sent as it is.
    Loan(Loan),
}

impl Reply<'_> {
    /// An empty answer.
    pub fn empty() -> Reply<'static> {
        Reply::Bytes(Cow::Borrowed(&[]))
    }

    /// `value`, archived (see [`typed`](crate::typed)).
    pub fn typed<T>(value: &T) -> Result<Reply<'static>>
    where
        T: for<'a> rkyv::Serialize<crate::typed::Serializer<'a>>,
    {
        crate::typed::to_payload(value).map(|b| Reply::Bytes(Cow::Owned(b.into_vec())))
    }
}

impl<'a> From<&'a [u8]> for Reply<'a> {
    fn from(b: &'a [u8]) -> Self {
        Reply::Bytes(Cow::Borrowed(b))
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Reply<'a> {
    fn from(b: &'a [u8; N]) -> Self {
        Reply::Bytes(Cow::Borrowed(b))
    }
}

impl From<Vec<u8>> for Reply<'_> {
    fn from(b: Vec<u8>) -> Self {
        Reply::Bytes(Cow::Owned(b))
    }
}

impl<'a> From<&'a str> for Reply<'a> {
    fn from(s: &'a str) -> Self {
        Reply::Bytes(Cow::Borrowed(s.as_bytes()))
    }
}

impl From<String> for Reply<'_> {
    fn from(s: String) -> Self {
        Reply::Bytes(Cow::Owned(s.into_bytes()))
    }
}

impl From<rkyv::util::AlignedVec> for Reply<'_> {
    fn from(b: rkyv::util::AlignedVec) -> Self {
        Reply::Bytes(Cow::Owned(b.into_vec()))
    }
}

impl From<Loan> for Reply<'_> {
    fn from(l: Loan) -> Self {
        Reply::Loan(l)
    }
}

/// How a serving handler fails: the caller gets
/// [`Error::Service { code, message }`](crate::Error::Service).
///
/// Any error converts into one (`?` in a handler works on `hybus::Error`,
/// `std::io::Error`, a parse error, ...), and so do `&str` and `String`
/// (`Err("no such key".into())`), with code 0; [`ServiceError::new`] sets
/// a code. Not itself a `std::error::Error`: that is what lets every
/// error convert into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    code: u32,
    message: String,
}

impl ServiceError {
    /// An error with the service's own `code` (0 for none) and `message`
    /// (cut at [`MAX_ERROR_MESSAGE`](crate::MAX_ERROR_MESSAGE) bytes).
    pub fn new(code: u32, message: impl Into<String>) -> ServiceError {
        ServiceError { code, message: message.into() }
    }

    /// The code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for ServiceError {
    fn from(e: E) -> Self {
        ServiceError { code: 0, message: e.into().to_string() }
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            0 => f.write_str(&self.message),
            c => write!(f, "{c}: {}", self.message),
        }
    }
}

type FireHandler<'s> = Box<dyn FnMut(Sample) + 's>;
type StreamHandler<'s> = Box<dyn FnMut(&mut StreamRequest) -> Result<(), ServiceError> + 's>;

/// A serving loop being set up: [`Service::serving`], then optional
/// handlers for fires and streams, then [`run`](Self::run) with the
/// request handler.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), hybus::Error> {
/// use hybus::{Bus, Reply, ServiceError};
/// let bus = Bus::connect()?;
/// let svc = bus.register("demo.upper")?;
/// let mut fired = 0u64;
/// svc.serving()
///     .on_fire(|_sample| fired += 1)
///     .on_stream(|st| {
///         for i in 0..3u8 {
///             st.send(&[i], std::time::Duration::from_secs(1))?;
///         }
///         Ok(())
///     })
///     .run(|req| {
///         if req.payload().is_empty() {
///             return Err(ServiceError::new(400, "empty request"));
///         }
///         Ok(req.payload().to_ascii_uppercase().into())
///     })?;
/// # Ok(()) }
/// ```
pub struct Serving<'s> {
    service: &'s Service,
    on_fire: Option<FireHandler<'s>>,
    on_stream: Option<StreamHandler<'s>>,
}

impl fmt::Debug for Serving<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving")
            .field("service", &self.service.name())
            .field("on_fire", &self.on_fire.is_some())
            .field("on_stream", &self.on_stream.is_some())
            .finish()
    }
}

impl<'s> Serving<'s> {
    /// Fires (fire-and-forget messages) go to `handler`; without one they
    /// are dropped.
    pub fn on_fire(mut self, handler: impl FnMut(Sample) + 's) -> Self {
        self.on_fire = Some(Box::new(handler));
        self
    }

    /// Request-streams and request-channels go to `handler`, which sends
    /// items ([`StreamRequest::send`], [`send_many`](StreamRequest::send_many))
    /// and reads the caller's ([`recv`](StreamRequest::recv)); the stream
    /// ends when it returns `Ok`, and fails with its error when it returns
    /// `Err`. Without one, streams are refused with a service error.
    pub fn on_stream(mut self, handler: impl FnMut(&mut StreamRequest) -> Result<(), ServiceError> + 's) -> Self {
        self.on_stream = Some(Box::new(handler));
        self
    }

    /// Serves until the instance is drained (by [`Service::drain`], or by
    /// a new instance registered with
    /// [`replace`](crate::ServiceOptions::replace)) and every request in
    /// flight is answered: then `Ok(())`. Each request goes to `handler`,
    /// one at a time on this thread; its `Ok` is the answer, its `Err` is
    /// answered as a service error. Idleness, fires, streams, a caller's
    /// cancel or timeout, an answer that could not be delivered, and a
    /// daemon restart (the bus reconnects by itself unless built with
    /// [`BusOptions::reconnect`](crate::BusOptions) off) do not end it;
    /// [`Error::BusGone`](crate::Error::BusGone) does, once the connection is lost for good.
    pub fn run<F>(mut self, mut handler: F) -> Result<()>
    where
        F: for<'a> FnMut(&'a Request) -> Result<Reply<'a>, ServiceError>,
    {
        while let Some(incoming) = self.service.next_blocking()? {
            match incoming {
                Incoming::Request(req) => {
                    let answer = match handler(&req) {
                        Ok(reply) => req.build(reply),
                        Err(e) => req.error(e.code, &e.message),
                    };
                    // A failed answer is this one exchange's (its caller
                    // hears or times out); a lost connection is reported
                    // by the next wait, once it is lost for good.
                    let _ = req.send(answer);
                }
                Incoming::Fire(sample) => {
                    if let Some(f) = &mut self.on_fire {
                        f(sample);
                    }
                }
                Incoming::Stream(mut st) => {
                    let r = match &mut self.on_stream {
                        Some(f) => match f(&mut st) {
                            Ok(()) => st.end(),
                            Err(e) => st.fail_with(e.code, &e.message),
                        },
                        None => st.fail(&format!("{} serves no streams", self.service.name())),
                    };
                    let _ = r;
                }
            }
        }
        Ok(())
    }
}

impl Service {
    /// Serves requests with `handler` until the instance is drained: the
    /// serving loop, written once (see [`Serving::run`]). Fires are
    /// dropped and streams refused; [`serving`](Self::serving) sets
    /// handlers for them.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// let bus = hybus::Bus::connect()?;
    /// let svc = bus.register("demo.upper")?;
    /// svc.serve(|req| Ok(req.payload().to_ascii_uppercase().into()))?;
    /// # Ok(()) }
    /// ```
    pub fn serve<F>(&self, handler: F) -> Result<()>
    where
        F: for<'a> FnMut(&'a Request) -> Result<Reply<'a>, ServiceError>,
    {
        self.serving().run(handler)
    }

    /// A serving loop to set up: handlers for fires and streams, then
    /// [`run`](Serving::run) with the request handler.
    pub fn serving(&self) -> Serving<'_> {
        Serving { service: self, on_fire: None, on_stream: None }
    }
}
