//! The direct-channel plane of [`Core`]: which channel a new exchange
//! takes, draining the channels' rings (the spinning wait's hot poll among
//! them), and a channel's end (closed, killed, reaped).

use std::collections::VecDeque;
use std::time::Instant;

use hybus_layout::channel::{Side, RTT_SAMPLE_EVERY};
use hybus_layout::control::{self, Request};
use hybus_layout::descriptor::flags;
use hybus_layout::idhash::FewSet;
use hybus_layout::{ChunkRef, Descriptor, Kind};

use super::{take_back, Core, Hot, Origin};
use crate::direct::{Direct, State};
use crate::error::{Error, Result};
use crate::BusEvent;

/// The direct call whose round trip is being timed (one in
/// [`RTT_SAMPLE_EVERY`], see [`Core::send_call`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timed {
    corr: u64,
    channel: u32,
    since: Instant,
}

impl Core {
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
        self.forgot_channel(id);
        if ch.state == State::Closing {
            self.closing -= 1;
        }
        if self.route_direct.get(&ch.route) == Some(&id) {
            self.route_direct.remove(&ch.route);
        }
        let gone = Descriptor::new(Kind::Error, ch.route, 0).with_aux(control::DataError::PeerGone as u64);
        // Calls in flight on it (the others in its set are streams).
        for corr in ch.open_calls().filter(|c| !self.streams.contains_key(c)) {
            self.calls.insert(corr, Some((Descriptor { correlation: corr, ..gone }, Origin::Daemon)));
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
        // An inbox left empty goes too: a peer may have named any route,
        // and one queue a route kept for good grew with every channel.
        self.inboxes.retain(|_, q| {
            q.retain(|(_, o)| *o != origin);
            !q.is_empty()
        });
        for off in &ch.lent {
            let _ = self.alloc.free(ChunkRef { segment: self.client_id, len: 0, offset: *off });
        }
        self.push_event(BusEvent::DirectClosed { channel: id, service: ch.service.clone(), reason: reason.to_owned() });
        self.forget_retired();
    }

    pub(super) fn reap_channel(&mut self, id: u32) {
        if self.channels.get(&id).is_some_and(|c| c.finished()) {
            self.channels.remove(&id);
            self.closing -= 1;
            self.forgot_channel(id);
            self.forget_retired();
        }
    }

    /// Tells the daemon we forgot channel `id`, so that it need not
    /// remember it for us (no reply comes; a daemon that never knew the
    /// channel, or is gone, has nothing to forget).
    fn forgot_channel(&mut self, id: u32) {
        let _ = self.send_control(Request::ChannelDone { channel: id });
    }

    /// With no channel left, nothing can come for a retired instance any
    /// more (a channel is only ever opened to a serving one): the set need
    /// not grow with every instance a long-lived connection unregisters.
    pub(super) fn forget_retired(&mut self) {
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
            ch.open_call(corr);
            d.route = ch.instance;
            let (id, pushed) = (ch.id, ch.push(d));
            if pushed.is_ok() {
                self.unloan(d);
            }
            self.rtt_countdown -= 1;
            if self.rtt_countdown == 0 {
                self.rtt_countdown = RTT_SAMPLE_EVERY;
                if pushed.is_ok() && self.timed.is_none() {
                    self.timed = Some(Timed { corr, channel: id, since: Instant::now() });
                }
            }
            return (Origin::Direct(id), pushed);
        }
        self.calls.insert(corr, None);
        (Origin::Daemon, self.try_send(d))
    }

    /// The answer to `corr` came off its channel: if it is the call being
    /// timed, its round trip goes into its channel's histogram (which the
    /// daemon reads for `hybusctl stats`: it does not see direct calls
    /// otherwise). Timed at arrival, not when the caller takes it: a
    /// [`PendingCall`](crate::PendingCall) may be collected much later.
    #[inline]
    pub(super) fn time_answer(&mut self, corr: u64) {
        if let Some(t) = self.timed.filter(|t| t.corr == corr) {
            self.timed = None;
            if let Some(ch) = self.channels.get(&t.channel) {
                ch.record_rtt(t.since.elapsed());
            }
        }
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
                ch.close_served(corr);
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
                ch.close_call(corr);
            }
            self.reap_channel(id);
            // A call given up is not a round trip (and must not keep the others from being timed).
            if self.timed.is_some_and(|t| t.corr == corr) {
                self.timed = None;
            }
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

    pub(super) fn channel_violation(&mut self, id: u32, why: String) {
        let _ = self.send_control(Request::CloseDirect { channel: id });
        self.kill_channel(id, &format!("peer broke the protocol: {why}"));
    }

    /// Drains the rings of every channel whose peer has fenced.
    pub(super) fn pump_channels(&mut self, only_closing: bool) -> usize {
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
    pub(super) fn pump_channel(&mut self, id: u32) -> usize {
        let mut total = 0;
        // A reused buffer: this runs on every poll of a spinning wait.
        let mut buf = std::mem::take(&mut self.ch_buf);
        buf.resize(32, Descriptor::new(Kind::Fence, 0, 0));
        {
            // Returned chunks first: they free pool space for what follows.
            self.take_back_returns(id, &mut buf);
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

    /// Takes back the chunks channel `id`'s peer returned (its return
    /// ring), `buf` the reused buffer to pop them in.
    fn take_back_returns(&mut self, id: u32, buf: &mut [Descriptor]) {
        while let Some(ch) = self.channels.get_mut(&id) {
            let n = match ch.rel_rx.pop_batch(buf) {
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
    }

    /// Takes back what every channel's peer returned, and nothing else:
    /// what a loan that found the pool empty tries before it waits (the
    /// chunks of a direct caller's last calls are usually there, and a
    /// direct call's wait no longer pumps everything on its first round).
    pub(crate) fn pump_returns(&mut self) {
        if self.channels.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.ch_buf);
        buf.resize(32, Descriptor::new(Kind::Fence, 0, 0));
        for id in self.fenced_channels(|_| true) {
            self.take_back_returns(id, &mut buf);
        }
        self.ch_buf = buf;
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
                ch.open_served(d.correlation);
            } else if !server {
                ch.close_call(d.correlation);
                if self.timed.is_some() {
                    self.time_answer(d.correlation);
                }
            }
        }
        self.taken = Some((d, Origin::Direct(id)));
    }

    /// If `corr` is a call of ours in flight on the channel `origin` names,
    /// forgets it there and returns the channel (a stream's id is no call).
    pub(super) fn direct_call(&mut self, origin: Origin, corr: u64) -> Option<u32> {
        let Origin::Direct(id) = origin else { return None };
        if self.streams.contains_key(&corr) {
            return None;
        }
        self.channels.get_mut(&id).is_some_and(|ch| ch.close_call(corr)).then_some(id)
    }
}
