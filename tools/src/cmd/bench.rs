//! `hybusctl bench`: hybus measured beside this machine's own limits, in one run.
//!
//! Limits (docs/ARCHITECTURE.md §9): `limit/cacheline-2p` (two processes, one atomic
//! each way, spinning — the floor for anything that spins between two
//! parties), `limit/cacheline-2p-payload` (the same with a payload word
//! written on a line of its own and read by the other side each way, the
//! line found from the flag as a chunk is from its descriptor — the floor
//! for a round trip whose payload travels in a chunk, which direct round
//! trips of more than 40 bytes are set beside), `limit/cacheline-3p` (A → D → B → D → A, spinning with yield —
//! the floor for a brokered path), `limit/ring-2p` (two processes, one
//! descriptor each way over a pair of hybus rings of a direct channel's
//! capacity, spinning, placed like `direct/rpc`: the floor of a direct
//! call, what `direct/rpc` is set beside) and `limit/ring-2p-payload` (the
//! same with a payload line written and read each way, found from the
//! descriptor as a chunk is: what direct round trips of more than 40 bytes
//! are set beside), `limit/eventfd` (two processes blocking
//! on eventfds — the floor for anything that sleeps) and `baseline/uds`
//! (a Unix stream socket ping-pong: what a user would otherwise write).
//!
//! Idle strategies: `brokered/rpc` spins briefly then yields on both ends
//! (three parties share two cores); `direct/rpc` spins without yielding
//! (two parties, a core each), like `limit/cacheline-2p`; the `-blocking`
//! results park at once, so every message is a wake-up, like `limit/eventfd`.
//!
//! `brokered/rpc-idle-busy` and `brokered/rpc-idle-default` (8 B) are the
//! same brokered round trip with `IdleStrategy::BUSY` and with
//! `IdleStrategy::DEFAULT` at both ends (caller and server): three parties
//! that all spin outnumber two cores, and the table's last line says how
//! far apart the two are (the back-off of spinners that outnumber the
//! CPUs keeps BUSY within 2× of the default).
//!
//! Placement: the two parties of `limit/cacheline-2p*`, `limit/ring-2p*`, `limit/eventfd`
//! and `direct/rpc*` run on two CPUs of their own, the same two for each
//! (`--no-pin` leaves them to the scheduler; see
//! [`hybus_benches::placement`] for why a blocking ratio means nothing
//! otherwise).
//!
//! Round trips of 1 MiB measure the zero-copy claim itself: the payload is
//! written in place and only its first 8 bytes (a sequence number, checked)
//! are touched on each side; the `×8 B` column sets them beside the 8-byte
//! round trip of the same result. Throughput tests touch every byte they move.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hybus::{Bus, BusOptions};
use hybus_benches::Percentiles;
use serde_json::json;

use crate::table::{bytes_rate, ns, rate, Table};
use crate::workers::Worker;
use hybus_benches::worker::idle_strategy;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,4096,1048576")]
    payload: Vec<usize>,
    /// Round trips per latency result.
    #[arg(long, default_value = "100000")]
    round_trips: u64,
    /// Messages per throughput result (fewer for large payloads).
    #[arg(long, default_value = "1000000")]
    messages: u64,
    /// A smoke run: few round trips, under a minute.
    #[arg(long)]
    quick: bool,
    /// Only results whose name contains this (and the limits they are compared with).
    #[arg(long = "filter")]
    filter: Option<String>,
    /// Write the results as JSON to stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw the latency distributions to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Leave the two parties of the two-process results where the
    /// scheduler puts them (by default each runs on a CPU of its own, the
    /// same two CPUs for the limits and for hybus).
    #[arg(long)]
    no_pin: bool,
}

/// One measured figure.
#[derive(Debug, Clone)]
pub enum Figure {
    /// Round-trip latencies, nanoseconds.
    Latency(Vec<u64>),
    /// `messages` moved in `elapsed`.
    Throughput {
        /// Messages moved.
        messages: u64,
        /// Time taken.
        elapsed: Duration,
    },
}

impl Figure {
    /// Messages per second, for a throughput figure.
    pub fn rate(&self) -> Option<f64> {
        match *self {
            Figure::Throughput { messages, elapsed } => Some(messages as f64 / elapsed.as_secs_f64().max(1e-9)),
            Figure::Latency(_) => None,
        }
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// e.g. `brokered/rpc`.
    pub name: String,
    /// Payload size.
    pub payload: usize,
    /// The figure.
    pub figure: Figure,
    /// The limit this is compared with.
    pub limit: Option<&'static str>,
}

struct Plan {
    round_trips: u64,
    messages: u64,
    payloads: Vec<usize>,
    filter: Option<String>,
    /// Runs of each noisy throughput result, of which it shows the best
    /// (see `bench_bridged::best_of`): one in a `--quick` smoke run.
    best_of: u32,
}

impl Plan {
    fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| name.contains(f))
    }
    fn messages_for(&self, payload: usize) -> u64 {
        // At most ~1 GiB moved per throughput result, at least 500 messages.
        (self.messages).min((1u64 << 30) / payload.max(1) as u64).max(500)
    }
}

struct Progress {
    total: usize,
    done: usize,
    quiet: bool,
}

impl Progress {
    fn step(&mut self, what: &str) {
        if self.quiet {
            return;
        }
        let width = 30;
        let filled = (self.done * width) / self.total.max(1);
        eprint!(
            "\r\x1b[K[{}{}] {}/{} {what}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.done + 1,
            self.total
        );
        self.done += 1;
    }
    fn finish(&self) {
        if !self.quiet {
            eprintln!("\r\x1b[K[{}] done", "#".repeat(30));
        }
    }
}

/// Runs `bench`.
pub fn run(socket: Option<&Path>, a: Args) -> anyhow::Result<()> {
    let plan = Plan {
        round_trips: if a.quick { a.round_trips.min(2_000) } else { a.round_trips },
        messages: if a.quick { a.messages.min(20_000) } else { a.messages },
        payloads: a.payload.clone(),
        filter: a.filter.clone(),
        best_of: if a.quick { 1 } else { PUBSUB_RUNS },
    };
    anyhow::ensure!(!plan.payloads.is_empty(), "--payload needs at least one size");
    hybus_benches::placement::pin_pairs(!a.no_pin);
    let results = measure(socket, &plan, a.json)?;
    if a.json {
        super::print_json(&to_json(&results, &plan))?;
    } else {
        print!("{}", render(&results));
    }
    if let Some(p) = &a.plot {
        std::fs::write(p, plot(&results)).with_context(|| format!("cannot write {}", p.display()))?;
        if !a.json {
            println!("latency distributions written to {}", p.display());
        }
    }
    Ok(())
}

/// The daemon the bench talks to: the one at `--socket`, or an embedded one.
enum Target {
    /// The daemon, its private directory, its socket.
    Embedded(hybusd::Embedded, PathBuf, PathBuf),
    External(PathBuf),
}

impl Target {
    fn path(&self) -> &Path {
        match self {
            Target::Embedded(_, _, p) | Target::External(p) => p,
        }
    }
}

fn embedded() -> anyhow::Result<Target> {
    let dir = std::env::temp_dir().join(format!("hybusctl-bench-{}", std::process::id()));
    let path = dir.join("bus.sock");
    let mut config = hybusd::Config::default();
    // Spinning results need a daemon that stays awake between messages.
    config.idle.spins = 0;
    config.idle.yields = 2_000;
    let d = hybusd::Embedded::start(&path, config)?;
    Ok(Target::Embedded(d, dir, path))
}

fn measure(socket: Option<&Path>, plan: &Plan, quiet: bool) -> anyhow::Result<Vec<BenchResult>> {
    type Job<'a> = (String, usize, Box<dyn Fn(&Path) -> anyhow::Result<Figure> + 'a>, Option<&'static str>);
    let rt = plan.round_trips;
    let mut jobs: Vec<Job<'_>> = Vec::new();
    let lat = |v: Result<Vec<u64>, hybus_benches::BenchError>| -> anyhow::Result<Figure> {
        Ok(Figure::Latency(v.map_err(|e| anyhow::anyhow!("{e}"))?))
    };
    jobs.push(("limit/cacheline-2p".into(), 8, Box::new(move |_| lat(hybus_benches::cacheline_pingpong_2p(rt))), None));
    jobs.push((
        "limit/cacheline-2p-payload".into(),
        8,
        Box::new(move |_| lat(hybus_benches::cacheline_payload_pingpong_2p(rt))),
        None,
    ));
    jobs.push((
        "limit/cacheline-3p".into(),
        8,
        Box::new(move |_| lat(hybus_benches::limits::cacheline_relay_3p(rt))),
        None,
    ));
    // The rings of a direct channel: the daemon's default capacity (the
    // bench's embedded daemon runs with it).
    let cap = hybusd::Config::default().ring_capacity;
    jobs.push(("limit/ring-2p".into(), 8, Box::new(move |_| lat(hybus_benches::ring_floor_2p(rt, cap, false))), None));
    jobs.push((
        "limit/ring-2p-payload".into(),
        8,
        Box::new(move |_| lat(hybus_benches::ring_floor_2p(rt, cap, true))),
        None,
    ));
    jobs.push((
        "limit/eventfd".into(),
        8,
        Box::new(move |_| lat(hybus_benches::limits::eventfd_pingpong_2p(rt.min(50_000)))),
        None,
    ));
    for &p in &plan.payloads {
        jobs.push((
            "baseline/uds".into(),
            p,
            Box::new(move |_| lat(hybus_benches::limits::uds_pingpong_2p(rt.min(50_000), p))),
            None,
        ));
    }
    for &p in &plan.payloads {
        jobs.push(("brokered/rpc".into(), p, Box::new(move |s| rpc(s, p, rt, "spin")), Some("limit/cacheline-3p")));
    }
    for idle in ["busy", "default"] {
        jobs.push((
            format!("brokered/rpc-idle-{idle}"),
            8,
            Box::new(move |s| rpc(s, 8, rt.min(20_000), idle)),
            Some("limit/cacheline-3p"),
        ));
    }
    for &p in &plan.payloads {
        jobs.push((
            "brokered/rpc-blocking".into(),
            p,
            Box::new(move |s| rpc(s, p, rt.min(50_000), "park")),
            Some("limit/eventfd"),
        ));
    }
    for &p in &plan.payloads {
        // A payload that does not fit in the descriptor is written to a
        // chunk and read from there: its floor moves a line more each way.
        let limit = if p <= hybus::INLINE_PAYLOAD { "limit/ring-2p" } else { "limit/ring-2p-payload" };
        jobs.push(("direct/rpc".into(), p, Box::new(move |s| rpc_on(s, p, rt, "busy", true)), Some(limit)));
    }
    for &p in &plan.payloads {
        jobs.push((
            "direct/rpc-blocking".into(),
            p,
            Box::new(move |s| rpc_on(s, p, rt.min(50_000), "park", true)),
            Some("limit/eventfd"),
        ));
    }
    for &p in &plan.payloads {
        let n = plan.messages_for(p);
        jobs.push(("brokered/fire".into(), p, Box::new(move |s| fire(s, p, n)), None));
    }
    for &p in &plan.payloads {
        let n = plan.messages_for(p);
        jobs.push(("brokered/stream".into(), p, Box::new(move |s| stream(s, p, n)), None));
    }
    for &p in &plan.payloads {
        let n = plan.messages_for(p);
        jobs.push(("direct/stream".into(), p, Box::new(move |s| stream_on(s, p, n, true)), None));
    }
    for &p in &plan.payloads {
        let n = plan.messages_for(p) / 4;
        jobs.push(("brokered/pubsub-4".into(), p, Box::new(move |s| pubsub(s, p, n.max(500), 4)), None));
    }
    if super::bench_bridged::available() {
        // Over loopback TCP each round trip costs ~100 µs and a 1 MiB one
        // milliseconds: fewer round trips than the shared-memory results.
        let rt_for = |p: usize| if p >= 1 << 20 { (rt / 50).clamp(100, 1_000) } else { (rt / 10).clamp(200, 5_000) };
        for &p in &plan.payloads {
            let n = rt_for(p);
            jobs.push((
                "limit/zenoh-query".into(),
                p,
                Box::new(move |_| super::bench_bridged::zenoh_query(p, n)),
                None,
            ));
        }
        for &p in &plan.payloads {
            let n = rt_for(p);
            jobs.push((
                "bridged/rpc".into(),
                p,
                Box::new(move |_| super::bench_bridged::rpc(p, n)),
                Some("limit/zenoh-query"),
            ));
        }
        let runs = plan.best_of;
        for &p in &plan.payloads {
            let n = if p >= 1 << 20 { 300 } else { plan.messages_for(p).min(200_000) };
            jobs.push((
                "limit/zenoh-pubsub".into(),
                p,
                Box::new(move |_| super::bench_bridged::best_of(runs, || super::bench_bridged::zenoh_pubsub(p, n))),
                None,
            ));
        }
        for &p in &plan.payloads {
            let n = if p >= 1 << 20 { 300 } else { plan.messages_for(p).min(200_000) };
            jobs.push((
                "bridged/pubsub".into(),
                p,
                Box::new(move |_| super::bench_bridged::best_of(runs, || super::bench_bridged::pubsub(p, n))),
                Some("limit/zenoh-pubsub"),
            ));
        }
    } else if !quiet {
        eprintln!("hybus-bridge not found (beside hybusctl or on PATH): no bridged results");
    }
    // A filtered run keeps the limits its results are compared with: a
    // ratio is only meaningful against a limit measured in the same run.
    let limits: Vec<&str> = jobs.iter().filter(|j| plan.wants(&j.0)).filter_map(|j| j.3).collect();
    jobs.retain(|j| plan.wants(&j.0) || limits.contains(&j.0.as_str()));
    let target = match socket {
        Some(p) => Target::External(p.to_owned()),
        None => embedded()?,
    };
    let mut progress = Progress { total: jobs.len(), done: 0, quiet };
    let mut out = Vec::new();
    for (name, payload, f, limit) in jobs {
        progress.step(&format!("{name} ({payload} B)"));
        let figure = f(target.path()).with_context(|| format!("{name} with {payload}-byte payloads"))?;
        out.push(BenchResult { name, payload, figure, limit });
    }
    progress.finish();
    if let Target::Embedded(d, dir, _) = target {
        d.stop()?;
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(out)
}

fn client(socket: &Path, idle: &str) -> anyhow::Result<Bus> {
    let opts = BusOptions {
        path: Some(socket.to_owned()),
        label: "hybusctl-bench".into(),
        idle: idle_strategy(idle).map_err(anyhow::Error::msg)?,
        reconnect: false,
    };
    Ok(Bus::connect_with(opts)?)
}

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}.{}", std::process::id(), SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Request/response round trips through the daemon to an echo worker.
fn rpc(socket: &Path, payload: usize, round_trips: u64, idle: &str) -> anyhow::Result<Figure> {
    rpc_on(socket, payload, round_trips, idle, false)
}

/// Request/response round trips to an echo worker, through the daemon or over a direct channel.
fn rpc_on(socket: &Path, payload: usize, round_trips: u64, idle: &str, direct: bool) -> anyhow::Result<Figure> {
    let name = unique("bench.echo");
    let w = Worker::start(socket, "echo", &name, None, idle)?;
    // Placed like the two-process limits it is set beside (direct), or not
    // at all (brokered: three parties share two CPUs).
    let _pinned = if direct { hybus_benches::placement::Pinned::pair_with(w.pid())? } else { None };
    let bus = client(socket, idle)?;
    let route = bus.resolve(&name)?;
    if direct {
        bus.request_direct(&route)?;
        anyhow::ensure!(bus.is_direct(&route), "the direct channel did not open");
    }
    time_calls(&bus, &route, payload, round_trips)
}

/// `round_trips` calls of `payload` bytes to an echo service on `route`
/// (after a warm-up), each checked for its echo, timed end to end.
pub(crate) fn time_calls(bus: &Bus, route: &hybus::Route, payload: usize, round_trips: u64) -> anyhow::Result<Figure> {
    let timeout = Duration::from_secs(10);
    let warmup = (round_trips / 10).clamp(10, 1_000);
    let mut samples = Vec::with_capacity(round_trips as usize);
    let mut buf = vec![0u8; payload];
    // One clock read per round trip, as in the cache-line ping-pong: each
    // sample runs from the end of the previous round trip to the end of this one.
    let mut t0 = Instant::now();
    for i in 0..warmup + round_trips {
        let seq = i.to_le_bytes();
        let n = payload.min(8);
        let answer = if payload <= hybus::INLINE_PAYLOAD {
            buf[..n].copy_from_slice(&seq[..n]);
            bus.call(route, &buf, timeout)?
        } else {
            let mut loan = bus.loan(payload, timeout)?;
            loan[..8].copy_from_slice(&seq);
            bus.call_loan(route, loan, timeout)?
        };
        anyhow::ensure!(answer.len() == payload && answer[..n] == seq[..n], "echo answered the wrong payload");
        drop(answer);
        let t1 = Instant::now();
        if i >= warmup {
            samples.push((t1 - t0).as_nanos() as u64);
        }
        t0 = t1;
    }
    Ok(Figure::Latency(samples))
}

fn fill(buf: &mut [u8], seq: u64) {
    let b = (seq as u8).wrapping_mul(31);
    buf.fill(b);
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Fire-and-forget to a sink worker that reads every byte; done when the sink counted them all.
fn fire(socket: &Path, payload: usize, n: u64) -> anyhow::Result<Figure> {
    let name = unique("bench.sink");
    let _w = Worker::start(socket, "sink", &name, None, "default")?;
    let bus = client(socket, "default")?;
    let route = bus.resolve(&name)?;
    let mut buf = vec![0u8; payload];
    let t = Instant::now();
    for i in 0..n {
        fill(&mut buf, i);
        bus.fire(&route, &buf)?;
        // Keep at most two windows in flight: the daemon refuses fires
        // beyond a receiver's queue limit (and says so) rather than buffer
        // without bound, so an unwindowed flood measures refusals.
        if i % WINDOW == WINDOW - 1 && i >= WINDOW {
            wait_count(&bus, &route, i + 1 - WINDOW)?;
        }
    }
    wait_count(&bus, &route, n)?;
    Ok(Figure::Throughput { messages: n, elapsed: t.elapsed() })
}

/// Messages a throughput sender may run ahead of its slowest receiver, twice over.
const WINDOW: u64 = 8_192;

/// Runs of `limit/zenoh-pubsub` and of `bridged/pubsub` in a full run, of
/// which each shows its best (see `bench_bridged::best_of`).
const PUBSUB_RUNS: u32 = 3;

fn wait_count(bus: &Bus, route: &hybus::Route, n: u64) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let a = bus.call(route, b"count", Duration::from_secs(10))?;
        let got = u64::from_le_bytes(a.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
        if got >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < end, "only {got} of {n} messages arrived");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A request-stream of `n` items from a streamer worker; every item's index is checked.
fn stream(socket: &Path, payload: usize, n: u64) -> anyhow::Result<Figure> {
    stream_on(socket, payload, n, false)
}

fn stream_on(socket: &Path, payload: usize, n: u64, direct: bool) -> anyhow::Result<Figure> {
    let name = unique("bench.stream");
    let _w = Worker::start(socket, "streamer", &name, None, "default")?;
    let bus = client(socket, "default")?;
    let route = bus.resolve(&name)?;
    if direct {
        bus.request_direct(&route)?;
    }
    let t = Instant::now();
    // Items packed in batches (`send_many` / `next_batch`), a window of 64 Ki items.
    let open = format!("n={n} size={} batch=1", payload.max(8));
    let mut s = bus.request_stream(&route, open.as_bytes(), 1 << 16)?;
    let mut i = 0u64;
    let mut check = 0u64;
    while let Some(batch) = s.next_batch(Duration::from_secs(30))? {
        for item in batch.iter() {
            let item = item?;
            let idx = u64::from_le_bytes(item.get(..8).and_then(|s| s.try_into().ok()).unwrap_or([0; 8]));
            anyhow::ensure!(idx == i, "stream item {idx} arrived where {i} was due");
            // Touch what was moved: read every byte.
            check = check.wrapping_add(item.iter().map(|&b| b as u64).sum::<u64>());
            i += 1;
        }
    }
    std::hint::black_box(check);
    anyhow::ensure!(i == n, "stream ended after {i} of {n} items");
    Ok(Figure::Throughput { messages: n, elapsed: t.elapsed() })
}

/// One publisher, `subs` subscriber workers; done when every subscriber counted every publication.
fn pubsub(socket: &Path, payload: usize, n: u64, subs: usize) -> anyhow::Result<Figure> {
    let topic = unique("bench.topic");
    let mut workers = Vec::new();
    let mut reports = Vec::new();
    for i in 0..subs {
        let report = format!("{topic}.sub{i}");
        workers.push(Worker::start(socket, "subscriber", &topic, Some(&report), "default")?);
        reports.push(report);
    }
    let bus = client(socket, "default")?;
    let routes = reports.iter().map(|r| bus.resolve(r)).collect::<Result<Vec<_>, _>>()?;
    let publisher = bus.publisher(&topic)?;
    let t = Instant::now();
    for i in 0..n {
        if payload <= hybus::INLINE_PAYLOAD {
            let mut b = vec![0u8; payload];
            fill(&mut b, i);
            publisher.publish(&b)?;
        } else {
            let mut loan = bus.loan(payload, Duration::from_secs(30))?;
            fill(&mut loan, i);
            publisher.publish_loan(loan)?;
        }
        // A subscriber that falls a queue behind drops the oldest: window
        // the flood so that the figure is what every subscriber received.
        if i % WINDOW == WINDOW - 1 && i >= WINDOW {
            for r in &routes {
                wait_count(&bus, r, i + 1 - WINDOW)?;
            }
        }
    }
    for r in &routes {
        wait_count(&bus, r, n)?;
    }
    Ok(Figure::Throughput { messages: n, elapsed: t.elapsed() })
}

fn percentiles(samples: &[u64]) -> Percentiles {
    let mut v = samples.to_vec();
    Percentiles::from_samples(&mut v).unwrap_or(Percentiles { count: 0, p50: 0, p99: 0, p999: 0, max: 0, mean: 0.0 })
}

fn find<'a>(results: &'a [BenchResult], name: &str) -> Option<&'a BenchResult> {
    results.iter().find(|r| r.name == name)
}

/// The limit `r` is compared with: measured at `r`'s payload if it was
/// (`limit/zenoh-query`), else its one result.
fn limit_of<'a>(results: &'a [BenchResult], r: &BenchResult) -> Option<&'a BenchResult> {
    let l = r.limit?;
    results.iter().find(|o| o.name == l && o.payload == r.payload).or_else(|| find(results, l))
}

/// Whether `name` measures the machine (a limit or a baseline), not hybus.
fn is_reference(name: &str) -> bool {
    name.starts_with("limit/") || name.starts_with("baseline/")
}

/// The same result with an 8-byte payload, for one with a larger payload
/// (the cost of a chunk against an inline payload, in the same run).
fn eight_bytes<'a>(results: &'a [BenchResult], r: &BenchResult) -> Option<&'a BenchResult> {
    if is_reference(&r.name) || r.payload <= 8 {
        return None;
    }
    results.iter().find(|o| o.name == r.name && o.payload == 8)
}

/// `mps` over the messages per second of `other`, if that is a throughput result.
fn rate_ratio(mps: f64, other: Option<&BenchResult>) -> Option<f64> {
    Some(mps / other?.figure.rate()?.max(1e-9))
}

/// `p50` over the p50 of `other`, if that is a latency result.
fn p50_ratio(p50: u64, other: Option<&BenchResult>) -> Option<f64> {
    match &other?.figure {
        Figure::Latency(o) => Some(p50 as f64 / percentiles(o).p50.max(1) as f64),
        _ => None,
    }
}

fn render(results: &[BenchResult]) -> String {
    let mut out = String::new();
    let mut t = Table::new(&[
        "RESULT",
        ">PAYLOAD",
        ">P50",
        ">P99",
        ">P99.9",
        ">MAX",
        ">×LIMIT(P50)",
        ">×UDS(P50)",
        ">×8 B(P50)",
    ]);
    for r in results {
        let Figure::Latency(s) = &r.figure else {
            continue;
        };
        let p = percentiles(s);
        let ratio = |other: Option<&BenchResult>| p50_ratio(p.p50, other).map_or("-".into(), |x| format!("{x:.2}"));
        let uds = results.iter().find(|u| u.name == "baseline/uds" && u.payload == r.payload);
        t.row(vec![
            r.name.clone(),
            size(r.payload),
            ns(p.p50),
            ns(p.p99),
            ns(p.p999),
            ns(p.max),
            ratio(limit_of(results, r)),
            if is_reference(&r.name) { "-".into() } else { ratio(uds) },
            ratio(eight_bytes(results, r)),
        ]);
    }
    if !t.is_empty() {
        out.push_str(&t.render());
    }
    if let Some(x) = busy_vs_default(results) {
        out.push_str(&format!(
            "BUSY at both ends of a brokered call: p50 {x:.2}× that of the default idle strategy ({} usable CPUs)\n",
            hybus_os::cpus::usable()
        ));
    }
    let mut t = Table::new(&["RESULT", ">PAYLOAD", ">MESSAGES", ">MSG/S", ">BYTES/S", ">×LIMIT"]);
    for r in results {
        if let Figure::Throughput { messages, .. } = r.figure {
            let mps = r.figure.rate().unwrap_or(0.0);
            t.row(vec![
                r.name.clone(),
                size(r.payload),
                messages.to_string(),
                rate(mps),
                bytes_rate(mps * r.payload as f64),
                rate_ratio(mps, limit_of(results, r)).map_or("-".into(), |x| format!("{x:.2}")),
            ]);
        }
    }
    if !t.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&t.render());
    }
    out
}

/// p50 of `brokered/rpc-idle-busy` over that of `brokered/rpc-idle-default`.
fn busy_vs_default(results: &[BenchResult]) -> Option<f64> {
    let busy = find(results, "brokered/rpc-idle-busy")?;
    let Figure::Latency(s) = &busy.figure else { return None };
    p50_ratio(percentiles(s).p50, find(results, "brokered/rpc-idle-default"))
}

fn size(b: usize) -> String {
    match b {
        0..=1023 => format!("{b} B"),
        1024..=1048575 => format!("{} KiB", b / 1024),
        _ => format!("{} MiB", b / 1048576),
    }
}

fn machine() -> serde_json::Value {
    let uname = nix::sys::utsname::uname().ok();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": uname.map(|u| format!("{} {}", u.sysname().to_string_lossy(), u.release().to_string_lossy())).unwrap_or_default(),
        "pinned_pair": hybus_benches::placement::pair().map(|p| [p.near, p.far]),
    })
}

fn to_json(results: &[BenchResult], plan: &Plan) -> serde_json::Value {
    let rs: Vec<_> = results
        .iter()
        .map(|r| match &r.figure {
            Figure::Latency(s) => {
                let p = percentiles(s);
                json!({
                    "name": r.name, "payload_bytes": r.payload, "round_trips": s.len(),
                    "rtt_ns": {"p50": p.p50, "p99": p.p99, "p999": p.p999, "max": p.max, "mean": p.mean},
                    "limit": r.limit,
                    "ratio_to_limit_p50": p50_ratio(p.p50, limit_of(results, r)),
                    "ratio_to_8b_p50": p50_ratio(p.p50, eight_bytes(results, r)),
                })
            }
            Figure::Throughput { messages, .. } => {
                let mps = r.figure.rate().unwrap_or(0.0);
                json!({
                    "name": r.name, "payload_bytes": r.payload, "messages": messages,
                    "msgs_per_s": mps, "bytes_per_s": mps * r.payload as f64,
                    "limit": r.limit, "ratio_to_limit": rate_ratio(mps, limit_of(results, r)),
                })
            }
        })
        .collect();
    json!({
        "machine": machine(), "round_trips": plan.round_trips, "results": rs,
        "busy_vs_default_p50": busy_vs_default(results),
    })
}

/// An SVG of each latency result's distribution: the fraction of round
/// trips at or below each latency (a CDF), latency on a log scale.
fn plot(results: &[BenchResult]) -> String {
    use std::fmt::Write;
    let (w, h, left, right, top, bottom) = (960.0, 600.0, 70.0, 260.0, 30.0, 50.0);
    let series: Vec<(String, Vec<u64>)> = results
        .iter()
        .filter_map(|r| match &r.figure {
            Figure::Latency(s) if !s.is_empty() => {
                let mut v = s.clone();
                v.sort_unstable();
                Some((format!("{} {}", r.name, size(r.payload)), v))
            }
            _ => None,
        })
        .collect();
    let lo = series.iter().map(|s| s.1[0]).min().unwrap_or(1).max(1) as f64;
    let hi = series.iter().map(|s| *s.1.last().unwrap_or(&1)).max().unwrap_or(10).max(2) as f64;
    let (llo, lhi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let x = |v: f64| left + (v.max(1.0).log10() - llo) / (lhi - llo) * (w - left - right);
    let y = |f: f64| top + (1.0 - f) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18" font-size="14">hybus bench: round-trip latency distribution (CDF, log scale)</text>"#
    );
    let mut d = llo;
    while d <= lhi {
        let xv = x(10f64.powf(d));
        let _ = writeln!(s, r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#ddd"/>"##, h - bottom);
        let _ = writeln!(
            s,
            r#"<text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"#,
            h - bottom + 16.0,
            ns(10f64.powf(d) as u64)
        );
        d += 1.0;
    }
    for f in [0.0, 0.5, 0.9, 0.99, 1.0] {
        let yv = y(f);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#eee"/>"##, w - right);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{f}</text>"#, left - 6.0, yv + 4.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">round trip</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    let colors =
        ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
    for (i, (label, v)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let n = v.len();
        let step = (n / 400).max(1);
        let mut pts = String::new();
        for k in (0..n).step_by(step).chain(std::iter::once(n - 1)) {
            let _ = write!(pts, "{:.1},{:.1} ", x(v[k] as f64), y((k + 1) as f64 / n as f64));
        }
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{pts}"/>"#);
        let ly = top + 14.0 * i as f64 + 10.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/>"#,
            w - right + 10.0,
            w - right + 30.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{label}</text>"#, w - right + 35.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}
