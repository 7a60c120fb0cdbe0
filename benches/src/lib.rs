//! Measurement helpers for hybus: the benches and `hybusctl bench` share them.
//!
//! Every figure hybus reports is printed beside the machine's own limit
//! measured in the same run (docs/ARCHITECTURE.md §9), so each helper here comes with
//! its floor:
//!
//! | helper | what it measures | its floor |
//! |---|---|---|
//! | [`ring_pingpong_2p`] | round trip over two hybus rings between two processes | [`cacheline_pingpong_2p`] |
//! | [`ring_pingpong_threads`] | the same between two threads | [`cacheline_pingpong_2p`] |
//! | [`ring_throughput_2p`] | descriptors per second through one hybus ring | [`bare_ring_throughput_2p`] |
//!
//! * [`process`] — a second process over shared memory (`fork`, a guard that kills and reaps it);
//! * [`pingpong`] — round-trip latencies, one sample per round trip;
//! * [`throughput`] — streaming one way, checked in order;
//! * [`bare_ring`] — the throughput floor: a ring with nothing but two indices;
//! * [`worker`] — the server roles the benchmarks talk to (echo, sink, streamer, subscriber);
//! * [`stats`] — percentiles of latency samples;
//! * [`limits`] — the other floors: a three-process relay, eventfd and Unix-socket ping-pongs;
//! * [`placement`] — which CPUs the two parties of a measurement run on.
//!
//! Each helper checks what it moves (order and values) and returns
//! [`BenchError::Mismatch`] instead of a figure if anything is wrong, so a
//! fast but broken ring cannot produce a number.
//!
//! # Examples
//!
//! ```
//! use hybus_benches::{cacheline_pingpong_2p, ring_pingpong_2p, Percentiles, PINGPONG_CAPACITY};
//! use hybus_layout::IdleStrategy;
//!
//! # fn main() -> Result<(), hybus_benches::BenchError> {
//! let mut floor = cacheline_pingpong_2p(1_000)?;
//! let mut ring = ring_pingpong_2p(1_000, PINGPONG_CAPACITY, IdleStrategy::BUSY)?;
//! let floor = Percentiles::from_samples(&mut floor).expect("samples");
//! let ring = Percentiles::from_samples(&mut ring).expect("samples");
//! println!("p50 ring/floor = {:.2}", ring.p50 as f64 / floor.p50 as f64);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bare_ring;
mod error;
mod gate;
pub mod limits;
pub mod pingpong;
pub mod placement;
pub mod process;
mod spin;
pub mod stats;
pub mod throughput;
pub mod worker;

pub use error::BenchError;
pub use pingpong::{
    cacheline_payload_pingpong_2p, cacheline_pingpong_2p, ring_floor_2p, ring_pingpong_2p, ring_pingpong_threads,
    PINGPONG_CAPACITY,
};
pub use process::{ChildProcess, SharedMap};
pub use stats::Percentiles;
pub use throughput::{bare_ring_throughput_2p, ring_throughput_2p, Rate};
