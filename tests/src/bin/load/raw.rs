//! `hostile CASE [NAME] [other=ID]`: a client that speaks the protocol by
//! hand and then writes into its own tx ring what no honest client would.
//!
//! It does the Hello handshake itself, maps the segments of the Welcome the
//! way `hybus::Bus` does (client `core.rs`, `Core::new`), sets up what the
//! case needs, prints `sent`, and then watches its control socket: `closed`
//! if the daemon hung up within 10 s, `still-open` if not. Cases:
//!
//! * `bad-route` — a Request to a route id the daemon never handed out;
//! * `bad-offset NAME` — a Request whose chunk lies beyond the end of its pool;
//! * `misaligned NAME` — a chunk offset inside the pool but not on a chunk start;
//! * `too-long NAME` — a chunk length larger than its chunk;
//! * `foreign NAME other=ID` — a chunk of client ID's pool sent as its own;
//! * `double NAME` — the same chunk sent twice (NAME holds the first);
//! * `release-unheld` — a Release of one of its own chunks never lent;
//! * `release-other other=ID` — a Release of a chunk of ID's pool never received;
//! * `tail-ahead` — the tx ring's tail word written far ahead of head;
//! * `bad-kind NAME` — kind byte 200;
//! * `bad-flags NAME` — flag bit 0x80;
//! * `credit-caller NAME` — opens a channel to NAME (which grants nothing)
//!   and sends it an item without credit;
//! * `credit-server NAME` — registers NAME, prints `ready`, waits for a
//!   request-stream and sends one item more than the caller's window.
//!
//! # Safety
//!
//! One `unsafe` block: `tail-ahead` writes the ring's tail word directly,
//! as an atomic inside its own read-write mapping of the rings segment.

#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::control::{self, ClientMessage, DaemonMessage, Reply, Request, Welcome};
use hybus_layout::descriptor::{flags, STREAM_CHANNEL};
use hybus_layout::header::{SegmentKind, LAYOUT_HASH};
use hybus_layout::pool::{PoolAllocator, PoolGeometry, SizeClass};
use hybus_layout::segment::{Access, EventFd, Segment};
use hybus_layout::socket::{ControlSocket, RecvError};
use hybus_layout::{ChunkRef, Consumer, Descriptor, Kind, Producer, Wake};

use crate::{arg, stdin_commands, R};

/// A client without the client library.
pub struct Raw {
    sock: ControlSocket,
    welcome: Welcome,
    rings: Arc<Segment>,
    _pool: Segment,
    geometry: PoolGeometry,
    tx: Producer,
    rx: Consumer,
    tx_bell: EventFd,
    _rx_bell: EventFd,
    next_id: u64,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn wait_readable(sock: &ControlSocket, timeout: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfd = [PollFd::new(sock.fd(), PollFlags::POLLIN)];
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    matches!(poll(&mut pfd, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)), Ok(n) if n > 0)
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
        sock.send(&control::encode(&hello)?, &[])?;
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
            _pool: pool,
            geometry,
            tx,
            rx,
            tx_bell: EventFd::from_fd(txb),
            _rx_bell: EventFd::from_fd(rxb),
            next_id: 1,
        })
    }

    /// Sends a control request and waits for its reply (events are skipped).
    pub fn control(&mut self, request: Request) -> Res<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = control::encode(&ClientMessage { id, request })?;
        self.sock.send(&bytes, &[])?;
        let end = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; control::MAX_MESSAGE];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no reply from the daemon".into());
            }
            if !wait_readable(&self.sock, left) {
                continue;
            }
            let (n, _fds): (usize, Vec<OwnedFd>) = match self.sock.recv(&mut buf) {
                Ok(x) => x,
                Err(RecvError::WouldBlock) => continue,
                Err(e) => return Err(e.to_string().into()),
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

    /// The tx ring's `tail` word (ring header: capacity +0, tail +128, head +256).
    fn tx_word(&self, offset: usize) -> &AtomicU64 {
        let base = self.welcome.tx_offset as usize + offset;
        assert!(base + 8 <= self.rings.len() && base % 8 == 0);
        // SAFETY: in bounds and 8-aligned (checked above) in a read-write
        // mapping that lives as long as `self`; the ring's control words are
        // atomics that both sides access only atomically.
        unsafe { &*(self.rings.as_ptr().as_ptr().add(base) as *const AtomicU64) }
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

pub fn run(socket: &str, args: &[String]) -> R {
    stdin_commands(|_| {});
    let case = args.first().ok_or("hostile CASE [NAME] [other=ID]")?.as_str();
    let name = args.get(1).filter(|a| !a.contains('='));
    let other: Option<u32> = arg(args, "other").map(str::parse).transpose()?;
    let mut r = Raw::connect(socket)?;
    let me = r.welcome.client_id;
    let route = match name {
        Some(n) if case != "credit-server" => r.resolve(n)?,
        _ => 0,
    };
    println!("ready client={me}");
    let req = |corr: u64| Descriptor::new(Kind::Request, route, corr);
    match case {
        "bad-route" => {
            let d = Descriptor::new(Kind::Request, 0x7fff_fff0, 1);
            r.send(&d.with_inline(b"hello").ok_or("inline")?)?;
        }
        "bad-offset" => {
            let beyond = r.geometry.size() + 4096;
            r.send(&req(1).with_chunk(ChunkRef { segment: me, len: 8, offset: beyond }))?;
        }
        "misaligned" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { offset: c.offset + 8, ..c }))?;
        }
        "too-long" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { len: 1 << 30, ..c }))?;
        }
        "foreign" => {
            let other = other.ok_or("foreign needs other=ID")?;
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(ChunkRef { segment: other, ..c }))?;
        }
        "double" => {
            let c = r.own_chunk(100)?;
            r.send(&req(1).with_chunk(c))?;
            r.send(&req(2).with_chunk(c))?;
        }
        "release-unheld" => {
            let c = r.own_chunk(100)?;
            r.send(&Descriptor::new(Kind::Release, 0, 0).with_chunk(c))?;
        }
        "release-other" => {
            let other = other.ok_or("release-other needs other=ID")?;
            let c = r.own_chunk(100)?;
            r.send(&Descriptor::new(Kind::Release, 0, 0).with_chunk(ChunkRef { segment: other, ..c }))?;
        }
        "tail-ahead" => {
            let head = r.tx_word(256).load(Ordering::Acquire);
            let cap = r.welcome.ring_capacity;
            r.tx_word(128).store(head.wrapping_add(cap * 4 + 5), Ordering::Release);
            r.tx_bell.wake();
        }
        "bad-kind" => {
            let mut d = req(1);
            d.kind = 200;
            r.send(&d)?;
        }
        "bad-flags" => {
            let mut d = req(1);
            d.flags |= 0x80;
            r.send(&d)?;
        }
        "credit-caller" => {
            let open = Descriptor::new(Kind::StreamOpen, route, 7).with_aux(4 | STREAM_CHANNEL);
            r.send(&open.with_inline(b"open").ok_or("inline")?)?;
            let item = Descriptor::new(Kind::StreamItem, route, 7);
            r.send(&item.with_inline(b"uninvited").ok_or("inline")?)?;
        }
        "credit-server" => {
            let name = name.ok_or("credit-server NAME")?;
            let (instance, _) = match r.control(Request::Register { name: name.clone(), version: 1, weight: 1 })? {
                Reply::Registered { instance, route } => (instance, route),
                other => return Err(format!("unexpected reply {other:?}").into()),
            };
            println!("registered instance={instance}");
            let open = r.wait_for(Kind::StreamOpen, Duration::from_secs(20))?;
            let window = open.aux & 0xffff_ffff;
            let mut items = Vec::new();
            for i in 0..=window {
                let mut d = Descriptor::new(Kind::StreamItem, instance, open.correlation)
                    .with_inline(format!("item-{i}").as_bytes())
                    .ok_or("inline")?;
                d.flags |= flags::SERVER;
                items.push(d);
            }
            // One batch, published with one tail store: the daemon sees the
            // overrun before the caller could have granted more credit.
            r.send_batch(&items)?;
        }
        other => return Err(format!("unknown case {other}").into()),
    }
    println!("sent");
    let closed = r.wait_closed(Duration::from_secs(10));
    if closed {
        println!("closed");
    } else {
        // Say what the daemon did instead, for the failure message.
        let mut got = Vec::new();
        while let Ok(Some(d)) = r.rx.pop() {
            got.push(format!("{:?}(aux={})", Kind::from_u8(d.kind), d.aux));
        }
        println!("still-open got=[{}]", got.join(","));
    }
    Ok(())
}
