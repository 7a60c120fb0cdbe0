//! The whole bus, path by path, beside this machine's limits measured in the same run.
//!
//! The same paths as `hybusctl bench` (docs/ARCHITECTURE.md §9), as criterion benches.
//! An embedded daemon ([`hybusd::Embedded`]) runs on a thread of this
//! process; every server is a real process, `hybus-bench-worker`, one per
//! group (four for pub/sub), started before the group and killed after it.
//!
//! * `limit/cacheline-2p`, `limit/cacheline-3p`, `limit/eventfd`,
//!   `baseline/uds/<bytes>` — the floors: one atomic each way between two
//!   processes, the same relayed through a third (the shape of a brokered
//!   round trip), two processes blocking on eventfds, and a Unix-socket
//!   ping-pong (what a user would otherwise write);
//! * `brokered/rpc/<bytes>`, `direct/rpc/<bytes>` — sequential round trips
//!   to an echo worker, through the daemon or over a direct channel, client
//!   and worker spinning (1 000 spins, then yields; never asleep);
//! * `brokered/rpc-blocking/<bytes>`, `direct/rpc-blocking/<bytes>` — the
//!   same with both sides parking at once: every message is a wake-up;
//! * `brokered/fire/<bytes>`, `direct/fire/<bytes>` — fire-and-forget to a
//!   sink that reads every byte, in windows of [`WINDOW`] messages, each
//!   closed when the sink has counted all of it (the sustained rate: past
//!   its queue limit the daemon refuses fires rather than queue them);
//! * `brokered/stream/64`, `direct/stream/64` — one request-stream of
//!   `iters` items per sample, every byte of every item checked;
//! * `brokered/pubsub-4/<bytes>` — one publisher, four subscriber
//!   processes, in windows of [`WINDOW`] publications, each closed when
//!   every subscriber has counted all of it.
//!
//! Payloads up to [`hybus::INLINE_PAYLOAD`] bytes travel inside the
//! descriptor; larger ones are written in place into a loaned chunk. Round
//! trips of more than 40 bytes measure the zero-copy claim itself: only the
//! first 8 bytes (the sequence number, checked) are touched on each side.
//! Fire, stream and publish write every byte they send; the sink and the
//! stream caller read every byte they receive, subscribers only the first.
//!
//! Every path is checked before it is timed (answers echo the sequence
//! number, the sink's byte sum matches what was sent, stream items arrive
//! in order with the right bytes), and the timed runs keep checking, so a
//! fast but broken path panics instead of producing a figure. A run that
//! makes no progress for two minutes (a lost wake-up leaves a fire or a
//! publish, which have no deadline, blocked for good) ends with an error
//! instead of hanging.
//!
//! `cargo bench -p hybus-benches --bench bus` runs all of it (under two
//! minutes on a 2-core machine); `-- direct/` runs the matching benches
//! only (every group still starts its workers and runs its check);
//! `-- --test` runs each once.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use hybus::{Bus, BusOptions, IdleStrategy, Publisher, Route, Sample, INLINE_PAYLOAD};
use hybus_benches::limits::{cacheline_relay_3p, eventfd_pingpong_2p, uds_pingpong_2p};
use hybus_benches::{cacheline_pingpong_2p, BenchError};

/// Payload sizes of the round-trip, fire and pub/sub groups.
const PAYLOADS: [usize; 3] = [8, 4096, 1 << 20];

/// Item size of the stream groups.
const STREAM_ITEM: usize = 64;

/// Credits of a stream: items in flight to the caller at once (as `hybusctl bench`).
const STREAM_WINDOW: u32 = 256;

/// Subscriber processes of the pub/sub group.
const SUBSCRIBERS: usize = 4;

/// Round trips, fires, items or publications of a check before timing.
const CHECK: u64 = 200;

/// Fires or publications sent before the sender waits until every receiver
/// counted them. The daemon queues at most 65 536 descriptors for a receiver
/// whose ring is full (`limits.queue_per_client`); past that it refuses fires
/// (`BusEvent::FireFailed`) and drops the oldest publications, and a figure
/// must not count messages that never arrived. A window far below that
/// limit keeps every message; the wait it adds is one drain per window.
const WINDOW: u64 = 8_192;

/// How long one call, loan or stream item may take before the bench fails.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a sink or subscriber may take to count what was sent before the bench fails.
const SETTLE: Duration = Duration::from_secs(60);

/// How long the run may go without progress (a sample, a check, a worker
/// start) before the watchdog ends it: a lost wake-up blocks a fire or a
/// publish with no deadline, and a bench that hangs is worse than one that fails.
const STALL: Duration = Duration::from_secs(120);

/// What the run is doing, and when it last made progress.
static PROGRESS: Mutex<Option<(Instant, String)>> = Mutex::new(None);

/// Says what the run does from now on (and that it made progress).
fn begin(what: impl Into<String>) {
    *PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), what.into()));
}

/// Says the run made progress; returns `v` (wraps what `iter_custom` returns).
fn alive<T>(v: T) -> T {
    if let Some(p) = PROGRESS.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        p.0 = Instant::now();
    }
    v
}

/// Starts the thread that ends the process when it makes no progress for
/// [`STALL`]. Workers exit with it (their stdin closes); `dir` is removed.
fn watchdog(dir: PathBuf) {
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(1));
        let stalled = match &*PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((t, what)) if t.elapsed() > STALL => Some(what.clone()),
            _ => None,
        };
        if let Some(what) = stalled {
            eprintln!("bus bench: no progress for {STALL:?} in {what}: giving up (a lost wake-up?)");
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(2);
        }
    });
}

/// The workspace's own way of failing a bench: a panic that says what failed.
trait OrDie<T> {
    /// The value, or a panic with `what` and the error.
    fn or_die(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrDie<T> for Result<T, E> {
    #[track_caller]
    fn or_die(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// How both sides of a path wait.
#[derive(Debug, Clone, Copy)]
enum Idle {
    /// Poll and yield, never asleep: three parties on two cores (brokered).
    Spin,
    /// Spin, never yield, never sleep: two parties with a core each (direct).
    Busy,
    /// The library's default: spin, yield, then park.
    Default,
    /// Park at once: every message is a wake-up.
    Park,
}

impl Idle {
    /// The client library's strategy.
    fn strategy(self) -> IdleStrategy {
        // The same table the workers use, by the same name.
        hybus_benches::worker::idle_strategy(self.arg()).unwrap_or(IdleStrategy::DEFAULT)
    }

    /// The worker's `--idle` argument for the same strategy.
    fn arg(self) -> &'static str {
        match self {
            Idle::Spin => "spin",
            Idle::Busy => "busy",
            Idle::Default => "default",
            Idle::Park => "park",
        }
    }
}

/// Which way a path goes: through the daemon, or over a direct channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Client → daemon → worker and back.
    Brokered,
    /// Client ↔ worker over a direct channel the daemon set up and left.
    Direct,
}

impl Via {
    /// The first part of a group's name.
    fn name(self) -> &'static str {
        match self {
            Via::Brokered => "brokered",
            Via::Direct => "direct",
        }
    }
}

/// The embedded daemon and its private directory (removed on drop).
struct Daemon {
    /// The daemon's thread (`None` once stopped).
    embedded: Option<hybusd::Embedded>,
    /// A directory of our own for the socket.
    dir: PathBuf,
    /// The control socket.
    socket: PathBuf,
}

impl Daemon {
    /// Starts a daemon with the default configuration on a fresh socket.
    fn start() -> Daemon {
        let dir = std::env::temp_dir().join(format!("hybus-bench-bus-{}", std::process::id()));
        let socket = dir.join("bus.sock");
        let embedded = hybusd::Embedded::start(&socket, hybusd::Config::default()).or_die("cannot start the daemon");
        watchdog(dir.clone());
        Daemon { embedded: Some(embedded), dir, socket }
    }

    /// A client connection waiting with `idle`.
    fn client(&self, idle: Idle) -> Bus {
        let opts = BusOptions {
            path: Some(self.socket.clone()),
            label: "bench-bus".into(),
            idle: idle.strategy(),
            reconnect: false,
        };
        Bus::connect_with(opts).or_die("cannot connect to the embedded daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(d) = self.embedded.take() {
            if let Err(e) = d.stop() {
                eprintln!("the embedded daemon stopped with an error: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `hybus-bench-worker` process; killed and reaped on drop (and it exits by itself when our end of its stdin closes).
struct Worker {
    /// The process; its stdin is the pipe whose closing ends it.
    child: Child,
}

impl Worker {
    /// Starts `hybus-bench-worker SOCKET ROLE NAME [EXTRA] --idle IDLE` and waits for its `ready`.
    fn start(socket: &Path, role: &str, name: &str, extra: Option<&str>, idle: Idle) -> Worker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hybus-bench-worker"));
        cmd.arg(socket).args([role, name]).args(extra).args(["--idle", idle.arg()]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().or_die(&format!("cannot start the {role} worker"));
        let Some(stdout) = child.stdout.take() else { panic!("the {role} worker has no stdout") };
        let worker = Worker { child };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            // Keep draining so the worker never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(l)) if l.starts_with("ready") => worker,
            Ok(Some(l)) => panic!("the {role} worker said {l:?} instead of ready"),
            _ => panic!("the {role} worker did not start (its error, if any, is above)"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A name no other group of this run uses.
fn unique(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Opens a direct channel for `route` when `via` asks for one.
fn open_via(bus: &Bus, route: &Route, via: Via) {
    if via == Via::Direct {
        bus.request_direct(route).or_die("the daemon refused a direct channel");
        assert!(bus.is_direct(route), "the direct channel to {} did not open", route.name());
    }
}

/// Modest settings: the whole file runs in under two minutes.
fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(2));
}

/// Writes `seq` into `buf`: its first (up to) 8 bytes little endian, the rest the byte `seq * 31`.
fn fill(buf: &mut [u8], seq: u64) {
    buf.fill((seq as u8).wrapping_mul(31));
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// The sum of the bytes [`fill`] writes into `len` bytes for `seq`, without writing them.
fn fill_sum(len: usize, seq: u64) -> u64 {
    let n = len.min(8);
    let head: u64 = seq.to_le_bytes()[..n].iter().map(|&b| u64::from(b)).sum();
    head + u64::from((seq as u8).wrapping_mul(31)) * (len - n) as u64
}

/// Two little-endian words of a count answer.
fn words(answer: &Sample) -> (u64, u64) {
    let word = |i: usize| {
        let b: [u8; 8] = answer.get(i * 8..i * 8 + 8).and_then(|s| s.try_into().ok()).unwrap_or_else(|| {
            panic!("a count answer of {} bytes: expected 16", answer.len());
        });
        u64::from_le_bytes(b)
    };
    (word(0), word(1))
}

/// Asks `route` for its two counters until `done` says they are complete; returns them.
/// A full queue on the way is a reason to ask again, not to fail.
fn poll_counts(bus: &Bus, route: &Route, done: impl Fn(u64, u64) -> bool) -> (u64, u64) {
    let end = Instant::now() + SETTLE;
    loop {
        let counts = match bus.call(route, b"count", TIMEOUT) {
            Ok(answer) => words(&answer),
            Err(e) if e.is_transient() && Instant::now() < end => (0, 0),
            Err(e) => panic!("asking {} for its count: {e}", route.name()),
        };
        if done(counts.0, counts.1) {
            return counts;
        }
        assert!(Instant::now() < end, "{} counted only {:?} after {SETTLE:?}", route.name(), counts);
        std::thread::sleep(Duration::from_micros(50));
    }
}

// ---------------------------------------------------------------- limits

/// Total time of `iters` round trips (the samples tile the run, so their sum is its wall time).
fn total(samples: Result<Vec<u64>, BenchError>, what: &str) -> Duration {
    Duration::from_nanos(samples.or_die(what).iter().sum())
}

/// The floors: `limit/*` and `baseline/uds/*`.
fn limits(c: &mut Criterion) {
    begin("checking the limits");
    // Each helper checks what it moves; a short run of each fails here, before any timing.
    total(cacheline_pingpong_2p(CHECK), "limit/cacheline-2p");
    total(cacheline_relay_3p(CHECK), "limit/cacheline-3p");
    total(eventfd_pingpong_2p(CHECK), "limit/eventfd");
    for p in PAYLOADS {
        total(uds_pingpong_2p(20, p), "baseline/uds");
    }
    let mut g = c.benchmark_group("limit");
    configure(&mut g);
    begin("limit");
    g.bench_function("cacheline-2p", |b| {
        b.iter_custom(|n| alive(total(cacheline_pingpong_2p(n), "limit/cacheline-2p")))
    });
    g.bench_function("cacheline-3p", |b| b.iter_custom(|n| alive(total(cacheline_relay_3p(n), "limit/cacheline-3p"))));
    g.bench_function("eventfd", |b| b.iter_custom(|n| alive(total(eventfd_pingpong_2p(n), "limit/eventfd"))));
    g.finish();
    let mut g = c.benchmark_group("baseline/uds");
    configure(&mut g);
    for p in PAYLOADS {
        g.bench_function(BenchmarkId::from_parameter(p), |b| {
            b.iter_custom(|n| alive(total(uds_pingpong_2p(n, p), "baseline/uds")))
        });
    }
    g.finish();
}

// ---------------------------------------------------------------- rpc

/// A caller of an echo worker.
struct Rpc {
    /// The caller's connection.
    bus: Bus,
    /// The echo worker.
    route: Route,
    /// The next sequence number.
    seq: u64,
    /// The request of an inline round trip.
    buf: [u8; INLINE_PAYLOAD],
    /// Dropped last: the worker outlives the connection.
    _worker: Worker,
}

impl Rpc {
    /// Starts an echo worker and a caller that waits with `idle`, going `via`.
    fn start(d: &Daemon, idle: Idle, via: Via) -> Rpc {
        let name = unique("bench.echo");
        let worker = Worker::start(&d.socket, "echo", &name, None, idle);
        let bus = d.client(idle);
        let route = bus.resolve(&name).or_die("cannot resolve the echo worker");
        open_via(&bus, &route, via);
        Rpc { bus, route, seq: 0, buf: [0; INLINE_PAYLOAD], _worker: worker }
    }

    /// One round trip of `payload` bytes carrying the next sequence number;
    /// panics unless the answer has the size and the number.
    #[inline]
    fn round_trip(&mut self, payload: usize) -> Sample {
        let seq = self.seq.to_le_bytes();
        self.seq += 1;
        let n = payload.min(8);
        let answer = if payload <= INLINE_PAYLOAD {
            self.buf[..n].copy_from_slice(&seq[..n]);
            self.bus.call(&self.route, &self.buf[..payload], TIMEOUT).or_die("call")
        } else {
            let mut loan = self.bus.loan(payload, TIMEOUT).or_die("loan");
            loan[..8].copy_from_slice(&seq);
            self.bus.call_loan(&self.route, loan, TIMEOUT).or_die("call_loan")
        };
        assert!(answer.len() == payload && answer[..n] == seq[..n], "echo answered the wrong payload");
        answer
    }

    /// Round trips checked in full: inline answers byte for byte, larger ones read in place.
    fn check(&mut self, payload: usize) {
        for _ in 0..CHECK {
            let answer = self.round_trip(payload);
            if payload <= INLINE_PAYLOAD {
                assert_eq!(&answer[..], &self.buf[..payload], "echo changed the payload");
            } else {
                assert!(answer.is_zero_copy(), "a {payload}-byte answer was not read in place");
            }
        }
    }

    /// `iters` round trips, timed.
    fn time(&mut self, payload: usize, iters: u64) -> Duration {
        let t = Instant::now();
        for _ in 0..iters {
            drop(self.round_trip(payload));
        }
        t.elapsed()
    }
}

/// `<via>/rpc` (spinning) or `<via>/rpc-blocking` (parking).
fn rpc(c: &mut Criterion, d: &Daemon, via: Via, idle: Idle) {
    let group = match idle {
        Idle::Park => format!("{}/rpc-blocking", via.name()),
        _ => format!("{}/rpc", via.name()),
    };
    begin(format!("{group}: starting"));
    let mut rpc = Rpc::start(d, idle, via);
    let mut g = c.benchmark_group(&group);
    configure(&mut g);
    for p in PAYLOADS {
        begin(format!("{group}/{p}: checking"));
        rpc.check(p);
        begin(format!("{group}/{p}"));
        g.bench_function(BenchmarkId::from_parameter(p), |b| b.iter_custom(|iters| alive(rpc.time(p, iters))));
    }
    g.finish();
}

// ---------------------------------------------------------------- fire

/// A sender of fires to a sink worker.
struct Fire {
    /// The sender's connection.
    bus: Bus,
    /// The sink worker.
    route: Route,
    /// Fires sent so far (the next one's sequence number).
    sent: u64,
    /// The wrapping sum of every byte sent so far.
    sum: u64,
    /// The payload of an inline fire.
    buf: [u8; INLINE_PAYLOAD],
    /// Dropped last: the worker outlives the connection.
    _worker: Worker,
}

impl Fire {
    /// Starts a sink worker and a sender going `via`.
    fn start(d: &Daemon, via: Via) -> Fire {
        let name = unique("bench.sink");
        let worker = Worker::start(&d.socket, "sink", &name, None, Idle::Default);
        let bus = d.client(Idle::Default);
        let route = bus.resolve(&name).or_die("cannot resolve the sink worker");
        open_via(&bus, &route, via);
        Fire { bus, route, sent: 0, sum: 0, buf: [0; INLINE_PAYLOAD], _worker: worker }
    }

    /// Fires `n` messages of `payload` bytes, each byte written.
    #[inline]
    fn send(&mut self, payload: usize, n: u64) {
        for _ in 0..n {
            let seq = self.sent;
            if payload <= INLINE_PAYLOAD {
                fill(&mut self.buf[..payload], seq);
                self.bus.fire(&self.route, &self.buf[..payload]).or_die("fire");
            } else {
                let mut loan = self.bus.loan(payload, TIMEOUT).or_die("loan");
                fill(&mut loan, seq);
                self.bus.fire_loan(&self.route, loan).or_die("fire_loan");
            }
            self.sent += 1;
            self.sum = self.sum.wrapping_add(fill_sum(payload, seq));
        }
    }

    /// Waits until the sink has counted every fire; panics unless it got exactly the bytes sent.
    fn settle(&self) {
        let sent = self.sent;
        let (count, sum) = poll_counts(&self.bus, &self.route, |count, _| count >= sent);
        assert_eq!(count, sent, "the sink counted more fires than were sent");
        assert_eq!(sum, self.sum, "the sink received other bytes than were sent");
    }

    /// `iters` fires and the wait until the sink counted them, timed.
    fn time(&mut self, payload: usize, iters: u64) -> Duration {
        let t = Instant::now();
        let mut left = iters;
        while left > 0 {
            let n = left.min(WINDOW);
            self.send(payload, n);
            self.settle();
            left -= n;
        }
        t.elapsed()
    }
}

/// `<via>/fire`.
fn fire(c: &mut Criterion, d: &Daemon, via: Via) {
    let group = format!("{}/fire", via.name());
    begin(format!("{group}: starting"));
    let mut fire = Fire::start(d, via);
    let mut g = c.benchmark_group(&group);
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    for p in PAYLOADS {
        begin(format!("{group}/{p}: checking"));
        fire.send(p, CHECK);
        fire.settle();
        begin(format!("{group}/{p}"));
        g.bench_function(BenchmarkId::from_parameter(p), |b| b.iter_custom(|iters| alive(fire.time(p, iters))));
    }
    g.finish();
}

// ---------------------------------------------------------------- stream

/// A caller of a streamer worker.
struct Streamer {
    /// The caller's connection.
    bus: Bus,
    /// The streamer worker.
    route: Route,
    /// Dropped last: the worker outlives the connection.
    _worker: Worker,
}

impl Streamer {
    /// Starts a streamer worker and a caller going `via`.
    fn start(d: &Daemon, via: Via) -> Streamer {
        let name = unique("bench.stream");
        let worker = Worker::start(&d.socket, "streamer", &name, None, Idle::Default);
        let bus = d.client(Idle::Default);
        let route = bus.resolve(&name).or_die("cannot resolve the streamer worker");
        open_via(&bus, &route, via);
        Streamer { bus, route, _worker: worker }
    }

    /// Receives one stream of `n` items of `size` bytes; panics unless every
    /// item arrives in order with its index and its fill byte.
    fn receive(&self, n: u64, size: usize) {
        let ask = format!("n={n} size={size}");
        let mut s = self.bus.request_stream(&self.route, ask.as_bytes(), STREAM_WINDOW).or_die("request_stream");
        let mut i = 0u64;
        while let Some(item) = s.next(TIMEOUT).or_die("stream item") {
            assert_eq!(item.len(), size, "stream item {i} has the wrong size");
            assert_eq!(item[..8], i.to_le_bytes(), "stream item {i} arrived out of order");
            assert!(item[8..].iter().all(|&b| b == i as u8), "stream item {i} has the wrong bytes");
            i += 1;
        }
        assert_eq!(i, n, "the stream ended after {i} of {n} items");
    }
}

/// `<via>/stream`.
fn stream(c: &mut Criterion, d: &Daemon, via: Via) {
    let group = format!("{}/stream", via.name());
    begin(format!("{group}: starting and checking"));
    let streamer = Streamer::start(d, via);
    streamer.receive(CHECK, STREAM_ITEM);
    let mut g = c.benchmark_group(&group);
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    begin(format!("{group}/{STREAM_ITEM}"));
    g.bench_function(BenchmarkId::from_parameter(STREAM_ITEM), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            streamer.receive(iters, STREAM_ITEM);
            alive(t.elapsed())
        })
    });
    g.finish();
}

// ---------------------------------------------------------------- pub/sub

/// A publisher and its subscriber workers.
struct PubSub {
    /// The publisher's connection.
    bus: Bus,
    /// The topic.
    publisher: Publisher,
    /// Each subscriber's count service.
    reports: Vec<Route>,
    /// Publications so far.
    published: u64,
    /// The payload of an inline publication.
    buf: [u8; INLINE_PAYLOAD],
    /// Dropped last: the workers outlive the connection.
    _workers: Vec<Worker>,
}

impl PubSub {
    /// Starts `subscribers` subscriber workers on a fresh topic, and the publisher.
    fn start(d: &Daemon, subscribers: usize) -> PubSub {
        let topic = unique("bench.topic");
        let mut workers = Vec::with_capacity(subscribers);
        let mut names = Vec::with_capacity(subscribers);
        for i in 0..subscribers {
            let report = format!("{topic}.sub{i}");
            workers.push(Worker::start(&d.socket, "subscriber", &topic, Some(&report), Idle::Default));
            names.push(report);
        }
        let bus = d.client(Idle::Default);
        let reports = names.iter().map(|r| bus.resolve(r).or_die("cannot resolve a subscriber")).collect();
        let publisher = bus.publisher(&topic).or_die("cannot publish");
        PubSub { bus, publisher, reports, published: 0, buf: [0; INLINE_PAYLOAD], _workers: workers }
    }

    /// Publishes `n` messages of `payload` bytes, each byte written.
    #[inline]
    fn publish(&mut self, payload: usize, n: u64) {
        for _ in 0..n {
            if payload <= INLINE_PAYLOAD {
                fill(&mut self.buf[..payload], self.published);
                self.publisher.publish(&self.buf[..payload]).or_die("publish");
            } else {
                let mut loan = self.bus.loan(payload, TIMEOUT).or_die("loan");
                fill(&mut loan, self.published);
                self.publisher.publish_loan(loan).or_die("publish_loan");
            }
            self.published += 1;
        }
    }

    /// Waits until every subscriber has counted every publication. A
    /// subscriber that dropped some (too slow for its queue) fails the
    /// bench: the figure would count messages that never arrived.
    fn settle(&self) {
        let published = self.published;
        for r in &self.reports {
            let (count, dropped) = poll_counts(&self.bus, r, |count, dropped| count + dropped >= published);
            assert_eq!(dropped, 0, "{} dropped {dropped} of {published} publications", r.name());
            assert_eq!(count, published, "{} counted more publications than were sent", r.name());
        }
    }

    /// `iters` publications and the wait until every subscriber counted them, timed.
    fn time(&mut self, payload: usize, iters: u64) -> Duration {
        let t = Instant::now();
        let mut left = iters;
        while left > 0 {
            let n = left.min(WINDOW);
            self.publish(payload, n);
            self.settle();
            left -= n;
        }
        t.elapsed()
    }
}

/// `brokered/pubsub-4`.
fn pubsub(c: &mut Criterion, d: &Daemon) {
    let group = format!("brokered/pubsub-{SUBSCRIBERS}");
    begin(format!("{group}: starting"));
    let mut ps = PubSub::start(d, SUBSCRIBERS);
    let mut g = c.benchmark_group(&group);
    configure(&mut g);
    g.throughput(Throughput::Elements(1));
    for p in PAYLOADS {
        begin(format!("{group}/{p}: checking"));
        ps.publish(p, CHECK);
        ps.settle();
        begin(format!("{group}/{p}"));
        g.bench_function(BenchmarkId::from_parameter(p), |b| b.iter_custom(|iters| alive(ps.time(p, iters))));
    }
    g.finish();
}

/// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    // The floors first, while no worker exists; each group's workers are gone before the next starts.
    limits(&mut c);
    let d = Daemon::start();
    for via in [Via::Brokered, Via::Direct] {
        // The same strategies as `hybusctl bench` (see its module docs).
        rpc(&mut c, &d, via, if matches!(via, Via::Direct) { Idle::Busy } else { Idle::Spin });
        rpc(&mut c, &d, via, Idle::Park);
    }
    for via in [Via::Brokered, Via::Direct] {
        fire(&mut c, &d, via);
    }
    for via in [Via::Brokered, Via::Direct] {
        stream(&mut c, &d, via);
    }
    pubsub(&mut c, &d);
    drop(d);
    c.final_summary();
}
