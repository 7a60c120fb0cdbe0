//! `hybus._hybus`: the Python binding of the hybus client (import `hybus`).
//!
//! * `bus` — `Bus`, `Route`;
//! * `pending` — `PendingCall`;
//! * `payload` — `Sample` (read in place), `Loan` (written in place);
//! * `service` — `Service`, `Request`;
//! * `topic` — `Publisher`, `Subscription`;
//! * `errors` — `hybus.Error` and one subclass per error kind;
//! * `buffer` — the buffer protocol both ways; `wait` — GIL-free, interruptible waits.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
// pyo3's generated glue has neither docs nor Debug impls.
#![allow(missing_docs, missing_debug_implementations)]

mod buffer;
mod bus;
mod errors;
mod payload;
mod pending;
mod service;
mod topic;
mod wait;

use pyo3::prelude::*;

/// The native part of the `hybus` package.
#[pymodule]
fn _hybus(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bus::PyBus>()?;
    m.add_class::<bus::PyRoute>()?;
    m.add_class::<pending::PyPendingCall>()?;
    m.add_class::<payload::PySample>()?;
    m.add_class::<payload::PyLoan>()?;
    m.add_class::<service::PyService>()?;
    m.add_class::<service::PyRequest>()?;
    m.add_class::<topic::PyPublisher>()?;
    m.add_class::<topic::PySubscription>()?;
    errors::add(m)?;
    Ok(())
}
