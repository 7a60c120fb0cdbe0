//! Fuzz harnesses for everything that reads what a peer, a file or the OS hands over.
//!
//! Each function takes arbitrary bytes, turns them into input for one
//! parser or one protocol end, and panics only if that end misbehaves: it
//! panicked itself, handed out the same chunk twice, or stopped serving an
//! honest client. Rejecting the input with an error is the expected outcome
//! for most bytes.
//!
//! They run two ways:
//!
//! * under libFuzzer, as the cargo-fuzz targets in `fuzz/` (nightly; see
//!   `fuzz/README.md`), which explore new inputs and keep the interesting
//!   ones in `fuzz/corpus/<target>/`;
//! * on stable, in `tests/tests/fuzz_corpus.rs`, over the checked-in corpus
//!   and a fixed set of pseudo-random inputs, so that every crash once found
//!   stays a test and the harnesses themselves keep compiling and running.
//!
//! | harness | what it feeds | what must hold |
//! |---|---|---|
//! | [`control()`] | bytes as a control frame, both directions | decoding fails cleanly or round-trips |
//! | [`descriptor_pool()`] | words as a descriptor; chunk references and pool operations | checks fail cleanly; no chunk is handed out twice |
//! | [`ring()`] | ring operations between raw writes to the ring's shared words | every operation returns, `Ok` or `Err` |
//! | [`segment_header()`] | bytes over a sealed segment's header | mapping it fails cleanly or validates |
//! | [`config()`] | text as a `hybusd` configuration file | parsing and checking fail cleanly |
//! | [`session()`] | a hostile client of a real daemon: control frames, ring descriptors, ring words | the daemon keeps serving an honest client |
//! | [`channel()`] | a hostile peer on a direct channel: descriptors on its data and return rings, raw words anywhere in the channel segment | the honest side cuts it off and keeps working |
//!
//! # Safety
//!
//! [`ring`] and [`segment_header`] write the shared words of their own
//! freshly created segment as atomics, at offsets checked against the
//! mapping, the way another process with a writable mapping could.

#![allow(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hybus::{Bus, BusOptions, Incoming, Route};
use hybus_layout::control::{self, ClientMessage, DaemonMessage, Reply, Request};
use hybus_layout::header::HEADER_REGION;
use hybus_layout::pool::{PoolAllocator, PoolGeometry, SizeClass};
use hybus_layout::{ring as shm_ring, ChunkRef, Descriptor, Kind, SegmentKind, Wake};
use hybus_os::segment::{Access, Segment};

use crate::raw::{self, Raw};

/// Reads fuzz input as a stream of small decisions; zeros once it runs out.
#[derive(Debug)]
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        let got = self.bytes(4);
        b[..got.len()].copy_from_slice(got);
        u32::from_le_bytes(b)
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.bytes(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }

    /// A number that is small more often than not: where limits are.
    fn size(&mut self) -> u64 {
        match self.u8() % 4 {
            0 => self.u8() as u64,
            1 => self.u32() as u64 & 0xffff,
            2 => self.u32() as u64,
            _ => self.u64(),
        }
    }

    /// A string of up to 300 bytes: often a plausible name, sometimes not UTF-8 clean.
    fn string(&mut self) -> String {
        let len = self.u8() as usize + if self.u8() % 8 == 0 { 45 } else { 0 };
        let raw = self.bytes(len);
        if raw.first().is_some_and(|b| b % 2 == 0) {
            // Mostly name characters, so that the daemon's later checks are reached.
            raw.iter().map(|&b| b"abcdefghijklmnopqrstuvwxyz0123456789._-"[b as usize % 39] as char).collect()
        } else {
            String::from_utf8_lossy(raw).into_owned()
        }
    }

    fn words(&mut self) -> [u64; 8] {
        std::array::from_fn(|_| self.u64())
    }
}

/// Decodes `data` as a control frame in each direction; whatever decodes must
/// encode and decode to itself.
pub fn control(data: &[u8]) {
    if let Some(p) = control::Preamble::parse(data) {
        assert_eq!(control::Preamble::parse(&p.to_bytes()), Some(p), "a preamble does not round-trip");
    }
    if let Ok(m) = control::decode::<ClientMessage>(data) {
        if let Ok(bytes) = control::encode(&m) {
            assert_eq!(control::decode::<ClientMessage>(&bytes).ok(), Some(m), "a request does not round-trip");
        }
    }
    if let Ok(m) = control::decode::<DaemonMessage>(data) {
        if let Ok(bytes) = control::encode(&m) {
            assert_eq!(control::decode::<DaemonMessage>(&bytes).ok(), Some(m), "a reply does not round-trip");
        }
    }
}

/// Checks an arbitrary descriptor and its chunk reference against a pool,
/// then runs allocations and frees (of held and of made-up chunks) and checks
/// that no chunk is ever handed out twice and that only held chunks free.
pub fn descriptor_pool(data: &[u8]) {
    let mut input = Input::new(data);
    let d = Descriptor::from_words(input.words());
    let _ = d.check();
    let _ = d.items();
    let _ = d.inline();
    assert_eq!(Descriptor::from_words(d.to_words()), d, "a descriptor does not survive its wire form");

    let classes: Vec<SizeClass> = (0..1 + input.u8() % 3)
        .map(|_| SizeClass { chunk_size: input.u32() % (1 << 22), count: input.u32() % 64 })
        .collect();
    let geometry = match PoolGeometry::new(&classes) {
        Ok(g) => g,
        Err(_) => PoolGeometry::default_classes(),
    };
    if let Some(c) = d.chunk() {
        let _ = geometry.check(c);
    }
    let mut alloc = PoolAllocator::new(geometry.clone(), 1);
    let mut held: Vec<ChunkRef> = Vec::new();
    while !input.is_empty() {
        match input.u8() % 4 {
            0 | 1 => {
                if let Ok(c) = alloc.alloc(input.size() as usize) {
                    assert!(geometry.check(c).is_ok(), "the allocator handed out a chunk its geometry refuses: {c:?}");
                    assert!(!held.iter().any(|h| h.offset == c.offset), "chunk {c:?} handed out twice");
                    held.push(c);
                }
            }
            2 if !held.is_empty() => {
                let c = held.swap_remove(input.u8() as usize % held.len());
                assert!(alloc.free(c).is_ok(), "freeing held chunk {c:?} failed");
            }
            _ => {
                // A made-up chunk: frees only if it is one we hold (then it is no longer held).
                let c = ChunkRef { segment: 1, len: input.u32(), offset: input.size() };
                if alloc.free(c).is_ok() {
                    let at = held.iter().position(|h| h.offset == c.offset);
                    let at = at.unwrap_or_else(|| panic!("a chunk never handed out freed: {c:?}"));
                    held.swap_remove(at);
                }
            }
        }
        assert_eq!(alloc.in_use() as usize, held.len(), "the allocator's count disagrees with what it handed out");
    }
}

/// The shared word at byte `offset` of `seg`.
fn word(seg: &Segment, offset: usize) -> &AtomicU64 {
    assert!(offset % 8 == 0 && offset + 8 <= seg.len(), "word {offset} outside the segment");
    // SAFETY: 8-aligned (the mapping is page-aligned) and in bounds (asserted
    // above); the mapping lives as long as `seg`; the shared words of a
    // segment are only ever accessed atomically.
    unsafe { AtomicU64::from_ptr(seg.as_ptr().as_ptr().add(offset).cast()) }
}

/// Runs ring operations on both ends of one ring, between raw writes to its
/// shared words (capacity, indices, parked word, slots): every operation must
/// return. Values popped before the first raw write must be those pushed.
pub fn ring(data: &[u8]) {
    let mut input = Input::new(data);
    let cap = 1u64 << (input.u8() % 5 + 1);
    let Ok(seg) =
        Segment::create(c"fuzz-ring", SegmentKind::ClientRings, HEADER_REGION + shm_ring::memory_size(cap), cap)
    else {
        return;
    };
    let seg = Arc::new(seg);
    let Ok((mut p, mut c)) = seg.init_ring(HEADER_REGION, cap) else {
        return;
    };
    let ring_words = shm_ring::memory_size(cap) / 8;
    let mut sent = std::collections::VecDeque::new();
    let mut honest = true;
    let mut out = [Descriptor::new(Kind::Fire, 0, 0); 8];
    let mut n = 0u64;
    while !input.is_empty() {
        match input.u8() % 8 {
            0 | 1 => {
                n += 1;
                let d = Descriptor::new(Kind::Fire, 1, n);
                if p.push(&d).is_ok() {
                    sent.push_back(d);
                }
            }
            2 => {
                let got = c.pop();
                if honest {
                    assert_eq!(got, Ok(sent.pop_front()), "an honest ring lost or reordered a descriptor");
                }
            }
            3 => {
                let want = input.u8() as usize % out.len();
                if let Ok(k) = c.pop_batch(&mut out[..want]) {
                    if honest {
                        for d in &out[..k] {
                            assert_eq!(Some(*d), sent.pop_front(), "an honest batch lost or reordered a descriptor");
                        }
                    }
                }
            }
            4 => {
                let _ = (c.len(), c.is_empty(), p.free(), p.needs_wake());
                if c.prepare_park().is_ok() {
                    c.finish_park();
                }
            }
            5 => {
                let batch: Vec<Descriptor> = (0..input.u8() % 8)
                    .map(|_| {
                        n += 1;
                        Descriptor::new(Kind::Fire, 1, n)
                    })
                    .collect();
                if let Ok(k) = p.push_batch(&batch) {
                    sent.extend(&batch[..k]);
                }
            }
            _ => {
                // A raw write, as a hostile peer with a writable mapping could.
                honest = false;
                let at = input.u32() as usize % ring_words;
                word(&seg, HEADER_REGION + at * 8).store(input.size(), SeqCst);
            }
        }
    }
}

/// Writes `data` over the header of a sealed segment and maps it again the
/// way a peer's segment is mapped: the header either validates or is
/// refused with an error.
pub fn segment_header(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = [SegmentKind::ClientRings, SegmentKind::Pool, SegmentKind::Channel][input.u8() as usize % 3];
    let len = HEADER_REGION * (1 + input.u8() as usize % 4);
    let Ok(seg) = Segment::create(c"fuzz-header", kind, len, input.u64()) else {
        return;
    };
    for i in 0..(HEADER_REGION / 8).min(input.data.len().div_ceil(8)) {
        word(&seg, i * 8).store(input.u64(), SeqCst);
    }
    let Ok(fd) = seg.fd().try_clone_to_owned() else {
        return;
    };
    let _ = Segment::open(fd, Access::ReadOnly, kind);
}

/// Parses `data` as a `hybusd` configuration file and checks it.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = hybusd::Config::parse(&text) {
        let _ = c.pool_geometry();
        let _ = c.idle_strategy();
    }
}

/// The daemon the session harness talks to, an echo service on it, and an
/// honest caller that must keep being served.
struct Stage {
    _daemon: hybusd::Embedded,
    _dir: crate::TempDir,
    path: PathBuf,
    caller: Bus,
    route: Route,
}

/// The honest service every session must leave working.
const ECHO: &str = "fuzz.echo";

fn stage() -> &'static Stage {
    static STAGE: OnceLock<Stage> = OnceLock::new();
    STAGE.get_or_init(|| {
        let dir = crate::TempDir::new("fuzz");
        let path = dir.path().join("bus.sock");
        let mut config = hybusd::Config::default();
        // Reached within a run, so that refusing a new name is explored too
        // (and memory stays flat over millions of sessions).
        config.limits.names = 256;
        let daemon = hybusd::Embedded::start(&path, config).expect("embedded daemon");
        let opts = |label: &str| BusOptions {
            path: Some(path.clone()),
            label: label.into(),
            idle: hybus::IdleStrategy::default(),
            reconnect: false,
        };
        let server = Bus::connect_with(opts("fuzz-echo")).expect("echo connects");
        let svc = server.register(ECHO).expect("echo registers");
        std::thread::spawn(move || loop {
            match svc.next(Duration::from_secs(3600)) {
                Ok(Some(Incoming::Request(req))) => {
                    let answer = req.payload().to_vec();
                    let _ = req.reply(&answer);
                }
                Ok(_) => {}
                Err(e) => panic!("the honest echo service failed: {e}"),
            }
        });
        let caller = Bus::connect_with(opts("fuzz-caller")).expect("caller connects");
        let route = caller.resolve(ECHO).expect("echo resolves");
        Stage { _daemon: daemon, _dir: dir, path, caller, route }
    })
}

/// A control request chosen and filled in by the input.
fn request(input: &mut Input<'_>) -> Request {
    match input.u8() % 17 {
        0 => Request::Hello {
            version: input.u32() % 4,
            layout_hash: input.u64(),
            label: input.string(),
            reuse_pool: input.u8() % 2 == 0,
        },
        1 => Request::Register {
            name: input.string(),
            version: input.u32(),
            weight: input.u32(),
            exclusive: input.u8() & 1 != 0,
            replace: input.u8() & 1 != 0,
        },
        2 => Request::Unregister { instance: input.u32() % 64 },
        3 => Request::Drain { instance: input.u32() % 64 },
        4 => Request::Topic { name: input.string() },
        5 => Request::Resolve { name: input.string() },
        6 => Request::List,
        7 => Request::Watch { prefix: input.string() },
        8 => Request::Subscribe { topic: input.string() },
        9 => Request::Unsubscribe { route: input.u32() % 64 },
        10 => Request::Stats,
        11 => Request::Status,
        12 => Request::Direct { route: input.u32() % 64 },
        13 => Request::CloseDirect { channel: input.u32() % 64 },
        14 => Request::AdoptChannel {
            token: input.u64(),
            side: input.u8(),
            service: input.string(),
            peer_pid: input.u32() as i32,
        },
        15 => Request::Monitor { prefix: input.string() },
        _ => Request::Resolve { name: ECHO.into() },
    }
}

/// A descriptor that gets past the ring: a real kind and route, fuzzed the rest,
/// sometimes with a real chunk of our pool (made wrong in one field or not).
fn descriptor(input: &mut Input<'_>, raw: &Raw, routes: &[u32]) -> Descriptor {
    if input.u8() % 4 == 0 {
        return Descriptor::from_words(input.words());
    }
    let kind = Kind::from_u8(input.u8() % 16).unwrap_or(Kind::Request);
    let route = match routes.get(input.u8() as usize % (routes.len() + 1)) {
        Some(&r) => r,
        None => input.u32(),
    };
    let mut d = Descriptor::new(kind, route, input.size()).with_aux(input.size());
    if input.u8() % 2 == 0 {
        let mut alloc = PoolAllocator::new(raw.geometry.clone(), raw.welcome.client_id);
        if let Ok(c) = alloc.alloc(input.size() as usize % 70_000) {
            let c = match input.u8() % 5 {
                0 => ChunkRef { offset: input.size(), ..c },
                1 => ChunkRef { len: input.u32(), ..c },
                2 => ChunkRef { segment: input.u32() % 8, ..c },
                _ => c,
            };
            d = d.with_chunk(c);
        }
    } else if let Some(with) = d.with_inline(input.bytes(40)) {
        d = with;
    }
    d.flags ^= input.u8() & input.u8();
    d
}

/// Calls the stage's echo service as its honest caller; a few retries while a
/// hostile client's instance of a name (gone with it) may still be picked.
fn honest_call(stage: &Stage, after: &str) {
    let mut last = None;
    for _ in 0..5 {
        match stage.caller.call(&stage.route, b"still there?", Duration::from_secs(10)) {
            Ok(answer) => {
                assert_eq!(&answer[..], b"still there?", "the echo answered something else");
                return;
            }
            Err(e @ (hybus::Error::PeerGone | hybus::Error::NotFound(_))) => last = Some(e),
            Err(e) => panic!("the honest caller was not served after {after}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the honest call kept failing after {after}: {last:?}");
}

/// A hostile peer on a direct channel with the stage's honest caller.
///
/// A raw client registers a service, the honest caller asks for a direct
/// channel to it, and the raw side (which maps the channel segment
/// read-write, as any peer does) puts what the input says on the channel:
/// plausible and arbitrary descriptors on its data ring, returns of chunks
/// it was never lent, raw writes to any word of the segment (ring indices,
/// counters, slots), interleaved with honest calls that make the caller
/// read the channel. The caller must cut the channel off rather than
/// misbehave, and keep being served.
pub fn channel(data: &[u8]) {
    let stage = stage();
    let mut input = Input::new(data);
    let mut raw = Raw::connect(&stage.path.to_string_lossy())
        .unwrap_or_else(|e| panic!("the daemon refused a new client after earlier sessions: {e}"));
    let name = format!("fuzz.chan{}", input.u8() % 4);
    let registered =
        raw.control(Request::Register { name: name.clone(), version: 1, weight: 1, exclusive: false, replace: false });
    let Ok(Reply::Registered { instance, .. }) = registered else {
        panic!("a fresh client could not register {name}: {registered:?}");
    };
    // An instance of the name from an earlier session, not yet seen gone, may have been picked.
    if stage.caller.resolve(&name).and_then(|route| stage.caller.request_direct(&route)).is_err() {
        return;
    }
    let Ok(mut ch) = raw.await_direct(Duration::from_secs(5)) else {
        return;
    };
    let words = ch.layout.size / 8;
    let mut ops = 0;
    while !input.is_empty() && ops < 64 {
        ops += 1;
        match input.u8() % 6 {
            0 | 1 => {
                let mut d = descriptor(&mut input, &raw, &[instance]);
                if input.u8() % 2 == 0 {
                    d.flags |= hybus_layout::descriptor::flags::SERVER;
                }
                let _ = ch.tx.push(&d);
            }
            2 => {
                let c = ChunkRef { segment: ch.info.peer, len: input.u32(), offset: input.size() };
                let _ = ch.rel_tx.push(&Descriptor::new(Kind::Release, 0, 0).with_chunk(c));
            }
            3 | 4 => {
                let at = input.u32() as usize % words * 8;
                ch.word(at).store(input.size(), SeqCst);
            }
            _ => honest_call(stage, "a hostile peer wrote into its direct channel"),
        }
        ch.peer_bell.wake();
    }
    honest_call(stage, "a hostile peer wrote into its direct channel");
    drop(ch);
    drop(raw);
}

/// One hostile client session against a real daemon, then a check that an
/// honest client is still served.
///
/// The input picks a sequence of: control requests (well-formed, with
/// fuzzed fields), raw control frames, descriptors pushed onto the client's
/// ring (plausible or arbitrary), raw writes to the ring's shared words, and
/// reads of whatever the daemon sent. The session then hangs up, and the
/// honest caller's call to the echo service must be answered.
pub fn session(data: &[u8]) {
    let stage = stage();
    let mut input = Input::new(data);
    let mut raw = Raw::connect(&stage.path.to_string_lossy())
        .unwrap_or_else(|e| panic!("the daemon refused a new client after earlier sessions: {e}"));
    {
        let mut routes = vec![raw.resolve(ECHO).unwrap_or(0)];
        let mut ops = 0;
        while !input.is_empty() && ops < 64 {
            ops += 1;
            let sent = match input.u8() % 8 {
                0 | 1 => {
                    let request = request(&mut input);
                    control::encode(&ClientMessage { id: input.u64(), request })
                        .map_err(|e| e.to_string())
                        .and_then(|b| raw.sock.send(&b, &[]).map_err(|e| e.to_string()))
                }
                2 => {
                    let len = input.u8() as usize * 4;
                    raw.sock.send(input.bytes(len), &[]).map_err(|e| e.to_string())
                }
                3 | 4 => {
                    let d = descriptor(&mut input, &raw, &routes);
                    let _ = raw.tx.push(&d);
                    raw.tx_bell.wake();
                    Ok(())
                }
                5 => {
                    let at = [raw::CAPACITY, raw::TAIL, raw::HEAD, raw::PARKED][input.u8() as usize % 4];
                    raw.tx_word(at).store(input.size(), SeqCst);
                    raw.tx_bell.wake();
                    Ok(())
                }
                6 => {
                    if let Ok(Reply::Registered { route, .. }) = raw.control(Request::Register {
                        name: format!("fuzz.s{}", input.u8() % 4),
                        version: 1,
                        weight: 1,
                        exclusive: false,
                        replace: false,
                    }) {
                        routes.push(route);
                    }
                    Ok(())
                }
                _ => {
                    raw.drain();
                    Ok(())
                }
            };
            // Cut off: what follows would only be refused too.
            if sent.is_err() {
                break;
            }
        }
    }
    honest_call(stage, "a hostile session");
}
