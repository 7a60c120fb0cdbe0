//! The data plane: descriptors off each client's ring, checked, forwarded.
//!
//! Routing is by numeric id (route, instance, exchange) through hash maps:
//! O(1) per descriptor whatever the number of services and clients. No
//! payload is touched: a chunk reference is checked against the sender's
//! pool geometry and the daemon's loan table, and the receiver reads the
//! bytes through its read-only view of the sender's pool, which it gets on
//! the control socket before the first descriptor that needs it.
//!
//! Anything a client could not have sent legally is a [`Violation`]: the
//! client is disconnected and everyone else goes on.

use crate::ratelog::LogKind;
use std::fmt;

use hybus_layout::control::{DaemonMessage, DataError, Event};
use hybus_layout::descriptor::{flags, DescriptorError, STREAM_CHANNEL};
use hybus_layout::pool::ChunkError;
use hybus_layout::{ChunkRef, Descriptor, Kind, RingError};

use crate::chunks::Released;
use crate::config::{Action, SlowPolicy};
use crate::daemon::Daemon;
use crate::exchange::{Credits, Exchange, Refused};
use crate::session::Delivery;

/// A descriptor no honest client sends.
#[derive(Debug)]
pub enum Violation {
    /// The ring's indices are corrupt.
    Ring(RingError),
    /// The descriptor itself is malformed.
    Descriptor(DescriptorError),
    /// A chunk reference lies outside the pool or overruns its chunk.
    Chunk(ChunkError),
    /// A chunk of another client's pool was sent as if it were one's own.
    ForeignChunk {
        /// The pool named.
        pool: u32,
    },
    /// A chunk the sender does not hold was sent or released.
    NotHeld,
    /// The flags say server side on a descriptor that cannot be, or the reverse.
    WrongSide(Kind),
    /// A correlation id reused while its exchange is open.
    DuplicateCorrelation(u64),
    /// A stream item beyond the credits the receiver granted.
    CreditOverrun,
    /// An answer or stream operation on an exchange of another kind or owner.
    NotYours(u64),
    /// A route id the daemon never handed out.
    BadRoute(u32),
    /// The client's own pool no longer validates (its header was
    /// overwritten; only its writer can, see `Segment::restrict`).
    CorruptPool(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => e.fmt(f),
            Self::Descriptor(e) => write!(f, "bad descriptor: {e}"),
            Self::Chunk(e) => write!(f, "bad chunk reference: {e}"),
            Self::ForeignChunk { pool } => {
                write!(f, "sent a chunk of pool {pool}, which is not its own")
            }
            Self::NotHeld => f.write_str("sent or released a chunk it does not hold"),
            Self::WrongSide(k) => write!(f, "{k:?} descriptor with the wrong side flag"),
            Self::DuplicateCorrelation(c) => write!(f, "correlation id {c} is already in flight"),
            Self::CreditOverrun => f.write_str("sent a stream item without credit"),
            Self::NotYours(c) => write!(f, "exchange {c} is not its own or not of that kind"),
            Self::BadRoute(r) => write!(f, "route {r} was never handed out"),
            Self::CorruptPool(e) => write!(f, "its pool is corrupt: {e}"),
        }
    }
}

impl From<RingError> for Violation {
    fn from(e: RingError) -> Self {
        Violation::Ring(e)
    }
}
impl From<DescriptorError> for Violation {
    fn from(e: DescriptorError) -> Self {
        Violation::Descriptor(e)
    }
}
impl From<ChunkError> for Violation {
    fn from(e: ChunkError) -> Self {
        Violation::Chunk(e)
    }
}

/// A checked chunk: the reference and its index in the owner's pool.
type Chunk = Option<(ChunkRef, u32)>;

fn payload_len(d: &Descriptor) -> u64 {
    d.chunk().map_or(d.inline_len as u64, |c| c.len as u64)
}

const BATCH: usize = 32;

impl Daemon {
    /// Drains the rings of active clients once. Returns whether anything moved.
    pub(crate) fn poll_rings(&mut self) -> bool {
        let mut worked = false;
        // Reused: this runs on every turn of the busy loop.
        let mut buf = std::mem::take(&mut self.dbuf);
        buf.resize(BATCH, Descriptor::new(Kind::Fence, 0, 0));
        let ids = std::mem::take(&mut self.scratch);
        let mut ids = ids;
        ids.clear();
        ids.extend_from_slice(&self.active);
        for &id in &ids {
            let Some(n) = self.pop_from(id, &mut buf) else {
                continue;
            };
            worked |= n > 0;
            for d in &buf[..n] {
                if let Err(v) = self.route(id, *d) {
                    self.violation(id, &v);
                    break;
                }
            }
        }
        self.scratch = ids;
        self.dbuf = buf;
        worked
    }

    /// Routes everything client `id` has pushed so far. Called before its
    /// control messages are handled and before it is dropped after closing
    /// its socket: the client wrote its ring before it wrote the socket,
    /// so what the daemon does must follow the same order (a reply pushed
    /// before an Unregister is delivered, not failed as "peer gone").
    pub(crate) fn drain_client(&mut self, id: u32) {
        let mut buf = [Descriptor::new(Kind::Fence, 0, 0); BATCH];
        // At most one ring's worth: what was pushed before the control
        // message is in there. Bounded by the largest ring any ring may
        // be, a client refilling its ring as fast as it is drained kept
        // the event loop here for a million descriptors a control message.
        let Some(capacity) = self.sessions.get(&id).and_then(|s| s.data.as_ref()).map(|d| d.tx.capacity()) else {
            return;
        };
        for _ in 0..(capacity as usize).div_ceil(BATCH) {
            let Some(n) = self.pop_from(id, &mut buf) else {
                return;
            };
            for d in &buf[..n] {
                if let Err(v) = self.route(id, *d) {
                    self.violation(id, &v);
                    return;
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    /// Pops up to `buf.len()` descriptors from client `id`'s ring; `None` if
    /// it has no ring, or broke it (it is then disconnected).
    #[inline]
    fn pop_from(&mut self, id: u32, buf: &mut [Descriptor]) -> Option<usize> {
        let popped = self.sessions.get_mut(&id)?.data.as_mut()?.tx.pop_batch(buf);
        match popped {
            Ok(n) => Some(n),
            Err(e) => {
                self.violation(id, &Violation::Ring(e));
                None
            }
        }
    }

    /// Disconnects a client that broke the protocol.
    pub(crate) fn violation(&mut self, id: u32, v: &Violation) {
        self.violations += 1;
        self.cut_off(id, LogKind::Violation, &format!("protocol violation: {v}"));
    }

    /// Moves queued descriptors onto rings and rings the doorbells of clients we pushed to.
    pub(crate) fn flush_clients(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        let mut hints = Vec::new();
        let mut broken = Vec::new();
        touched.retain(|id| {
            let Some(d) = self.sessions.get_mut(id).and_then(|s| s.data.as_mut()) else {
                return false;
            };
            if let Err(e) = d.flush_queue() {
                // Its queue would never drain: cut it off like any ring violation.
                broken.push((*id, e));
                return false;
            }
            d.ring_bell();
            let keep = !d.queue.is_empty();
            d.listed = keep;
            if !d.gone_views.is_empty() {
                hints.push(*id);
            }
            keep
        });
        self.touched = touched;
        for id in hints {
            self.tell_pools_gone(id);
        }
        for (id, e) in broken {
            self.violation(id, &Violation::Ring(e));
        }
    }

    /// Hands `d` to client `to`, first giving it a view of the chunk's pool if it has none.
    fn forward(&mut self, to: u32, d: Descriptor, limit: usize) -> Option<Delivery> {
        if let Some(c) = d.chunk() {
            self.ensure_view(to, c.segment)?;
        }
        let s = self.sessions.get_mut(&to)?;
        let data = s.data.as_mut()?;
        let r = match data.deliver(d, limit) {
            Ok(Delivery::Overflow) => {
                let why =
                    format!("it left {} descriptors unread: it does not read its ring", crate::session::QUEUE_CAP);
                self.cut_off(to, LogKind::Refused, &why);
                return None;
            }
            Ok(r) => r,
            Err(e) => {
                self.cut_off(to, LogKind::Violation, &format!("protocol violation on its ring: {e}"));
                return None;
            }
        };
        if !data.listed {
            data.listed = true;
            self.touched.push(to);
        }
        Some(r)
    }

    fn ensure_view(&mut self, to: u32, pool: u32) -> Option<()> {
        // A client's own pool (a chunk coming home) needs no view: it maps it read-write.
        if pool == to || self.sessions.get(&to)?.data.as_ref()?.views.contains(&pool) {
            return Some(());
        }
        let owner = self.sessions.get(&pool)?.data.as_ref()?;
        let fd = match owner.pool.read_only_fd() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::error!("cannot make a read-only view of pool {pool}: {e}");
                return None;
            }
        };
        let classes = owner.geometry.classes().map(|c| (c.chunk_size, c.count)).collect();
        use std::os::fd::AsFd;
        self.send(to, &DaemonMessage::Event(Event::PoolView { pool, classes }), &[fd.as_fd()]);
        self.sessions.get_mut(&to)?.data.as_mut()?.views.insert(pool);
        Some(())
    }

    /// Delivers a descriptor the daemon made itself (never refused).
    pub(crate) fn deliver_raw(&mut self, to: u32, d: Descriptor) {
        self.forward(to, d, usize::MAX);
    }

    /// Gives a chunk back to its owner.
    pub(crate) fn return_chunk(&mut self, c: ChunkRef) {
        let d = Descriptor::new(Kind::Release, 0, 0).with_chunk(c);
        self.forward(c.segment, d, usize::MAX);
    }

    fn error_to(&mut self, to: u32, route: u32, corr: u64, code: DataError, server_side: bool) {
        let mut d = Descriptor::new(Kind::Error, route, corr).with_aux(code as u64);
        if server_side {
            d.flags |= flags::SERVER;
        }
        self.forward(to, d, usize::MAX);
    }

    /// Routes `d` from client `from` as if it had just come off its ring
    /// (a request held for an activation).
    pub(crate) fn route_descriptor(&mut self, from: u32, d: Descriptor) -> Result<(), Violation> {
        self.route(from, d)
    }

    fn route(&mut self, from: u32, d: Descriptor) -> Result<(), Violation> {
        let kind = d.check()?;
        // Requests and fires are tapped once their instance is picked.
        if self.monitors > 0 && !matches!(kind, Kind::Request | Kind::StreamOpen | Kind::Fire) {
            let to = self.receiver_of(from, &d, kind);
            self.monitor(from, &d, to);
        }
        match kind {
            Kind::Release => return self.release(from, d),
            Kind::Fence => {
                return if self.forward_fence(from, d) { Ok(()) } else { Err(Violation::NotYours(d.aux)) };
            }
            _ => {}
        }
        let chunk = match d.chunk() {
            Some(c) => {
                if c.segment != from {
                    return Err(Violation::ForeignChunk { pool: c.segment });
                }
                let geometry =
                    &self.sessions.get(&from).and_then(|s| s.data.as_ref()).ok_or(Violation::NotHeld)?.geometry;
                let idx = geometry.check(c)?;
                if self.chunks.is_lent(from, idx) {
                    return Err(Violation::NotHeld);
                }
                Some((c, idx))
            }
            None => None,
        };
        let server_side = d.flags & flags::SERVER != 0;
        let r = match kind {
            Kind::Request | Kind::StreamOpen if !server_side => self.open_exchange(from, d, kind, chunk),
            Kind::Fire if !server_side => self.fire(from, d, chunk),
            Kind::Publish if !server_side => self.publish(from, d, chunk),
            Kind::Response | Kind::Error if server_side => self.answer(from, d, chunk),
            Kind::StreamItem | Kind::Credit | Kind::StreamEnd | Kind::Cancel => {
                self.stream_op(from, d, kind, chunk, server_side)
            }
            k => Err(Violation::WrongSide(k)),
        };
        if r.is_err() {
            if let Some((c, _)) = chunk {
                self.return_chunk(c);
            }
        }
        r
    }

    /// Delivers `d` (carrying `chunk`) to `to`; lends the chunk on success and
    /// returns it to the sender on failure. Returns whether it was delivered.
    fn hand_over(&mut self, to: u32, d: Descriptor, chunk: Chunk, limit: usize) -> bool {
        let ok = self.forward(to, d, limit) == Some(Delivery::Queued);
        if let Some((c, idx)) = chunk {
            if ok {
                self.chunks.lend(idx, c, vec![to]);
            } else {
                self.return_chunk(c);
            }
        }
        ok
    }

    /// Whether client `from` may send to `route` as `action` allows (a
    /// call or fire, a publication). The control socket checks the policy
    /// when it hands out a route; this checks what arrives on the data
    /// plane, where any route id can be written. Refused sends are answered
    /// with [`DataError::AccessDenied`], not cut off: the policy may have
    /// changed since the route was handed out.
    ///
    /// Asked once per client, route and action: the answer is kept in the
    /// session ([`permits`](crate::session::Session::permits)); a trusted
    /// client (the usual case: the bus's owner or root) is not asked at all.
    fn permitted(&mut self, from: u32, route: u32, action: Action) -> bool {
        let Some(s) = self.sessions.get_mut(&from) else {
            return false;
        };
        if s.trusted {
            return true;
        }
        if let Some(&known) = s.permits.get(&(route, action)) {
            return known;
        }
        let name = self.registry.route(route).map_or("", |r| r.name.as_str());
        let ok = self.config.policy.allows(s.creds.who(), self.owner, action, name);
        if !ok && self.ratelog.admit(LogKind::Refused, s.creds.uid, std::time::Instant::now()) {
            tracing::info!(client = from, uid = s.creds.uid, route, name, "refused a send: policy ({action:?})");
        }
        s.permits.insert((route, action), ok);
        ok
    }

    /// Refuses a send the policy does not allow (see [`permitted`](Self::permitted)):
    /// its chunk goes back, the sender gets [`DataError::AccessDenied`].
    fn refuse(&mut self, from: u32, d: &Descriptor, chunk: Chunk) {
        if let Some((c, _)) = chunk {
            self.return_chunk(c);
        }
        self.error_to(from, d.route, d.correlation, DataError::AccessDenied, false);
    }

    fn open_exchange(&mut self, from: u32, d: Descriptor, kind: Kind, chunk: Chunk) -> Result<(), Violation> {
        let route = d.route;
        let limit = self.config.limits.queue_per_client as usize;
        // Route ids are never freed: one the registry does not know was never handed out.
        if self.registry.route(route).is_none() {
            return Err(Violation::BadRoute(route));
        }
        if !self.permitted(from, route, Action::Call) {
            self.refuse(from, &d, chunk);
            return Ok(());
        }
        let Some(instance) = self.registry.pick(route) else {
            if self.activation_hold(from, d, chunk.map(|(c, _)| c)) {
                return Ok(());
            }
            if let Some((c, _)) = chunk {
                self.return_chunk(c);
            }
            self.error_to(from, route, d.correlation, DataError::NoInstance, false);
            return Ok(());
        };
        let server = self.registry.instance(instance).map_or(0, |i| i.client);
        if self.monitors > 0 {
            self.monitor(from, &d, server);
        }
        if self.config.promotion.enabled {
            self.count_pair(from, route);
        }
        let stream = (kind == Kind::StreamOpen).then_some(Credits {
            to_caller: d.aux & 0xffff_ffff,
            to_server: 0,
            server_ended: false,
            caller_ended: d.aux & STREAM_CHANNEL == 0,
        });
        let ex = Exchange {
            caller: from,
            caller_uid: self.sessions.get(&from).map_or(u32::MAX, |s| s.creds.uid),
            caller_corr: d.correlation,
            route,
            server,
            instance,
            stream,
            opened: std::time::Instant::now(),
        };
        let id = match self.exchanges.open(ex, self.config.limits.in_flight_per_uid) {
            Ok(id) => id,
            Err(Refused::Duplicate) => return Err(Violation::DuplicateCorrelation(d.correlation)),
            Err(Refused::Quota) => {
                if let Some((c, _)) = chunk {
                    self.return_chunk(c);
                }
                tracing::debug!(client = from, uid = ex.caller_uid, "refused a request: in_flight_per_uid reached");
                self.error_to(from, route, d.correlation, DataError::QuotaExceeded, false);
                return Ok(());
            }
        };
        let mut out = d;
        out.route = instance;
        out.correlation = id;
        out.flags |= flags::SERVER;
        if self.hand_over(server, out, chunk, limit) {
            if let Some(i) = self.registry.instance_mut(instance) {
                i.outstanding += 1;
                i.stats.messages_in += 1;
                i.stats.bytes_in += payload_len(&d);
            }
        } else {
            self.exchanges.close(id);
            if let Some(i) = self.registry.instance_mut(instance) {
                i.stats.errors += 1;
            }
            self.error_to(from, route, d.correlation, DataError::QueueFull, false);
        }
        Ok(())
    }

    fn fire(&mut self, from: u32, d: Descriptor, chunk: Chunk) -> Result<(), Violation> {
        let limit = self.config.limits.queue_per_client as usize;
        if self.registry.route(d.route).is_none() {
            return Err(Violation::BadRoute(d.route));
        }
        if !self.permitted(from, d.route, Action::Call) {
            self.refuse(from, &d, chunk);
            return Ok(());
        }
        let Some(instance) = self.registry.pick(d.route) else {
            if self.activation_hold(from, d, chunk.map(|(c, _)| c)) {
                return Ok(());
            }
            if let Some((c, _)) = chunk {
                self.return_chunk(c);
            }
            self.error_to(from, d.route, d.correlation, DataError::NoInstance, false);
            return Ok(());
        };
        let server = self.registry.instance(instance).map_or(0, |i| i.client);
        if self.monitors > 0 {
            self.monitor(from, &d, server);
        }
        if self.config.promotion.enabled {
            self.count_pair(from, d.route);
        }
        let mut out = d;
        out.route = instance;
        if self.hand_over(server, out, chunk, limit) {
            if let Some(i) = self.registry.instance_mut(instance) {
                i.stats.messages_in += 1;
                i.stats.bytes_in += payload_len(&d);
            }
        } else {
            self.error_to(from, d.route, d.correlation, DataError::QueueFull, false);
        }
        Ok(())
    }

    fn publish(&mut self, from: u32, d: Descriptor, chunk: Chunk) -> Result<(), Violation> {
        let Some(r) = self.registry.route(d.route) else {
            return Err(Violation::BadRoute(d.route));
        };
        // Taken, not cloned: `forward` needs `self`, and a clone was an
        // allocation per publication.
        let mut subs = std::mem::take(&mut self.fanout);
        subs.clear();
        subs.extend_from_slice(&r.subscribers);
        let (slow, limit) = self.config.topic_rule(&r.name);
        if !self.permitted(from, d.route, Action::Publish) {
            self.fanout = subs;
            self.refuse(from, &d, chunk);
            return Ok(());
        }
        // The publisher, as the daemon knows it, whatever the sender wrote:
        // a relay tells its own publications by it, inline ones too.
        let d = d.with_aux(u64::from(from));
        // Only a chunk has holders to record.
        let mut holders = if chunk.is_some() { Vec::with_capacity(subs.len()) } else { Vec::new() };
        let mut too_slow = Vec::new();
        for &sub in &subs {
            let queued = match self.forward(sub, d, limit) {
                Some(Delivery::Queued) => true,
                Some(Delivery::Full) if slow == SlowPolicy::Disconnect => {
                    too_slow.push(sub);
                    false
                }
                Some(Delivery::Full) => {
                    // Slow subscriber: drop its oldest queued publication to
                    // make room (the topic's drop-oldest policy); the others
                    // never wait for it.
                    match self.drop_oldest_publication(sub) {
                        Some(old) => {
                            if let Some(c) = old.chunk() {
                                self.release_as(sub, c);
                            }
                            self.forward(sub, d, limit) == Some(Delivery::Queued)
                        }
                        None => false,
                    }
                }
                Some(Delivery::Overflow) | None => false,
            };
            if queued && chunk.is_some() {
                holders.push(sub);
            }
        }
        if let Some((c, idx)) = chunk {
            // A forward may disconnect clients (a broken ring, an overflow),
            // and a disconnect may cascade to a subscriber queued above: a
            // dead holder would keep the chunk from its publisher for good.
            holders.retain(|h| self.sessions.contains_key(h));
            if holders.is_empty() {
                self.return_chunk(c);
            } else {
                // The loan keeps the list; the charges walk a copy in the
                // reused one (a charge may release, which needs the loan).
                subs.clear();
                subs.extend_from_slice(&holders);
                self.chunks.lend(idx, c, holders);
                for &h in &subs {
                    self.charge(h, c, idx, slow == SlowPolicy::Disconnect);
                }
            }
        }
        self.fanout = subs;
        for sub in too_slow {
            let name = self.registry.route(d.route).map(|r| r.name.clone()).unwrap_or_default();
            self.drops += 1;
            self.cut_off(
                sub,
                LogKind::Refused,
                &format!("too slow for topic {name:?}: {limit} descriptors wait for it (policy: disconnect)"),
            );
        }
        Ok(())
    }

    fn drop_oldest_publication(&mut self, sub: u32) -> Option<Descriptor> {
        let data = self.sessions.get_mut(&sub)?.data.as_mut()?;
        let pos = data.queue.iter().position(|q| q.kind == Kind::Publish as u8)?;
        data.drops += 1;
        self.drops += 1;
        data.queue.remove(pos)
    }

    fn answer(&mut self, from: u32, d: Descriptor, chunk: Chunk) -> Result<(), Violation> {
        let Some(ex) = self.exchanges.get_mut(d.correlation).copied() else {
            // Stale: the caller cancelled or died. Not a violation.
            if let Some((c, _)) = chunk {
                self.return_chunk(c);
            }
            return Ok(());
        };
        if ex.server != from {
            return Err(Violation::NotYours(d.correlation));
        }
        if ex.stream.is_some() && d.kind == Kind::Response as u8 {
            return Err(Violation::NotYours(d.correlation));
        }
        self.exchanges.close(d.correlation);
        if let Some(i) = self.registry.instance_mut(ex.instance) {
            i.stats.messages_out += 1;
            i.stats.bytes_out += payload_len(&d);
            let _ = i.stats.latency.record(ex.opened.elapsed().as_nanos() as u64);
        }
        self.one_less(ex.instance);
        let mut out = d;
        out.route = ex.route;
        out.correlation = ex.caller_corr;
        out.flags &= !flags::SERVER;
        if self.hand_over(ex.caller, out, chunk, usize::MAX) {
            if let Some((c, idx)) = chunk {
                self.charge(ex.caller, c, idx, false);
            }
        }
        Ok(())
    }

    /// Charges chunk `c` (index `idx`), just lent to `holder`, to its uid's
    /// share of that class of the owner's pool ([`crate::holds`]); past the
    /// share the uid's oldest such chunk is taken back, or its holder cut off.
    fn charge(&mut self, holder: u32, c: ChunkRef, idx: u32, strict: bool) {
        let Some(uid) = self.sessions.get(&holder).map(|s| s.creds.uid) else { return };
        if self.sessions.get(&c.segment).is_some_and(|owner| owner.creds.uid == uid) {
            return;
        }
        let Some((class, size)) = self.class_of(c.segment, idx) else { return };
        let limit = (size.count as u64 * self.config.limits.held_share_percent as u64 / 100) as usize;
        let hold = crate::holds::Hold { holder, chunk: c, index: idx, strict };
        let Some(old) = self.holds.charge(uid, class, limit, hold) else { return };
        if old.strict {
            self.drops += 1;
            let why = format!(
                "holds more than {limit} chunks of client {}'s pool (limits.held_share_percent; topic rule: disconnect)",
                c.segment
            );
            self.cut_off(old.holder, LogKind::Refused, &why);
            return;
        }
        // Taken back: released on its holder's behalf, so it can go home,
        // and the holder is told after everything that came before it.
        self.drops += 1;
        match self.chunks.release(c.segment, old.index, old.holder) {
            Some(Released::Last(chunk)) => self.return_chunk(chunk),
            Some(Released::Held) => {}
            None => return,
        }
        let owed = self.holds.taken_back(old.holder, c.segment, old.index);
        self.deliver_raw(old.holder, Descriptor::new(Kind::Release, 0, 0).with_chunk(old.chunk));
        if owed > crate::holds::MAX_OWED {
            self.cut_off(old.holder, LogKind::Refused, "never gives back the chunks taken back from it");
        }
    }

    /// The size class (number and class) of chunk `idx` of `pool`.
    fn class_of(&self, pool: u32, idx: u32) -> Option<(u32, hybus_layout::pool::SizeClass)> {
        let g = &self.sessions.get(&pool)?.data.as_ref()?.geometry;
        g.class_of(idx).map(|(n, c)| (n as u32, c))
    }

    /// Forgets `holder`'s charge for chunk `idx` of `pool` (it gave it back).
    fn discharge(&mut self, holder: u32, pool: u32, idx: u32) {
        // Every release comes here; most holds were never charged (the
        // owner's own uid), so nothing is looked up while none is.
        if self.holds.is_empty() {
            return;
        }
        let Some(uid) = self.sessions.get(&holder).map(|s| s.creds.uid) else { return };
        if let Some((class, _)) = self.class_of(pool, idx) {
            self.holds.discharge(uid, class, holder, pool, idx);
        }
    }

    fn stream_op(
        &mut self,
        from: u32,
        d: Descriptor,
        kind: Kind,
        chunk: Chunk,
        server_side: bool,
    ) -> Result<(), Violation> {
        let id = if server_side { Some(d.correlation) } else { self.exchanges.id_of(from, d.correlation) };
        let Some(ex) = id.and_then(|id| self.exchanges.get_mut(id)) else {
            // A request held for an activation, cancelled at its deadline.
            if kind == Kind::Cancel && !server_side && id.is_none() && self.activation_cancel(from, d.correlation) {
                return Ok(());
            }
            // Unknown or already closed: a race with cancel or end. Not a violation.
            if let Some((c, _)) = chunk {
                self.return_chunk(c);
            }
            return Ok(());
        };
        let id = id.unwrap_or_default();
        if server_side && ex.server != from {
            return Err(Violation::NotYours(d.correlation));
        }
        let snapshot = *ex;
        let Some(credits) = ex.stream.as_mut() else {
            // A plain request: only the caller's Cancel applies.
            if kind == Kind::Cancel && !server_side {
                self.exchanges.close(id);
                self.one_less(snapshot.instance);
                let mut out = Descriptor::new(Kind::Cancel, snapshot.instance, id);
                out.flags |= flags::SERVER;
                self.forward(snapshot.server, out, usize::MAX);
                return Ok(());
            }
            return Err(Violation::NotYours(d.correlation));
        };
        let mut close = false;
        match (kind, server_side) {
            (Kind::StreamItem, true) => {
                if credits.to_caller < d.items() || credits.server_ended {
                    return Err(Violation::CreditOverrun);
                }
                credits.to_caller -= d.items();
            }
            (Kind::StreamItem, false) => {
                if credits.to_server < d.items() || credits.caller_ended {
                    return Err(Violation::CreditOverrun);
                }
                credits.to_server -= d.items();
            }
            (Kind::Credit, true) => credits.to_server = credits.to_server.saturating_add(d.aux),
            (Kind::Credit, false) => credits.to_caller = credits.to_caller.saturating_add(d.aux),
            (Kind::StreamEnd, true) => {
                credits.server_ended = true;
                close = credits.caller_ended;
            }
            (Kind::StreamEnd, false) => {
                credits.caller_ended = true;
                close = credits.server_ended;
            }
            (Kind::Cancel, _) => close = true,
            _ => return Err(Violation::WrongSide(kind)),
        }
        if close {
            self.exchanges.close(id);
            self.one_less(snapshot.instance);
        }
        let mut out = d;
        let to = if server_side {
            out.route = snapshot.route;
            out.correlation = snapshot.caller_corr;
            out.flags &= !flags::SERVER;
            if let Some(i) = self.registry.instance_mut(snapshot.instance) {
                i.stats.messages_out += 1;
                i.stats.bytes_out += payload_len(&d);
            }
            snapshot.caller
        } else {
            out.route = snapshot.instance;
            out.correlation = id;
            out.flags |= flags::SERVER;
            if let Some(i) = self.registry.instance_mut(snapshot.instance) {
                i.stats.messages_in += 1;
                i.stats.bytes_in += payload_len(&d);
            }
            snapshot.server
        };
        // Credits bound what can be in flight, so the queue is not limited here.
        self.hand_over(to, out, chunk, usize::MAX);
        Ok(())
    }

    fn release(&mut self, from: u32, d: Descriptor) -> Result<(), Violation> {
        let c = d.chunk().ok_or(Violation::NotHeld)?;
        let Some(geometry) = self.sessions.get(&c.segment).and_then(|s| s.data.as_ref()).map(|d| &d.geometry) else {
            // The owner is gone; its pool was forgotten. Nothing to return.
            return Ok(());
        };
        let idx = geometry.check(ChunkRef { len: 0, ..c })?;
        let released = self.chunks.release(c.segment, idx, from);
        if released.is_some() {
            self.discharge(from, c.segment, idx);
        }
        match released {
            // A chunk taken back from it: the release it owed.
            None if self.holds.settle(from, c.segment, idx) => Ok(()),
            None => Err(Violation::NotHeld),
            Some(Released::Held) => Ok(()),
            Some(Released::Last(chunk)) => {
                self.return_chunk(chunk);
                Ok(())
            }
        }
    }

    /// Releases `c` on behalf of `holder` (a dropped publication).
    fn release_as(&mut self, holder: u32, c: ChunkRef) {
        let Some(idx) = self
            .sessions
            .get(&c.segment)
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.geometry.check(ChunkRef { len: 0, ..c }).ok())
        else {
            return;
        };
        let released = self.chunks.release(c.segment, idx, holder);
        if released.is_some() {
            self.discharge(holder, c.segment, idx);
        }
        if let Some(Released::Last(chunk)) = released {
            self.return_chunk(chunk);
        }
    }

    /// The client `id` is gone: its calls are cancelled at their servers,
    /// and calls it served fail with "peer gone" at their callers.
    pub(crate) fn fail_exchanges_of(&mut self, id: u32) {
        for (xid, ex) in self.exchanges.drain_where(|e| e.caller == id || e.server == id) {
            self.one_less(ex.instance);
            if ex.server == id {
                self.error_to(ex.caller, ex.route, ex.caller_corr, DataError::PeerGone, false);
            } else {
                let mut out = Descriptor::new(Kind::Cancel, ex.instance, xid);
                out.flags |= flags::SERVER;
                self.forward(ex.server, out, usize::MAX);
            }
        }
    }

    /// The instance is gone: calls it was serving fail with "peer gone".
    pub(crate) fn fail_exchanges_served_by(&mut self, instance: u32) {
        for (_, ex) in self.exchanges.drain_where(|e| e.instance == instance) {
            if let Some(i) = self.registry.instance_mut(ex.instance) {
                i.stats.errors += 1;
            }
            self.error_to(ex.caller, ex.route, ex.caller_corr, DataError::PeerGone, false);
        }
    }

    /// The client a descriptor of an open exchange goes to, for the
    /// monitor: the caller for what a server sends, the server for what a
    /// caller sends; 0 when there is no one such (a publication goes to
    /// every subscriber; releases and fences to the daemon).
    fn receiver_of(&self, from: u32, d: &Descriptor, kind: Kind) -> u32 {
        let exchange = match kind {
            Kind::Publish | Kind::Release | Kind::Fence => None,
            _ if d.flags & flags::SERVER != 0 => self.exchanges.get(d.correlation).map(|e| e.caller),
            _ => self.exchanges.id_of(from, d.correlation).and_then(|id| self.exchanges.get(id)).map(|e| e.server),
        };
        exchange.unwrap_or(0)
    }

    fn monitor(&mut self, client: u32, d: &Descriptor, to: u32) {
        // A server writes its instance id where a caller writes the route
        // id: the side says which one it is. (Looked up as a route first and
        // an instance second, a server's answers were filed under whichever
        // name had that number as its route, and reached the monitors of
        // that name instead of their own.)
        let route =
            if d.flags & flags::SERVER != 0 { self.registry.instance(d.route).map(|i| i.route) } else { Some(d.route) };
        let name = route.and_then(|r| self.registry.route(r)).map(|r| r.name.clone()).unwrap_or_default();
        let targets: Vec<u32> = self
            .sessions
            .values()
            .filter(|s| s.id != client && s.monitor.as_ref().is_some_and(|p| name.starts_with(p.as_str())))
            .map(|s| s.id)
            .collect();
        let ev = DaemonMessage::Event(Event::Traffic {
            kind: d.kind,
            from: client,
            to,
            route: d.route,
            correlation: d.correlation,
            len: payload_len(d) as u32,
            from_pid: self.sessions.get(&client).map_or(0, |s| s.creds.pid),
            to_pid: self.sessions.get(&to).map_or(0, |s| s.creds.pid),
        });
        for t in targets {
            self.send(t, &ev, &[]);
        }
    }
}
