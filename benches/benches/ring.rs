//! Ring latency and throughput beside this machine's floors, measured in the same run.
//!
//! * `pingpong/limit/cacheline-2p` — one atomic each way between two
//!   processes: the floor for anything that spins;
//! * `pingpong/ring/threads`, `pingpong/ring/2p` — a descriptor each way over
//!   two hybus rings, spinning (no doorbell);
//! * `throughput/bare/2p-batch64` — a ring with nothing but two indices: the floor;
//! * `throughput/ring/2p-unbatched`, `throughput/ring/2p-batch64` — one hybus ring.
//!
//! Each two-sided run forks its peer once per sample (`iter_custom`); the
//! set-up is not timed. Every helper checks order and values and fails
//! instead of producing a figure if anything is wrong; a short checked run
//! of each happens before any timing.

use std::time::Duration;

use criterion::{Criterion, Throughput};
use hybus_benches::{
    bare_ring_throughput_2p, cacheline_pingpong_2p, ring_pingpong_2p, ring_pingpong_threads, ring_throughput_2p,
    PINGPONG_CAPACITY,
};
use hybus_layout::IdleStrategy;

const BATCH: usize = 64;

/// Runs each helper once with small counts: a broken ring fails here, before any timing.
fn check_before_timing() {
    fn fail<T>(what: &str) -> impl FnOnce(hybus_benches::BenchError) -> T + '_ {
        move |e| panic!("{what}: {e}")
    }
    cacheline_pingpong_2p(1_000).unwrap_or_else(fail("cacheline-2p"));
    ring_pingpong_threads(1_000, PINGPONG_CAPACITY, IdleStrategy::BUSY).unwrap_or_else(fail("ring/threads"));
    ring_pingpong_2p(1_000, PINGPONG_CAPACITY, IdleStrategy::BUSY).unwrap_or_else(fail("ring/2p"));
    bare_ring_throughput_2p(100_000, BATCH).unwrap_or_else(fail("bare/2p"));
    ring_throughput_2p(100_000, 1).unwrap_or_else(fail("ring/2p unbatched"));
    ring_throughput_2p(100_000, BATCH).unwrap_or_else(fail("ring/2p batched"));
}

/// Total time of `iters` round trips (the samples tile the run, so their sum is its wall time).
fn total(samples: Result<Vec<u64>, hybus_benches::BenchError>) -> Duration {
    match samples {
        Ok(s) => Duration::from_nanos(s.iter().sum()),
        Err(e) => panic!("ping-pong failed: {e}"),
    }
}

fn elapsed(rate: Result<hybus_benches::Rate, hybus_benches::BenchError>) -> Duration {
    match rate {
        Ok(r) => r.elapsed,
        Err(e) => panic!("throughput run failed: {e}"),
    }
}

fn pingpong(c: &mut Criterion) {
    check_before_timing();
    let mut g = c.benchmark_group("pingpong");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("limit/cacheline-2p", |b| b.iter_custom(|iters| total(cacheline_pingpong_2p(iters))));
    g.bench_function("ring/threads", |b| {
        b.iter_custom(|iters| total(ring_pingpong_threads(iters, PINGPONG_CAPACITY, IdleStrategy::BUSY)))
    });
    g.bench_function("ring/2p", |b| {
        b.iter_custom(|iters| total(ring_pingpong_2p(iters, PINGPONG_CAPACITY, IdleStrategy::BUSY)))
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    g.bench_function("bare/2p-batch64", |b| b.iter_custom(|iters| elapsed(bare_ring_throughput_2p(iters, BATCH))));
    g.bench_function("ring/2p-unbatched", |b| b.iter_custom(|iters| elapsed(ring_throughput_2p(iters, 1))));
    g.bench_function("ring/2p-batch64", |b| b.iter_custom(|iters| elapsed(ring_throughput_2p(iters, BATCH))));
    g.finish();
}

// What `criterion_group!`/`criterion_main!` expand to, minus the undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    pingpong(&mut c);
    throughput(&mut c);
    c.final_summary();
}
