//! One exception class per error kind of the client, all under `hybus.Error`.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use hybus::Error;

create_exception!(hybus, HybusError, PyException, "Every failure of hybus (the base of the classes below).");
create_exception!(hybus, NoDaemon, HybusError, "Nothing listens at the socket path (is hybusd running?).");
create_exception!(hybus, VersionMismatch, HybusError, "Client and daemon speak different protocol versions.");
create_exception!(hybus, NameOwned, HybusError, "The name is owned by another user.");
create_exception!(hybus, AccessDenied, HybusError, "Policy forbids it.");
create_exception!(hybus, NotFound, HybusError, "No service, topic or instance of that name or id.");
create_exception!(hybus, QuotaExceeded, HybusError, "A per-user quota is exhausted.");
create_exception!(hybus, BadRequest, HybusError, "The daemon refused a malformed request.");
create_exception!(hybus, NoSuchService, HybusError, "No service has this route.");
create_exception!(hybus, NoInstance, HybusError, "The service has no serving instance right now.");
create_exception!(hybus, DeadlineExceeded, HybusError, "The deadline passed before an answer came.");
create_exception!(hybus, PeerGone, HybusError, "The serving instance died or left with the request in flight.");
create_exception!(hybus, PayloadTooLarge, HybusError, "The payload is larger than the largest chunk of the pool.");
create_exception!(hybus, OutOfPool, HybusError, "Every chunk large enough is in use.");
create_exception!(hybus, QueueFull, HybusError, "The receiver's queue is full.");
create_exception!(
    hybus,
    Cancelled,
    HybusError,
    "The exchange was cancelled (by the caller, or the server refused it)."
);
create_exception!(hybus, ServiceError, HybusError, "The service answered with an error of its own.");
create_exception!(hybus, WouldBlock, HybusError, "The ring is full and the caller asked not to block.");
create_exception!(hybus, BusGone, HybusError, "The connection to the daemon is lost (or the bus was closed).");
create_exception!(hybus, ProtocolError, HybusError, "The daemon or a peer broke the protocol.");
create_exception!(hybus, BadPayload, HybusError, "A payload is not the typed value asked for.");
create_exception!(hybus, SystemCallError, HybusError, "A system call failed.");
create_exception!(
    hybus,
    CorruptPool,
    HybusError,
    "A received payload's pool no longer validates (that payload alone failed)."
);
create_exception!(
    hybus,
    ActivationFailed,
    HybusError,
    "The service was started on demand and failed before it registered."
);

/// The Python exception of a client error.
pub(crate) fn to_py(e: Error) -> PyErr {
    let m = e.to_string();
    match e {
        Error::NoDaemon { .. } => NoDaemon::new_err(m),
        Error::VersionMismatch(_) => VersionMismatch::new_err(m),
        Error::NameOwned(_) => NameOwned::new_err(m),
        Error::AccessDenied(_) => AccessDenied::new_err(m),
        Error::NotFound(_) => NotFound::new_err(m),
        Error::QuotaExceeded(_) => QuotaExceeded::new_err(m),
        Error::BadRequest(_) => BadRequest::new_err(m),
        Error::NoSuchService => NoSuchService::new_err(m),
        Error::NoInstance => NoInstance::new_err(m),
        Error::DeadlineExceeded => DeadlineExceeded::new_err(m),
        Error::PeerGone => PeerGone::new_err(m),
        Error::PayloadTooLarge { .. } => PayloadTooLarge::new_err(m),
        Error::OutOfPool { .. } => OutOfPool::new_err(m),
        Error::QueueFull => QueueFull::new_err(m),
        Error::Cancelled => Cancelled::new_err(m),
        Error::Service { .. } => ServiceError::new_err(m),
        Error::WouldBlock => WouldBlock::new_err(m),
        Error::BusGone(_) => BusGone::new_err(m),
        Error::Protocol(_) => ProtocolError::new_err(m),
        Error::BadPayload(_) => BadPayload::new_err(m),
        Error::Os(_) => SystemCallError::new_err(m),
        Error::CorruptPool { .. } => CorruptPool::new_err(m),
        Error::ActivationFailed { .. } => ActivationFailed::new_err(m),
        _ => HybusError::new_err(m),
    }
}

/// Adds `Error` and its subclasses to the module.
pub(crate) fn add(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<HybusError>())?;
    m.add("NoDaemon", py.get_type::<NoDaemon>())?;
    m.add("VersionMismatch", py.get_type::<VersionMismatch>())?;
    m.add("NameOwned", py.get_type::<NameOwned>())?;
    m.add("AccessDenied", py.get_type::<AccessDenied>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("QuotaExceeded", py.get_type::<QuotaExceeded>())?;
    m.add("BadRequest", py.get_type::<BadRequest>())?;
    m.add("NoSuchService", py.get_type::<NoSuchService>())?;
    m.add("NoInstance", py.get_type::<NoInstance>())?;
    m.add("DeadlineExceeded", py.get_type::<DeadlineExceeded>())?;
    m.add("PeerGone", py.get_type::<PeerGone>())?;
    m.add("PayloadTooLarge", py.get_type::<PayloadTooLarge>())?;
    m.add("OutOfPool", py.get_type::<OutOfPool>())?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("ServiceError", py.get_type::<ServiceError>())?;
    m.add("WouldBlock", py.get_type::<WouldBlock>())?;
    m.add("BusGone", py.get_type::<BusGone>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    m.add("BadPayload", py.get_type::<BadPayload>())?;
    m.add("SystemCallError", py.get_type::<SystemCallError>())?;
    m.add("CorruptPool", py.get_type::<CorruptPool>())?;
    m.add("ActivationFailed", py.get_type::<ActivationFailed>())?;
    Ok(())
}
