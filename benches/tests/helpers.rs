//! The measurement helpers move what they claim to, in every mode, and end cleanly.

use hybus_benches::{
    bare_ring_throughput_2p, cacheline_pingpong_2p, ring_pingpong_2p, ring_pingpong_threads, ring_throughput_2p,
    Percentiles, PINGPONG_CAPACITY,
};
use hybus_layout::IdleStrategy;
use std::sync::Mutex;

/// Each test spins two parties; run one at a time so that a 2-core machine
/// is not oversubscribed (spinning parties beyond the core count collapse).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ROUND_TRIPS: u64 = if cfg!(debug_assertions) { 2_000 } else { 20_000 };
const ITEMS: u64 = if cfg!(debug_assertions) { 50_000 } else { 1_000_000 };

fn summary(mut v: Vec<u64>) -> Percentiles {
    assert_eq!(v.len() as u64, ROUND_TRIPS);
    let p = Percentiles::from_samples(&mut v).unwrap();
    assert!(p.p50 > 0 && p.p50 <= p.p99 && p.p99 <= p.max);
    p
}

#[test]
fn cacheline_floor() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    summary(cacheline_pingpong_2p(ROUND_TRIPS).unwrap());
}

#[test]
fn ring_pingpong_every_strategy() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for idle in [IdleStrategy::BUSY, IdleStrategy::DEFAULT, IdleStrategy::PARK] {
        summary(ring_pingpong_2p(ROUND_TRIPS, PINGPONG_CAPACITY, idle).unwrap());
        summary(ring_pingpong_threads(ROUND_TRIPS, PINGPONG_CAPACITY, idle).unwrap());
    }
}

#[test]
fn throughput_batched_and_not() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for batch in [0, 1, 7, 64, 4096] {
        assert_eq!(ring_throughput_2p(ITEMS, batch).unwrap().items, ITEMS);
        assert_eq!(bare_ring_throughput_2p(ITEMS, batch).unwrap().items, ITEMS);
    }
}
