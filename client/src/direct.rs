//! The client's end of a direct channel.
//!
//! The daemon sets the channel up and hands it over ([`Direct::open`]);
//! from then on the two clients talk through the channel's rings with no
//! daemon in the path. The rest of the client routes a pair's traffic over
//! it without the application noticing (see `core.rs`):
//!
//! * **Upgrade.** Each side sends a fence on the brokered path when it gets
//!   the channel, and reads the peer's rings only after the peer's fence
//!   came through the daemon: whatever the peer sent brokered before the
//!   switch is dispatched first.
//! * **Downgrade.** Each side stops opening exchanges on the channel and
//!   pushes a fence on it; until the peer's fence is seen, the side drains
//!   the channel before dispatching anything newer from the daemon's ring.
//!   Answers to exchanges already open still travel on the channel.
//! * **Failure.** The peer's pidfd (and the daemon's event) says it died:
//!   calls in flight over the channel fail with "peer gone", chunks it held
//!   come back to the pool, and traffic falls back to the daemon.

use hybus_layout::idhash::{FewSet, IdSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use hybus_layout::channel::{ChannelLayout, Side, SideCounters};
use hybus_layout::control::DirectInfo;
use hybus_layout::descriptor::flags;
use hybus_layout::header::SegmentKind;
use hybus_layout::pool::{PoolGeometry, SizeClass};
use hybus_layout::{ChunkRef, Consumer, Descriptor, Producer, PushError};
use hybus_os::segment::{Access, EventFd, Segment};

use crate::core::View;
use crate::error::{Error, Result};

/// Where a channel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Sending; the peer's rings are read once its upgrade fence arrived.
    Open,
    /// Downgrading: no new exchanges; drained until the peer's end fence.
    Closing,
}

#[derive(Debug)]
pub(crate) struct Direct {
    pub id: u32,
    pub token: u64,
    pub side: Side,
    pub service: String,
    pub route: u32,
    pub instance: u32,
    /// The peer's pool id (its client id at the time the channel was made).
    pub peer_pool: u32,
    pub peer_pid: i32,
    /// Our pool id as the peer knows it (chunk references on the channel carry it).
    pub my_pool: u32,
    pub seg: Arc<Segment>,
    pub tx: Producer,
    pub rx: Consumer,
    pub rel_tx: Producer,
    pub rel_rx: Consumer,
    pub peer_bell: EventFd,
    /// The doorbell the peer rings for us (our daemon doorbell when the
    /// channel was made; kept across daemon restarts).
    pub my_bell: Arc<EventFd>,
    pub pidfd: Arc<OwnedFd>,
    pub peer_view: Arc<View>,
    pub state: State,
    /// The peer's upgrade fence came through the daemon: its rings may be read.
    pub peer_fenced: bool,
    /// The peer's end fence was seen on its ring (downgrade).
    pub peer_ended: bool,
    /// Our chunks the peer holds (by offset). A hash set: a stream keeps
    /// many in flight (a `FewSet` here measured 4–17 % fewer 64-byte stream
    /// items per second in three interleaved runs, and no gain for calls).
    pub lent: IdSet<u64>,
    /// Peer chunks we hold (samples not yet dropped).
    pub held: u64,
    /// Peer chunks we are done with and have not put on the return ring
    /// yet (one at most, or more while the ring is full): they go right
    /// after our next push on the channel, or when a wait begins (see
    /// [`release`](Self::release)).
    pub releases: Vec<ChunkRef>,
    /// Our calls and streams in flight over the channel (side A).
    calls: FewSet<u64>,
    /// Exchanges we serve over the channel and have not finished (side B):
    /// their answers must still travel on it.
    serving: FewSet<u64>,
    pub reason: String,
}

impl Direct {
    /// Maps a channel the daemon handed over: segment, peer pool, peer doorbell, peer pidfd.
    pub fn open(info: &DirectInfo, fds: Vec<OwnedFd>, my_pool: u32, my_bell: Arc<EventFd>) -> Result<Direct> {
        let proto = |m: String| Error::Protocol(format!("direct channel {}: {m}", info.channel));
        let mut fds = fds.into_iter();
        let (Some(seg), Some(pool), Some(bell), Some(pidfd)) = (fds.next(), fds.next(), fds.next(), fds.next()) else {
            return Err(proto("came without its four descriptors".into()));
        };
        let (seg, h) = Segment::open(seg, Access::ReadWrite, SegmentKind::Channel).map_err(|e| proto(e.to_string()))?;
        let layout = ChannelLayout::new(info.capacity);
        if h.param != info.capacity || seg.len() < layout.size {
            return Err(proto("segment does not match its capacity".into()));
        }
        let seg = Arc::new(seg);
        let side = if info.side == 0 { Side::A } else { Side::B };
        let (out, inn, rel_out, rel_in) = layout.rings(side);
        let cap = info.capacity;
        let e = |e: hybus_os::segment::SegmentError| proto(e.to_string());
        let tx = seg.ring_producer(out, cap).map_err(e)?;
        let rx = seg.ring_consumer(inn, cap).map_err(e)?;
        let rel_tx = seg.ring_producer(rel_out, cap).map_err(e)?;
        let rel_rx = seg.ring_consumer(rel_in, cap).map_err(e)?;
        let classes: Vec<SizeClass> =
            info.peer_classes.iter().map(|&(chunk_size, count)| SizeClass { chunk_size, count }).collect();
        let geometry = PoolGeometry::new(&classes).map_err(|e| proto(e.to_string()))?;
        let (pool, ph) = Segment::open(pool, Access::ReadOnly, SegmentKind::Pool).map_err(e)?;
        if ph.param != info.peer as u64 || geometry.size() > pool.len() as u64 {
            return Err(proto("peer pool does not match".into()));
        }
        Ok(Direct {
            id: info.channel,
            token: info.token,
            side,
            service: info.service.clone(),
            route: info.route,
            instance: info.instance,
            peer_pool: info.peer,
            peer_pid: info.peer_pid,
            my_pool,
            seg,
            tx,
            rx,
            rel_tx,
            rel_rx,
            peer_bell: EventFd::from_fd(bell),
            my_bell,
            pidfd: Arc::new(pidfd),
            peer_view: Arc::new(View { seg: pool, geometry }),
            state: State::Open,
            peer_fenced: false,
            peer_ended: false,
            lent: IdSet::default(),
            held: 0,
            releases: Vec::new(),
            calls: FewSet::new(),
            serving: FewSet::new(),
            reason: info.reason.clone(),
        })
    }

    fn counters(&self) -> &SideCounters {
        let c = self.seg.channel_counters();
        match self.side {
            Side::A => &c.a,
            Side::B => &c.b,
        }
    }

    /// Counts a timed round trip of one of our calls on this channel (we
    /// are its caller, side A: the histogram is ours to write).
    pub fn record_rtt(&self, rtt: std::time::Duration) {
        if self.side == Side::A {
            self.seg.channel_counters().rtt.record(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
        }
    }

    /// Pushes a data descriptor (our pool's chunk references are rewritten
    /// to the pool id the peer knows). `Err(WouldBlock)` when full.
    #[inline]
    pub fn push(&mut self, d: &Descriptor) -> Result<()> {
        let mut d = *d;
        let chunk = d.chunk();
        if let Some(c) = chunk {
            d = d.with_chunk(ChunkRef { segment: self.my_pool, ..c });
        }
        match self.tx.push(&d) {
            Ok(()) => {
                if let Some(c) = chunk {
                    self.lent.insert(c.offset);
                }
                let counters = self.counters();
                counters.count(chunk.map_or(d.inline_len as u64, |c| c.len as u64));
                if d.kind == hybus_layout::Kind::Error as u8 {
                    counters.count_error();
                }
                if !self.releases.is_empty() {
                    // Behind the descriptor, and rung for by its notify: a
                    // parked peer always has its data ring armed. A broken
                    // return ring is reported by the next `flush_releases`.
                    let _ = self.push_releases();
                }
                self.tx.notify(&self.peer_bell);
                Ok(())
            }
            Err(PushError::Full(_)) => Err(Error::WouldBlock),
            Err(PushError::Ring(e)) => Err(Error::Protocol(format!("direct channel ring: {e}"))),
        }
    }

    /// Gives a chunk of the peer's pool back: the latest release waits to
    /// go on our return ring after our next push there, or when a wait
    /// begins (`Core::flush_releases`); an earlier one still waiting goes now.
    ///
    /// Why wait: a release is a store to a line the peer reads, and the lock
    /// released after it, or the fence of a notify, waits until that line
    /// is ours. Released between taking an answer and sending the next
    /// request (or a request and its answer), that wait sat on the round
    /// trip; after a push it does not. Why only one: a client that stops
    /// using the bus keeps what waits until it uses it again, and one chunk
    /// per channel is as much as it may keep from the peer's pool.
    pub fn release(&mut self, c: ChunkRef) {
        self.held = self.held.saturating_sub(1);
        self.releases.push(c);
        if self.releases.len() > 1 {
            let _ = self.flush_releases();
        }
    }

    /// Puts the queued releases on the return ring (as many as fit; the
    /// rest stay queued) and rings the peer if it sleeps waiting for them
    /// (it arms its return ring only then, see `Core::prepare_park`).
    pub fn flush_releases(&mut self) -> std::result::Result<(), hybus_layout::RingError> {
        if self.push_releases()? > 0 {
            self.rel_tx.notify(&self.peer_bell);
        }
        Ok(())
    }

    /// Pushes queued releases without ringing; returns how many went.
    fn push_releases(&mut self) -> std::result::Result<usize, hybus_layout::RingError> {
        let mut n = 0;
        for c in &self.releases {
            match self.rel_tx.push(&Descriptor::new(hybus_layout::Kind::Release, 0, 0).with_chunk(*c)) {
                Ok(()) => n += 1,
                Err(PushError::Full(_)) => break,
                Err(PushError::Ring(e)) => {
                    self.releases.drain(..n);
                    return Err(e);
                }
            }
        }
        self.releases.drain(..n);
        Ok(n)
    }

    /// Checks a descriptor that arrived on the channel and turns it into
    /// the form the daemon would have delivered (the side flag is relative
    /// to the receiver).
    pub fn accept(&self, mut d: Descriptor) -> std::result::Result<Descriptor, String> {
        let chunk = d.chunk();
        if let Some(c) = chunk {
            // First: the payload's transfer overlaps with every check here
            // (the chunk check divides). A prefetch of any offset is harmless.
            self.peer_view.seg.prefetch(c.offset);
        }
        let kind = d.check().map_err(|e| e.to_string())?;
        if let Some(c) = chunk {
            if c.segment != self.peer_pool {
                return Err(format!(
                    "chunk of pool {} on a channel whose peer owns pool {}",
                    c.segment, self.peer_pool
                ));
            }
            self.peer_view.geometry.check(c).map_err(|e| e.to_string())?;
        }
        if kind == hybus_layout::Kind::Release {
            return Err("a release on a data ring".into());
        }
        d.flags ^= flags::SERVER;
        Ok(d)
    }

    /// Our call or stream `corr` goes on this channel (side A).
    #[inline]
    pub fn open_call(&mut self, corr: u64) {
        self.calls.insert(corr);
        self.counters().set_in_flight(self.calls.len() as u64);
    }

    /// Our call or stream `corr` is over; whether it was open here.
    #[inline]
    pub fn close_call(&mut self, corr: u64) -> bool {
        let was = self.calls.remove(&corr);
        if was {
            self.counters().set_in_flight(self.calls.len() as u64);
        }
        was
    }

    /// Whether our call or stream `corr` is open here.
    pub fn has_call(&self, corr: u64) -> bool {
        self.calls.contains(&corr)
    }

    /// Our calls and streams open here.
    pub fn open_calls(&self) -> impl Iterator<Item = u64> + '_ {
        self.calls.iter().copied()
    }

    /// The exchanges we serve here.
    pub fn served(&self) -> impl std::fmt::Debug + '_ {
        &self.serving
    }

    /// We serve the exchange `corr` that came on this channel (side B).
    #[inline]
    pub fn open_served(&mut self, corr: u64) {
        self.serving.insert(corr);
        self.counters().set_in_flight(self.serving.len() as u64);
    }

    /// The exchange `corr` we served here is over.
    #[inline]
    pub fn close_served(&mut self, corr: u64) {
        if self.serving.remove(&corr) {
            self.counters().set_in_flight(self.serving.len() as u64);
        }
    }

    /// Whether the channel may be forgotten (closing and nothing left in flight).
    pub fn finished(&self) -> bool {
        self.state == State::Closing
            && self.peer_ended
            && self.calls.is_empty()
            && self.serving.is_empty()
            && self.lent.is_empty()
            && self.held == 0
            && self.releases.is_empty()
    }

    /// Whether the peer process has exited (its pidfd is readable).
    pub fn peer_exited(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut p = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut p, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}
