//! What can go wrong, in words the caller can act on.

use std::fmt;
use std::path::PathBuf;

use hybus_layout::control::{DataError, ErrorCode, ErrorReply};

/// Every failure of the client library.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Nothing listens at the socket path.
    NoDaemon {
        /// The path tried.
        path: PathBuf,
        /// What connect(2) said.
        reason: String,
    },
    /// Client and daemon speak different protocol or layout versions.
    VersionMismatch(String),
    /// The name is owned by another user.
    NameOwned(String),
    /// Policy forbids it.
    AccessDenied(String),
    /// No service, topic or instance of that name or id.
    NotFound(String),
    /// A per-user quota is exhausted.
    QuotaExceeded(String),
    /// The daemon refused a malformed request.
    BadRequest(String),
    /// No service has this route (it was never known to the daemon).
    NoSuchService,
    /// The service has no serving instance right now.
    NoInstance,
    /// The deadline passed before an answer came.
    DeadlineExceeded,
    /// The serving instance died or left with the request in flight.
    PeerGone,
    /// The payload is larger than the largest chunk of the pool.
    PayloadTooLarge {
        /// Bytes asked for.
        len: usize,
        /// Largest chunk.
        max: u32,
    },
    /// Every chunk large enough is in use (wait for receivers to release some).
    OutOfPool {
        /// Bytes asked for.
        len: usize,
    },
    /// The receiver's queue is full.
    QueueFull,
    /// The exchange was cancelled (by the caller, or the server refused it).
    Cancelled,
    /// The service answered with an error of its own (see
    /// [`Request::fail_with`](crate::Request::fail_with)).
    Service {
        /// The service's own error code; 0 when it gave none.
        code: u32,
        /// What it said (at most [`MAX_ERROR_MESSAGE`](crate::MAX_ERROR_MESSAGE) bytes).
        message: String,
    },
    /// The daemon started the service on demand (`[[activate]]`) and the
    /// process failed before it registered.
    ActivationFailed {
        /// The service (empty where the call did not say).
        service: String,
        /// How: `exited with status 3`, `did not register in 5000 ms`.
        reason: String,
    },
    /// The ring is full and the caller asked not to block.
    WouldBlock,
    /// The connection to the daemon is lost (it stopped or disconnected us).
    BusGone(String),
    /// The daemon or a peer broke the protocol.
    Protocol(String),
    /// The pool a received payload lives in no longer validates (its
    /// header was overwritten): that sender's payloads are refused one by
    /// one, and the daemon is told; everything else on the connection goes on.
    CorruptPool {
        /// The pool (its owner's client id).
        pool: u32,
        /// What is wrong with it.
        why: String,
    },
    /// A payload is not the typed value asked for (see [`typed`](crate::typed)).
    BadPayload(String),
    /// A system call failed.
    Os(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDaemon { path, reason } => {
                write!(f, "no daemon at {}: {reason} — is hybusd running?", path.display())
            }
            Self::VersionMismatch(m) => write!(f, "protocol version mismatch: {m}"),
            Self::NameOwned(m) => write!(f, "name already owned: {m}"),
            Self::AccessDenied(m) => write!(f, "access denied: {m}"),
            Self::NotFound(m) => write!(f, "not found: {m}"),
            Self::QuotaExceeded(m) => write!(f, "quota exceeded: {m}"),
            Self::BadRequest(m) => write!(f, "bad request: {m}"),
            Self::NoSuchService => f.write_str("no such service"),
            Self::NoInstance => f.write_str("no instance is serving this service"),
            Self::DeadlineExceeded => f.write_str("deadline exceeded"),
            Self::PeerGone => f.write_str("peer gone: the serving instance went away with the request in flight"),
            // The limit is the daemon's to set: name the setting.
            Self::PayloadTooLarge { len: 0, .. } => f.write_str(
                "payload too large for the sender's pool: the largest chunk_size of the daemon's [[pool]] classes (hybusd.toml) is the limit",
            ),
            Self::PayloadTooLarge { len, max } => write!(
                f,
                "payload too large: {len} bytes, the largest chunk holds {max} (the largest chunk_size of the daemon's [[pool]] classes in hybusd.toml sets this limit)"
            ),
            Self::OutOfPool { len } => write!(f, "out of pool memory for a {len}-byte payload"),
            Self::QueueFull => f.write_str("the receiver's queue is full"),
            Self::Cancelled => f.write_str("cancelled"),
            Self::Service { code: 0, message } => write!(f, "service error: {message}"),
            Self::Service { code, message } => write!(f, "service error {code}: {message}"),
            Self::ActivationFailed { service, reason } if service.is_empty() => {
                write!(f, "activation failed: {reason}")
            }
            Self::ActivationFailed { service, reason } => write!(f, "activation of {service} failed: {reason}"),
            Self::WouldBlock => f.write_str("would block: the ring is full"),
            Self::BusGone(m) => write!(f, "bus gone: {m}"),
            Self::Protocol(m) => write!(f, "protocol error: {m}"),
            Self::CorruptPool { pool, why } => {
                write!(f, "the sender's pool {pool} is corrupt ({why}): its payloads are refused")
            }
            Self::BadPayload(m) => write!(f, "bad payload: {m}"),
            Self::Os(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<ErrorReply> for Error {
    fn from(e: ErrorReply) -> Self {
        let m = e.message;
        match e.code {
            ErrorCode::BadRequest => Error::BadRequest(m),
            ErrorCode::VersionMismatch => Error::VersionMismatch(m),
            ErrorCode::NotFound => Error::NotFound(m),
            ErrorCode::NameOwned => Error::NameOwned(m),
            ErrorCode::AccessDenied => Error::AccessDenied(m),
            ErrorCode::QuotaExceeded => Error::QuotaExceeded(m),
            ErrorCode::ShuttingDown => Error::BusGone(m),
        }
    }
}

impl Error {
    /// The error a data-plane error code stands for; `payload` is the
    /// service's own message for [`DataError::Service`] (its code is 0:
    /// see [`from_aux`](Self::from_aux) for the whole `aux` word).
    pub fn from_data(code: DataError, payload: &[u8]) -> Error {
        match code {
            DataError::NoSuchService => Error::NoSuchService,
            DataError::NoInstance => Error::NoInstance,
            DataError::DeadlineExceeded => Error::DeadlineExceeded,
            DataError::PeerGone => Error::PeerGone,
            DataError::PayloadTooLarge => Error::PayloadTooLarge { len: 0, max: 0 },
            DataError::OutOfPool => Error::OutOfPool { len: 0 },
            DataError::QueueFull => Error::QueueFull,
            DataError::Cancelled => Error::Cancelled,
            DataError::AccessDenied => Error::AccessDenied("by policy".into()),
            DataError::Service => Error::Service { code: 0, message: String::from_utf8_lossy(payload).into_owned() },
            DataError::QuotaExceeded => Error::QuotaExceeded("requests in flight (limits.in_flight_per_uid)".into()),
            DataError::ActivationFailed => Error::ActivationFailed {
                service: String::new(),
                reason: String::from_utf8_lossy(payload).into_owned(),
            },
        }
    }

    /// The error, saying which service it is about where it can
    /// ([`Error::ActivationFailed`] comes without its service's name).
    pub fn of_service(self, name: &str) -> Error {
        match self {
            Error::ActivationFailed { service, reason } if service.is_empty() => {
                Error::ActivationFailed { service: name.to_owned(), reason }
            }
            e => e,
        }
    }

    /// The error an Error descriptor's `aux` word and payload stand for:
    /// [`from_data`](Self::from_data), with the service's own code of a
    /// service error.
    pub fn from_aux(aux: u64, payload: &[u8]) -> Error {
        match Error::from_data(DataError::from_aux(aux), payload) {
            Error::Service { message, .. } => {
                Error::Service { code: hybus_layout::control::service_code(aux), message }
            }
            e => e,
        }
    }

    pub(crate) fn os(what: &str, e: impl fmt::Display) -> Error {
        Error::Os(format!("{what}: {e}"))
    }

    /// Whether retrying later may succeed (no instance, full queue, empty pool, full ring).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::NoInstance | Error::QueueFull | Error::OutOfPool { .. } | Error::WouldBlock)
    }
}
