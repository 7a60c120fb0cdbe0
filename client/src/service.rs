//! The serving side: [`Service`], and what arrives at it ([`Incoming`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hybus_layout::control::Request as ControlRequest;
use hybus_layout::descriptor::flags;
use hybus_layout::{Descriptor, Kind};

use crate::bus::{Bus, Shared};
use crate::core::{Hot, Origin};
use crate::error::{Error, Result};
use crate::sample::{Loan, Sample};
use crate::stream::{recv_item, send_item, service_error, End, Side, Window};
use crate::wait::{deadline_in, Due};

/// How long [`Request::reply`] waits for room in our pool for a large answer.
const REPLY_POOL_WAIT: Duration = Duration::from_secs(10);

/// How an instance registers.
///
/// By default a name is *shared*: every instance registered under it gets
/// a share of its requests (load balancing), and a new one simply joins.
/// [`exclusive`](Self::exclusive) and [`replace`](Self::replace) give the
/// name ownership of D-Bus instead.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), hybus::Error> {
/// use hybus::{Bus, ServiceOptions};
/// let bus = Bus::connect()?;
/// // Alone under its name, or not at all:
/// let svc = bus.register_with("kv.store", ServiceOptions::default().exclusive())?;
/// // Later, a new version takes over; the old instance drains and its serving loop ends.
/// let new = bus.register_with("kv.store", ServiceOptions::default().exclusive().replace())?;
/// # drop((svc, new)); Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceOptions {
    /// The instance's version (shown in listings).
    pub version: u32,
    /// Load-balancing weight (≥ 1): an instance of weight 3 gets three times the requests of one of weight 1.
    pub weight: u32,
    /// Hold the name alone (see [`exclusive`](Self::exclusive)).
    pub exclusive: bool,
    /// Take the name over (see [`replace`](Self::replace)).
    pub replace: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions { version: 1, weight: 1, exclusive: false, replace: false }
    }
}

impl ServiceOptions {
    /// Holds the name alone. The registration fails with
    /// [`Error::NameOwned`] if another instance serves the name, and while
    /// this one serves, registrations of the name are refused the same
    /// way, unless they [`replace`](Self::replace) it. `hybusctl status
    /// NAME` shows the instance as `exclusive`.
    pub fn exclusive(mut self) -> Self {
        self.exclusive = true;
        self
    }

    /// Takes the name over: every instance serving it now drains (gets no
    /// new request, finishes those in flight, and its
    /// [`serve`](Service::serve) loop returns once they are answered), and
    /// this one gets every new request: hot replacement in one call. Works
    /// on an exclusive name too (only for the uid that owns the name).
    pub fn replace(mut self) -> Self {
        self.replace = true;
        self
    }

    /// With this version (shown in listings).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// With this load-balancing weight (≥ 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }
}

/// Where a registration currently lives: (instance, route, epoch); and
/// why it lives nowhere, if the daemon refused to register it again
/// after a reconnect (another took the name meanwhile).
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<(u32, u32, u64)>, Mutex<Option<Error>>);

impl Slot {
    pub(crate) fn store(&self, instance: u32, route: u32, epoch: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (instance, route, epoch);
    }
    pub(crate) fn load(&self) -> (u32, u32, u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The registration is lost for good: `why`.
    pub(crate) fn lose(&self, why: Error) {
        *self.1.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }
    /// Why the registration is lost, if it is.
    pub(crate) fn lost(&self) -> Option<Error> {
        self.1.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A registration to restore after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub name: String,
    pub options: ServiceOptions,
    /// Set for a remote instance ([`Bus::register_remote`]).
    pub remote: Option<hybus_layout::control::Remote>,
    pub slot: Arc<Slot>,
}

/// A registered service instance. Dropping it unregisters the instance.
#[derive(Debug)]
pub struct Service {
    bus: Bus,
    name: String,
    slot: Arc<Slot>,
}

/// Something sent to a service.
#[derive(Debug)]
pub enum Incoming {
    /// A request that expects an answer.
    Request(Request),
    /// A fire-and-forget message.
    Fire(Sample),
    /// A request-stream or request-channel.
    Stream(StreamRequest),
}

impl Service {
    pub(crate) fn new(
        bus: Bus,
        name: &str,
        options: ServiceOptions,
        remote: Option<hybus_layout::control::Remote>,
        (instance, route, epoch): (u32, u32, u64),
    ) -> Service {
        let slot = Arc::new(Slot::default());
        slot.store(instance, route, epoch);
        bus.shared.registrations.lock().unwrap_or_else(|p| p.into_inner()).push(Registration {
            name: name.to_owned(),
            options,
            remote,
            slot: slot.clone(),
        });
        Service { bus, name: name.to_owned(), slot }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The daemon's id of this instance.
    pub fn instance(&self) -> u32 {
        self.slot.load().0
    }

    /// The route id of the name.
    pub fn route(&self) -> u32 {
        self.slot.load().1
    }

    /// Waits up to `timeout` for the next request, fire or stream. `Ok(None)` if none came.
    ///
    /// See [`next_blocking`](Self::next_blocking) to wait without a
    /// timeout, and [`serve`](Self::serve) for the whole serving loop.
    pub fn next(&self, timeout: Duration) -> Result<Option<Incoming>> {
        match self.next_due(Due::After(timeout)) {
            Err(Error::DeadlineExceeded) => Ok(None),
            r => r,
        }
    }

    /// Waits, as long as it takes, for the next request, fire or stream;
    /// `Ok(None)` once the instance drained (it, or a replacement, asked)
    /// and nothing is left in flight to it: no request will come again.
    ///
    /// Idleness, a caller's cancel or a daemon restart (with the bus's
    /// default automatic reconnect) do not end the wait;
    /// [`Error::BusGone`] does, once the connection is lost for good, and
    /// so does the daemon's refusal to register the instance again after
    /// a restart (another instance took the name exclusively meanwhile:
    /// [`Error::NameOwned`]).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// # let svc = hybus::Bus::connect()?.register("demo.raw")?;
    /// while let Some(incoming) = svc.next_blocking()? {
    ///     match incoming {
    ///         hybus::Incoming::Request(req) => req.reply(b"ok")?,
    ///         hybus::Incoming::Fire(_) => {}
    ///         hybus::Incoming::Stream(st) => st.fail("no streams here")?,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_blocking(&self) -> Result<Option<Incoming>> {
        self.next_due(Due::Never)
    }

    /// Whether the daemon said this instance drained: it gets no new
    /// request and has none in flight (see [`next_blocking`](Self::next_blocking)).
    pub fn is_drained(&self) -> bool {
        let instance = self.instance();
        self.bus.shared.lock().drained.contains(&instance)
    }

    /// The next incoming, waiting until `due`; `None` once drained.
    fn next_due(&self, due: Due) -> Result<Option<Incoming>> {
        let shared = &self.bus.shared;
        let r = shared.wait_hot(due, Hot::Inbox(self.inbox().0), |core| {
            // Read on every round, not once: a reconnect during the wait
            // registers us again, under a new instance id and epoch, and a
            // request taken then is answered in the new epoch.
            let (instance, epoch) = self.inbox();
            let Some((d, origin)) = core.take_incoming(instance) else {
                // After the inbox: what came before the daemon's word is served first.
                if !core.drained.is_empty() && core.drained.contains(&instance) {
                    return Ok(Some(None));
                }
                if core.epoch != epoch {
                    if let Some(e) = self.slot.lost() {
                        return Err(e);
                    }
                }
                // The daemon unregistered it (a policy reload): say so.
                core.revoked_instance(instance)?;
                return Ok(None);
            };
            // Mapped under this lock rather than another one.
            Ok(Some(Some((Sample::new_locked(shared, core, d, origin)?, origin, instance, epoch))))
        })?;
        Ok(r.map(|(payload, origin, instance, epoch)| self.incoming(payload, origin, instance, epoch)))
    }

    /// The inbox this instance's requests land in, and the connection epoch.
    pub(crate) fn inbox(&self) -> (u32, u64) {
        let (instance, _, epoch) = self.slot.load();
        (instance, epoch)
    }

    /// Wraps what came to the inbox as what the application sees.
    pub(crate) fn incoming(&self, payload: Sample, origin: Origin, instance: u32, epoch: u64) -> Incoming {
        let shared = &self.bus.shared;
        let d = *payload.descriptor();
        match Kind::from_u8(d.kind) {
            Some(Kind::Fire) => Incoming::Fire(payload),
            Some(Kind::StreamOpen) => {
                let channel = d.aux & hybus_layout::descriptor::STREAM_CHANNEL != 0;
                Incoming::Stream(StreamRequest {
                    shared: shared.clone(),
                    corr: d.correlation,
                    origin,
                    instance,
                    epoch,
                    payload,
                    channel,
                    window: Window { size: 64, consumed: 0 },
                    granted: false,
                    #[cfg(feature = "tokio")]
                    owed: None,
                    done: false,
                })
            }
            _ => Incoming::Request(Request {
                shared: shared.clone(),
                corr: d.correlation,
                origin,
                instance,
                epoch,
                payload: Some(payload),
                wire_deadline: d.aux,
                answered: false,
            }),
        }
    }

    /// Whether the daemon asked this instance to drain and exit (it started
    /// it on demand and it was idle: `stop_when_idle_s`). It gets no new
    /// requests then; answer what came, and exit. (Also told as
    /// [`BusEvent::DrainAsked`](crate::BusEvent::DrainAsked).)
    pub fn drain_asked(&self) -> bool {
        let instance = self.instance();
        self.bus.shared.lock().drain_asked.contains(&instance)
    }

    /// Stops getting new requests; requests in flight still arrive and may be answered.
    pub fn drain(&self) -> Result<()> {
        self.bus.control(ControlRequest::Drain { instance: self.instance() }).map(drop)
    }

    /// Unregisters now. Requests in flight fail at their callers with [`Error::PeerGone`].
    pub fn unregister(self) -> Result<()> {
        self.unregister_inner()
    }

    fn unregister_inner(&self) -> Result<()> {
        self.bus
            .shared
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| !Arc::ptr_eq(&r.slot, &self.slot));
        let (instance, _, epoch) = self.slot.load();
        {
            let mut core = self.bus.shared.lock();
            if core.epoch != epoch {
                return Ok(());
            }
            core.retire(instance);
        }
        if !self.bus.is_connected() {
            return Ok(());
        }
        self.bus.control(ControlRequest::Unregister { instance }).map(drop)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.unregister_inner();
    }
}

/// A request waiting for its answer. Dropped unanswered, it fails at the
/// caller with a service error rather than leaving it to time out.
///
/// An answer to a call its caller gave up on meanwhile (its deadline
/// passed, it cancelled, it went away) is dropped, and
/// [`reply`](Self::reply), [`reply_loan`](Self::reply_loan) and
/// [`fail`](Self::fail) return `Ok`, as a D-Bus service's late reply is
/// dropped at the caller: it is the caller's doing, not a failure of the
/// service, and an error there would stop every serving loop written with
/// `?` at the first caller's timeout. [`is_cancelled`](Self::is_cancelled)
/// tells before the work is done.
#[derive(Debug)]
pub struct Request {
    shared: Arc<Shared>,
    corr: u64,
    /// The path it came by; the answer goes back the same way.
    origin: Origin,
    instance: u32,
    epoch: u64,
    payload: Option<Sample>,
    /// The caller's deadline as the request carried it (see [`deadline`](Self::deadline)).
    wire_deadline: u64,
    answered: bool,
}

impl Request {
    /// Until when the caller waits for the answer; `None` if it waits
    /// without a limit (or is an older client that does not say).
    ///
    /// Never earlier than the caller's own deadline, at most a few
    /// milliseconds later. A server may skip work nobody waits for any
    /// more; a relay passes what is left on (`hybus-bridge` makes it its
    /// Zenoh query's timeout). The caller's word, not checked: a caller
    /// gives what deadline it likes (any value maps to an instant within a
    /// year).
    pub fn deadline(&self) -> Option<std::time::Instant> {
        crate::wait::deadline_of_wire(self.wire_deadline)
    }

    /// The request's payload.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or(&[])
    }

    /// Takes the payload out of the request, to read on after the answer
    /// went: a binding's sample object lives as long as its language holds
    /// it, not as long as the request. [`payload`](Self::payload) is empty
    /// afterwards; the chunk goes back when the sample is dropped. `None`
    /// if it was taken already.
    pub fn take_payload(&mut self) -> Option<Sample> {
        self.payload.take()
    }

    /// Whether the caller cancelled (or timed out) meanwhile.
    pub fn is_cancelled(&self) -> bool {
        let mut core = self.shared.lock();
        core.pump_data();
        core.cancelled.contains(&(self.origin, self.corr))
    }

    /// Sends the answer `d` (with the connection epoch its chunk was taken on, if it has one).
    fn finish(&mut self, d: Result<Descriptor>, chunk_epoch: Option<u64>) -> Result<()> {
        self.answered = true;
        let mut payload = self.payload.take();
        // One lock for the release, the checks and the push (the hot path of a server).
        let mut core = self.shared.lock();
        // The request's chunk goes back. Through the daemon, first: the
        // caller's pool then has it no later than the answer. On a channel,
        // after the answer's push: there it is only queued (it follows on
        // the return ring at our next push or wait), and queueing it before
        // the push put the channel lookup and the queue between the
        // request's arrival and its answer for nothing.
        if self.origin == Origin::Daemon {
            if let Some(p) = payload.take() {
                p.release_locked(&mut core);
            }
        }
        let mut d = match d {
            Ok(d) => d,
            Err(e) => {
                if let Some(p) = payload {
                    p.release_locked(&mut core);
                }
                core.served_done(self.origin, self.corr);
                return Err(e);
            }
        };
        d.correlation = self.corr;
        d.flags |= flags::SERVER;
        let sent = {
            let stale_chunk = chunk_epoch.is_some_and(|e| e != core.epoch);
            let r = if stale_chunk {
                Err(crate::bus::stale_payload())
            } else if self.origin == Origin::Daemon && core.epoch != self.epoch {
                Err(Error::BusGone("the request is from before a reconnect".into()))
            } else if !core.cancelled.is_empty() && core.cancelled.remove(&(self.origin, self.corr)) {
                Err(Error::Cancelled)
            } else {
                match core.try_send_on(self.origin, &d) {
                    Err(Error::WouldBlock) => Ok(false),
                    r => r.map(|()| true),
                }
            };
            if r.is_err() {
                core.free_unsent(&d, chunk_epoch);
            }
            if !matches!(r, Ok(false)) {
                core.served_done(self.origin, self.corr);
            }
            r
        };
        // (A sample must not be dropped under the lock: its drop takes it.)
        if let Some(p) = payload {
            p.release_locked(&mut core);
        }
        let epoch = core.epoch;
        drop(core);
        match sent {
            Ok(true) => Ok(()),
            // The caller gave up on it: the answer is dropped, which is
            // no failure of ours (see the type's docs).
            Err(Error::Cancelled) => Ok(()),
            // The ring is full: wait for room like any sender.
            Ok(false) => {
                let r = self.shared.send_or_reclaim(self.origin, &d, None, epoch);
                self.shared.lock().served_done(self.origin, self.corr);
                r
            }
            Err(e) => Err(e),
        }
    }

    /// Answers with `payload` (copied into a chunk if larger than 40 bytes).
    pub fn reply(mut self, payload: &[u8]) -> Result<()> {
        // Inline payloads need neither the pool nor a deadline (nor the clock).
        let (d, epoch) = match Descriptor::new(Kind::Response, self.instance, 0).with_inline(payload) {
            Some(d) => (Ok(d), None),
            None => {
                match self.shared.build(Kind::Response, self.instance, payload, Some(Instant::now() + REPLY_POOL_WAIT))
                {
                    Ok((d, epoch)) => (Ok(d), Some(epoch)),
                    Err(e) => (Err(e), None),
                }
            }
        };
        self.finish(d, epoch)
    }

    /// Answers with a loaned chunk written in place (zero-copy).
    pub fn reply_loan(mut self, loan: Loan) -> Result<()> {
        match loan.into_current(Kind::Response, self.instance) {
            Ok((d, epoch)) => self.finish(Ok(d), Some(epoch)),
            Err(e) => self.finish(Err(e), None),
        }
    }

    /// Answers with an error the caller sees as [`Error::Service`] (code 0).
    /// A message longer than the descriptor's 40 bytes travels in a chunk
    /// of our pool like any payload; one longer than
    /// [`MAX_ERROR_MESSAGE`] is cut there, with a `…`.
    pub fn fail(self, message: &str) -> Result<()> {
        self.fail_with(0, message)
    }

    /// Answers with a typed error: the caller sees
    /// [`Error::Service { code, message }`](Error::Service), `code` being the
    /// service's own (0 stands for none given). The message travels as in
    /// [`fail`](Self::fail).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// # let bus = hybus::Bus::connect()?;
    /// # let svc = bus.register("kv.store")?;
    /// const NOT_FOUND: u32 = 404;
    /// if let Some(hybus::Incoming::Request(req)) = svc.next_blocking()? {
    ///     req.fail_with(NOT_FOUND, "no key \"colour\"")?;
    /// }
    /// // ...and the caller's `bus.call(..)` returns
    /// // Err(hybus::Error::Service { code: 404, message: "no key \"colour\"".into() })
    /// # Ok(()) }
    /// ```
    pub fn fail_with(mut self, code: u32, message: &str) -> Result<()> {
        let (d, epoch) = service_error_built(&self.shared, self.instance, code, message);
        self.finish(Ok(d), epoch)
    }

    /// What answers with `reply` (inline, or copied into a chunk of our
    /// pool, or the loan itself), and the connection epoch its chunk was
    /// taken on; if it cannot be built (too large for our pool, say), a
    /// service error that says why instead: the caller always hears. For
    /// the serving loops, which build while the handler's reply may still
    /// borrow the request and send once it is done ([`send`](Self::send)).
    pub(crate) fn build(&self, reply: crate::serve::Reply<'_>) -> (Descriptor, Option<u64>) {
        use crate::serve::Reply;
        let built = match reply {
            Reply::Loan(loan) => loan.into_current(Kind::Response, self.instance).map(|(d, e)| (d, Some(e))),
            Reply::Bytes(b) => match Descriptor::new(Kind::Response, self.instance, 0).with_inline(&b) {
                Some(d) => Ok((d, None)),
                None => self
                    .shared
                    .build(Kind::Response, self.instance, &b, Some(Instant::now() + REPLY_POOL_WAIT))
                    .map(|(d, e)| (d, Some(e))),
            },
        };
        built.unwrap_or_else(|e| self.error(0, &format!("the service could not send its answer: {e}")))
    }

    /// The instance it came to (the route its answer is built for).
    #[cfg(feature = "tokio")]
    pub(crate) fn instance(&self) -> u32 {
        self.instance
    }

    /// What answers with the error `code`, `message` (see [`build`](Self::build)).
    pub(crate) fn error(&self, code: u32, message: &str) -> (Descriptor, Option<u64>) {
        service_error_built(&self.shared, self.instance, code, message)
    }

    /// Sends what [`build`](Self::build) or [`error`](Self::error) made.
    pub(crate) fn send(mut self, (d, epoch): (Descriptor, Option<u64>)) -> Result<()> {
        self.finish(Ok(d), epoch)
    }
}

/// Longest error message a service error carries, in bytes (4 KiB): a
/// longer one is cut there, on a character boundary, ending with `…`.
/// Up to 40 bytes travel in the descriptor, longer ones in a chunk of the
/// service's pool, like any payload.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// `message` cut to [`MAX_ERROR_MESSAGE`] bytes with a visible `…`.
fn error_text(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message.into();
    }
    let mut end = MAX_ERROR_MESSAGE - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end]).into()
}

/// A service error with `code` and `message` for instance `route`: inline
/// if it fits, else in a chunk of our pool (and the connection epoch it
/// was taken on). Without room in the pool, the message is cut to the
/// inline space (with a `…`) rather than not sent.
pub(crate) fn service_error_built(
    shared: &Arc<Shared>,
    route: u32,
    code: u32,
    message: &str,
) -> (Descriptor, Option<u64>) {
    let text = error_text(message);
    let aux = hybus_layout::control::service_aux(code);
    let inline = Descriptor::new(Kind::Error, route, 0).with_aux(aux);
    if let Some(mut d) = inline.with_inline(text.as_bytes()) {
        d.flags |= flags::SERVER;
        return (d, None);
    }
    // Errors are not worth waiting long for room: the caller waits for this answer.
    match shared.build(Kind::Error, route, text.as_bytes(), Some(Instant::now() + Duration::from_millis(100))) {
        Ok((mut d, epoch)) => {
            d.aux = aux;
            d.flags |= flags::SERVER;
            (d, Some(epoch))
        }
        Err(_) => {
            let cap = hybus_layout::descriptor::INLINE_CAPACITY - '…'.len_utf8();
            let mut end = cap;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let short = format!("{}…", &text[..end]);
            let mut d = inline.with_inline(short.as_bytes()).unwrap_or(inline);
            d.flags |= flags::SERVER;
            (d, None)
        }
    }
}

impl Request {
    /// Answers with `error` as the caller will see it: the kinds that
    /// travel on the data plane keep their kind ([`Error::PeerGone`],
    /// [`Error::DeadlineExceeded`], [`Error::NoInstance`], ...); any other
    /// becomes [`Error::Service`] with its text (first 40 bytes). For
    /// relays such as `hybus-bridge`, which pass on an error that happened
    /// elsewhere.
    pub fn fail_as(mut self, error: &Error) -> Result<()> {
        use hybus_layout::control::DataError as D;
        let code = match error {
            Error::NoSuchService => D::NoSuchService,
            Error::NoInstance => D::NoInstance,
            Error::DeadlineExceeded => D::DeadlineExceeded,
            Error::PeerGone => D::PeerGone,
            Error::PayloadTooLarge { .. } => D::PayloadTooLarge,
            Error::OutOfPool { .. } => D::OutOfPool,
            Error::QueueFull => D::QueueFull,
            Error::Cancelled => D::Cancelled,
            Error::AccessDenied(_) => D::AccessDenied,
            Error::QuotaExceeded(_) => D::QuotaExceeded,
            Error::Service { code, message } => return self.fail_with(*code, message),
            other => return self.fail(&other.to_string()),
        };
        let mut d = Descriptor::new(Kind::Error, self.instance, 0).with_aux(code as u64);
        d.flags |= flags::SERVER;
        self.finish(Ok(d), None)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.answered {
            let d = service_error(self.instance, 0, "request dropped without an answer");
            let _ = self.finish(Ok(d), None);
        }
    }
}

/// The serving end of a request-stream or request-channel.
///
/// Dropping it ends the stream (StreamEnd).
#[derive(Debug)]
pub struct StreamRequest {
    shared: Arc<Shared>,
    corr: u64,
    origin: Origin,
    instance: u32,
    epoch: u64,
    payload: Sample,
    channel: bool,
    window: Window,
    granted: bool,
    /// Credits for the caller the async reader has not sent yet (see
    /// [`AsyncBus::next_item`](crate::AsyncBus::next_item)).
    #[cfg(feature = "tokio")]
    owed: Option<Descriptor>,
    done: bool,
}

impl StreamRequest {
    /// The payload that opened the stream.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Whether the caller may send items too (request-channel).
    pub fn is_channel(&self) -> bool {
        self.channel
    }

    /// Sends one item, waiting up to `timeout` for the caller to grant a credit.
    /// Fails with [`Error::Cancelled`] once the caller cancelled or went away.
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<()> {
        send_item(&self.shared, self.this_end(), payload, deadline_in(timeout))
    }

    /// Sends many items at once, packed into as few chunks as the caller's
    /// credits allow (batches): the fast way to stream small messages.
    /// Waits up to `timeout` in all; returns how many were sent.
    pub fn send_many<I, T>(&mut self, items: I, timeout: Duration) -> Result<u64>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        crate::stream::send_batches(&self.shared, self.this_end(), items, deadline_in(timeout))
    }

    /// Receives the caller's next item (channels); `Ok(None)` once the caller ended its direction.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Sample>> {
        if !self.channel {
            return Ok(None);
        }
        if let Some(c) = self.first_credit() {
            self.shared.send_on(self.origin, &c, None)?;
        }
        let end = self.this_end();
        recv_item(&self.shared, end, &mut self.window, deadline_in(timeout))
    }

    /// The caller's first credits (a whole window), at our first read of a
    /// channel; `None` after it (or if the sending failed: the channel
    /// then fails too).
    pub(crate) fn first_credit(&mut self) -> Option<Descriptor> {
        if self.granted {
            return None;
        }
        self.granted = true;
        Some(crate::stream::credit(self.this_end(), self.window.size))
    }

    pub(crate) fn this_end(&self) -> End {
        End { side: Side::Server, origin: self.origin, corr: self.corr, route: self.instance }
    }

    /// The connection it was opened on.
    #[cfg(feature = "tokio")]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Counts `n` items read and owes the caller the credits that frees
    /// (with the first window at the first read), for the async reader to
    /// send: kept here until sent, so that a read dropped mid-send loses
    /// none.
    #[cfg(feature = "tokio")]
    pub(crate) fn owe(&mut self, n: u32) {
        let end = self.this_end();
        let c = if self.granted {
            self.window.consume(end, n)
        } else {
            self.granted = true;
            Some(crate::stream::credit(end, self.window.size))
        };
        if let Some(c) = c {
            crate::stream::owe(&mut self.owed, c);
        }
    }

    /// The credits owed, if any (still owed until [`paid`](Self::paid)).
    #[cfg(feature = "tokio")]
    pub(crate) fn owed(&self) -> Option<Descriptor> {
        self.owed
    }

    /// The credits owed were sent.
    #[cfg(feature = "tokio")]
    pub(crate) fn paid(&mut self) {
        self.owed = None;
    }

    /// Ends the stream (our direction).
    pub fn end(mut self) -> Result<()> {
        self.close(None)
    }

    /// Ends the stream with an error the caller sees as [`Error::Service`]
    /// (code 0; any length, as [`Request::fail`]).
    pub fn fail(mut self, message: &str) -> Result<()> {
        self.close(Some((0, message)))
    }

    /// Ends the stream with a typed error (see [`Request::fail_with`]).
    pub fn fail_with(mut self, code: u32, message: &str) -> Result<()> {
        self.close(Some((code, message)))
    }

    pub(crate) fn close(&mut self, error: Option<(u32, &str)>) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let cancelled = {
            let mut core = self.shared.lock();
            let st = core.served.remove(&(self.origin, self.corr));
            if let Some(st) = &st {
                for d in st.items.iter() {
                    core.release(*d, self.origin);
                }
            }
            st.is_none_or(|s| s.cancelled) || (self.origin == Origin::Daemon && core.epoch != self.epoch)
        };
        if cancelled {
            self.shared.lock().served_done(self.origin, self.corr);
            return Ok(());
        }
        let (d, epoch) = match error {
            Some((code, m)) => {
                let (mut d, epoch) = service_error_built(&self.shared, self.instance, code, m);
                d.correlation = self.corr;
                (d, epoch)
            }
            None => {
                let mut d = Descriptor::new(Kind::StreamEnd, self.instance, self.corr);
                d.flags |= flags::SERVER;
                (d, None)
            }
        };
        let r = match epoch {
            Some(epoch) => self.shared.send_or_reclaim(self.origin, &d, None, epoch),
            None => self.shared.send_on(self.origin, &d, None),
        };
        self.shared.lock().served_done(self.origin, self.corr);
        r
    }
}

impl Drop for StreamRequest {
    fn drop(&mut self) {
        let _ = self.close(None);
    }
}
