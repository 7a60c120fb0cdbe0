//! The system calls under the hybus ABI, kept out of [`hybus_layout`] so
//! that the ABI crate is only layout and checks:
//!
//! * [`segment`] — memfd segments (create, seal, map) and eventfd doorbells;
//! * [`socket`] — the control socket: SOCK_SEQPACKET datagrams with SCM_RIGHTS;
//! * [`cpus`] — how many CPUs this thread may use, for the idle strategy.
//!
//! The daemon and the client both use it; what travels through these
//! segments and sockets (headers, rings, descriptors, control messages) is
//! defined and validated in [`hybus_layout`].
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cpus;
pub mod segment;
pub mod socket;
