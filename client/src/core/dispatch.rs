//! The dispatch of [`Core`]: the daemon's rx ring drained, every
//! descriptor that arrives (by the daemon or a channel) put where its
//! waiter looks (call table, inboxes, streams, topics), and taken from there.

use std::collections::VecDeque;
use std::sync::Arc;

use hybus_layout::control;
use hybus_layout::descriptor::flags;
use hybus_layout::{ChunkRef, Descriptor, Kind};

use super::{error_of, take_back, Core, Origin, ServedState, View, FIRE_BIT, TOPIC_INBOX};
use crate::error::Error;
use crate::BusEvent;

impl Core {
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
    pub(super) fn refuse_incoming(&mut self, d: Descriptor, origin: Origin) {
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

    /// Closes the inbox of topic `route`: what waits in it goes back to
    /// its publishers, and what comes later goes straight back.
    pub fn drop_topic(&mut self, route: u32) {
        if let Some(q) = self.topics.remove(&route) {
            for d in q {
                self.release(d, Origin::Daemon);
            }
        }
    }

    /// The answer to our call `corr`, if it came: taken off its channel by
    /// [`pump_hot`](Self::pump_hot) this round, or dispatched into the call
    /// table. The call is forgotten once its answer is taken.
    pub fn take_answer(&mut self, corr: u64) -> Option<(Descriptor, Origin)> {
        let taken = self.taken.is_some_and(|(d, _)| d.correlation == corr && d.flags & flags::SERVER == 0);
        if !taken && !matches!(self.calls.get(&corr), Some(Some(_))) {
            return None;
        }
        match self.calls.remove(&corr) {
            // An outcome put there first (the call was cancelled while its
            // answer was on the way) stands; the answer goes back.
            Some(Some(outcome)) => {
                if let (true, Some((d, path))) = (taken, self.taken.take()) {
                    self.release(d, path);
                }
                Some(outcome)
            }
            _ => self.taken.take(),
        }
    }

    /// The next request or fire for `instance`: taken off a channel by
    /// [`pump_hot`](Self::pump_hot) this round (only while the inbox is
    /// empty), else the oldest in its inbox.
    pub fn take_incoming(&mut self, instance: u32) -> Option<(Descriptor, Origin)> {
        if self.taken.is_some_and(|(d, o)| d.flags & flags::SERVER != 0 && self.inbox_of(d.route, o) == instance) {
            let (d, origin) = self.taken.take()?;
            if self.readable(&d, origin) {
                return Some((d, origin));
            }
            self.refuse_unreadable(d, origin);
        }
        loop {
            let (d, origin) = self.inboxes.get_mut(&instance)?.pop_front()?;
            if self.readable(&d, origin) {
                return Some((d, origin));
            }
            self.refuse_unreadable(d, origin);
        }
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
                self.bad_views.remove(&pool);
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
    pub(super) fn inbox_of(&self, route: u32, origin: Origin) -> u32 {
        match origin {
            Origin::Daemon => route,
            Origin::Direct(_) => self.instance_alias.get(&route).copied().unwrap_or(route),
        }
    }

    /// The view of the pool a chunk lives in, reading the control socket for
    /// it if new, with the chunk checked against it: inside its geometry, and
    /// the pool's header still valid ([`View::check_header`]).
    ///
    /// [`Error::CorruptPool`] for a pool that does not validate (now, or
    /// when its view came): that sender's payload fails, nothing else.
    /// [`Error::Protocol`] for what only a broken daemon or channel peer sends.
    pub fn view_for(&mut self, c: ChunkRef, origin: Origin) -> Result<Arc<View>, Error> {
        self.checked_view(c, origin).cloned()
    }

    /// [`view_for`](Self::view_for) without taking a reference: what a
    /// check that only looks needs. (An `Arc` clone per look cost two
    /// atomic operations on a count that the threads dropping samples
    /// also write, and every received chunk was looked at twice: when it
    /// came, and when its sample was made.)
    fn checked_view(&mut self, c: ChunkRef, origin: Origin) -> Result<&Arc<View>, Error> {
        let v = match origin {
            Origin::Direct(id) => match self.channels.get(&id) {
                Some(ch) => &ch.peer_view,
                None => return Err(Error::Protocol(format!("a chunk from closed channel {id}"))),
            },
            // Our own pool comes home: we are its writer, there is nothing to check.
            Origin::Daemon if c.segment == self.client_id => return Ok(&self.pool),
            Origin::Daemon => {
                if !self.views.contains_key(&c.segment) && !self.bad_views.contains_key(&c.segment) {
                    // The daemon sends the view before the first descriptor that needs it.
                    self.pump_control();
                }
                match self.views.get(&c.segment) {
                    Some(v) => v,
                    None => return Err(self.no_view(c.segment)),
                }
            }
        };
        if v.geometry.check(c).is_err() {
            return Err(Error::Protocol(format!("a chunk outside pool {}", c.segment)));
        }
        v.check_header().map_err(|why| Error::CorruptPool { pool: c.segment, why })?;
        Ok(v)
    }

    #[cold]
    fn no_view(&self, pool: u32) -> Error {
        match self.bad_views.get(&pool) {
            Some(why) => Error::CorruptPool { pool, why: why.clone() },
            None => Error::Protocol(format!("no view of pool {pool} for a received chunk")),
        }
    }

    /// Whether a descriptor's payload may be handed out: one without a
    /// chunk always; one whose pool is corrupt not, and the daemon is told
    /// (the caller gives the chunk back). A protocol error is left to
    /// [`Sample`](crate::Sample) to report.
    fn readable(&mut self, d: &Descriptor, origin: Origin) -> bool {
        let Some(c) = d.chunk() else { return true };
        match self.checked_view(c, origin).map(|_| ()) {
            Err(Error::CorruptPool { pool, why }) => {
                self.report_corrupt(pool, &why);
                false
            }
            _ => true,
        }
    }

    /// Tells the daemon, once per pool and connection, that a pool it
    /// handed us does not validate. The daemon checks that itself (it maps
    /// every pool) before it holds the owner to account: our word is not
    /// proof.
    #[cold]
    pub fn report_corrupt(&mut self, pool: u32, why: &str) {
        if self.reported.insert(pool) {
            let why = why.chars().take(200).collect();
            let _ = self.send_control(control::Request::CorruptPool { pool, why });
        }
    }

    /// Refuses a request, stream or fire whose payload cannot be read (its
    /// pool is corrupt): the caller gets a service error saying so, on
    /// whichever path it came; the chunk goes back.
    fn refuse_unreadable(&mut self, d: Descriptor, origin: Origin) {
        let opens = d.kind == Kind::Request as u8 || d.kind == Kind::StreamOpen as u8;
        if opens {
            self.served.remove(&(origin, d.correlation));
            let e = crate::stream::service_error(d.route, d.correlation, "request payload unreadable: corrupt pool");
            // A full ring leaves the caller to its deadline.
            let _ = self.try_send_on(origin, &e);
            self.served_done(origin, d.correlation);
        }
        self.release(d, origin);
    }

    /// The daemon took back a chunk of another client's pool that we held
    /// past our share (`limits.held_share_percent`): its owner may write it
    /// again. A publication or answer still waiting here is dropped (and
    /// released: the daemon expects that release); one the application
    /// holds already is its own to drop, and its bytes may change.
    #[cold]
    fn taken_back(&mut self, c: ChunkRef) {
        let same = |d: &Descriptor| d.chunk().is_some_and(|x| x.segment == c.segment && x.offset == c.offset);
        for q in self.topics.values_mut() {
            if let Some(pos) = q.iter().position(same) {
                if let Some(d) = q.remove(pos) {
                    self.dropped_publications += 1;
                    self.release(d, Origin::Daemon);
                }
                return;
            }
        }
        // An answer not collected yet: the call fails with "out of pool".
        let answer = self.calls.values_mut().find_map(|a| match a {
            Some((d, Origin::Daemon)) if same(d) => Some(std::mem::replace(d, taken_answer(d))),
            _ => None,
        });
        if let Some(d) = answer {
            self.release(d, Origin::Daemon);
        }
    }

    /// [`take_publication`](Self::take_publication), or, once the inbox is
    /// empty, the error of a subscription the daemon ended.
    pub fn next_publication(&mut self, route: u32) -> Result<Option<Descriptor>, Error> {
        match self.take_publication(route) {
            Some(d) => Ok(Some(d)),
            None => match self.revoked_topics.get(&route) {
                Some(why) => Err(Error::AccessDenied(format!("subscription ended: {why}"))),
                None => Ok(None),
            },
        }
    }

    /// The error for a read of `instance`'s inbox once the daemon
    /// unregistered it (and its inbox is empty).
    pub fn revoked_instance(&self, instance: u32) -> Result<(), Error> {
        match self.revoked_instances.get(&instance) {
            Some(why) => Err(Error::AccessDenied(format!("instance unregistered: {why}"))),
            None => Ok(()),
        }
    }

    /// The next publication of topic `route` whose payload can be read;
    /// those of a corrupt pool go back to their publisher, counted as dropped.
    pub fn take_publication(&mut self, route: u32) -> Option<Descriptor> {
        loop {
            let d = self.topics.get_mut(&route)?.pop_front()?;
            if self.readable(&d, Origin::Daemon) {
                return Some(d);
            }
            self.dropped_publications += 1;
            self.release(d, Origin::Daemon);
        }
    }

    /// The error an Error descriptor carries, its message read from its
    /// chunk if it came in one (a message longer than the inline space).
    fn error_in(&mut self, d: &Descriptor, origin: Origin) -> Error {
        let Some(c) = d.chunk() else {
            return error_of(d, None);
        };
        let text = self.view_for(c, origin).map(|v| v.seg.bytes(c.offset, c.len as usize).unwrap_or(&[]).to_vec());
        error_of(d, Some(text.as_deref().unwrap_or(b"(the error's text is unreadable)")))
    }

    pub(super) fn dispatch(&mut self, d: Descriptor, origin: Origin) {
        let Ok(kind) = d.check() else {
            self.lost("daemon sent a malformed descriptor");
            return;
        };
        if let (Some(c), Origin::Daemon) = (d.chunk(), origin) {
            if kind != Kind::Release {
                match self.view_for(c, origin) {
                    // A corrupt pool fails where its payload is taken, for
                    // that payload alone.
                    Ok(_) | Err(Error::CorruptPool { .. }) => {}
                    Err(e) => {
                        self.lost(&format!("daemon sent a chunk of pool {} without a valid view: {e}", c.segment));
                        return;
                    }
                }
            }
        }
        let server = d.flags & flags::SERVER != 0;
        let key = (origin, d.correlation);
        match (kind, server) {
            (Kind::Release, _) => match d.chunk() {
                Some(c) if origin == Origin::Daemon && c.segment != self.client_id => self.taken_back(c),
                Some(c) if take_back(&mut self.alloc, &self.pool, c).is_err() => {
                    self.lost("daemon returned a chunk we did not lend");
                }
                _ => {}
            },
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
                        ch.open_served(d.correlation);
                    }
                }
                let inbox = self.inbox_of(d.route, origin);
                self.inboxes.get_or_insert_with(inbox, VecDeque::new).push_back((d, origin));
            }
            (Kind::StreamOpen, true) => {
                if let Origin::Direct(id) = origin {
                    if let Some(ch) = self.channels.get_mut(&id) {
                        ch.open_served(d.correlation);
                    }
                }
                self.served.insert(key, ServedState { send_credits: d.aux & 0xffff_ffff, ..ServedState::default() });
                let inbox = self.inbox_of(d.route, origin);
                self.inboxes.get_or_insert_with(inbox, VecDeque::new).push_back((d, origin));
            }
            (Kind::Publish, _) => {
                if self.subscribing == 0 && !self.topics.contains_key(&d.route) {
                    // Unsubscribed meanwhile (it was on its way): back to its publisher.
                    self.release(d, origin);
                    return;
                }
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
                if self.timed.is_some() && matches!(origin, Origin::Direct(_)) {
                    self.time_answer(d.correlation);
                }
                if let Some(Some(_)) = self.calls.get(&d.correlation) {
                    // The call already has its outcome (it was cancelled): a late answer goes back.
                    self.release(d, origin);
                } else if let Some(slot) = self.calls.get_mut(&d.correlation) {
                    *slot = Some((d, origin));
                    if let Origin::Direct(id) = origin {
                        if let Some(ch) = self.channels.get_mut(&id) {
                            ch.close_call(d.correlation);
                        }
                        self.reap_channel(id);
                    }
                } else if let Some(id) = self.direct_call(origin, d.correlation) {
                    // Our direct call's answer, brought by a full pump: the
                    // caller takes it from the table.
                    self.calls.insert(d.correlation, Some((d, origin)));
                    self.reap_channel(id);
                } else if self.streams.contains_key(&d.correlation) {
                    let error = self.error_in(&d, origin);
                    if let Some(s) = self.streams.get_mut(&d.correlation) {
                        s.ended = true;
                        s.error = Some(error);
                    }
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
}

/// What a caller sees of an answer the daemon took back before it was
/// collected: an error answer (out of pool: the server's pool needed it).
fn taken_answer(d: &Descriptor) -> Descriptor {
    Descriptor::new(Kind::Error, d.route, d.correlation).with_aux(control::DataError::OutOfPool as u64)
}
