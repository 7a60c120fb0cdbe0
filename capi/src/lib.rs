//! `hybus-c`: the C ABI of the hybus client (`libhybus_c.so`, `libhybus_c.a`,
//! `include/hybus.h`).
//!
//! Every function returns a [`hybus_status`]; [`hybus_last_error`] gives the
//! calling thread's last message. Handles are opaque pointers checked on
//! every entry (module `handle`); no panic crosses the boundary ([`status`]).
//!
//! * [`bus`] — connect, close, resolve, call, fire, direct channels, stats;
//! * [`pending`] — calls in flight;
//! * [`payload`] — samples read in place, loans written in place;
//! * [`service`] — register, next request, reply, fail;
//! * [`topic`] — publish, subscribe, next publication.
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
// The handles are opaque to C; their Rust insides are not worth a Debug each.
#![allow(missing_debug_implementations)]

pub mod args;
pub mod bus;
mod handle;
pub mod payload;
pub mod pending;
pub mod service;
pub mod status;
pub mod topic;

pub use args::HYBUS_FOREVER;
pub use status::{hybus_last_error, hybus_status};
