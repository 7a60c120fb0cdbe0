//! The connection's state behind the lock: rings, pool, inboxes, and the
//! pump that moves descriptors from the rx ring into them.

use hybus_layout::idhash::{FewMap, FewSet, IdMap, IdSet};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use hybus_layout::channel::Side;
use hybus_layout::control::{self, ClientMessage, DaemonMessage, Event, Reply, Request};
use hybus_layout::descriptor::flags;
use hybus_layout::header::SegmentKind;
use hybus_layout::pool::{ChunkError, PoolAllocator, PoolGeometry, SizeClass};
use hybus_layout::segment::{Access, EventFd, Segment};
use hybus_layout::socket::{ControlSocket, RecvError};
use hybus_layout::{ChunkRef, Consumer, Descriptor, Kind, Producer, PushError};

use crate::direct::{Direct, State};
use crate::error::{Error, Result};
use crate::BusEvent;

/// A read-only view of some client's pool (or our own, read-write).
#[derive(Debug)]
pub(crate) struct View {
    pub seg: Segment,
    pub geometry: PoolGeometry,
}

/// Caller side of a stream or channel.
#[derive(Debug)]
pub(crate) struct StreamState {
    /// The path the stream was opened on; all its traffic stays there.
    pub origin: Origin,
    pub items: VecDeque<Descriptor>,
    pub ended: bool,
    pub error: Option<Error>,
    /// Items we may still send (channels).
    pub send_credits: u64,
}

/// Server side of a stream or channel.
#[derive(Debug, Default)]
pub(crate) struct ServedState {
    pub items: VecDeque<Descriptor>,
    pub send_credits: u64,
    pub peer_ended: bool,
    pub cancelled: bool,
}

/// Which path a descriptor came by (and so which path answers and releases take).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Origin {
    /// Through the daemon.
    Daemon,
    /// Over the direct channel with this id.
    Direct(u32),
}

/// What a spinning wait waits for, so that the rounds between full pumps
/// (every 64th round, and every round once it yields or parks, is a full
/// one) poll only the rings that bring it and hand it over directly (see
/// [`Core::pump_hot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hot {
    /// Anything: every round pumps everything.
    All,
    /// A server waiting for requests and fires to `instance`: the channels' data rings.
    Inbox(u32),
    /// A direct call waiting for its answer on `channel`.
    Answer {
        /// The channel the call went on.
        channel: u32,
        /// The call's correlation id.
        corr: u64,
    },
}

/// Largest number of unread publications kept per subscription before the oldest is dropped.
pub(crate) const TOPIC_INBOX: usize = 65_536;

/// Largest number of unread [`BusEvent`]s kept before the oldest is dropped:
/// most applications never read events, and some come with every failed
/// fire or channel change.
pub(crate) const EVENT_QUEUE: usize = 4_096;

#[derive(Debug)]
pub(crate) struct Core {
    pub sock: Arc<ControlSocket>,
    pub client_id: u32,
    pub tx: Producer,
    pub rx: Consumer,
    pub tx_bell: EventFd,
    pub rx_bell: Arc<EventFd>,
    pub pool: Arc<View>,
    pub alloc: PoolAllocator,
    pub views: IdMap<u32, Arc<View>>,
    pub next_id: u64,
    pub replies: IdMap<u64, std::result::Result<Reply, control::ErrorReply>>,
    pub events: VecDeque<BusEvent>,
    /// Caller side: requests waiting for an answer (`None` until it comes).
    pub calls: FewMap<u64, Option<(Descriptor, Origin)>>,
    /// Server side: requests and fires per instance.
    pub inboxes: FewMap<u32, VecDeque<(Descriptor, Origin)>>,
    /// Publications per subscribed route.
    pub topics: IdMap<u32, VecDeque<Descriptor>>,
    pub streams: IdMap<u64, StreamState>,
    pub served: IdMap<(Origin, u64), ServedState>,
    /// Server side: plain requests the caller cancelled.
    pub cancelled: IdSet<(Origin, u64)>,
    /// Direct channels by id.
    pub channels: FewMap<u32, Direct>,
    /// Caller side: the channel that carries new exchanges to a route.
    pub route_direct: FewMap<u32, u32>,
    /// Whether any channel is downgrading (the ordering rule in `pump_data` applies).
    pub closing: usize,
    /// Chunks of our pool the application holds as unsent [`Loan`](crate::Loan)s.
    pub loaned: FewSet<u64>,
    /// Instance ids from before a daemon restart → the ids now (direct requests still carry the old ones).
    pub instance_alias: FewMap<u32, u32>,
    /// Our instances that unregistered on this connection: what still
    /// comes for them on a direct channel is refused (see [`retire`](Self::retire)).
    pub retired: FewSet<u32>,
    /// When the last automatic reconnect was tried.
    pub last_reconnect: Option<std::time::Instant>,
    /// Waits so far (a cheap clock for occasional control-socket reads).
    pub waits: u64,
    /// Reused descriptor buffers for the pumps (no 2 KiB memset per poll).
    rx_buf: Vec<Descriptor>,
    ch_buf: Vec<Descriptor>,
    ctl_buf: Vec<u8>,
    /// Descriptors that did not fit in the tx ring (releases); sent first next time.
    pub backlog: VecDeque<Descriptor>,
    /// Why the connection is gone, once it is.
    pub gone: Option<String>,
    /// Bumped on every reconnect; handles from an older epoch re-resolve.
    pub epoch: u64,
    /// A thread sleeps on the doorbell; others wait on the condvar.
    pub parked_waiter: bool,
    /// Threads waiting on the condvar (the parked one notifies only if any).
    pub cv_waiters: u32,
    /// A wait for pool space is under way: the parked waiter arms the
    /// channels' return rings, so that a returned chunk wakes it. Set by
    /// each such wait on every round it finds the pool exhausted, cleared
    /// after each sleep.
    pub want_releases: bool,
    pub dropped_publications: u64,
    /// Events dropped unread (see [`EVENT_QUEUE`]).
    pub dropped_events: u64,
    /// What [`pump_hot`](Self::pump_hot) took off a ring for the wait that
    /// polled it; that wait's check takes it in the same critical section.
    pub taken: Option<(Descriptor, Origin)>,
    /// Some channel has releases queued (see [`flush_releases`](Self::flush_releases)).
    pub releases_queued: bool,
    /// Pools whose owner is gone, each with the rx position up to which the
    /// daemon may have pushed descriptors into it: the view goes once
    /// those are read (see [`retire_views`](Self::retire_views)).
    retiring: Vec<(u32, u64)>,
    /// Pumps while some pool is retiring (see [`pump_data`](Self::pump_data)).
    retire_rounds: u32,
    /// When a send last read the control socket ([`coarse_millis`]).
    last_look: u64,
}

fn gone(e: impl std::fmt::Display) -> Error {
    Error::BusGone(e.to_string())
}

impl Core {
    /// Builds the core from the Welcome and its four descriptors.
    pub fn new(sock: ControlSocket, w: control::Welcome, fds: Vec<OwnedFd>, epoch: u64) -> Result<Core> {
        let proto = |m: String| Error::Protocol(m);
        let mut fds = fds.into_iter();
        let (Some(rings), Some(pool), Some(txb), Some(rxb)) = (fds.next(), fds.next(), fds.next(), fds.next()) else {
            return Err(proto("Welcome came without its four descriptors".into()));
        };
        let (rings, _) = Segment::open(rings, Access::ReadWrite, SegmentKind::ClientRings)
            .map_err(|e| proto(format!("rings segment: {e}")))?;
        let rings = Arc::new(rings);
        let cap = w.ring_capacity;
        let tx = rings.ring_producer(w.tx_offset as usize, cap).map_err(|e| proto(format!("tx ring: {e}")))?;
        let rx = rings.ring_consumer(w.rx_offset as usize, cap).map_err(|e| proto(format!("rx ring: {e}")))?;
        let (pool_seg, info) =
            Segment::open(pool, Access::ReadWrite, SegmentKind::Pool).map_err(|e| proto(format!("pool: {e}")))?;
        let geometry = geometry_of(&w.pool_classes)?;
        if info.param != w.client_id as u64 || geometry.size() > pool_seg.len() as u64 {
            return Err(proto("pool segment does not match the Welcome".into()));
        }
        let alloc = PoolAllocator::new(geometry.clone(), w.client_id);
        sock.set_nonblocking(true).map_err(|e| Error::os("control socket", e))?;
        Ok(Core {
            sock: Arc::new(sock),
            client_id: w.client_id,
            tx,
            rx,
            tx_bell: EventFd::from_fd(txb),
            rx_bell: Arc::new(EventFd::from_fd(rxb)),
            pool: Arc::new(View { seg: pool_seg, geometry }),
            alloc,
            views: IdMap::default(),
            next_id: 1,
            replies: IdMap::default(),
            events: VecDeque::new(),
            calls: FewMap::new(),
            inboxes: FewMap::new(),
            topics: IdMap::default(),
            streams: IdMap::default(),
            served: IdMap::default(),
            cancelled: IdSet::default(),
            channels: FewMap::new(),
            route_direct: FewMap::new(),
            closing: 0,
            loaned: FewSet::new(),
            instance_alias: FewMap::new(),
            retired: FewSet::new(),
            last_reconnect: None,
            waits: 0,
            rx_buf: Vec::new(),
            ch_buf: Vec::new(),
            ctl_buf: Vec::new(),
            backlog: VecDeque::new(),
            gone: None,
            epoch,
            parked_waiter: false,
            cv_waiters: 0,
            want_releases: false,
            dropped_publications: 0,
            taken: None,
            releases_queued: false,
            dropped_events: 0,
            retiring: Vec::new(),
            retire_rounds: 0,
            last_look: coarse_millis(),
        })
    }

    /// Attaches to a new daemon after the old one went away, keeping what
    /// does not depend on it: the pool (if the daemon adopted it), direct
    /// channels, and everything in flight over them. Whatever was in flight
    /// through the old daemon is failed or forgotten here.
    pub fn reattach(&mut self, sock: ControlSocket, w: control::Welcome, fds: Vec<OwnedFd>) -> Result<()> {
        let fresh = Core::new(sock, w.clone(), fds, self.epoch + 1)?;
        if w.pool_reused {
            self.alloc.set_segment(w.client_id);
        } else {
            // Our channels' peers map the old pool; without it they cannot go on.
            let ids: Vec<u32> = self.channels.keys().copied().collect();
            for id in ids {
                self.kill_channel(id, "the new daemon could not adopt our pool");
            }
            self.pool = fresh.pool.clone();
            self.alloc = PoolAllocator::new(fresh.pool.geometry.clone(), w.client_id);
        }
        // Chunks lent through the old daemon never come back: reclaim every
        // chunk that no channel peer and no unsent loan holds. (A receiver
        // that still reads such a payload may see it overwritten: the cost
        // of a daemon restart for brokered payloads in flight.)
        let keep: IdSet<u64> =
            self.channels.values().flat_map(|c| c.lent.iter().copied()).chain(self.loaned.iter().copied()).collect();
        for c in self.alloc.held() {
            if !keep.contains(&c.offset) {
                let _ = self.alloc.free(c);
            }
        }
        self.sock = fresh.sock;
        self.client_id = fresh.client_id;
        self.tx = fresh.tx;
        self.rx = fresh.rx;
        self.tx_bell = fresh.tx_bell;
        self.rx_bell = fresh.rx_bell;
        self.views.clear();
        self.retiring.clear();
        self.replies.clear();
        self.backlog.clear();
        self.topics.clear();
        self.gone = None;
        self.epoch += 1;
        let gone = Descriptor::new(Kind::Error, 0, 0).with_aux(control::DataError::PeerGone as u64);
        // (Calls on direct channels are not in the table: they go on.)
        for (corr, slot) in self.calls.iter_mut() {
            if slot.is_none() {
                *slot = Some((Descriptor { correlation: *corr, ..gone }, Origin::Daemon));
            }
        }
        for s in self.streams.values_mut().filter(|s| s.origin == Origin::Daemon) {
            s.ended = true;
            s.error.get_or_insert(Error::BusGone("the daemon restarted".into()));
        }
        for q in self.inboxes.values_mut() {
            q.retain(|(_, o)| *o != Origin::Daemon);
        }
        self.served.retain(|(o, _), _| *o != Origin::Daemon);
        self.cancelled.retain(|(o, _)| *o != Origin::Daemon);
        // The new daemon numbers instances afresh.
        self.retired = FewSet::new();
        Ok(())
    }

    /// Our instance `instance` unregistered. What waits in its inbox is
    /// refused, and so is what still comes for it on a direct channel
    /// until the caller has the daemon's word that the channel closed:
    /// requests and streams fail at their callers with "peer gone" (as the
    /// daemon fails the brokered ones), fires are dropped, chunks go back.
    ///
    /// Why: nothing reads that inbox any more, and a caller on a channel
    /// would wait for its deadline.
    pub fn retire(&mut self, instance: u32) {
        if !self.channels.is_empty() {
            self.retired.insert(instance);
        }
        if let Some(q) = self.inboxes.remove(&instance) {
            for (d, origin) in q {
                self.refuse_incoming(d, origin);
            }
        }
    }

    /// Refuses a request, stream or fire for a retired instance (see [`retire`](Self::retire)).
    fn refuse_incoming(&mut self, d: Descriptor, origin: Origin) {
        let opens = d.kind == Kind::Request as u8 || d.kind == Kind::StreamOpen as u8;
        if opens {
            self.served.remove(&(origin, d.correlation));
            if let Origin::Direct(_) = origin {
                let mut e =
                    Descriptor::new(Kind::Error, d.route, d.correlation).with_aux(control::DataError::PeerGone as u64);
                e.flags |= flags::SERVER;
                // A full ring leaves the caller to its deadline, as a dead peer would.
                let _ = self.try_send_on(origin, &e);
            }
            self.served_done(origin, d.correlation);
        }
        self.release(d, origin);
    }

    /// A fresh id for a control request or a correlation.
    #[inline]
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn check_alive(&self) -> Result<()> {
        match &self.gone {
            Some(g) => Err(Error::BusGone(g.clone())),
            None => Ok(()),
        }
    }

    /// Sends a control request; the reply is collected by [`pump_control`](Self::pump_control).
    pub fn send_control(&mut self, request: Request) -> Result<u64> {
        self.send_control_fds(request, &[])
    }

    /// Sends a control request with descriptors attached.
    pub fn send_control_fds(&mut self, request: Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<u64> {
        self.check_alive()?;
        let id = self.next_id();
        let bytes = control::encode(&ClientMessage { id, request }).map_err(|e| Error::BadRequest(e.to_string()))?;
        // The socket is non-blocking; a control message that does not fit
        // means the daemon is not reading: give it a moment, then give up.
        for _ in 0..1000 {
            match self.sock.send(&bytes, fds) {
                Ok(()) => return Ok(id),
                Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => {
                    self.gone = Some(format!("control socket: {}", e.desc()));
                    return Err(gone(e.desc()));
                }
            }
        }
        Err(Error::BusGone("daemon does not read its control socket".into()))
    }

    /// Reads every control message that is ready.
    pub fn pump_control(&mut self) {
        // Reused: called now and then from spinning waits, and a fresh
        // 64 KiB buffer would be zeroed each time.
        let mut buf = std::mem::take(&mut self.ctl_buf);
        buf.resize(control::MAX_MESSAGE, 0);
        while self.gone.is_none() {
            let (n, fds) = match self.sock.recv(&mut buf) {
                Ok(x) => x,
                Err(RecvError::WouldBlock) => break,
                Err(RecvError::Closed) => {
                    self.lost("the daemon closed the connection");
                    break;
                }
                Err(e) => {
                    self.lost(&format!("control socket: {e}"));
                    break;
                }
            };
            match control::decode::<DaemonMessage>(&buf[..n]) {
                Ok(DaemonMessage::Reply { id, result }) => {
                    self.replies.insert(id, result);
                }
                Ok(DaemonMessage::Event(ev)) => self.on_event(ev, fds),
                Err(e) => self.lost(&format!("daemon sent a malformed message: {e}")),
            }
        }
        self.ctl_buf = buf;
    }

    /// Queues an event for [`Bus::next_event`](crate::Bus::next_event),
    /// dropping the oldest unread one beyond [`EVENT_QUEUE`].
    pub fn push_event(&mut self, ev: BusEvent) {
        if self.events.len() >= EVENT_QUEUE {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(ev);
    }

    fn lost(&mut self, why: &str) {
        if self.gone.is_none() {
            self.gone = Some(why.to_owned());
            self.push_event(BusEvent::Disconnected { reason: why.to_owned() });
        }
    }

    fn on_event(&mut self, ev: Event, fds: Vec<OwnedFd>) {
        match ev {
            Event::PoolView { pool, classes } => {
                let Some(fd) = fds.into_iter().next() else {
                    return;
                };
                let view = geometry_of(&classes).and_then(|g| {
                    let (seg, info) = Segment::open(fd, Access::ReadOnly, SegmentKind::Pool)
                        .map_err(|e| Error::Protocol(format!("pool view: {e}")))?;
                    if info.param != pool as u64 || g.size() > seg.len() as u64 {
                        return Err(Error::Protocol("pool view does not match its geometry".into()));
                    }
                    Ok(View { seg, geometry: g })
                });
                match view {
                    Ok(v) => {
                        self.views.insert(pool, Arc::new(v));
                    }
                    Err(e) => self.lost(&e.to_string()),
                }
            }
            Event::PoolGone { pool } => {
                // The daemon says so once everything it sent us from that
                // pool is on our ring, which we may not have read yet.
                match self.rx.published() {
                    Ok(at) => self.retiring.push((pool, at)),
                    Err(e) => self.lost(&format!("daemon ring corrupt: {e}")),
                }
            }
            Event::ServiceUp { name, route, instance, pid } => {
                self.push_event(BusEvent::ServiceUp { name, route, instance, pid })
            }
            Event::ServiceDown { name, route, instance, pid } => {
                self.push_event(BusEvent::ServiceDown { name, route, instance, pid })
            }
            Event::Traffic { kind, from, to, route, correlation, len } => {
                self.push_event(BusEvent::Traffic { kind, from, to, route, correlation, len })
            }
            Event::DirectOpen(info) => match Direct::open(&info, fds, self.client_id, self.rx_bell.clone()) {
                Ok(ch) => {
                    // The upgrade fence: everything we sent brokered before it
                    // is dispatched at the peer before anything we send direct.
                    self.push_or_backlog(Descriptor::new(Kind::Fence, 0, 0).with_aux(ch.id as u64));
                    if ch.side == Side::A {
                        self.route_direct.insert(ch.route, ch.id);
                    }
                    self.push_event(BusEvent::DirectOpened {
                        channel: ch.id,
                        service: ch.service.clone(),
                        peer_pid: ch.peer_pid,
                        reason: ch.reason.clone(),
                    });
                    self.channels.insert(ch.id, ch);
                }
                Err(e) => {
                    // Unusable: ask the daemon to close it so the peer falls back too.
                    let _ = self.send_control(Request::CloseDirect { channel: info.channel });
                    self.push_event(BusEvent::DirectClosed {
                        channel: info.channel,
                        service: info.service,
                        reason: e.to_string(),
                    });
                }
            },
            Event::DirectClosed { channel, reason, peer_died } => {
                if peer_died {
                    self.kill_channel(channel, &reason);
                } else {
                    self.close_channel(channel, &reason);
                }
            }
        }
    }

    /// Starts a downgrade: no new exchanges on the channel, an end fence on it.
    pub fn close_channel(&mut self, id: u32, reason: &str) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if ch.state == State::Closing {
            return;
        }
        ch.state = State::Closing;
        self.closing += 1;
        let (route, side, service) = (ch.route, ch.side, ch.service.clone());
        // Best effort: a full ring means the peer is not reading; it will
        // then be declared dead or reconnect, and the fence does not matter.
        let _ = ch.push(&Descriptor::new(Kind::Fence, 0, 0).with_aux(id as u64));
        if side == Side::A && self.route_direct.get(&route) == Some(&id) {
            self.route_direct.remove(&route);
        }
        self.push_event(BusEvent::DirectClosed { channel: id, service, reason: reason.to_owned() });
        self.reap_channel(id);
    }

    /// The peer died: calls over the channel fail with "peer gone", its
    /// streams end, our chunks it held come back, traffic falls back.
    pub fn kill_channel(&mut self, id: u32, reason: &str) {
        let Some(ch) = self.channels.remove(&id) else {
            return;
        };
        if ch.state == State::Closing {
            self.closing -= 1;
        }
        if self.route_direct.get(&ch.route) == Some(&id) {
            self.route_direct.remove(&ch.route);
        }
        let gone = Descriptor::new(Kind::Error, ch.route, 0).with_aux(control::DataError::PeerGone as u64);
        // Calls in flight on it (the others in its set are streams).
        for corr in ch.calls.iter().filter(|c| !self.streams.contains_key(c)) {
            self.calls.insert(*corr, Some((Descriptor { correlation: *corr, ..gone }, Origin::Daemon)));
        }
        let origin = Origin::Direct(id);
        for s in self.streams.values_mut().filter(|s| s.origin == origin) {
            s.ended = true;
            s.error.get_or_insert(Error::PeerGone);
        }
        for ((o, _), s) in self.served.iter_mut() {
            if *o == origin {
                s.cancelled = true;
            }
        }
        for q in self.inboxes.values_mut() {
            q.retain(|(_, o)| *o != origin);
        }
        for off in &ch.lent {
            let _ = self.alloc.free(ChunkRef { segment: self.client_id, len: 0, offset: *off });
        }
        self.push_event(BusEvent::DirectClosed { channel: id, service: ch.service.clone(), reason: reason.to_owned() });
        self.forget_retired();
    }

    fn reap_channel(&mut self, id: u32) {
        if self.channels.get(&id).is_some_and(|c| c.finished()) {
            self.channels.remove(&id);
            self.closing -= 1;
            self.forget_retired();
        }
    }

    /// With no channel left, nothing can come for a retired instance any
    /// more (a channel is only ever opened to a serving one): the set need
    /// not grow with every instance a long-lived connection unregisters.
    fn forget_retired(&mut self) {
        if self.channels.is_empty() && !self.retired.is_empty() {
            self.retired = FewSet::new();
        }
    }

    /// Picks the path for a new call, remembers the call, and tries to push
    /// it there: a direct channel to the route if one is open (the
    /// descriptor is then addressed to the channel's instance, and the call
    /// is remembered in the channel's [`calls`](Direct::calls)), else the
    /// daemon (the call is remembered in [`calls`](Self::calls)).
    /// `Err(WouldBlock)` when that ring is full.
    ///
    /// Why not the call table for a direct call: its answer is nearly always
    /// taken straight off the channel by the waiting caller
    /// ([`pump_hot`](Self::pump_hot)), and an entry made and removed per
    /// call was a fifth of the caller's work between its answer and its next
    /// request. An answer that comes by another pump is put in the table then
    /// ([`dispatch`](Self::dispatch)), and "peer gone" puts its error there
    /// ([`kill_channel`](Self::kill_channel)).
    #[inline]
    pub fn send_call(&mut self, d: &mut Descriptor, corr: u64) -> (Origin, Result<()>) {
        if let Some(ch) = self.direct_for(d.route).and_then(|id| self.channels.get_mut(&id)) {
            ch.calls.insert(corr);
            d.route = ch.instance;
            return (Origin::Direct(ch.id), ch.push(d));
        }
        self.calls.insert(corr, None);
        (Origin::Daemon, self.try_send(d))
    }

    /// Picks the path for a fire (or a stream's opening): like [`send_call`](Self::send_call) without the bookkeeping and the push.
    #[inline]
    pub fn route_fire(&mut self, d: &mut Descriptor) -> Origin {
        match self.direct_for(d.route).and_then(|id| self.channels.get(&id)) {
            Some(ch) => {
                d.route = ch.instance;
                Origin::Direct(ch.id)
            }
            None => Origin::Daemon,
        }
    }

    /// An exchange we served over a channel is finished (answered, ended, dropped).
    pub fn served_done(&mut self, origin: Origin, corr: u64) {
        if let Origin::Direct(id) = origin {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.serving.remove(&corr);
            }
            self.reap_channel(id);
        }
    }

    /// Forgets a call that failed, timed out or was cancelled. An answer
    /// already in the table (it came after the caller last looked) is
    /// released: its chunk belongs to the server's pool.
    pub fn forget_call(&mut self, corr: u64, origin: Origin) {
        if let Some(Some((d, path))) = self.calls.remove(&corr) {
            self.release(d, path);
            // Now: the caller may not wait again for a long time.
            if self.releases_queued {
                self.flush_releases();
            }
        }
        if let Origin::Direct(id) = origin {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.calls.remove(&corr);
            }
            self.reap_channel(id);
        }
    }

    /// Declares dead every channel whose peer process has exited (pidfd readable).
    pub fn check_peers(&mut self) {
        let dead: Vec<u32> = self.channels.values().filter(|c| c.peer_exited()).map(|c| c.id).collect();
        for id in dead {
            self.kill_channel(id, "peer process exited");
        }
    }

    /// The channel that carries new exchanges to `route`, if any.
    #[inline]
    pub fn direct_for(&self, route: u32) -> Option<u32> {
        if self.route_direct.is_empty() {
            return None;
        }
        self.route_direct.get(&route).copied()
    }

    fn channel_violation(&mut self, id: u32, why: String) {
        let _ = self.send_control(Request::CloseDirect { channel: id });
        self.kill_channel(id, &format!("peer broke the protocol: {why}"));
    }

    /// Drains the rings of every channel whose peer has fenced.
    fn pump_channels(&mut self, only_closing: bool) -> usize {
        let ids = self.fenced_channels(|c| !only_closing || (c.state == State::Closing && !c.peer_ended));
        ids.map(|id| self.pump_channel(id)).sum()
    }

    /// Ids of the channels whose peer has fenced and that `keep` selects, to
    /// pump one by one. This runs on every poll of a waiting call: on the
    /// stack for the usual handful, in a vector only beyond 16.
    fn fenced_channels(&self, keep: impl Fn(&Direct) -> bool) -> impl Iterator<Item = u32> {
        let mut few = [0u32; 16];
        let mut n = 0;
        let mut more = Vec::new();
        for c in self.channels.values().filter(|c| c.peer_fenced && keep(c)) {
            match few.get_mut(n) {
                Some(slot) => {
                    *slot = c.id;
                    n += 1;
                }
                None => more.push(c.id),
            }
        }
        few.into_iter().take(n).chain(more)
    }

    /// Drains one channel's return ring and data ring.
    fn pump_channel(&mut self, id: u32) -> usize {
        let mut total = 0;
        // A reused buffer: this runs on every poll of a spinning wait.
        let mut buf = std::mem::take(&mut self.ch_buf);
        buf.resize(32, Descriptor::new(Kind::Fence, 0, 0));
        {
            // Returned chunks first: they free pool space for what follows.
            while let Some(ch) = self.channels.get_mut(&id) {
                let n = match ch.rel_rx.pop_batch(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        self.channel_violation(id, e.to_string());
                        break;
                    }
                };
                for d in &buf[..n] {
                    let ok = d.kind == Kind::Release as u8
                        && d.chunk().is_some_and(|c| c.segment == ch.my_pool && ch.lent.remove(&c.offset));
                    if !ok {
                        self.channel_violation(id, "returned a chunk it was not lent".into());
                        break;
                    }
                    if let Some(c) = d.chunk() {
                        let _ = take_back(&mut self.alloc, &self.pool, ChunkRef { segment: self.client_id, ..c });
                    }
                }
                if n < buf.len() {
                    break;
                }
            }
            while let Some(ch) = self.channels.get_mut(&id) {
                let n = match ch.rx.pop_batch(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        self.channel_violation(id, e.to_string());
                        break;
                    }
                };
                total += n;
                if !buf[..n].iter().all(|d| self.take_direct(id, *d)) || n < buf.len() {
                    break;
                }
            }
            self.reap_channel(id);
        }
        self.ch_buf = buf;
        total
    }

    /// Dispatches a descriptor that came on channel `id`'s data ring;
    /// `false` if it broke the protocol (the channel is then cut off).
    fn take_direct(&mut self, id: u32, d: Descriptor) -> bool {
        let Some(ch) = self.channels.get_mut(&id) else {
            return false;
        };
        match ch.accept(d) {
            Ok(d) => {
                self.take_accepted(id, d);
                true
            }
            Err(why) => {
                self.channel_violation(id, why);
                false
            }
        }
    }

    /// Dispatches a descriptor from channel `id` that [`Direct::accept`] passed.
    fn take_accepted(&mut self, id: u32, d: Descriptor) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        if d.kind == Kind::Fence as u8 {
            ch.peer_ended = true;
            return;
        }
        if d.chunk().is_some() {
            ch.held += 1;
        }
        self.dispatch(d, Origin::Direct(id));
    }

    /// The poll of a spinning wait between full pumps: only the data
    /// rings that bring what `hot` waits for, one descriptor each. The
    /// descriptor it waits for is left in [`taken`](Self::taken) without a
    /// detour through the inboxes or the call table; anything else is
    /// dispatched as usual. Falls back to [`pump_data`](Self::pump_data)
    /// while a channel is downgrading (its ordering rule needs the daemon's
    /// ring read beside it).
    ///
    /// Why: a direct round trip is two cache-line transfers plus what each
    /// side does with the descriptor, and a full pump (the daemon's ring,
    /// every channel's return ring and data ring) followed by a dispatch
    /// into a hash map and a lookup out of it was most of what a side did.
    #[inline]
    pub fn pump_hot(&mut self, hot: Hot) {
        if self.closing > 0 || self.taken.is_some() {
            self.pump_data();
            return;
        }
        match hot {
            Hot::All => {
                self.pump_data();
            }
            Hot::Answer { channel, .. } => self.pump_one(channel, hot),
            Hot::Inbox(_) => {
                for id in self.fenced_channels(|_| true) {
                    self.pump_one(id, hot);
                }
            }
        }
    }

    /// Takes at most one descriptor off channel `id`'s data ring: into
    /// [`taken`](Self::taken) if it is what `hot` waits for, else dispatched.
    #[inline]
    fn pump_one(&mut self, id: u32, hot: Hot) {
        let Some(ch) = self.channels.get_mut(&id).filter(|c| c.peer_fenced) else {
            return;
        };
        let d = match ch.rx.pop() {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => return self.channel_violation(id, e.to_string()),
        };
        let d = match ch.accept(d) {
            Ok(d) => d,
            Err(why) => return self.channel_violation(id, why),
        };
        let server = d.flags & flags::SERVER != 0;
        let kind = d.kind;
        let wanted = match hot {
            Hot::Answer { corr, .. } => {
                !server && d.correlation == corr && (kind == Kind::Response as u8 || kind == Kind::Error as u8)
            }
            Hot::Inbox(instance) => {
                server
                    && (kind == Kind::Request as u8 || kind == Kind::Fire as u8)
                    && self.inbox_of(d.route, Origin::Direct(id)) == instance
                    && self.inboxes.get(&instance).is_none_or(VecDeque::is_empty)
            }
            Hot::All => false,
        };
        if !wanted {
            return self.take_accepted(id, d);
        }
        // The bookkeeping `take_accepted` and `dispatch` would do on the
        // channel; the waiter's check does the rest (and `dispatch` may
        // still be given `d`: it is idempotent in this part).
        if let Some(ch) = self.channels.get_mut(&id) {
            if d.chunk().is_some() {
                ch.held += 1;
            }
            if kind == Kind::Request as u8 {
                ch.serving.insert(d.correlation);
            } else if !server {
                ch.calls.remove(&d.correlation);
            }
        }
        self.taken = Some((d, Origin::Direct(id)));
    }

    /// The answer to our call `corr`, if it came: taken off its channel by
    /// [`pump_hot`](Self::pump_hot) this round, or dispatched into the call
    /// table. The call is forgotten once its answer is taken.
    pub fn take_answer(&mut self, corr: u64) -> Option<(Descriptor, Origin)> {
        if self.taken.is_some_and(|(d, _)| d.correlation == corr && d.flags & flags::SERVER == 0) {
            self.calls.remove(&corr);
            return self.taken.take();
        }
        if matches!(self.calls.get(&corr), Some(Some(_))) {
            return self.calls.remove(&corr).flatten();
        }
        None
    }

    /// The next request or fire for `instance`: taken off a channel by
    /// [`pump_hot`](Self::pump_hot) this round (only while the inbox is
    /// empty), else the oldest in its inbox.
    pub fn take_incoming(&mut self, instance: u32) -> Option<(Descriptor, Origin)> {
        if self.taken.is_some_and(|(d, o)| d.flags & flags::SERVER != 0 && self.inbox_of(d.route, o) == instance) {
            return self.taken.take();
        }
        self.inboxes.get_mut(&instance).and_then(|q| q.pop_front())
    }

    /// Hands what [`pump_hot`](Self::pump_hot) took and no check wanted to
    /// the usual dispatch (a waiter gave up in the same round): nothing is
    /// lost whatever a check does.
    pub fn untake(&mut self) {
        if let Some((d, origin)) = self.taken.take() {
            self.dispatch(d, origin);
        }
    }

    /// Moves every ready descriptor from the rx ring (and the channels' rings) to its inbox. Returns how many.
    #[inline]
    pub fn pump_data(&mut self) -> usize {
        let mut buf = std::mem::take(&mut self.rx_buf);
        buf.resize(32, Descriptor::new(Kind::Fence, 0, 0));
        let mut total = 0;
        if !self.channels.is_empty() {
            total += self.pump_channels(false);
        }
        loop {
            let n = match self.rx.pop_batch(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    self.lost(&format!("daemon ring corrupt: {e}"));
                    self.rx_buf = buf;
                    return total;
                }
            };
            if n > 0 && self.closing > 0 {
                // Downgrade order: anything a peer pushed on its channel
                // before its end fence happened before what it then sent
                // through the daemon, which we just acquired; dispatch it first.
                total += self.pump_channels(true);
            }
            for d in &buf[..n] {
                self.dispatch(*d, Origin::Daemon);
            }
            total += n;
            if n < buf.len() {
                break;
            }
        }
        self.rx_buf = buf;
        if !self.backlog.is_empty() {
            self.flush_backlog();
        }
        if !self.retiring.is_empty() {
            // Every 64th pump: the check may scan every queued descriptor
            // (a subscriber's backlog), and a view may well go a little later.
            self.retire_rounds = self.retire_rounds.wrapping_add(1);
            if self.retire_rounds % 64 == 1 {
                self.retire_views();
            }
        }
        total
    }

    /// Drops the views of gone pools whose last descriptors we have read
    /// and no longer keep in an inbox, a call, a stream or a topic queue
    /// (samples already made keep their own reference: the mapping goes
    /// with the last of them). Runs only while some pool is retiring.
    fn retire_views(&mut self) {
        let read = self.rx.taken();
        let mut retiring = std::mem::take(&mut self.retiring);
        retiring.retain(|&(pool, at)| {
            let done = read.wrapping_sub(at) <= u64::MAX / 2 && !self.holds_chunk_of(pool);
            if done {
                self.views.remove(&pool);
            }
            !done
        });
        self.retiring = retiring;
    }

    /// The pools we map a view of, and those retiring (for `Bus::debug_state`).
    pub fn views_state(&self) -> (Vec<u32>, &[(u32, u64)]) {
        let mut ids: Vec<u32> = self.views.keys().copied().collect();
        ids.sort_unstable();
        (ids, &self.retiring)
    }

    /// Whether a descriptor the daemon gave us that the application has not
    /// taken yet refers to a chunk of `pool` (every place such a descriptor
    /// waits: the hot hand-over, inboxes, calls, both ends of streams, topics).
    fn holds_chunk_of(&self, pool: u32) -> bool {
        let of = |d: &Descriptor| d.chunk().is_some_and(|c| c.segment == pool);
        let brokered = |&(d, o): &(Descriptor, Origin)| o == Origin::Daemon && of(&d);
        self.taken.as_ref().is_some_and(brokered)
            || self.inboxes.values().any(|q| q.iter().any(brokered))
            || self.calls.values().any(|c| c.as_ref().is_some_and(brokered))
            || self.streams.values().any(|s| s.origin == Origin::Daemon && s.items.iter().any(of))
            || self.served.iter().any(|((o, _), s)| *o == Origin::Daemon && s.items.iter().any(of))
            || self.topics.values().any(|q| q.iter().any(of))
    }

    /// The inbox (instance id) a request addressed to `route` lands in: a
    /// peer on a direct channel may still use an instance id from before a
    /// daemon restart.
    #[inline]
    fn inbox_of(&self, route: u32, origin: Origin) -> u32 {
        match origin {
            Origin::Daemon => route,
            Origin::Direct(_) => self.instance_alias.get(&route).copied().unwrap_or(route),
        }
    }

    /// The view of the pool a chunk lives in, reading the control socket for it if new.
    pub fn view_for(&mut self, c: ChunkRef, origin: Origin) -> Option<Arc<View>> {
        if let Origin::Direct(id) = origin {
            return self.channels.get(&id).map(|ch| ch.peer_view.clone());
        }
        if c.segment == self.client_id {
            return Some(self.pool.clone());
        }
        if !self.views.contains_key(&c.segment) {
            // The daemon sends the view before the first descriptor that needs it.
            self.pump_control();
        }
        let v = self.views.get(&c.segment)?;
        v.geometry.check(c).ok()?;
        Some(v.clone())
    }

    fn dispatch(&mut self, d: Descriptor, origin: Origin) {
        let Ok(kind) = d.check() else {
            self.lost("daemon sent a malformed descriptor");
            return;
        };
        if let (Some(c), Origin::Daemon) = (d.chunk(), origin) {
            if kind != Kind::Release && self.view_for(c, origin).is_none() {
                self.lost(&format!("daemon sent a chunk of pool {} without a valid view", c.segment));
                return;
            }
        }
        let server = d.flags & flags::SERVER != 0;
        let key = (origin, d.correlation);
        match (kind, server) {
            (Kind::Release, _) => {
                if let Some(c) = d.chunk() {
                    if take_back(&mut self.alloc, &self.pool, c).is_err() {
                        self.lost("daemon returned a chunk we did not lend");
                    }
                }
            }
            (Kind::Fence, _) => {
                // A peer's upgrade fence, forwarded by the daemon.
                let id = d.aux as u32;
                if !self.channels.contains_key(&id) {
                    self.pump_control();
                }
                if let Some(ch) = self.channels.get_mut(&id) {
                    ch.peer_fenced = true;
                    // Whatever the peer pushed on the channel before what
                    // follows in this batch of the daemon's ring must be
                    // dispatched before it (per-sender order).
                    self.pump_channel(id);
                }
            }
            (Kind::Request, true) | (Kind::Fire, _) | (Kind::StreamOpen, true)
                if !self.retired.is_empty()
                    && matches!(origin, Origin::Direct(_))
                    && self.retired.contains(&self.inbox_of(d.route, origin)) =>
            {
                self.refuse_incoming(d, origin);
            }
            (Kind::Request, true) | (Kind::Fire, _) => {
                if let (Kind::Request, Origin::Direct(id)) = (kind, origin) {
                    if let Some(ch) = self.channels.get_mut(&id) {
                        ch.serving.insert(d.correlation);
                    }
                }
                let inbox = self.inbox_of(d.route, origin);
                self.inboxes.get_or_insert_with(inbox, VecDeque::new).push_back((d, origin));
            }
            (Kind::StreamOpen, true) => {
                if let Origin::Direct(id) = origin {
                    if let Some(ch) = self.channels.get_mut(&id) {
                        ch.serving.insert(d.correlation);
                    }
                }
                self.served.insert(key, ServedState { send_credits: d.aux & 0xffff_ffff, ..ServedState::default() });
                let inbox = self.inbox_of(d.route, origin);
                self.inboxes.get_or_insert_with(inbox, VecDeque::new).push_back((d, origin));
            }
            (Kind::Publish, _) => {
                let q = self.topics.entry(d.route).or_default();
                q.push_back(d);
                if q.len() > TOPIC_INBOX {
                    if let Some(old) = q.pop_front() {
                        self.dropped_publications += 1;
                        self.release(old, Origin::Daemon);
                    }
                }
            }
            (Kind::Response | Kind::Error, false) => {
                if let Some(Some(_)) = self.calls.get(&d.correlation) {
                    // The call already has its outcome (it was cancelled): a late answer goes back.
                    self.release(d, origin);
                } else if let Some(slot) = self.calls.get_mut(&d.correlation) {
                    *slot = Some((d, origin));
                    if let Origin::Direct(id) = origin {
                        if let Some(ch) = self.channels.get_mut(&id) {
                            ch.calls.remove(&d.correlation);
                        }
                        self.reap_channel(id);
                    }
                } else if let Some(id) = self.direct_call(origin, d.correlation) {
                    // Our direct call's answer, brought by a full pump: the
                    // caller takes it from the table.
                    self.calls.insert(d.correlation, Some((d, origin)));
                    self.reap_channel(id);
                } else if let Some(s) = self.streams.get_mut(&d.correlation) {
                    s.ended = true;
                    s.error = Some(error_of(&d, None));
                    self.release(d, origin);
                } else if kind == Kind::Error && d.correlation & FIRE_BIT != 0 {
                    self.push_event(BusEvent::FireFailed { route: d.route, error: error_of(&d, None) });
                } else {
                    // An answer to a call that timed out: give the chunk back.
                    self.release(d, origin);
                }
            }
            (Kind::StreamItem, false) => match self.streams.get_mut(&d.correlation) {
                Some(s) => s.items.push_back(d),
                None => self.release(d, origin),
            },
            (Kind::StreamItem, true) => match self.served.get_mut(&key) {
                Some(s) => s.items.push_back(d),
                None => self.release(d, origin),
            },
            (Kind::Credit, false) => {
                if let Some(s) = self.streams.get_mut(&d.correlation) {
                    s.send_credits = s.send_credits.saturating_add(d.aux);
                }
            }
            (Kind::Credit, true) => {
                if let Some(s) = self.served.get_mut(&key) {
                    s.send_credits = s.send_credits.saturating_add(d.aux);
                }
            }
            (Kind::StreamEnd, false) => {
                if let Some(s) = self.streams.get_mut(&d.correlation) {
                    s.ended = true;
                }
            }
            (Kind::StreamEnd, true) => {
                if let Some(s) = self.served.get_mut(&key) {
                    s.peer_ended = true;
                }
            }
            (Kind::Cancel, true) => match self.served.get_mut(&key) {
                Some(s) => s.cancelled = true,
                None => {
                    self.cancelled.insert(key);
                }
            },
            (Kind::Cancel, false) => {
                if let Some(s) = self.streams.get_mut(&d.correlation) {
                    s.ended = true;
                    s.error = Some(Error::Cancelled);
                }
            }
            _ => match origin {
                Origin::Daemon => self.lost(&format!("daemon sent an unexpected {kind:?}")),
                Origin::Direct(id) => self.channel_violation(id, format!("unexpected {kind:?}")),
            },
        }
    }

    /// If `corr` is a call of ours in flight on the channel `origin` names,
    /// forgets it there and returns the channel (a stream's id is no call).
    fn direct_call(&mut self, origin: Origin, corr: u64) -> Option<u32> {
        let Origin::Direct(id) = origin else { return None };
        if self.streams.contains_key(&corr) {
            return None;
        }
        self.channels.get_mut(&id).is_some_and(|ch| ch.calls.remove(&corr)).then_some(id)
    }

    /// Hands a received chunk back, by the path it came. Inline payloads need nothing.
    #[inline]
    pub fn release(&mut self, d: Descriptor, origin: Origin) {
        let Some(c) = d.chunk() else { return };
        match origin {
            Origin::Daemon => self.push_or_backlog(Descriptor::new(Kind::Release, 0, 0).with_chunk(c)),
            Origin::Direct(id) => {
                if let Some(ch) = self.channels.get_mut(&id) {
                    ch.release(c);
                    self.releases_queued = true;
                }
            }
        }
    }

    /// Puts every channel's queued releases on its return ring (see
    /// [`Direct::release`]); a channel whose return ring is broken is cut off.
    pub fn flush_releases(&mut self) {
        self.releases_queued = false;
        // Rare: allocated only when a channel broke or finished.
        let mut broken = Vec::new();
        let mut finished = Vec::new();
        for ch in self.channels.values_mut().filter(|c| !c.releases.is_empty()) {
            if let Err(e) = ch.flush_releases() {
                broken.push((ch.id, e));
            }
            // A full return ring keeps some: try again on the next round.
            self.releases_queued |= !ch.releases.is_empty();
            if ch.finished() {
                finished.push(ch.id);
            }
        }
        for (id, e) in broken {
            self.channel_violation(id, format!("return ring: {e}"));
        }
        for id in finished {
            self.reap_channel(id);
        }
    }

    /// Frees a chunk of our own pool (a loan that was never sent).
    pub fn free_own(&mut self, c: ChunkRef) {
        let _ = self.alloc.free(c);
    }

    fn push_or_backlog(&mut self, d: Descriptor) {
        if self.gone.is_some() {
            return;
        }
        if self.backlog.is_empty() {
            match self.tx.push(&d) {
                Ok(()) => {
                    self.tx.notify(&self.tx_bell);
                    return;
                }
                Err(PushError::Full(_)) => {}
                Err(PushError::Ring(e)) => {
                    self.lost(&format!("tx ring corrupt: {e}"));
                    return;
                }
            }
        }
        self.backlog.push_back(d);
    }

    fn flush_backlog(&mut self) {
        while let Some(d) = self.backlog.front() {
            match self.tx.push(d) {
                Ok(()) => {
                    self.backlog.pop_front();
                }
                Err(PushError::Full(_)) => break,
                Err(PushError::Ring(e)) => {
                    self.lost(&format!("tx ring corrupt: {e}"));
                    return;
                }
            }
        }
        self.tx.notify(&self.tx_bell);
    }

    /// Tries to push `d` on the path `origin`: the daemon's ring or a channel.
    #[inline]
    pub fn try_send_on(&mut self, origin: Origin, d: &Descriptor) -> Result<()> {
        match origin {
            Origin::Daemon => self.try_send(d),
            Origin::Direct(id) => match self.channels.get_mut(&id) {
                Some(ch) => ch.push(d),
                None => Err(Error::PeerGone),
            },
        }
    }

    /// Reads the control socket if it was not read for [`LIFE_SIGNS`]: the
    /// daemon's death shows there (its end closes), and a client that only
    /// sends (a publisher, a firer) never waits, so nothing else reads it.
    /// Without this such a client kept pushing into the ring of a daemon
    /// that was gone, and never reconnected. A coarse clock read costs
    /// about 5 ns here (`Instant::now` about 28).
    #[inline]
    fn look_for_the_daemon(&mut self) {
        let now = coarse_millis();
        if now.wrapping_sub(self.last_look) >= LIFE_SIGNS {
            self.last_look = now;
            self.pump_control();
        }
    }

    /// Arms every ring we read for parking; `false` if one is not empty
    /// (then nothing stays armed). The first half of the doorbell handshake
    /// over all our rings: the daemon and every peer ring the same eventfd.
    pub fn prepare_park(&mut self) -> std::result::Result<bool, hybus_layout::RingError> {
        if !self.rx.prepare_park()? {
            return Ok(false);
        }
        let mut ok = true;
        for ch in self.channels.values_mut() {
            if !ch.peer_fenced {
                continue;
            }
            // The return ring is armed only while someone waits for pool
            // space: a returned chunk is otherwise nothing to wake up for,
            // and when both sides sleep between messages a wake-up per
            // release doubled the round trip of chunk payloads
            // (direct/rpc-blocking 4 KiB: 16.0 µs against 8.7 µs for 8 B).
            if !ch.rx.prepare_park()? || (self.want_releases && !ch.rel_rx.prepare_park()?) {
                ok = false;
                break;
            }
        }
        if !ok {
            self.finish_park();
        }
        Ok(ok)
    }

    /// Withdraws the parking announcement on every ring.
    pub fn finish_park(&mut self) {
        self.rx.finish_park();
        for ch in self.channels.values() {
            ch.rx.finish_park();
            ch.rel_rx.finish_park();
        }
    }

    /// Tries to push `d` now. `Err(WouldBlock)` if the ring is full.
    #[inline]
    pub fn try_send(&mut self, d: &Descriptor) -> Result<()> {
        self.look_for_the_daemon();
        self.check_alive()?;
        if !self.backlog.is_empty() {
            self.flush_backlog();
            if !self.backlog.is_empty() {
                return Err(Error::WouldBlock);
            }
        }
        match self.tx.push(d) {
            Ok(()) => {
                self.tx.notify(&self.tx_bell);
                Ok(())
            }
            Err(PushError::Full(_)) => Err(Error::WouldBlock),
            Err(PushError::Ring(e)) => {
                self.lost(&format!("tx ring corrupt: {e}"));
                Err(gone(e))
            }
        }
    }

    /// Builds the payload part of a descriptor: inline if it fits, else a
    /// chunk of our pool with the bytes copied in.
    pub fn payload(&mut self, d: Descriptor, bytes: &[u8]) -> Result<Descriptor> {
        if let Some(d) = d.with_inline(bytes) {
            return Ok(d);
        }
        let c = self.alloc.alloc(bytes.len()).map_err(alloc_error)?;
        // SAFETY: `c` was just allocated to us; no one else writes it, and no
        // receiver reads it before we send it.
        let dst = unsafe { self.pool.seg.bytes_mut(c.offset, bytes.len()) };
        match dst {
            Some(dst) => dst.copy_from_slice(bytes),
            None => {
                let _ = self.alloc.free(c);
                return Err(Error::Protocol("pool chunk outside the mapping".into()));
            }
        }
        Ok(d.with_chunk(c))
    }
}

/// Frees chunk `c` of our `pool`, handed back by whoever it was lent to,
/// and takes its first cache line into this core's cache for writing.
///
/// Why the line: the reader read it last, so it sits in the reader's cache,
/// and the next payload written there (its header, at least) must take it
/// back. Taken at that write, the transfer held up the lock that publishes
/// the descriptor behind it, on the round trip; taken here, it happens
/// while this side waits (chunks come back during a wait's pump), and the
/// free stacks are LIFO, so this chunk is the next one lent. A store, not
/// a prefetch: `PREFETCHW` measured no gain, this store does (direct/rpc
/// 1 MiB p50, medians of four 300 000-round-trip runs each: 720 → 636 ns).
/// The chunk is free and only we write our pool (peers map it read-only),
/// so the byte written is nobody's data.
fn take_back(alloc: &mut PoolAllocator, pool: &View, c: ChunkRef) -> std::result::Result<(), ChunkError> {
    alloc.free(c)?;
    // SAFETY: the chunk was just freed to our allocator: no loan and no
    // sender holds it, and nobody else writes our pool.
    if let Some(first) = unsafe { pool.seg.bytes_mut(c.offset, 1) } {
        // Volatile: the compiler must not drop a store nobody reads.
        // SAFETY: `first` is one valid, exclusively held byte.
        unsafe { std::ptr::write_volatile(first.as_mut_ptr(), 0) };
    }
    Ok(())
}

/// How often, in milliseconds, a sending client reads its control socket
/// for signs of a dead daemon (see [`Core::look_for_the_daemon`]).
const LIFE_SIGNS: u64 = 50;

/// `CLOCK_MONOTONIC_COARSE` in milliseconds (a few milliseconds' resolution).
fn coarse_millis() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
        .map_or(0, |t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
}

/// Correlation ids of fires have this bit set, so that an error for a fire
/// is told apart from an error for a call.
pub(crate) const FIRE_BIT: u64 = 1 << 62;

pub(crate) fn alloc_error(e: hybus_layout::pool::AllocError) -> Error {
    match e {
        hybus_layout::pool::AllocError::TooLarge { len, max } => Error::PayloadTooLarge { len, max },
        hybus_layout::pool::AllocError::Exhausted { len } => Error::OutOfPool { len },
    }
}

/// The error an Error descriptor carries.
pub(crate) fn error_of(d: &Descriptor, payload: Option<&[u8]>) -> Error {
    Error::from_data(control::DataError::from_aux(d.aux), payload.unwrap_or(d.inline()))
}

fn geometry_of(classes: &[(u32, u32)]) -> Result<PoolGeometry> {
    let c: Vec<SizeClass> = classes.iter().map(|&(chunk_size, count)| SizeClass { chunk_size, count }).collect();
    PoolGeometry::new(&c).map_err(|e| Error::Protocol(format!("pool geometry: {e}")))
}
