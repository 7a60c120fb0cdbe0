//! The hybus ABI: every byte `hybusd` and its clients must agree on.
//!
//! * [`header`] — the header that starts every segment, and its validation;
//! * [`descriptor`] — the 64-byte descriptor, the only thing that travels on rings;
//! * [`ring`] — the SPSC descriptor ring, safe against a hostile peer;
//! * [`doorbell`] — spin, yield, park: the wake-up handshake;
//! * [`batch`] — many small stream items packed into one chunk;
//! * [`channel`] — the direct-channel segment: four rings and per-side counters;
//! * [`idhash`] — a fast hasher for the id-keyed tables of daemon and client;
//! * [`pool`] — size-classed payload chunks and their owner-side allocator;
//! * [`control`] — the control-protocol messages (rkyv, validated on receipt).
//!
//! No I/O happens here: creating, sealing and mapping memfds, eventfds, the
//! control socket and the CPU count are in the `hybus-os` crate.
//!
//! Nothing here trusts shared memory: structures in it are made of atomics
//! only, descriptors are copied out before they are checked, and every
//! index a peer wrote is checked before it is used.
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
pub mod channel;
pub mod control;
pub mod descriptor;
pub mod doorbell;
pub mod header;
pub mod idhash;
pub mod pool;
pub mod ring;
pub mod shm;
mod sync;

pub use descriptor::{ChunkRef, Descriptor, Kind};
pub use doorbell::{IdleStrategy, Wait, WaitOutcome, Wake};
pub use header::{SegmentHeader, SegmentKind, ABI_VERSION};
pub use pool::{PoolAllocator, PoolGeometry, SizeClass};
pub use ring::{Consumer, Producer, PushError, Ring, RingError};
pub use shm::ShmSafe;
