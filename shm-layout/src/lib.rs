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
//! * [`segment`] — memfd segments (create, seal, map) and eventfd doorbells (feature `os`);
//! * [`socket`] — the control socket: SOCK_SEQPACKET datagrams with SCM_RIGHTS (feature `os`);
//! * [`control`] — the control-protocol messages (rkyv, validated on receipt);
//! * [`cpus`] — how many CPUs this thread may use, for the idle strategy (feature `os`).
//!
//! Nothing here trusts shared memory: structures in it are made of atomics
//! only, descriptors are copied out before they are checked, and every
//! index a peer wrote is checked before it is used.
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod batch;
pub mod channel;
pub mod control;
#[cfg(all(feature = "os", not(loom)))]
pub mod cpus;
pub mod descriptor;
pub mod doorbell;
pub mod header;
pub mod idhash;
pub mod pool;
pub mod ring;
#[cfg(all(feature = "os", not(loom)))]
pub mod segment;
pub mod shm;
#[cfg(all(feature = "os", not(loom)))]
pub mod socket;
mod sync;

pub use descriptor::{ChunkRef, Descriptor, Kind};
pub use doorbell::{IdleStrategy, Wait, WaitOutcome, Wake};
pub use header::{SegmentHeader, SegmentKind, ABI_VERSION};
pub use pool::{PoolAllocator, PoolGeometry, SizeClass};
pub use ring::{Consumer, Producer, PushError, Ring, RingError};
pub use shm::ShmSafe;
