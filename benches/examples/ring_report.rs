//! Prints the ring's latency and throughput beside this machine's floors, measured in one run.
//!
//! ```text
//! cargo run --release -p hybus-benches --example ring_report [ROUND_TRIPS [DESCRIPTORS [RUNS]]]
//! ```
//!
//! Defaults: 200 000 round trips, 20 000 000 descriptors, one run. On a
//! shared machine, where a neighbour can take a core in the middle of a
//! figure, ask for several runs: each prints its own table, and the last
//! lines give the median of each run's ratios (a ratio is taken between
//! figures measured seconds apart, so it survives a busy neighbour better
//! than any absolute time).

use hybus_benches::{
    bare_ring_throughput_2p, cacheline_pingpong_2p, ring_pingpong_2p, ring_pingpong_threads, ring_throughput_2p,
    BenchError, Percentiles, Rate, PINGPONG_CAPACITY,
};
use hybus_layout::IdleStrategy;

const BATCH: usize = 64;

/// The daemon's default ring capacity, for a second ping-pong row: the
/// round trip grows with the rings' footprint (see [`PINGPONG_CAPACITY`]).
const LARGE_CAPACITY: u64 = 1024;

/// Acceptance targets of the issue.
const PINGPONG_TARGET: f64 = 1.5;
const THROUGHPUT_TARGET: f64 = 0.8;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| match args.next() {
        None => default,
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("usage: ring_report [ROUND_TRIPS [DESCRIPTORS [RUNS]]]; {a:?} is not a count");
            std::process::exit(2)
        }),
    };
    let round_trips = arg(200_000).max(1);
    let descriptors = arg(20_000_000).max(1);
    let runs = arg(1).max(1);
    let mut ratios = Vec::new();
    for run in 1..=runs {
        if runs > 1 {
            println!("run {run} of {runs}, load average {}", load_average());
        }
        match report(round_trips, descriptors) {
            Ok(r) => ratios.push(r),
            Err(e) => {
                eprintln!("ring_report: {e}");
                std::process::exit(1);
            }
        }
        println!();
    }
    if runs > 1 {
        let median = |f: fn(&Ratios) -> f64| {
            let mut v: Vec<f64> = ratios.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!("median over {runs} runs:");
        println!(
            "  ring 2p p50 / cache-line p50      {:>5.2}x   (target <= {PINGPONG_TARGET}x; {PINGPONG_CAPACITY} slots)",
            median(|r| r.pingpong)
        );
        println!(
            "  ring batched / bare ring          {:>5.2}x   (target >= {THROUGHPUT_TARGET}x)",
            median(|r| r.batched)
        );
        println!("  ring unbatched / bare ring        {:>5.2}x", median(|r| r.unbatched));
    }
}

/// The ratios of one run.
struct Ratios {
    pingpong: f64,
    batched: f64,
    unbatched: f64,
}

fn report(round_trips: u64, descriptors: u64) -> Result<Ratios, BenchError> {
    let pct = |mut v: Vec<u64>| Percentiles::from_samples(&mut v).expect("round_trips > 0");
    let floor = pct(cacheline_pingpong_2p(round_trips)?);
    let ring_2p = pct(ring_pingpong_2p(round_trips, PINGPONG_CAPACITY, IdleStrategy::BUSY)?);
    let ring_threads = pct(ring_pingpong_threads(round_trips, PINGPONG_CAPACITY, IdleStrategy::BUSY)?);
    let ring_2p_large = pct(ring_pingpong_2p(round_trips, LARGE_CAPACITY, IdleStrategy::BUSY)?);

    println!("round trip, {round_trips} each (ns)     p50     p99   p99.9     max   p50 ratio");
    let row = |name: &str, p: &Percentiles| {
        println!(
            "  {name:<30} {:>7} {:>7} {:>7} {:>7}   {:>5.2}x",
            p.p50,
            p.p99,
            p.p999,
            p.max,
            p.p50 as f64 / floor.p50 as f64
        );
    };
    row("limit: cache line, 2 processes", &floor);
    row(&format!("ring, 2 processes, {PINGPONG_CAPACITY} slots"), &ring_2p);
    row(&format!("ring, 2 threads, {PINGPONG_CAPACITY} slots"), &ring_threads);
    row(&format!("ring, 2 processes, {LARGE_CAPACITY} slots"), &ring_2p_large);

    let bare = bare_ring_throughput_2p(descriptors, BATCH)?;
    let unbatched = ring_throughput_2p(descriptors, 1)?;
    let batched = ring_throughput_2p(descriptors, BATCH)?;
    println!("throughput, {descriptors} descriptors, 2 processes   M desc/s   ratio");
    let row = |name: &str, r: &Rate| {
        println!("  {name:<42} {:>8.1}   {:>4.2}x", r.per_second() / 1e6, r.per_second() / bare.per_second());
    };
    row(&format!("limit: bare ring, batch {BATCH}"), &bare);
    row("ring, unbatched (push/pop)", &unbatched);
    row(&format!("ring, batch {BATCH}"), &batched);
    Ok(Ratios {
        pingpong: ring_2p.p50 as f64 / floor.p50 as f64,
        batched: batched.per_second() / bare.per_second(),
        unbatched: unbatched.per_second() / bare.per_second(),
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
