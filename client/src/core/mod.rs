//! The connection's state behind the lock: rings, pool, inboxes, and the
//! pumps that move descriptors from the rings into them.
//!
//! By plane, one `impl Core` each:
//! * here: the connection (attach, reattach), the control socket and its
//!   events, sending (rings, backlog, releases, our pool), parking;
//! * [`channels`]: the direct channels: the path of a new exchange, their
//!   rings drained, a spinning wait's hot poll, a channel's end;
//! * [`dispatch`]: the daemon's ring drained, and every descriptor that
//!   arrives put where its waiter looks (call table, inboxes, streams,
//!   topics) and taken from there.

use hybus_layout::idhash::{FewMap, FewSet, IdMap, IdSet};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use hybus_layout::channel::Side;
use hybus_layout::control::{self, ClientMessage, DaemonMessage, Event, Reply, Request};
use hybus_layout::header::SegmentKind;
use hybus_layout::pool::{ChunkError, PoolAllocator, PoolGeometry, SizeClass};
use hybus_layout::{ChunkRef, Consumer, Descriptor, Kind, Producer, PushError};
use hybus_os::segment::{Access, EventFd, Segment};
use hybus_os::socket::{ControlSocket, RecvError};

use crate::direct::Direct;
use crate::error::{Error, Result};
use crate::BusEvent;

mod channels;
mod dispatch;

/// A read-only view of some client's pool (or our own, read-write).
#[derive(Debug)]
pub(crate) struct View {
    pub seg: Segment,
    pub geometry: PoolGeometry,
}

impl View {
    /// Checks a received chunk of this (peer's) pool before its bytes are
    /// handed out: the pool's header must still be what the daemon made.
    ///
    /// Why on every chunk, not once at mapping: the header is memory its
    /// owner can write at any time, so a check made once proves nothing
    /// about now; and a pool found corrupt must fail that peer's payloads,
    /// one by one, not the connection. A few loads of one line that nobody
    /// writes in normal operation (so it stays in our cache).
    #[inline]
    pub fn check_header(&self) -> std::result::Result<(), String> {
        match self.seg.header().validate(SegmentKind::Pool, self.seg.len()) {
            Ok(_) => Ok(()),
            Err(e) => Err(cold_header_error(e)),
        }
    }
}

#[cold]
fn cold_header_error(e: hybus_layout::header::HeaderError) -> String {
    format!("its header no longer validates: {e}")
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
    /// Pools whose view came but did not validate, with why: their
    /// payloads fail one by one ([`Error::CorruptPool`]), as a view that
    /// goes bad later does. Retired with the pool, like `views`.
    pub bad_views: FewMap<u32, String>,
    /// Pools we told the daemon are corrupt (once each per connection).
    pub reported: FewSet<u32>,
    pub next_id: u64,
    /// Replies to the requests in `awaited`, until their waiter takes them.
    pub replies: IdMap<u64, std::result::Result<Reply, control::ErrorReply>>,
    /// Control requests a caller waits for the reply to
    /// ([`send_awaited`](Self::send_awaited)). A reply to any other
    /// request (`CloseDirect` sent and forgotten, one that came after its
    /// waiter gave up) is dropped as it comes: kept, one was left behind
    /// for every channel a peer broke.
    pub awaited: IdSet<u64>,
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
    /// Chunks of our pool the application holds as unsent [`Loan`](crate::Loan)s,
    /// each with the connection epoch it was lent on: a reconnect that
    /// keeps the pool must not reclaim them, since the application may
    /// still be writing them; and a loan sent too late (a reconnect came
    /// between its check and its push) is known by it as still ours to
    /// free (see [`free_unsent`](Self::free_unsent)).
    pub loaned: FewMap<u64, u64>,
    /// Instance ids from before a daemon restart → the ids now (direct requests still carry the old ones).
    pub instance_alias: FewMap<u32, u32>,
    /// Our instances that unregistered on this connection: what still
    /// comes for them on a direct channel is refused (see [`retire`](Self::retire)).
    pub retired: FewSet<u32>,
    /// Our instances the daemon said are drained (nothing in flight, no
    /// request to come): their serving loops end (see `Service::serve`).
    pub drained: FewSet<u32>,
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
    /// Topics (by route) whose subscription the daemon ended, and why: the
    /// subscription's next read fails with that once its inbox is empty.
    pub revoked_topics: IdMap<u32, String>,
    /// Instances the daemon unregistered, and why: their next read fails.
    pub revoked_instances: IdMap<u32, String>,
    /// Events dropped unread (see [`EVENT_QUEUE`]).
    pub dropped_events: u64,
    /// Our instances the daemon asked to drain and exit (it started them
    /// on demand and they were idle), most recent last; a few at most.
    pub drain_asked: Vec<u32>,
    /// What [`pump_hot`](Self::pump_hot) took off a ring for the wait that
    /// polled it; that wait's check takes it in the same critical section.
    pub taken: Option<(Descriptor, Origin)>,
    /// Async waiters parked on the rings: the first arms them, the last
    /// to wake disarms them (one waking on its own timer must not disarm
    /// them under the others). Also the loop-driven waiters of `external`.
    pub async_parked: u32,
    /// Subscriptions being made: a publication for a topic without an
    /// inbox is kept meanwhile (see `Bus::subscribe_topic`).
    pub subscribing: u32,
    /// Direct calls until the next one is timed (see [`send_call`](Self::send_call)).
    rtt_countdown: u32,
    /// The direct call being timed, if any.
    timed: Option<channels::Timed>,
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
    /// How many parties spin on how many CPUs, as the daemon last said
    /// (only to a client whose idle strategy spins; see [`crate::idle`]).
    pub crowding: Option<control::Crowding>,
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
            bad_views: FewMap::new(),
            reported: FewSet::new(),
            next_id: 1,
            replies: IdMap::default(),
            awaited: IdSet::default(),
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
            loaned: FewMap::new(),
            instance_alias: FewMap::new(),
            retired: FewSet::new(),
            drained: FewSet::new(),
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
            revoked_topics: IdMap::default(),
            revoked_instances: IdMap::default(),
            taken: None,
            async_parked: 0,
            subscribing: 0,
            rtt_countdown: 1,
            timed: None,
            releases_queued: false,
            dropped_events: 0,
            drain_asked: Vec::new(),
            retiring: Vec::new(),
            retire_rounds: 0,
            last_look: coarse_millis(),
            crowding: None,
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
            // Their chunks are of the old pool, which their loans keep mapped.
            self.loaned = FewMap::new();
        }
        // Chunks lent through the old daemon never come back: reclaim every
        // chunk that no channel peer and no unsent loan holds. (A receiver
        // that still reads such a payload may see it overwritten: the cost
        // of a daemon restart for brokered payloads in flight.)
        let keep: IdSet<u64> =
            self.channels.values().flat_map(|c| c.lent.iter().copied()).chain(self.loaned.keys().copied()).collect();
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
        self.bad_views.clear();
        self.reported = FewSet::new();
        self.retiring.clear();
        self.replies.clear();
        self.awaited.clear();
        self.backlog.clear();
        self.topics.clear();
        // Ids of the old connection (a subscription or registration made
        // again is asked for anew, under the policy of the day).
        self.revoked_topics.clear();
        self.revoked_instances.clear();
        self.gone = None;
        self.epoch += 1;
        let gone = Descriptor::new(Kind::Error, 0, 0).with_aux(control::DataError::PeerGone as u64);
        // (Calls on direct channels are not in the table: they go on.) An
        // answer the old daemon brought and nobody took yet goes too if its
        // payload is in a chunk: that chunk was lent through the old daemon,
        // whose pools are unmapped now, and it has no one to go back to.
        for (corr, slot) in self.calls.iter_mut() {
            let lost = match slot {
                None => true,
                Some((d, Origin::Daemon)) => d.chunk().is_some(),
                Some(_) => false,
            };
            if lost {
                *slot = Some((Descriptor { correlation: *corr, ..gone }, Origin::Daemon));
            }
        }
        for s in self.streams.values_mut().filter(|s| s.origin == Origin::Daemon) {
            s.ended = true;
            s.error.get_or_insert(Error::BusGone("the daemon restarted".into()));
            // Their chunks were lent through the old daemon: nothing to read
            // them through now, and no one to give them back to.
            s.items.clear();
        }
        self.inboxes.retain(|_, q| {
            q.retain(|(_, o)| *o != Origin::Daemon);
            !q.is_empty()
        });
        self.served.retain(|(o, _), _| *o != Origin::Daemon);
        self.cancelled.retain(|(o, _)| *o != Origin::Daemon);
        // The new daemon numbers instances afresh.
        self.retired = FewSet::new();
        self.drained = FewSet::new();
        Ok(())
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

    /// Sends a control request whose reply a caller waits for: it is kept
    /// in [`replies`](Self::replies) until [`forget_reply`](Self::forget_reply).
    pub fn send_awaited(&mut self, request: Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<u64> {
        let id = self.send_control_fds(request, fds)?;
        self.awaited.insert(id);
        Ok(id)
    }

    /// The waiter for request `id` is done (answered or given up): a reply
    /// still to come is dropped.
    pub fn forget_reply(&mut self, id: u64) {
        self.awaited.remove(&id);
        self.replies.remove(&id);
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
                    if self.awaited.remove(&id) {
                        self.replies.insert(id, result);
                    }
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
                    // The pool's owner (or someone able to write it) broke
                    // it: that peer's payloads fail, not our connection.
                    Err(e) => {
                        self.bad_views.insert(pool, e.to_string());
                    }
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
            Event::Drained { instance } => {
                self.drained.insert(instance);
                // The serving loop may sleep on the doorbell while another
                // thread (a control request's wait) read this event: ring
                // it, so that the loop looks again and ends.
                hybus_layout::doorbell::Wake::wake(&*self.rx_bell);
            }
            Event::ServiceDown { name, route, instance, pid } => {
                self.push_event(BusEvent::ServiceDown { name, route, instance, pid })
            }
            Event::Crowding(c) => self.crowding = Some(c),
            Event::Traffic { kind, from, to, route, correlation, len, from_pid, to_pid } => {
                self.push_event(BusEvent::Traffic { kind, from, to, route, correlation, len, from_pid, to_pid })
            }
            Event::DrainAsked { instance, reason } => {
                // Instance ids are not reused while the daemon runs: a short list suffices.
                if self.drain_asked.len() >= 64 {
                    self.drain_asked.remove(0);
                }
                self.drain_asked.push(instance);
                self.push_event(BusEvent::DrainAsked { instance, reason })
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
            Event::Unsubscribed { route, reason } => {
                self.revoked_topics.insert(route, reason.clone());
                self.push_event(BusEvent::SubscriptionEnded { route, reason });
            }
            Event::MonitorStopped { reason } => self.push_event(BusEvent::MonitorStopped { reason }),
            Event::Unregistered { instance, route, reason } => {
                self.revoked_instances.insert(instance, reason.clone());
                self.push_event(BusEvent::Unregistered { instance, route, reason });
            }
        }
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

    /// Frees the chunk of `d`, a payload of ours that was not sent, taken
    /// on connection `epoch` (`None`: on this one, under this lock): not if
    /// a reconnect came since, which reclaimed it or replaced the pool —
    /// unless it is a loan of that epoch that the reconnect kept (the pool
    /// was adopted): such a loan, refused at its push, used to keep its
    /// chunk for good. (A chunk the reconnect reclaimed and lent again is
    /// in `loaned` with the newer epoch, so it is never taken for it.)
    pub fn free_unsent(&mut self, d: &Descriptor, epoch: Option<u64>) {
        let Some(c) = d.chunk() else { return };
        let ours = match epoch {
            None => true,
            Some(e) => e == self.epoch || self.loaned.get(&c.offset) == Some(&e),
        };
        if ours {
            self.free_own(c);
        }
    }

    /// Frees a chunk of our own pool (a loan that was never sent).
    pub fn free_own(&mut self, c: ChunkRef) {
        if !self.loaned.is_empty() {
            self.loaned.remove(&c.offset);
        }
        let _ = self.alloc.free(c);
    }

    /// Tells the server of exchange `corr` that we gave up on it. Through
    /// the daemon it waits in the backlog if the ring is full (it goes
    /// with our next send), where a drop or a deadline used to lose it
    /// and leave the server working for nobody; on a channel whose ring
    /// is full the server is not reading anyway, and the answer it may
    /// send is dropped here.
    pub fn send_cancel(&mut self, origin: Origin, route: u32, corr: u64) {
        let d = Descriptor::new(Kind::Cancel, route, corr);
        match origin {
            Origin::Daemon => self.push_or_backlog(d),
            Origin::Direct(_) => {
                let _ = self.try_send_on(origin, &d);
            }
        }
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
                Some(ch) => {
                    let r = ch.push(d);
                    if r.is_ok() {
                        self.unloan(d);
                    }
                    r
                }
                None => Err(Error::PeerGone),
            },
        }
    }

    /// `d` went out: if it carries a [`Loan`](crate::Loan)'s chunk, that
    /// chunk is no longer the application's (see [`loaned`](Self::loaned)).
    #[inline]
    pub(crate) fn unloan(&mut self, d: &Descriptor) {
        if !self.loaned.is_empty() && d.kind != Kind::Release as u8 {
            if let Some(c) = d.chunk() {
                self.loaned.remove(&c.offset);
            }
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
    ///
    /// Several waiters may sleep on the rings at once (the blocking one on
    /// the doorbell, async tasks and loop-driven waits). A look that finds
    /// data withdraws the announcement on that ring; while others sleep it
    /// is made again at once, and the doorbell rung, since what came in
    /// meanwhile rang nobody and may be theirs.
    pub fn prepare_park(&mut self) -> std::result::Result<bool, hybus_layout::RingError> {
        let ok = self.arm_rings()?;
        if !ok {
            if self.sleepers() {
                self.stay_parked();
                hybus_layout::doorbell::Wake::wake(&*self.rx_bell);
            } else {
                self.finish_park();
            }
        }
        Ok(ok)
    }

    /// Whether some waiter sleeps on the rings.
    pub fn sleepers(&self) -> bool {
        self.parked_waiter || self.async_parked > 0
    }

    /// A waiter woke: the rings are disarmed once no other one sleeps on
    /// them. Why not at once: a waiter woken by its own timer (a blocking
    /// wait with a short timeout, a ring-room poll) disarmed them under
    /// async tasks that slept on, and those then slept through their
    /// messages (no producer rings a ring nobody is parked on).
    pub fn leave_park(&mut self) {
        if !self.sleepers() {
            self.finish_park();
        }
    }

    /// Announces parking again on every ring [`prepare_park`](Self::prepare_park) arms.
    fn stay_parked(&self) {
        self.rx.stay_parked();
        for ch in self.channels.values().filter(|c| c.peer_fenced) {
            ch.rx.stay_parked();
            if self.want_releases {
                ch.rel_rx.stay_parked();
            }
        }
    }

    /// Arms every ring we read; `false` at the first that is not empty.
    fn arm_rings(&mut self) -> std::result::Result<bool, hybus_layout::RingError> {
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
        Ok(ok)
    }

    /// Withdraws the parking announcement on every ring.
    fn finish_park(&mut self) {
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
                self.unloan(d);
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
    Error::from_aux(d.aux, payload.unwrap_or(d.inline()))
}

fn geometry_of(classes: &[(u32, u32)]) -> Result<PoolGeometry> {
    let c: Vec<SizeClass> = classes.iter().map(|&(chunk_size, count)| SizeClass { chunk_size, count }).collect();
    PoolGeometry::new(&c).map_err(|e| Error::Protocol(format!("pool geometry: {e}")))
}
