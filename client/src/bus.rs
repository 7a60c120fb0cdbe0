//! [`Bus`]: a connection to `hybusd`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hybus_layout::control::{self, ClientMessage, DaemonMessage, Remote, Reply, Request, ServiceInfo};
use hybus_layout::header::LAYOUT_HASH;
use hybus_layout::{ChunkRef, Descriptor, IdleStrategy, Kind};
use hybus_os::socket::ControlSocket;

use crate::core::{error_of, Core, Origin, FIRE_BIT};
use crate::error::{Error, Result};
use crate::park::Parker;
use crate::pending::Sent;
use crate::sample::{Loan, Sample};
use crate::service::{Service, ServiceOptions};
use crate::wait::{deadline_in, pool_check, push_built, room_check, Due, POOL_POLL, ROOM_POLL};
use crate::{BusEvent, Route};

/// How long control requests may take before they fail.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for [`Bus::connect_with`].
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Socket path; `None` for [`default_socket_path`](hybus_os::socket::default_socket_path).
    pub path: Option<PathBuf>,
    /// A label for `hybusctl list` (defaults to the program name).
    pub label: String,
    /// How waiting calls spend their time before they sleep.
    pub idle: IdleStrategy,
    /// Reconnect and re-register by ourselves when the daemon goes away
    /// (while some call waits on the bus). Direct channels keep working meanwhile.
    pub reconnect: bool,
}

impl Default for BusOptions {
    fn default() -> Self {
        let label = std::env::args()
            .next()
            .and_then(|a| Path::new(&a).file_name().map(|f| f.to_string_lossy().into_owned()))
            .unwrap_or_default();
        BusOptions { path: None, label, idle: IdleStrategy::DEFAULT, reconnect: true }
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    core: Mutex<Core>,
    pub(crate) cv: Condvar,
    pub(crate) idle: IdleStrategy,
    /// CPUs the connecting thread may run on (see [`crate::idle`]).
    pub(crate) cpus: u32,
    path: PathBuf,
    label: String,
    /// What to restore on reconnect.
    pub(crate) registrations: Mutex<Vec<crate::service::Registration>>,
    /// Topics subscribed to, to subscribe again on reconnect (each handle
    /// learns its new route id there).
    pub(crate) subscriptions: Mutex<Vec<Arc<Route>>>,
    /// What [`Bus::watch`] and [`Bus::monitor`] asked for, asked again after a reconnect.
    pub(crate) taps: Mutex<Vec<Request>>,
    /// Reconnect by ourselves when the daemon goes away.
    pub(crate) auto_reconnect: bool,
    /// A reconnect is under way (its own control requests must not start another).
    reconnecting: std::sync::atomic::AtomicBool,
    /// `Core::epoch`, for a check that need not take the lock (is a loan
    /// still of this connection?); written under the lock, on reconnect.
    pub(crate) epoch: std::sync::atomic::AtomicU64,
    /// Wakes the async waiters of this connection when one of them moved
    /// something off the rings (it may be what another waits for).
    #[cfg(feature = "tokio")]
    pub(crate) async_notify: tokio::sync::Notify,
    /// What the parked waiter sleeps on. Taken after `core`, never before.
    pub(crate) parker: Mutex<Parker>,
}

/// A connection to the daemon. Cheap to clone; all clones share the connection.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), hybus::Error> {
/// use std::time::Duration;
/// let bus = hybus::Bus::connect()?;
/// let kv = bus.resolve("kv.store")?;
/// let answer = bus.call(&kv, b"get colour", Duration::from_secs(1))?;
/// println!("{}", String::from_utf8_lossy(&answer));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Bus {
    pub(crate) shared: Arc<Shared>,
}

type Welcomed = (ControlSocket, control::Welcome, Vec<std::os::fd::OwnedFd>);

fn handshake(path: &Path, label: &str, pool: Option<std::os::fd::BorrowedFd<'_>>) -> Result<Welcomed> {
    let sock = ControlSocket::connect(path)
        .map_err(|e| Error::NoDaemon { path: path.to_owned(), reason: e.desc().to_owned() })?;
    let hello = ClientMessage {
        id: 1,
        request: Request::Hello {
            version: control::PROTOCOL_VERSION,
            layout_hash: LAYOUT_HASH,
            label: label.to_owned(),
            reuse_pool: pool.is_some(),
        },
    };
    let bytes = control::encode_first(&hello).map_err(|e| Error::BadRequest(e.to_string()))?;
    let fds: Vec<_> = pool.into_iter().collect();
    sock.send(&bytes, &fds).map_err(|e| Error::BusGone(format!("sending Hello: {}", e.desc())))?;
    let mut buf = vec![0u8; control::MAX_MESSAGE];
    // The daemon answers Hello at once; bound the wait so a wedged daemon
    // is an error. (Not cut short by a signal: see `wait_readable`.)
    let _ = sock.wait_readable(CONTROL_TIMEOUT);
    sock.set_nonblocking(true).map_err(|e| Error::os("control socket", e))?;
    let (n, fds) = sock.recv(&mut buf).map_err(|e| match e {
        hybus_os::socket::RecvError::WouldBlock => Error::BusGone("the daemon did not answer Hello".into()),
        e => Error::BusGone(format!("waiting for Welcome: {e}")),
    })?;
    if let Some(theirs) = control::Preamble::parse(&buf[..n]) {
        // A daemon of another build refused ours, and says what it speaks.
        return Err(Error::VersionMismatch(format!(
            "hybusd at {} speaks {theirs}; this client speaks {}: run clients and hybusd of the same hybus version",
            path.display(),
            control::Preamble::OURS
        )));
    }
    match control::decode::<DaemonMessage>(&buf[..n]) {
        Ok(DaemonMessage::Reply { result: Ok(Reply::Welcome(w)), .. }) => Ok((sock, w, fds)),
        Ok(DaemonMessage::Reply { result: Err(e), .. }) => Err(e.into()),
        Ok(other) => Err(Error::Protocol(format!("expected Welcome, got {other:?}"))),
        Err(e) => Err(Error::Protocol(format!("Welcome: {e}"))),
    }
}

impl Bus {
    /// Connects to the daemon at the default socket path.
    pub fn connect() -> Result<Bus> {
        Bus::connect_with(BusOptions::default())
    }

    /// Connects to the daemon listening on `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Bus> {
        Bus::connect_with(BusOptions { path: Some(path.as_ref().to_owned()), ..BusOptions::default() })
    }

    /// Connects with explicit options.
    pub fn connect_with(opts: BusOptions) -> Result<Bus> {
        let path = opts.path.clone().unwrap_or_else(hybus_os::socket::default_socket_path);
        let (sock, w, fds) = handshake(&path, &opts.label, None)?;
        let core = Core::new(sock, w, fds, 1)?;
        let parker = Parker::new().map_err(|e| Error::Protocol(format!("cannot create an epoll instance: {e}")))?;
        let bus = Bus {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                cv: Condvar::new(),
                idle: opts.idle,
                cpus: hybus_os::cpus::usable(),
                path,
                label: opts.label,
                registrations: Mutex::new(Vec::new()),
                subscriptions: Mutex::new(Vec::new()),
                taps: Mutex::new(Vec::new()),
                auto_reconnect: opts.reconnect,
                reconnecting: std::sync::atomic::AtomicBool::new(false),
                epoch: std::sync::atomic::AtomicU64::new(1),
                #[cfg(feature = "tokio")]
                async_notify: tokio::sync::Notify::new(),
                parker: Mutex::new(parker),
            }),
        };
        bus.declare_idle()?;
        Ok(bus)
    }

    /// The socket path this bus is connected to.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The daemon's id for this connection (also the id of its pool).
    pub fn client_id(&self) -> u32 {
        self.shared.lock().client_id
    }

    /// Whether the connection is still up (as far as last seen).
    pub fn is_connected(&self) -> bool {
        self.shared.lock().gone.is_none()
    }

    /// Reconnects after the connection was lost (daemon restarted) and
    /// registers again every service registered through this bus. Route
    /// handles re-resolve by themselves on next use.
    pub fn reconnect(&self) -> Result<()> {
        if self.shared.reconnecting.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(Error::BusGone("a reconnect is already under way".into()));
        }
        let r = self.reconnect_inner();
        self.shared.reconnecting.store(false, std::sync::atomic::Ordering::Release);
        r
    }

    fn reconnect_inner(&self) -> Result<()> {
        // Bring our pool along: direct-channel peers map it.
        let pool = {
            let core = self.shared.lock();
            core.pool.seg.fd().try_clone_to_owned().map_err(|e| Error::os("dup pool fd", e))?
        };
        let (sock, w, fds) = handshake(&self.shared.path, &self.shared.label, Some(std::os::fd::AsFd::as_fd(&pool)))?;
        let channels = {
            let mut core = self.shared.lock();
            core.reattach(sock, w, fds)?;
            self.shared.epoch.store(core.epoch, std::sync::atomic::Ordering::Release);
            // The parker holds the old socket and doorbell open until it next
            // syncs; let it drop them now unless a waiter sleeps in it (that
            // one syncs when it parks again).
            if let Ok(mut parker) = self.shared.parker.try_lock() {
                let _ = parker.sync(&core);
            }
            core.channels
                .values()
                .map(|c| (c.id, c.token, c.side, c.service.clone(), c.peer_pid, c.seg.clone()))
                .collect::<Vec<_>>()
        };
        self.shared.cv.notify_all();
        let regs: Vec<_> = self.shared.registrations.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for r in regs {
            let old = r.slot.load().0;
            let (instance, route, epoch) = match self.register_raw(&r.name, &r.options, r.remote.as_ref()) {
                Ok(registered) => registered,
                // Refused by the new daemon (the name is taken, the policy
                // changed): that instance is gone, its serving loop says
                // so, and the others come back all the same.
                Err(
                    e @ (Error::NameOwned(_) | Error::AccessDenied(_) | Error::QuotaExceeded(_) | Error::BadRequest(_)),
                ) => {
                    self.shared
                        .registrations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|k| !Arc::ptr_eq(&k.slot, &r.slot));
                    r.slot.lose(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            r.slot.store(instance, route, epoch);
            let mut core = self.shared.lock();
            for v in core.instance_alias.values_mut() {
                if *v == old {
                    *v = instance;
                }
            }
            core.instance_alias.insert(old, instance);
        }
        let subs: Vec<_> = self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for s in subs {
            let (id, epoch) = self.subscribe_topic(s.name())?;
            s.set(id, epoch);
        }
        let taps: Vec<_> = self.shared.taps.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for t in taps {
            self.control(t)?;
        }
        // The new daemon counts spinners afresh.
        self.shared.lock().crowding = None;
        self.declare_idle()?;
        // Tell the new daemon about our live channels (for its stats), and
        // point the callers' routes at them again.
        for (id, token, side, service, peer_pid, seg) in channels {
            if side == hybus_layout::channel::Side::A {
                if let Ok(Reply::Resolved { route, .. }) = self.control(Request::Resolve { name: service.clone() }) {
                    self.shared.lock().route_direct.insert(route, id);
                }
            }
            let side = if side == hybus_layout::channel::Side::A { 0 } else { 1 };
            let req = Request::AdoptChannel { token, side, service, peer_pid };
            let _ = self.control_with_fds(req, &[seg.fd()]);
        }
        Ok(())
    }

    fn control_with_fds(&self, request: Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<Reply> {
        let mut core = self.shared.lock_live();
        let sent = (core.send_awaited(request, fds)?, core.epoch);
        drop(core);
        self.await_reply(sent)
    }

    /// Sends a control request and waits for its reply. A reconnect that
    /// is due happens first: a client that only asks the daemon things
    /// (`status`, `list`) comes back after a restart like one that sends.
    pub(crate) fn control(&self, request: Request) -> Result<Reply> {
        self.control_on(request).map(|(reply, _)| reply)
    }

    /// [`control`](Self::control), with the connection epoch the reply came
    /// on: what an id in it (a route, an instance) is stamped with. Why not
    /// read the epoch after: a reconnect in between gave an old daemon's id
    /// the new epoch, and the new daemon's numbering may give that id to
    /// another name.
    pub(crate) fn control_on(&self, request: Request) -> Result<(Reply, u64)> {
        self.control_for(request, None)
    }

    /// [`control_on`](Self::control_on) for a request that carries an id of
    /// connection epoch `ids` (`None`: none): refused, not sent, if a
    /// reconnect came since (see [`route_id`](Self::route_id)).
    fn control_for(&self, request: Request, ids: Option<u64>) -> Result<(Reply, u64)> {
        let mut core = self.shared.lock_live();
        if ids.is_some_and(|e| e != core.epoch) {
            return Err(stale_route());
        }
        let sent = (core.send_awaited(request, &[])?, core.epoch);
        drop(core);
        self.await_reply(sent).map(|reply| (reply, sent.1))
    }

    /// Waits for the reply to request `id`, sent on connection `epoch`.
    /// A reconnect meanwhile fails it at once: the reply would have come on
    /// the old connection. (A send into the old daemon's socket can succeed
    /// after its process is gone: its io_uring lets go of the socket a
    /// little later. Such a request used to wait the whole
    /// `CONTROL_TIMEOUT` for nothing.)
    fn await_reply(&self, (id, epoch): (u64, u64)) -> Result<Reply> {
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let r = self.shared.wait(Some(deadline), true, |core| {
            if core.epoch != epoch {
                return Err(Error::BusGone("the daemon went away before it answered".into()));
            }
            Ok(core.replies.remove(&id))
        });
        // Taken, or never to be: either way nobody waits for it any more.
        self.shared.lock().forget_reply(id);
        match r {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e.into()),
            Err(Error::DeadlineExceeded) => Err(Error::BusGone("the daemon did not answer in time".into())),
            Err(e) => Err(e),
        }
    }

    /// Registers an instance: its id, the name's route id, and the
    /// connection epoch they belong to.
    pub(crate) fn register_raw(
        &self,
        name: &str,
        o: &ServiceOptions,
        remote: Option<&Remote>,
    ) -> Result<(u32, u32, u64)> {
        let (name, version, weight) = (name.to_owned(), o.version, o.weight);
        let request = match remote {
            None => Request::Register { name, version, weight, exclusive: o.exclusive, replace: o.replace },
            // A stand-in for another host's instance never claims the name.
            Some(r) => Request::RegisterRemote { name, version, weight, remote: r.clone() },
        };
        match self.control_on(request)? {
            (Reply::Registered { instance, route }, epoch) => Ok((instance, route, epoch)),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Registers a service instance under a dotted name with default options.
    pub fn register(&self, name: &str) -> Result<Service> {
        self.register_with(name, ServiceOptions::default())
    }

    /// Registers a service instance under a dotted name.
    pub fn register_with(&self, name: &str, options: ServiceOptions) -> Result<Service> {
        let (instance, route, epoch) = self.register_raw(name, &options, None)?;
        Ok(Service::new(self.clone(), name, options, None, (instance, route, epoch)))
    }

    /// Registers a *remote* instance of a dotted name: one this client (a
    /// bridge such as `hybus-bridge`) serves on behalf of another host.
    /// Listings show it as `remote via <remote.via>`; unless
    /// [`Remote::balance`] is set, the daemon sends it requests only while no
    /// local instance of the name serves (local first). Like every
    /// registration, it is made again by itself after a reconnect.
    pub fn register_remote(&self, name: &str, options: ServiceOptions, remote: Remote) -> Result<Service> {
        let registered = self.register_raw(name, &options, Some(&remote))?;
        Ok(Service::new(self.clone(), name, options, Some(remote), registered))
    }

    /// Resolves a service name to a route. Fails with [`Error::NotFound`] if no instance serves it.
    pub fn resolve(&self, name: &str) -> Result<Route> {
        let (id, epoch) = self.resolve_id(name)?;
        Ok(Route::new(name, id, epoch))
    }

    /// Resolves `name`: its route id, with the connection epoch it is of.
    fn resolve_id(&self, name: &str) -> Result<(u32, u64)> {
        match self.control_on(Request::Resolve { name: name.to_owned() })? {
            (Reply::Resolved { route, .. }, epoch) => Ok((route, epoch)),
            (r, _) => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// The route id of `route` on this connection, with the connection
    /// epoch it belongs to: whatever carries the id checks that epoch where
    /// it is sent (see [`Shared::build_to`]), so that an id read just
    /// before a reconnect never reaches the new daemon, whose numbering may
    /// give it to another name.
    pub(crate) fn route_id(&self, route: &Route) -> Result<(u32, u64)> {
        let epoch = self.shared.lock_live().epoch;
        if let Some(id) = route.id_at(epoch) {
            return Ok((id, epoch));
        }
        // Resolved on another connection epoch (a reconnect happened in
        // between): resolve again rather than send a stale or made-up id.
        let (id, epoch) = self.resolve_id(route.name())?;
        route.set(id, epoch);
        Ok((id, epoch))
    }

    /// Lists services and their instances.
    pub fn list(&self) -> Result<Vec<ServiceInfo>> {
        match self.control(Request::List)? {
            Reply::Services(s) => Ok(s),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Traffic counters of every instance and direct channel.
    pub fn stats(&self) -> Result<control::StatsReport> {
        match self.control(Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Asks the daemon for a direct channel to (one instance of) `route`;
    /// from then on this bus talks to that instance without the daemon in
    /// the path. Subject to the daemon's policy (action `direct`).
    pub fn request_direct(&self, route: &Route) -> Result<u32> {
        let (id, epoch) = self.route_id(route)?;
        match self.control_for(Request::Direct { route: id }, Some(epoch))? {
            (Reply::DirectGranted { channel }, _) => Ok(channel),
            (r, _) => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Closes a direct channel: traffic of that pair goes back through the
    /// daemon, with nothing lost, duplicated or reordered.
    pub fn close_direct(&self, channel: u32) -> Result<()> {
        self.control(Request::CloseDirect { channel }).map(drop)
    }

    /// Test hook: pushes a malformed descriptor on every direct channel this
    /// bus has, to check that peers cut a misbehaving side off. Returns how
    /// many channels were hit.
    #[doc(hidden)]
    pub fn test_hook_corrupt_direct(&self) -> usize {
        let mut core = self.shared.lock();
        let mut n = 0;
        for ch in core.channels.values_mut() {
            let mut d = Descriptor::new(Kind::Fire, ch.instance, 0);
            d.kind = 0xee;
            if ch.push(&d).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// A description of the connection's internal state, for debugging.
    #[doc(hidden)]
    pub fn debug_state(&self) -> String {
        let core = self.shared.lock();
        let mut out = format!(
            "client {} epoch {} gone {:?} calls pending {:?} route_direct {:?} closing {} views {:?}\n",
            core.client_id,
            core.epoch,
            core.gone,
            core.calls.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect::<Vec<_>>(),
            core.route_direct,
            core.closing,
            core.views_state(),
        );
        for c in core.channels.values() {
            out += &format!(
                "  channel {} {:?} {:?} fenced {} ended {} calls {:?} serving {:?} lent {} held {} rx {:?} tx {:?}\n",
                c.id,
                c.side,
                c.state,
                c.peer_fenced,
                c.peer_ended,
                c.open_calls().collect::<Vec<_>>(),
                c.served(),
                c.lent.len(),
                c.held,
                c.rx,
                c.tx
            );
        }
        out
    }

    /// Whether new calls to `route` currently go over a direct channel.
    pub fn is_direct(&self, route: &Route) -> bool {
        let core = self.shared.lock();
        route.id_at(core.epoch).is_some_and(|id| core.direct_for(id).is_some())
    }

    /// The daemon's own state (clients, services, loans, backend).
    pub fn status(&self) -> Result<control::DaemonStatus> {
        match self.control(Request::Status)? {
            Reply::Status(s) => Ok(s),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// The names the daemon starts on demand (`[[activate]]` in its
    /// config) and the state of each: running, starting, in back-off; the
    /// pid, the last exit, counts of activations and failures.
    pub fn activations(&self) -> Result<Vec<control::ActivationInfo>> {
        match self.control(Request::Activations)? {
            Reply::Activations(a) => Ok(a),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Starts receiving [`BusEvent::ServiceUp`]/[`BusEvent::ServiceDown`] for
    /// names under `prefix` ("" for all), beginning with one `ServiceUp` per
    /// instance serving now.
    ///
    /// After a reconnect (a daemon restart) the watch goes on: the new
    /// daemon is asked again, and tells of the instances then serving.
    pub fn watch(&self, prefix: &str) -> Result<()> {
        self.tap(Request::Watch { prefix: prefix.to_owned() })
    }

    /// Starts receiving [`BusEvent::Traffic`] for brokered traffic under
    /// `prefix`; after a reconnect too.
    pub fn monitor(&self, prefix: &str) -> Result<()> {
        self.tap(Request::Monitor { prefix: prefix.to_owned() })
    }

    /// Asks for a watch or a monitor, and remembers it for reconnects.
    fn tap(&self, request: Request) -> Result<()> {
        self.control(request.clone())?;
        let mut taps = self.shared.taps.lock().unwrap_or_else(|p| p.into_inner());
        if !taps.contains(&request) {
            taps.push(request);
        }
        Ok(())
    }

    /// The next event, waiting up to `timeout`. `Ok(None)` if none came.
    /// A lost connection is reported once as [`BusEvent::Disconnected`].
    ///
    /// At most 4 096 unread events are kept: beyond that the oldest is
    /// dropped, and counted by [`events_dropped`](Self::events_dropped). (An
    /// application that never reads events loses nothing else by it.)
    pub fn next_event(&self, timeout: Duration) -> Result<Option<BusEvent>> {
        let deadline = deadline_in(timeout);
        match self.shared.wait_events(deadline) {
            Ok(e) => Ok(Some(e)),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Events dropped unread since the connection was made (see [`next_event`](Self::next_event)).
    pub fn events_dropped(&self) -> u64 {
        self.shared.lock().dropped_events
    }

    /// Calls `route` with `payload` and waits up to `timeout` for the answer.
    ///
    /// Payloads up to 40 bytes travel inside the descriptor; larger ones are
    /// copied once into a chunk of this client's pool (use [`Bus::loan`] and
    /// [`Bus::call_loan`] to write them in place instead).
    pub fn call(&self, route: &Route, payload: &[u8], timeout: Duration) -> Result<Sample> {
        // The route id is filled in by `start_call`, under its lock.
        if let Some(d) = Descriptor::new(Kind::Request, 0, 0).with_inline(payload) {
            return self.call_desc(route, d, None, Due::After(timeout));
        }
        let deadline = deadline_in(timeout);
        let (d, epoch) = self.shared.build(Kind::Request, 0, payload, Some(deadline))?;
        self.call_desc(route, d, Some(epoch), Due::At(deadline))
    }

    /// Registers a call to `route` and pushes it, under one lock: the
    /// route's id on this connection, a correlation id, the path (a direct
    /// channel or the daemon), the push. `sent` is false when the ring is
    /// full (the caller then waits for room). On an error, a chunk `d`
    /// carries (taken on connection `chunk_epoch`) is back in the pool,
    /// unless a reconnect came between.
    pub(crate) fn start_call(
        &self,
        route: &Route,
        d: &mut Descriptor,
        chunk_epoch: Option<u64>,
    ) -> Result<(u64, Origin, bool)> {
        let mut core = self.shared.lock_live();
        let stale = |core: &Core| chunk_epoch.is_some_and(|e| e != core.epoch);
        if stale(&core) {
            // Not ours to free: the chunk belongs to a pool the old daemon took with it.
            return Err(stale_payload());
        }
        d.route = match route.id_at(core.epoch) {
            Some(id) => id,
            None => {
                // Resolved on another connection: resolve again (without the lock).
                drop(core);
                let id = self.route_id(route);
                core = self.shared.lock();
                match id {
                    Ok(_) if stale(&core) => return Err(stale_payload()),
                    Ok((_, epoch)) if epoch != core.epoch => {
                        core.free_unsent(d, chunk_epoch);
                        return Err(stale_route());
                    }
                    Ok((id, _)) => id,
                    Err(e) => {
                        core.free_unsent(d, chunk_epoch);
                        return Err(e);
                    }
                }
            }
        };
        let corr = core.next_id();
        d.correlation = corr;
        let (origin, pushed) = core.send_call(d, corr);
        match pushed {
            Ok(()) => Ok((corr, origin, true)),
            Err(Error::WouldBlock) => Ok((corr, origin, false)),
            Err(e) => {
                core.forget_call(corr, origin);
                core.free_unsent(d, None);
                Err(e)
            }
        }
    }

    /// Calls `route` with a loaned chunk written in place (zero-copy).
    pub fn call_loan(&self, route: &Route, loan: Loan, timeout: Duration) -> Result<Sample> {
        let (d, epoch) = loan.into_current(Kind::Request, 0)?;
        self.call_desc(route, d, Some(epoch), Due::After(timeout))
    }

    fn call_desc(&self, route: &Route, d: Descriptor, chunk_epoch: Option<u64>, due: Due) -> Result<Sample> {
        let sent = self.send_request(route, d, chunk_epoch, due)?;
        let answer = self.shared.await_answer(&sent, sent.due).map_err(|e| e.of_service(route.name()));
        answer?.ok_or(Error::DeadlineExceeded)
    }

    /// Sends the request `d` to `route`, waiting for ring room until `due`
    /// if the ring is full: the first half of a call. On an error, a chunk
    /// `d` carries is back in the pool and the call is forgotten.
    pub(crate) fn send_request(
        &self,
        route: &Route,
        mut d: Descriptor,
        chunk_epoch: Option<u64>,
        mut due: Due,
    ) -> Result<Sent> {
        d.aux = crate::wait::wire_deadline(due);
        let (corr, origin, sent) = self.start_call(route, &mut d, chunk_epoch)?;
        if !sent {
            // The ring is full: wait for room, then for the answer, within one deadline.
            let deadline = due.deadline(Instant::now());
            due = deadline.into();
            if let Err(e) = self.shared.send_built(origin, &d, deadline, chunk_epoch) {
                let mut core = self.shared.lock();
                core.forget_call(corr, origin);
                core.free_unsent(&d, chunk_epoch);
                return Err(e);
            }
        }
        Ok(Sent { corr, origin, route: d.route, due })
    }

    /// Sends `payload` to one instance of `route`, expecting no answer.
    /// Blocks while the ring is full or the pool has no chunk for it (see
    /// [`fire_within`](Self::fire_within) and [`try_fire`](Self::try_fire)
    /// to bound that); a delivery failure comes back later as
    /// [`BusEvent::FireFailed`].
    pub fn fire(&self, route: &Route, payload: &[u8]) -> Result<()> {
        let id = self.route_id(route)?;
        let (d, epoch) = self.shared.build_to(Kind::Fire, id, payload, None)?;
        self.fire_desc(d, None, epoch)
    }

    /// Like [`fire`](Self::fire), waiting at most `timeout` for pool space
    /// and ring room: [`Error::OutOfPool`] or [`Error::WouldBlock`] once it
    /// passes, and nothing is sent.
    pub fn fire_within(&self, route: &Route, payload: &[u8], timeout: Duration) -> Result<()> {
        let deadline = deadline_in(timeout);
        let id = self.route_id(route)?;
        let (d, epoch) = self.shared.build_to(Kind::Fire, id, payload, Some(deadline))?;
        self.fire_desc(d, Some(deadline), epoch)
    }

    /// Sends a fire built on connection `epoch`.
    fn fire_desc(&self, mut d: Descriptor, deadline: Option<Instant>, epoch: u64) -> Result<()> {
        let origin = {
            let mut core = self.shared.lock();
            d.correlation = core.next_id() | FIRE_BIT;
            core.route_fire(&mut d)
        };
        self.shared.send_or_reclaim(origin, &d, deadline, epoch)
    }

    /// Like [`fire`](Self::fire), but fails with [`Error::WouldBlock`] or
    /// [`Error::OutOfPool`] instead of waiting.
    pub fn try_fire(&self, route: &Route, payload: &[u8]) -> Result<()> {
        let (id, epoch) = self.route_id(route)?;
        let mut core = self.shared.lock();
        if core.epoch != epoch {
            return Err(stale_route());
        }
        let mut d = core.payload(Descriptor::new(Kind::Fire, id, 0), payload)?;
        d.correlation = core.next_id() | FIRE_BIT;
        let origin = core.route_fire(&mut d);
        let r = core.try_send_on(origin, &d);
        if r.is_err() {
            core.free_unsent(&d, None);
        }
        r
    }

    /// Fires a loaned chunk at `route` (zero-copy).
    pub fn fire_loan(&self, route: &Route, loan: Loan) -> Result<()> {
        let id = self.route_id(route)?;
        let (d, epoch) = loan.into_routed(Kind::Fire, id)?;
        self.fire_desc(d, None, epoch)
    }

    /// Borrows a chunk of `len` bytes from this client's pool to write a
    /// payload in place. Waits up to `timeout` for a free chunk.
    pub fn loan(&self, len: usize, timeout: Duration) -> Result<Loan> {
        self.shared.from_pool(Due::After(timeout), len, |core| {
            let c = core.alloc.alloc(len).map_err(crate::core::alloc_error)?;
            Ok(Loan::new(self.shared.clone(), core, c, len))
        })
    }

    /// Chunks of this client's pool currently lent out (loaned, or sent and not yet released).
    pub fn chunks_in_use(&self) -> u32 {
        let mut core = self.shared.lock();
        core.pump_data();
        core.alloc.in_use()
    }

    /// The largest payload this client can send.
    pub fn max_payload(&self) -> u32 {
        self.shared.lock().alloc.geometry().max_payload()
    }
}

/// A payload whose chunk was taken before a reconnect: it belongs to a pool
/// the old daemon took with it (unless the new one adopted ours), so it is
/// neither sent nor freed.
pub(crate) fn stale_payload() -> Error {
    Error::BusGone("the payload was built before a reconnect".into())
}

/// A route id read before a reconnect: the new daemon numbers names afresh,
/// so it is not sent (the next try resolves again).
pub(crate) fn stale_route() -> Error {
    Error::BusGone("the daemon restarted while the route was read; try again".into())
}

impl Shared {
    /// Whether to try a reconnect now: the daemon is gone, we reconnect by
    /// ourselves, none is under way, and the last try was 200 ms ago or
    /// more (marked as tried if so). Every use of the bus tries, a wait
    /// or a send alike: a caller whose sends fail at once would otherwise
    /// never wait, and never come back.
    pub(crate) fn reconnect_due(&self, core: &mut Core) -> bool {
        if core.gone.is_none() || !self.auto_reconnect || self.reconnecting.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if core.last_reconnect.is_some_and(|t| now.duration_since(t) < Duration::from_millis(200)) {
            return false;
        }
        core.last_reconnect = Some(now);
        true
    }

    /// Whether the bus reconnects by itself ([`BusOptions::reconnect`]).
    pub(crate) fn reconnects(&self) -> bool {
        self.auto_reconnect
    }

    /// [`lock`](Self::lock), after a reconnect if one is
    /// [due](Self::reconnect_due): for a send, before it reads a route id
    /// (a reconnect changes them all).
    pub(crate) fn lock_live(self: &Arc<Self>) -> MutexGuard<'_, Core> {
        let mut core = self.lock();
        if self.reconnect_due(&mut core) {
            drop(core);
            let _ = (Bus { shared: self.clone() }).reconnect();
            core = self.lock();
        }
        core
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the core consistent enough
        // to report errors; do not propagate the poison.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds a descriptor with `payload`, waiting for a pool chunk until `deadline`.
    ///
    /// Returns the descriptor with the connection epoch it was built on:
    /// its chunk may be freed only while that epoch lasts (see
    /// [`reclaim_unsent`](Self::reclaim_unsent)).
    pub(crate) fn build(
        self: &Arc<Self>,
        kind: Kind,
        route: u32,
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(Descriptor, u64)> {
        let base = Descriptor::new(kind, route, 0);
        self.from_pool(deadline, payload.len(), |core| core.payload(base, payload).map(|d| (d, core.epoch)))
    }

    /// [`build`](Self::build) for route id `route` of connection epoch
    /// `ids` (see [`Bus::route_id`]): refused if a reconnect came between
    /// reading the id and building. Then the epoch `build` returns is the
    /// id's too, and the send's own epoch check ([`push_built`]) covers both.
    pub(crate) fn build_to(
        self: &Arc<Self>,
        kind: Kind,
        (route, ids): (u32, u64),
        payload: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(Descriptor, u64)> {
        let (d, epoch) = self.build(kind, route, payload, deadline)?;
        if epoch != ids {
            self.reclaim_unsent(&d, epoch);
            return Err(stale_route());
        }
        Ok((d, epoch))
    }

    /// Allocates a chunk of `len` bytes from our pool, waiting for one until `deadline`.
    /// Also returns our pool's mapping and the connection epoch the chunk
    /// was taken on (see [`build`](Self::build)).
    pub(crate) fn alloc(
        self: &Arc<Self>,
        len: usize,
        deadline: Instant,
    ) -> Result<(ChunkRef, Arc<crate::core::View>, u64)> {
        self.from_pool(Some(deadline), len, |core| {
            let c = core.alloc.alloc(len).map_err(crate::core::alloc_error)?;
            Ok((c, core.pool.clone(), core.epoch))
        })
    }

    /// Takes something from our pool with `take`, for which an exhausted
    /// pool is [`Error::OutOfPool`]: at once under one lock when it can (the
    /// usual case: no pump, no clock), else waiting until `due`, pumping,
    /// which takes back what peers returned meanwhile. While it waits, the
    /// parked waiter arms the channels' return rings (`Core::want_releases`)
    /// so that a returned chunk wakes it. Out of time is `OutOfPool { len }`.
    ///
    /// A reconnect that is due happens first: a chunk taken just before it
    /// would belong to the old connection, and its send would be refused.
    fn from_pool<T>(
        self: &Arc<Self>,
        due: impl Into<Due>,
        len: usize,
        mut take: impl FnMut(&mut Core) -> Result<T>,
    ) -> Result<T> {
        let first = {
            let mut core = self.lock_live();
            match take(&mut core) {
                Err(Error::OutOfPool { .. }) => {
                    // Chunks the channels' peers returned come back first.
                    core.pump_returns();
                    take(&mut core)
                }
                r => r,
            }
        };
        match first {
            Err(Error::OutOfPool { .. }) => {}
            r => return r,
        }
        let r = self.wait_capped(due, false, Some(POOL_POLL), pool_check(take));
        match r {
            Err(Error::DeadlineExceeded) => Err(Error::OutOfPool { len }),
            r => r,
        }
    }

    /// [`send_on`](Self::send_on) for a descriptor built on connection
    /// `epoch`: if it is not sent, its chunk goes back to our pool (see
    /// [`reclaim_unsent`](Self::reclaim_unsent)).
    pub(crate) fn send_or_reclaim(
        self: &Arc<Self>,
        origin: Origin,
        d: &Descriptor,
        deadline: Option<Instant>,
        epoch: u64,
    ) -> Result<()> {
        let r = self.send_built(origin, d, deadline, Some(epoch));
        if r.is_err() {
            self.reclaim_unsent(d, epoch);
        }
        r
    }

    /// Gives the chunk of `d`, built on connection `epoch` and not sent,
    /// back to our pool, unless a reconnect has given us another pool
    /// since (where that offset is not ours). Read `epoch` before the chunk
    /// is taken: a reconnect in between then leaves it unfreed, never
    /// frees another's.
    pub(crate) fn reclaim_unsent(&self, d: &Descriptor, epoch: u64) {
        self.lock().free_unsent(d, Some(epoch));
    }

    /// Sends `d` on the path `origin`, waiting for room until `deadline`.
    #[inline]
    pub(crate) fn send_on(self: &Arc<Self>, origin: Origin, d: &Descriptor, deadline: Option<Instant>) -> Result<()> {
        self.send_built(origin, d, deadline, None)
    }

    /// [`send_on`](Self::send_on) for `d` whose chunk was taken on
    /// connection `epoch`: refused once a reconnect came (see [`push_built`]).
    #[inline]
    pub(crate) fn send_built(
        self: &Arc<Self>,
        origin: Origin,
        d: &Descriptor,
        deadline: Option<Instant>,
        epoch: Option<u64>,
    ) -> Result<()> {
        {
            let mut core = self.lock();
            match push_built(&mut core, origin, d, epoch) {
                Err(Error::WouldBlock) => {}
                r => return r,
            }
        }
        let r = self.wait_capped(deadline, false, Some(ROOM_POLL), room_check(origin, d, epoch));
        match r {
            Err(Error::DeadlineExceeded) => Err(Error::WouldBlock),
            r => r,
        }
    }

    /// An answer's sample, or the error it carries.
    pub(crate) fn answer_sample(sample: Sample) -> Result<Sample> {
        let d = sample.descriptor();
        if d.kind == Kind::Error as u8 {
            return Err(error_of(d, Some(&sample)));
        }
        Ok(sample)
    }

    fn wait_events(self: &Arc<Self>, deadline: Instant) -> Result<BusEvent> {
        self.wait(Some(deadline), true, |core| Ok(core.events.pop_front()))
    }
}
