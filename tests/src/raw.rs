//! A client without the client library: the Hello handshake, the mapped
//! segments of the Welcome, and the rings used by hand.
//!
//! It maps the segments of the Welcome the way `hybus::Bus` does (client
//! `core.rs`, `Core::new`) and then lets a test write what no honest client
//! would: descriptors the client library never builds, and the ring's own
//! control words. The hostile peers of `hybus-load hostile` and the
//! session and channel fuzz targets ([`crate::fuzz`]) are built on it.
//!
//! [`RawChannel`] is the same for a direct channel: the peer's end of it,
//! mapped read-write as every peer maps it, with any word of the segment
//! writable.
//!
//! # Safety
//!
//! Four `unsafe` blocks: [`Raw::tx_word`], [`Raw::rings_word`],
//! [`Raw::pool_word`] and [`RawChannel::word`] hand out shared words as
//! atomics inside our own read-write mappings of the rings, pool and
//! channel segments.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::channel::{ChannelLayout, Side};
use hybus_layout::control::{self, ClientMessage, DaemonMessage, DirectInfo, Event, Reply, Request, Welcome};
use hybus_layout::header::{SegmentKind, LAYOUT_HASH};
use hybus_layout::pool::{PoolAllocator, PoolGeometry, SizeClass};
use hybus_layout::{ChunkRef, Consumer, Descriptor, Kind, Producer, Wake};
use hybus_os::segment::{Access, EventFd, Segment};
use hybus_os::socket::{ControlSocket, RecvError};

/// Byte offsets of a ring's shared words from the ring's start (asserted in
/// `hybus_layout::ring`): its capacity, the producer's index, the
/// consumer's index, the consumer's parked word; slots follow at 512.
pub const CAPACITY: usize = 0;
/// See [`CAPACITY`].
pub const TAIL: usize = 128;
/// See [`CAPACITY`].
pub const HEAD: usize = 256;
/// See [`CAPACITY`].
pub const PARKED: usize = 384;

/// A client without the client library, connected and welcomed.
#[derive(Debug)]
pub struct Raw {
    /// The control socket (non-blocking after the Welcome).
    pub sock: ControlSocket,
    /// What the daemon said in its Welcome.
    pub welcome: Welcome,
    /// The rings segment, read-write.
    pub rings: Arc<Segment>,
    pool: Segment,
    /// The geometry of our pool.
    pub geometry: PoolGeometry,
    /// Our end of the ring to the daemon.
    pub tx: Producer,
    /// Our end of the ring from the daemon.
    pub rx: Consumer,
    /// The doorbell that wakes the daemon.
    pub tx_bell: EventFd,
    _rx_bell: EventFd,
    next_id: u64,
}

/// What [`Raw`]'s operations return.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Whether `sock` has something to read within `timeout`.
pub fn wait_readable(sock: &ControlSocket, timeout: Duration) -> bool {
    sock.wait_readable(timeout).unwrap_or(false)
}

impl Raw {
    /// Connects, says Hello, and maps the rings and the pool of the Welcome.
    pub fn connect(path: &str) -> Res<Raw> {
        let sock = ControlSocket::connect(std::path::Path::new(path))?;
        let hello = ClientMessage {
            id: 1,
            request: Request::Hello {
                version: control::PROTOCOL_VERSION,
                layout_hash: LAYOUT_HASH,
                label: "hostile".into(),
                reuse_pool: false,
            },
        };
        sock.send(&control::encode_first(&hello)?, &[])?;
        if !wait_readable(&sock, Duration::from_secs(20)) {
            return Err("no Welcome".into());
        }
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        let (n, fds) = sock.recv(&mut buf)?;
        let welcome = match control::decode::<DaemonMessage>(&buf[..n])? {
            DaemonMessage::Reply { result: Ok(Reply::Welcome(w)), .. } => w,
            other => return Err(format!("expected Welcome, got {other:?}").into()),
        };
        let mut fds = fds.into_iter();
        let (Some(rings), Some(pool), Some(txb), Some(rxb)) = (fds.next(), fds.next(), fds.next(), fds.next()) else {
            return Err("Welcome without its four descriptors".into());
        };
        let (rings, _) = Segment::open(rings, Access::ReadWrite, SegmentKind::ClientRings)?;
        let rings = Arc::new(rings);
        let cap = welcome.ring_capacity;
        let tx = rings.ring_producer(welcome.tx_offset as usize, cap)?;
        let rx = rings.ring_consumer(welcome.rx_offset as usize, cap)?;
        let (pool, _) = Segment::open(pool, Access::ReadWrite, SegmentKind::Pool)?;
        let classes: Vec<SizeClass> =
            welcome.pool_classes.iter().map(|&(chunk_size, count)| SizeClass { chunk_size, count }).collect();
        let geometry = PoolGeometry::new(&classes)?;
        sock.set_nonblocking(true)?;
        Ok(Raw {
            sock,
            welcome,
            rings,
            pool,
            geometry,
            tx,
            rx,
            tx_bell: EventFd::from_fd(txb),
            _rx_bell: EventFd::from_fd(rxb),
            next_id: 1,
        })
    }

    /// The next control message into `buf`, waiting until `end`; `None` if
    /// none came by then.
    fn recv_until(&self, end: Instant, buf: &mut [u8]) -> Res<Option<(usize, Vec<OwnedFd>)>> {
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            if !wait_readable(&self.sock, left) {
                continue;
            }
            match self.sock.recv(buf) {
                Ok(x) => return Ok(Some(x)),
                Err(RecvError::WouldBlock) => continue,
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }

    /// Sends a control request and waits for its reply (events are skipped).
    pub fn control(&mut self, request: Request) -> Res<Reply> {
        self.control_with_fds(request, &[])
    }

    /// [`control`](Self::control) with descriptors attached.
    pub fn control_with_fds(&mut self, request: Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> Res<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = control::encode(&ClientMessage { id, request })?;
        self.sock.send(&bytes, fds)?;
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        loop {
            let Some((n, _fds)) = self.recv_until(end, &mut buf)? else {
                return Err("no reply from the daemon".into());
            };
            if let DaemonMessage::Reply { id: rid, result } = control::decode(&buf[..n])? {
                if rid == id {
                    return result.map_err(|e| e.message.into());
                }
            }
        }
    }

    /// The route id of a serving name.
    pub fn resolve(&mut self, name: &str) -> Res<u32> {
        match self.control(Request::Resolve { name: name.into() })? {
            Reply::Resolved { route, .. } => Ok(route),
            r => Err(format!("unexpected reply {r:?}").into()),
        }
    }

    /// Pushes `d` onto the tx ring and rings the daemon's doorbell.
    pub fn send(&mut self, d: &Descriptor) -> Res<()> {
        self.tx.push(d)?;
        self.tx_bell.wake();
        Ok(())
    }

    /// Pushes all of `ds` with one index store and rings the doorbell.
    pub fn send_batch(&mut self, ds: &[Descriptor]) -> Res<()> {
        if self.tx.push_batch(ds)? != ds.len() {
            return Err("tx ring full".into());
        }
        self.tx_bell.wake();
        Ok(())
    }

    /// A real chunk of our own pool, `len` bytes.
    pub fn own_chunk(&self, len: usize) -> Res<ChunkRef> {
        let mut alloc = PoolAllocator::new(self.geometry.clone(), self.welcome.client_id);
        Ok(alloc.alloc(len)?)
    }

    /// A shared word of the tx ring, at one of the offsets [`CAPACITY`], [`TAIL`], [`HEAD`], [`PARKED`].
    pub fn tx_word(&self, offset: usize) -> &AtomicU64 {
        let base = self.welcome.tx_offset as usize + offset;
        assert!(base + 8 <= self.rings.len() && base % 8 == 0);
        // SAFETY: in bounds and 8-aligned (checked above) in a read-write
        // mapping that lives as long as `self`; the ring's control words are
        // atomics that both sides access only atomically.
        unsafe { &*(self.rings.as_ptr().as_ptr().add(base) as *const AtomicU64) }
    }

    /// Any shared word of the rings segment, at byte `offset` (rounded down
    /// to a word, kept inside the segment): both rings' control words and slots.
    pub fn rings_word(&self, offset: usize) -> &AtomicU64 {
        let at = (offset % self.rings.len()) & !7;
        // SAFETY: 8-aligned and inside our read-write mapping of the rings
        // segment, which lives as long as `self`; its shared words are
        // accessed only atomically, by both sides.
        unsafe { &*(self.rings.as_ptr().as_ptr().add(at) as *const AtomicU64) }
    }

    /// Any word of our own pool (header included), at byte `offset`
    /// (rounded down to a word, kept inside the pool).
    pub fn pool_word(&self, offset: usize) -> &AtomicU64 {
        let at = (offset % self.pool.len()) & !7;
        // SAFETY: 8-aligned and inside our read-write mapping of our pool,
        // which lives as long as `self`; a receiver only reads it, and
        // writing it through an atomic is what a hostile writer may do.
        unsafe { &*(self.pool.as_ptr().as_ptr().add(at) as *const AtomicU64) }
    }

    /// The next descriptor on the rx ring, if one is there.
    pub fn pop(&mut self) -> Res<Option<Descriptor>> {
        Ok(self.rx.pop()?)
    }

    /// Waits up to `timeout` for a descriptor of `kind` on the rx ring.
    pub fn wait_for(&mut self, kind: Kind, timeout: Duration) -> Res<Descriptor> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.rx.pop()? {
                Some(d) if d.kind == kind as u8 => return Ok(d),
                Some(_) => {}
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        Err(format!("no {kind:?} within {timeout:?}").into())
    }

    /// Waits up to `timeout` for a direct channel to be opened to us, maps
    /// it and sends its upgrade fence (through the daemon, as the client
    /// library does), after which the peer reads what we put on it.
    pub fn await_direct(&mut self, timeout: Duration) -> Res<RawChannel> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        loop {
            let Some((n, fds)) = self.recv_until(end, &mut buf)? else {
                return Err("no DirectOpen".into());
            };
            if let DaemonMessage::Event(Event::DirectOpen(info)) = control::decode(&buf[..n])? {
                let ch = RawChannel::open(info, fds)?;
                self.send(&Descriptor::new(Kind::Fence, 0, 0).with_aux(ch.info.channel as u64))?;
                return Ok(ch);
            }
        }
    }

    /// Reads and drops whatever the daemon sent so far: control messages and
    /// descriptors (a stalled reader would only test the daemon's patience).
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        while let Ok((_, _fds)) = self.sock.recv(&mut buf) {}
        while let Ok(Some(_)) = self.rx.pop() {}
    }

    /// Whether the daemon closes the control socket within `timeout`.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if !wait_readable(&self.sock, left) {
                continue;
            }
            match self.sock.recv(&mut buf) {
                Err(RecvError::Closed) | Err(RecvError::Os(_)) => return true,
                Ok(_) | Err(RecvError::WouldBlock) | Err(RecvError::Truncated) => {}
            }
        }
    }
}

/// Our end of a direct channel, mapped read-write as the client library maps it.
#[derive(Debug)]
pub struct RawChannel {
    /// What the daemon said of the channel.
    pub info: DirectInfo,
    /// The channel segment.
    pub seg: Arc<Segment>,
    /// Where its rings and counters lie.
    pub layout: ChannelLayout,
    /// Our data ring to the peer.
    pub tx: Producer,
    /// Our return ring to the peer (its chunks going back).
    pub rel_tx: Producer,
    /// The peer's doorbell.
    pub peer_bell: EventFd,
    _fds: Vec<OwnedFd>,
}

impl RawChannel {
    fn open(info: DirectInfo, fds: Vec<OwnedFd>) -> Res<RawChannel> {
        let mut fds = fds.into_iter();
        let (Some(seg), Some(_pool), Some(bell)) = (fds.next(), fds.next(), fds.next()) else {
            return Err("DirectOpen without its descriptors".into());
        };
        let (seg, _) = Segment::open(seg, Access::ReadWrite, SegmentKind::Channel)?;
        let seg = Arc::new(seg);
        let layout = ChannelLayout::new(info.capacity);
        let side = if info.side == 0 { Side::A } else { Side::B };
        let (out, _, rel_out, _) = layout.rings(side);
        let tx = seg.ring_producer(out, info.capacity)?;
        let rel_tx = seg.ring_producer(rel_out, info.capacity)?;
        Ok(RawChannel { info, seg, layout, tx, rel_tx, peer_bell: EventFd::from_fd(bell), _fds: fds.collect() })
    }

    /// The channel segment's shared word at byte `offset` (rounded down to a word, kept inside the segment).
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        let at = (offset % self.seg.len()) & !7;
        // SAFETY: 8-aligned and inside our read-write mapping of the segment,
        // which lives as long as `self`; its shared words are only ever
        // accessed atomically, by both sides.
        unsafe { &*(self.seg.as_ptr().as_ptr().add(at) as *const AtomicU64) }
    }
}
