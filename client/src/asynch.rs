//! The async API (feature `tokio`): the same waits as the blocking API, on
//! the same doorbells, through tokio's reactor — no polling thread.
//!
//! [`Bus::to_async`] registers the connection's doorbell eventfd and its
//! control socket with tokio. A waiting task arms the rings it reads (the
//! parking handshake of [`hybus_layout::doorbell`]) and awaits readability
//! of either fd; a sender rings the doorbell only when the ring is armed,
//! exactly as for a blocking waiter.
//!
//! One [`AsyncBus`] per connection; do not wait on the same connection from
//! blocking and async code at the same time.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use hybus_layout::{Descriptor, Kind};
use tokio::io::unix::AsyncFd;

use crate::bus::{Bus, Shared};
use crate::core::{Core, Origin, FIRE_BIT};
use crate::error::{Error, Result};
use crate::sample::Sample;
use crate::service::{Incoming, Service, StreamRequest};
use crate::stream::Stream;
use crate::topic::Subscription;
use crate::wait::{deadline_in, pool_check, push_built, room_check, POOL_POLL, ROOM_POLL};
use crate::{BusEvent, Route};

/// An async view of a [`Bus`].
///
/// After the bus reconnects (a daemon restart) it waits on the new
/// connection's doorbell and socket by itself, and its waits try to
/// reconnect like the blocking ones, on tokio's blocking pool.
#[derive(Debug)]
pub struct AsyncBus {
    bus: Bus,
    /// What a waiting task awaits: replaced when the connection's epoch changes.
    fds: std::sync::Mutex<std::sync::Arc<Fds>>,
}

/// The doorbell and the control socket of one connection epoch, registered with tokio.
#[derive(Debug)]
struct Fds {
    epoch: u64,
    bell: AsyncFd<OwnedFd>,
    sock: AsyncFd<OwnedFd>,
}

impl Fds {
    /// Copies of `core`'s doorbell and control socket, registered with
    /// tokio (the caller is within a runtime).
    fn of(core: &Core) -> Result<Fds> {
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| Error::os("dup", e));
        let (bell, sock) = (dup(core.rx_bell.fd())?, dup(core.sock.fd())?);
        // The doorbell is read after tokio says it is readable; non-blocking
        // so that a read another waiter won cannot stall the executor. (The
        // flag is on the shared file description; every reader of it in
        // this crate reads only after a readiness report.)
        set_nonblocking(&bell)?;
        let reg = |fd: OwnedFd| {
            // SAFETY: the AsyncFd owns `fd`, so it stays open and names the
            // same file description for the AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| Error::os("register with tokio", e))
        };
        Ok(Fds { epoch: core.epoch, bell: reg(bell)?, sock: reg(sock)? })
    }
}

impl Bus {
    /// An async view of this connection. Must be called from within a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), hybus::Error> {
    /// use std::time::Duration;
    /// let bus = hybus::Bus::connect()?.to_async()?;
    /// let route = bus.bus().resolve("kv.store")?;
    /// let answer = bus.call(&route, b"get colour", Duration::from_secs(1)).await?;
    /// # let _ = answer; Ok(()) }
    /// ```
    pub fn to_async(&self) -> Result<AsyncBus> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Os("to_async must be called from within a tokio runtime".into()));
        }
        let fds = Fds::of(&self.shared.lock())?;
        Ok(AsyncBus { bus: self.clone(), fds: std::sync::Mutex::new(std::sync::Arc::new(fds)) })
    }
}

/// How often a wait tries to reconnect while the daemon is gone.
const RETRY: Duration = Duration::from_millis(200);

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::os("F_GETFL", e))?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(|e| Error::os("F_SETFL", e))?;
    Ok(())
}

impl AsyncBus {
    /// The blocking handle (for control requests: resolve, register, list, ...).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Waits until `check` yields a value, the connection is lost, or
    /// `deadline` passes, sleeping at most `cap` at a time: for waits no
    /// doorbell announces (room in a ring, space in our pool), as in the
    /// blocking [`Shared::wait_capped`].
    pub(crate) async fn wait<T>(
        &self,
        deadline: Option<Instant>,
        cap: Option<Duration>,
        mut check: impl FnMut(&mut Core) -> Result<Option<T>>,
    ) -> Result<T> {
        let shared = &self.bus.shared;
        'wait: loop {
            // Made before the round: a pump by another waiter after this
            // point wakes us (tokio's `notify_waiters` reaches a `Notified`
            // from its creation on).
            let notified = shared.async_notify.notified();
            // One lock a round; `None` when a reconnect is due (it is awaited
            // without the lock).
            let parked = 'round: {
                let mut core = shared.lock();
                if shared.reconnect_due(&mut core) {
                    break 'round None;
                }
                if core.releases_queued {
                    core.flush_releases();
                }
                if core.pump_data() > 0 {
                    // What we moved may be what another task waits for.
                    shared.async_notify.notify_waiters();
                }
                if let Some(v) = check(&mut core)? {
                    return Ok(v);
                }
                if let Some(g) = &core.gone {
                    if core.channels.is_empty() && !shared.reconnects() {
                        return Err(Error::BusGone(g.clone()));
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Error::DeadlineExceeded);
                }
                let fds = self.fds_of(&core)?;
                match core.prepare_park() {
                    Ok(true) => {}
                    Ok(false) => continue 'wait,
                    Err(e) => return Err(Error::BusGone(format!("daemon ring corrupt: {e}"))),
                }
                core.async_parked += 1;
                Some((fds, core.gone.is_some()))
            };
            let Some((fds, gone)) = parked else {
                self.reconnect().await;
                continue;
            };
            // While the daemon is gone, wake up to try again.
            let cap = if gone { Some(cap.map_or(RETRY, |c| c.min(RETRY))) } else { cap };
            let wake = match (deadline, cap) {
                (Some(d), Some(c)) => Some(d.min(deadline_in(c))),
                (d, None) => d,
                (None, Some(c)) => Some(deadline_in(c)),
            };
            let timer = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let bell = async {
                if let Ok(mut g) = fds.bell.readable().await {
                    let mut b = [0u8; 8];
                    let _ = nix::unistd::read(fds.bell.get_ref(), &mut b);
                    g.clear_ready();
                }
            };
            let sock = async {
                // Not once the daemon is gone: its closed end reads as ready
                // for ever (see the blocking `Parker::sync`).
                if gone {
                    std::future::pending::<()>().await;
                }
                if let Ok(mut g) = fds.sock.readable().await {
                    g.clear_ready();
                }
            };
            // Unparked however this ends, the future dropped too.
            let mut unpark = Unpark { shared, done: false };
            let control = tokio::select! {
                _ = bell => false,
                _ = sock => true,
                _ = timer => false,
                _ = notified => false,
            };
            unpark.done = true;
            let mut core = shared.lock();
            unpark_locked(&mut core);
            // A wait for pool space sets it again on its next round if it still waits.
            core.want_releases = false;
            if control {
                // Reads until it would block, so tokio's edge is not lost.
                core.pump_control();
                core.check_peers();
            }
        }
    }

    /// The fds of `core`'s connection epoch, registered anew after a reconnect.
    fn fds_of(&self, core: &Core) -> Result<std::sync::Arc<Fds>> {
        let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        if fds.epoch != core.epoch {
            *fds = std::sync::Arc::new(Fds::of(core)?);
        }
        Ok(fds.clone())
    }

    /// Reconnects on tokio's blocking pool (a handshake waits for the daemon).
    async fn reconnect(&self) {
        let bus = self.bus.clone();
        let _ = tokio::task::spawn_blocking(move || bus.reconnect()).await;
    }

    /// Tries to reconnect if one is due, without blocking the executor:
    /// before a send reads a route id (so that the blocking
    /// `Shared::lock_live` under it finds none due).
    async fn revive(&self) {
        let due = self.bus.shared.reconnect_due(&mut self.bus.shared.lock());
        if due {
            self.reconnect().await;
        }
    }

    /// A descriptor of `kind` to `route` carrying `payload` (in a chunk of
    /// our pool beyond 40 bytes), and the connection epoch it was built on,
    /// waiting until `deadline` for pool space without blocking the
    /// executor (see the blocking `Shared::build`).
    pub(crate) async fn build(
        &self,
        kind: Kind,
        route: u32,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(Descriptor, u64)> {
        let base = Descriptor::new(kind, route, 0);
        let take = |core: &mut Core| core.payload(base, payload).map(|d| (d, core.epoch));
        match take(&mut self.bus.shared.lock()) {
            Err(Error::OutOfPool { .. }) => {}
            r => return r,
        }
        let r = self.wait(deadline, Some(POOL_POLL), pool_check(take)).await;
        match r {
            Err(Error::DeadlineExceeded) => Err(Error::OutOfPool { len: payload.len() }),
            r => r,
        }
    }

    /// Sends `d` on the path `origin`, waiting until `deadline` for room in
    /// its ring without blocking the executor ([`Error::WouldBlock`] when it
    /// passes).
    async fn send_on(&self, origin: Origin, d: &Descriptor, deadline: Option<Instant>) -> Result<()> {
        self.send_built(origin, d, deadline, None).await
    }

    /// [`send_on`](Self::send_on) for `d` whose chunk was taken on
    /// connection `epoch` (as the blocking `Shared::send_built`).
    async fn send_built(
        &self,
        origin: Origin,
        d: &Descriptor,
        deadline: Option<Instant>,
        epoch: Option<u64>,
    ) -> Result<()> {
        match push_built(&mut self.bus.shared.lock(), origin, d, epoch) {
            Err(Error::WouldBlock) => {}
            r => return r,
        }
        let r = self.wait(deadline, Some(ROOM_POLL), room_check(origin, d, epoch)).await;
        match r {
            Err(Error::DeadlineExceeded) => Err(Error::WouldBlock),
            r => r,
        }
    }

    /// Resolves `route` again, on tokio's blocking pool, if it was resolved
    /// on an older connection: the call that follows then finds its id
    /// without a control round trip on the executor (a whole
    /// `CONTROL_TIMEOUT` if the daemon does not answer).
    async fn fresh_route(&self, route: &Route) -> Result<()> {
        let epoch = self.bus.shared.epoch.load(std::sync::atomic::Ordering::Acquire);
        if route.id_at(epoch).is_some() {
            return Ok(());
        }
        let (bus, copy) = (self.bus.clone(), route.clone());
        let resolved = tokio::task::spawn_blocking(move || bus.route_id(&copy).map(|_| copy))
            .await
            .map_err(|e| Error::Os(format!("resolving on the blocking pool: {e}")))??;
        route.take_from(&resolved);
        Ok(())
    }

    /// Sends a credit now if its ring has room: whether it went.
    fn try_pay(&self, origin: Origin, c: &Descriptor) -> Result<bool> {
        room_check(origin, c, None)(&mut self.bus.shared.lock()).map(|sent| sent.is_some())
    }

    /// [`send_on`](Self::send_on) for a descriptor built on connection
    /// `epoch`: if it is not sent, its chunk goes back to our pool (as the
    /// blocking `Shared::send_or_reclaim`), the future dropped too.
    async fn send_or_reclaim(
        &self,
        origin: Origin,
        d: &Descriptor,
        deadline: Option<Instant>,
        epoch: u64,
    ) -> Result<()> {
        let mut unsent = Unsent { shared: &self.bus.shared, d: *d, epoch, sent: false };
        let r = self.send_built(origin, d, deadline, Some(epoch)).await;
        unsent.sent = r.is_ok();
        r
    }

    /// Calls `route` and awaits the answer (see [`Bus::call`]). Waits for
    /// pool space and ring room, when there is none, without blocking the
    /// executor.
    pub async fn call(&self, route: &Route, payload: &[u8], timeout: Duration) -> Result<Sample> {
        self.revive().await;
        self.fresh_route(route).await?;
        let deadline = deadline_in(timeout);
        let (mut d, epoch) = self.build(Kind::Request, 0, payload, Some(deadline)).await?;
        // Only a chunk ties the call to its connection (an inline payload goes on any).
        let chunk_epoch = d.chunk().map(|_| epoch);
        d.aux = crate::wait::wire_deadline(crate::wait::Due::At(deadline));
        let (corr, origin, sent) = self.bus.start_call(route, &mut d, chunk_epoch)?;
        // From here the call is undone however this future ends, dropped too.
        let mut call = InFlight { shared: &self.bus.shared, corr, origin, d, epoch, sent, cancel: true, done: false };
        if !sent {
            self.send_built(origin, &d, Some(deadline), chunk_epoch).await?;
            call.sent = true;
        }
        let r = self
            .wait(Some(deadline), None, |core| match core.take_answer(corr) {
                // Mapped under the check's lock (see `Sample::new_locked`).
                Some((d, origin)) => Sample::new_locked(&self.bus.shared, core, d, origin).map(Some),
                None if origin == Origin::Daemon && core.gone.is_some() => {
                    Err(Error::BusGone(core.gone.clone().unwrap_or_default()))
                }
                None => Ok(None),
            })
            .await;
        match r {
            Ok(answer) => {
                call.done = true;
                Shared::answer_sample(answer).map_err(|e| e.of_service(route.name()))
            }
            Err(e) => {
                // Tell the server only when it may still be working on it.
                call.cancel = matches!(e, Error::DeadlineExceeded);
                Err(e)
            }
        }
    }

    /// Sends `payload` to one instance of `route`, expecting no answer (see
    /// [`Bus::fire`]); awaits pool space and ring room while there is none.
    pub async fn fire(&self, route: &Route, payload: &[u8]) -> Result<()> {
        self.revive().await;
        self.fresh_route(route).await?;
        let id = self.bus.route_id(route)?;
        let (mut d, epoch) = self.build(Kind::Fire, id.0, payload, None).await?;
        // (As the blocking `Shared::build_to`.)
        if epoch != id.1 {
            self.bus.shared.reclaim_unsent(&d, epoch);
            return Err(crate::bus::stale_route());
        }
        let origin = {
            let mut core = self.bus.shared.lock();
            d.correlation = core.next_id() | FIRE_BIT;
            core.route_fire(&mut d)
        };
        self.send_or_reclaim(origin, &d, None, epoch).await
    }

    /// The next item of `stream`, awaited up to `timeout`; `Ok(None)` once
    /// the other end ended its direction. Either end: the caller's
    /// [`Stream`] (see [`Stream::next`]) or the service's [`StreamRequest`]
    /// of a request-channel (see [`StreamRequest::recv`]). Credits it grants
    /// the other end are sent without blocking the executor. `stream` must
    /// have been opened on this connection.
    pub async fn next_item(&self, stream: &mut impl StreamEnd, timeout: Duration) -> Result<Option<Sample>> {
        let deadline = deadline_in(timeout);
        match stream.end_mut() {
            EndMut::Caller(stream) => {
                self.owns(&stream.bus().shared)?;
                let origin = stream.this_end().origin;
                loop {
                    if let Some(item) = stream.batch_item() {
                        return item.map(Some);
                    }
                    // Credits a dropped read left owed go first (awaited:
                    // nothing is taken yet that a drop here could lose).
                    if let Some(c) = stream.owed() {
                        self.send_on(origin, &c, None).await?;
                        stream.paid();
                    }
                    let r = self
                        .wait(Some(deadline), None, crate::stream::recv_check(&self.bus.shared, stream.this_end()))
                        .await;
                    let item = stream.arrived(r);
                    // No await between taking an item and handing it out:
                    // the credit it frees goes now if the ring has room,
                    // else with the next read.
                    if let Some(c) = stream.owed() {
                        if self.try_pay(origin, &c)? {
                            stream.paid();
                        }
                    }
                    if let Some(item) = item? {
                        return Ok(item);
                    }
                }
            }
            EndMut::Server(st) => {
                self.owns(st.shared())?;
                if !st.is_channel() {
                    return Ok(None);
                }
                let end = st.this_end();
                // The first window at the first read, and credits a dropped
                // read left owed (awaited: nothing is taken yet).
                st.owe(0);
                if let Some(c) = st.owed() {
                    self.send_on(end.origin, &c, None).await?;
                    st.paid();
                }
                let Some(item) =
                    self.wait(Some(deadline), None, crate::stream::recv_check(&self.bus.shared, end)).await?
                else {
                    return Ok(None);
                };
                // No await from here: the credit goes now if it can, else with the next read.
                st.owe(item.descriptor().items() as u32);
                if let Some(c) = st.owed() {
                    if self.try_pay(end.origin, &c)? {
                        st.paid();
                    }
                }
                Ok(Some(item))
            }
        }
    }

    /// Sends an item on `stream`, awaiting a credit (and pool space and ring
    /// room) up to `timeout`. Either end: the caller's [`Stream`] of a
    /// request-channel (see [`Stream::send`]) or the service's
    /// [`StreamRequest`] (see [`StreamRequest::send`]). `stream` must have
    /// been opened on this connection.
    pub async fn send_item(&self, stream: &mut impl StreamEnd, payload: &[u8], timeout: Duration) -> Result<()> {
        let end = match stream.end_mut() {
            EndMut::Caller(stream) => {
                self.owns(&stream.bus().shared)?;
                stream.may_send()?;
                stream.this_end()
            }
            EndMut::Server(st) => {
                self.owns(st.shared())?;
                st.this_end()
            }
        };
        let deadline = Some(deadline_in(timeout));
        self.wait(deadline, None, crate::stream::credit_check(end)).await?;
        // From here the credit goes back however this ends, the future dropped too.
        let mut credit = Credit { shared: &self.bus.shared, end, spent: false };
        let (d, epoch) = self.build(Kind::StreamItem, end.route, payload, deadline).await?;
        self.send_or_reclaim(end.origin, &crate::stream::item_of(end, d), deadline, epoch).await?;
        credit.spent = true;
        Ok(())
    }

    fn owns(&self, shared: &std::sync::Arc<Shared>) -> Result<()> {
        if !std::sync::Arc::ptr_eq(shared, &self.bus.shared) {
            return Err(Error::BadRequest("the stream was opened on another connection".into()));
        }
        Ok(())
    }

    /// Awaits the next request, fire or stream for `service` (see [`Service::next`]).
    pub async fn next_incoming(&self, service: &Service, timeout: Duration) -> Result<Option<Incoming>> {
        // Read on every round, as in the blocking `Service::next`.
        let r = self
            .wait(Some(deadline_in(timeout)), None, |core| {
                let (instance, epoch) = service.inbox();
                match core.take_incoming(instance) {
                    // Mapped under the check's lock (see `Sample::new_locked`).
                    Some((d, origin)) => {
                        Ok(Some((Sample::new_locked(&self.bus.shared, core, d, origin)?, origin, instance, epoch)))
                    }
                    None => core.revoked_instance(instance).map(|()| None),
                }
            })
            .await;
        match r {
            Ok((p, origin, instance, epoch)) => Ok(Some(service.incoming(p, origin, instance, epoch))),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Awaits the next publication of `subscription` (see [`Subscription::next`]).
    pub async fn next_publication(&self, subscription: &Subscription, timeout: Duration) -> Result<Option<Sample>> {
        // The route read on every round, as in the blocking `Subscription::next`.
        let shared = &self.bus.shared;
        let r = self
            .wait(Some(deadline_in(timeout)), None, |core| {
                crate::topic::publication_check(shared, core, subscription.route())
            })
            .await;
        match r {
            Ok(s) => Ok(Some(s)),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Awaits the next bus event (see [`Bus::next_event`]).
    pub async fn next_event(&self, timeout: Duration) -> Result<Option<BusEvent>> {
        match self.wait(Some(deadline_in(timeout)), None, |core| Ok(core.events.pop_front())).await {
            Ok(e) => Ok(Some(e)),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Either end of a request-stream or request-channel, for
/// [`AsyncBus::next_item`] and [`AsyncBus::send_item`]: the caller's
/// [`Stream`] or the service's [`StreamRequest`]. Sealed: implemented by
/// those two only.
pub trait StreamEnd: sealed::Ends {}

impl StreamEnd for Stream {}
impl StreamEnd for StreamRequest {}

use sealed::EndMut;

mod sealed {
    use crate::service::StreamRequest;
    use crate::stream::Stream;

    /// Which end a [`StreamEnd`](super::StreamEnd) is.
    #[derive(Debug)]
    pub enum EndMut<'a> {
        Caller(&'a mut Stream),
        Server(&'a mut StreamRequest),
    }

    pub trait Ends {
        fn end_mut(&mut self) -> EndMut<'_>;
    }

    impl Ends for Stream {
        fn end_mut(&mut self) -> EndMut<'_> {
            EndMut::Caller(self)
        }
    }

    impl Ends for StreamRequest {
        fn end_mut(&mut self) -> EndMut<'_> {
            EndMut::Server(self)
        }
    }
}

/// One async waiter leaves the parked ones; the last disarms the rings.
fn unpark_locked(core: &mut Core) {
    core.async_parked = core.async_parked.saturating_sub(1);
    core.leave_park();
}

/// A parked async wait: dropped before it woke (its future dropped), it
/// leaves the parked ones all the same.
struct Unpark<'a> {
    shared: &'a std::sync::Arc<Shared>,
    done: bool,
}

impl Drop for Unpark<'_> {
    fn drop(&mut self) {
        if !self.done {
            unpark_locked(&mut self.shared.lock());
        }
    }
}

/// A built payload on its way out of an async send: dropped before it
/// went (an error, or the future dropped at its wait for ring room), its
/// chunk goes back to our pool. Why: without it, every such drop (a
/// `timeout` around a send to a full ring) kept a chunk for good.
struct Unsent<'a> {
    shared: &'a std::sync::Arc<Shared>,
    d: Descriptor,
    epoch: u64,
    sent: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.shared.reclaim_unsent(&self.d, self.epoch);
        }
    }
}

/// A stream credit taken for an item not sent yet: dropped before the
/// item went (an error, or the future dropped), the credit goes back.
struct Credit<'a> {
    shared: &'a std::sync::Arc<Shared>,
    end: crate::stream::End,
    spent: bool,
}

impl Drop for Credit<'_> {
    fn drop(&mut self) {
        if !self.spent {
            crate::stream::give_back(self.shared, self.end, 1);
        }
    }
}

/// A call of [`AsyncBus::call`] not finished yet. Dropped unfinished (an
/// error, or the future dropped: a `select!`, a timeout around it), it is
/// forgotten, its chunk goes back if the request was never sent, and the
/// server is told (`Cancel`) if it was, as when the call's deadline passes.
///
/// Why: a future may be dropped at any `.await`. Without this, each
/// dropped call left its entry in the call table for good.
struct InFlight<'a> {
    shared: &'a std::sync::Arc<Shared>,
    corr: u64,
    origin: Origin,
    d: Descriptor,
    /// The connection epoch `d` was built on.
    epoch: u64,
    sent: bool,
    cancel: bool,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut core = self.shared.lock();
        if !self.sent {
            core.free_unsent(&self.d, Some(self.epoch));
        } else if self.cancel {
            core.send_cancel(self.origin, self.d.route, self.corr);
        }
        // After the cancel: forgetting may let a closing channel go.
        core.forget_call(self.corr, self.origin);
    }
}
