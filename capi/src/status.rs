//! `hybus_status`, the thread's last error message, and the guard every
//! entry point runs its body in (no panic crosses into C).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use hybus::Error;

/// What a call of this library did: `HYBUS_OK`, or why it failed. One value
/// per error kind of the Rust client, and a few of the C boundary's own
/// (`HYBUS_INVALID_ARGUMENT`, `HYBUS_INVALID_HANDLE`, `HYBUS_PANIC`,
/// `HYBUS_OTHER`). `hybus_last_error()` gives the message.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum hybus_status {
    /// Success.
    HYBUS_OK = 0,
    /// Nothing listens at the socket path (is hybusd running?).
    HYBUS_NO_DAEMON = 1,
    /// Client and daemon speak different protocol or layout versions.
    HYBUS_VERSION_MISMATCH = 2,
    /// The name is owned by another user.
    HYBUS_NAME_OWNED = 3,
    /// Policy forbids it.
    HYBUS_ACCESS_DENIED = 4,
    /// No service, topic or instance of that name or id.
    HYBUS_NOT_FOUND = 5,
    /// A per-user quota is exhausted.
    HYBUS_QUOTA_EXCEEDED = 6,
    /// The daemon refused a malformed request.
    HYBUS_BAD_REQUEST = 7,
    /// No service has this route.
    HYBUS_NO_SUCH_SERVICE = 8,
    /// The service has no serving instance right now.
    HYBUS_NO_INSTANCE = 9,
    /// The deadline passed before an answer came.
    HYBUS_DEADLINE_EXCEEDED = 10,
    /// The serving instance died or left with the request in flight.
    HYBUS_PEER_GONE = 11,
    /// The payload is larger than the largest chunk of the pool.
    HYBUS_PAYLOAD_TOO_LARGE = 12,
    /// Every chunk large enough is in use.
    HYBUS_OUT_OF_POOL = 13,
    /// The receiver's queue is full.
    HYBUS_QUEUE_FULL = 14,
    /// The exchange was cancelled (by the caller, or the server refused it).
    HYBUS_CANCELLED = 15,
    /// The service answered with an error of its own (the message is its text).
    HYBUS_SERVICE_ERROR = 16,
    /// The ring is full and the caller asked not to block.
    HYBUS_WOULD_BLOCK = 17,
    /// The connection to the daemon is lost.
    HYBUS_BUS_GONE = 18,
    /// The daemon or a peer broke the protocol.
    HYBUS_PROTOCOL = 19,
    /// A payload is not the typed value asked for.
    HYBUS_BAD_PAYLOAD = 20,
    /// A system call failed.
    HYBUS_OS = 21,
    /// A received payload lives in a pool that no longer validates (its
    /// sender's pool is corrupt): that payload alone failed.
    HYBUS_CORRUPT_POOL = 22,
    /// The daemon started the service on demand and it failed before it
    /// registered (the message says how: its exit status, or the timeout).
    HYBUS_ACTIVATION_FAILED = 23,
    /// An argument is invalid: a NULL pointer where one is needed, a NULL
    /// buffer with a non-zero length, an empty or non-UTF-8 name.
    HYBUS_INVALID_ARGUMENT = 100,
    /// A handle is NULL, already freed (or consumed), or of another type.
    HYBUS_INVALID_HANDLE = 101,
    /// A bug in this library was caught at the boundary (the message says where).
    HYBUS_PANIC = 102,
    /// An error kind newer than this header.
    HYBUS_OTHER = 103,
}

use hybus_status::*;

/// A failure on its way out to C: its status and message.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) status: hybus_status,
    pub(crate) message: String,
}

impl Fail {
    /// A failure of the C boundary's own.
    pub(crate) fn new(status: hybus_status, message: impl Into<String>) -> Fail {
        Fail { status, message: message.into() }
    }

    /// `HYBUS_INVALID_ARGUMENT` with `message`.
    pub(crate) fn arg(message: impl Into<String>) -> Fail {
        Fail::new(HYBUS_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail { status: status_of(&e), message: e.to_string() }
    }
}

/// The status of a client error kind.
pub(crate) fn status_of(e: &Error) -> hybus_status {
    match e {
        Error::NoDaemon { .. } => HYBUS_NO_DAEMON,
        Error::VersionMismatch(_) => HYBUS_VERSION_MISMATCH,
        Error::NameOwned(_) => HYBUS_NAME_OWNED,
        Error::AccessDenied(_) => HYBUS_ACCESS_DENIED,
        Error::NotFound(_) => HYBUS_NOT_FOUND,
        Error::QuotaExceeded(_) => HYBUS_QUOTA_EXCEEDED,
        Error::BadRequest(_) => HYBUS_BAD_REQUEST,
        Error::NoSuchService => HYBUS_NO_SUCH_SERVICE,
        Error::NoInstance => HYBUS_NO_INSTANCE,
        Error::DeadlineExceeded => HYBUS_DEADLINE_EXCEEDED,
        Error::PeerGone => HYBUS_PEER_GONE,
        Error::PayloadTooLarge { .. } => HYBUS_PAYLOAD_TOO_LARGE,
        Error::OutOfPool { .. } => HYBUS_OUT_OF_POOL,
        Error::QueueFull => HYBUS_QUEUE_FULL,
        Error::Cancelled => HYBUS_CANCELLED,
        Error::Service { .. } => HYBUS_SERVICE_ERROR,
        Error::WouldBlock => HYBUS_WOULD_BLOCK,
        Error::BusGone(_) => HYBUS_BUS_GONE,
        Error::Protocol(_) => HYBUS_PROTOCOL,
        Error::BadPayload(_) => HYBUS_BAD_PAYLOAD,
        Error::Os(_) => HYBUS_OS,
        Error::CorruptPool { .. } => HYBUS_CORRUPT_POOL,
        Error::ActivationFailed { .. } => HYBUS_ACTIVATION_FAILED,
        _ => HYBUS_OTHER,
    }
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last(message: String) {
    // A message with a NUL inside is cut there rather than lost.
    let bytes: Vec<u8> = message.into_bytes().into_iter().take_while(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    LAST.with(|l| *l.borrow_mut() = c);
}

/// Runs an entry point's body: its status, the message kept for
/// `hybus_last_error()` if it failed, and a caught panic turned into
/// `HYBUS_PANIC`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Fail>) -> hybus_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => HYBUS_OK,
        Ok(Err(f)) => {
            set_last(f.message);
            f.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last(format!("internal error in libhybus (caught, please report): {what}"));
            HYBUS_PANIC
        }
    }
}

/// The message of the calling thread's last failed call ("" if none
/// failed yet). The string is owned by the library and stays valid until
/// the next failing call on this thread.
///
/// Thread-safe: each thread has its own.
#[no_mangle]
pub extern "C" fn hybus_last_error() -> *const c_char {
    // Not through `guard`: it would overwrite the message it reads.
    catch_unwind(|| LAST.with(|l| l.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// A static name for a status ("HYBUS_OK", "HYBUS_DEADLINE_EXCEEDED", ...),
/// "HYBUS_UNKNOWN" for a value that is none. Never NULL; never to be freed.
#[no_mangle]
pub extern "C" fn hybus_status_name(status: i32) -> *const c_char {
    // An `i32`, not the enum: a value C made up must not be undefined behaviour here.
    const NAMES: &[(hybus_status, &std::ffi::CStr)] = &[
        (HYBUS_OK, c"HYBUS_OK"),
        (HYBUS_NO_DAEMON, c"HYBUS_NO_DAEMON"),
        (HYBUS_VERSION_MISMATCH, c"HYBUS_VERSION_MISMATCH"),
        (HYBUS_NAME_OWNED, c"HYBUS_NAME_OWNED"),
        (HYBUS_ACCESS_DENIED, c"HYBUS_ACCESS_DENIED"),
        (HYBUS_NOT_FOUND, c"HYBUS_NOT_FOUND"),
        (HYBUS_QUOTA_EXCEEDED, c"HYBUS_QUOTA_EXCEEDED"),
        (HYBUS_BAD_REQUEST, c"HYBUS_BAD_REQUEST"),
        (HYBUS_NO_SUCH_SERVICE, c"HYBUS_NO_SUCH_SERVICE"),
        (HYBUS_NO_INSTANCE, c"HYBUS_NO_INSTANCE"),
        (HYBUS_DEADLINE_EXCEEDED, c"HYBUS_DEADLINE_EXCEEDED"),
        (HYBUS_PEER_GONE, c"HYBUS_PEER_GONE"),
        (HYBUS_PAYLOAD_TOO_LARGE, c"HYBUS_PAYLOAD_TOO_LARGE"),
        (HYBUS_OUT_OF_POOL, c"HYBUS_OUT_OF_POOL"),
        (HYBUS_QUEUE_FULL, c"HYBUS_QUEUE_FULL"),
        (HYBUS_CANCELLED, c"HYBUS_CANCELLED"),
        (HYBUS_SERVICE_ERROR, c"HYBUS_SERVICE_ERROR"),
        (HYBUS_WOULD_BLOCK, c"HYBUS_WOULD_BLOCK"),
        (HYBUS_BUS_GONE, c"HYBUS_BUS_GONE"),
        (HYBUS_PROTOCOL, c"HYBUS_PROTOCOL"),
        (HYBUS_BAD_PAYLOAD, c"HYBUS_BAD_PAYLOAD"),
        (HYBUS_OS, c"HYBUS_OS"),
        (HYBUS_INVALID_ARGUMENT, c"HYBUS_INVALID_ARGUMENT"),
        (HYBUS_INVALID_HANDLE, c"HYBUS_INVALID_HANDLE"),
        (HYBUS_PANIC, c"HYBUS_PANIC"),
        (HYBUS_OTHER, c"HYBUS_OTHER"),
    ];
    NAMES.iter().find(|(s, _)| *s as i32 == status).map_or(c"HYBUS_UNKNOWN", |(_, n)| n).as_ptr()
}
