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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceOptions {
    /// The instance's version (shown in listings).
    pub version: u32,
    /// Load-balancing weight (≥ 1): an instance of weight 3 gets three times the requests of one of weight 1.
    pub weight: u32,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions { version: 1, weight: 1 }
    }
}

/// Where a registration currently lives: (instance, route, epoch).
#[derive(Debug, Default)]
pub(crate) struct Slot(Mutex<(u32, u32, u64)>);

impl Slot {
    pub(crate) fn store(&self, instance: u32, route: u32, epoch: u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (instance, route, epoch);
    }
    pub(crate) fn load(&self) -> (u32, u32, u64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
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
        instance: u32,
        route: u32,
    ) -> Service {
        let epoch = bus.shared.lock().epoch;
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
    pub fn next(&self, timeout: Duration) -> Result<Option<Incoming>> {
        let shared = &self.bus.shared;
        let r = shared.wait_hot(Due::After(timeout), Hot::Inbox(self.inbox().0), |core| {
            // Read on every round, not once: a reconnect during the wait
            // registers us again, under a new instance id and epoch, and a
            // request taken then is answered in the new epoch.
            let (instance, epoch) = self.inbox();
            let Some((d, origin)) = core.take_incoming(instance) else {
                return Ok(None);
            };
            // Mapped under this lock rather than another one.
            Ok(Some((Sample::new_locked(shared, core, d, origin)?, origin, instance, epoch)))
        });
        match r {
            Ok((payload, origin, instance, epoch)) => Ok(Some(self.incoming(payload, origin, instance, epoch))),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
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
                answered: false,
            }),
        }
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
    answered: bool,
}

impl Request {
    /// The request's payload.
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or(&[])
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

    /// Answers with an error the caller sees as [`Error::Service`] (first 40 bytes of `message`).
    pub fn fail(mut self, message: &str) -> Result<()> {
        let d = service_error(self.instance, 0, message);
        self.finish(Ok(d), None)
    }
}

impl Request {
    /// Answers with `error` as the caller will see it: the kinds that
    /// travel on the data plane keep their kind ([`Error::PeerGone`],
    /// [`Error::DeadlineExceeded`], [`Error::NoInstance`], ...); any other
    /// becomes [`Error::Service`] with its text (first 40 bytes). For
    /// relays such as `hybus-bridge`, which pass on an error that happened
    /// elsewhere.
    pub fn fail_with(mut self, error: &Error) -> Result<()> {
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
            Error::Service(m) => return self.fail(m),
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

    /// Ends the stream with an error the caller sees as [`Error::Service`].
    pub fn fail(mut self, message: &str) -> Result<()> {
        self.close(Some(message))
    }

    fn close(&mut self, error: Option<&str>) -> Result<()> {
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
        let d = match error {
            Some(m) => {
                let mut d = service_error(self.instance, self.corr, m);
                d.correlation = self.corr;
                d
            }
            None => {
                let mut d = Descriptor::new(Kind::StreamEnd, self.instance, self.corr);
                d.flags |= flags::SERVER;
                d
            }
        };
        let r = self.shared.send_on(self.origin, &d, None);
        self.shared.lock().served_done(self.origin, self.corr);
        r
    }
}

impl Drop for StreamRequest {
    fn drop(&mut self) {
        let _ = self.close(None);
    }
}
