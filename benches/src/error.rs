//! What can go wrong while measuring.

use std::fmt;

use hybus_layout::ring::RingError;
use hybus_os::segment::SegmentError;
use nix::errno::Errno;

/// Why a measurement produced no figure.
#[derive(Debug)]
pub enum BenchError {
    /// A system call failed.
    Os {
        /// What was being done.
        op: &'static str,
        /// The error.
        errno: Errno,
    },
    /// The shared-memory segment could not be made.
    Segment(SegmentError),
    /// A hybus ring reported a protocol violation.
    Ring(RingError),
    /// A descriptor arrived out of order or altered: the structure under test is broken.
    Mismatch {
        /// The sequence number (correlation id) expected.
        expected: u64,
        /// What arrived.
        got: u64,
    },
    /// A descriptor arrived with the right sequence number but altered (kind, route, fields).
    Corrupt {
        /// Its sequence number.
        seq: u64,
    },
    /// The other side made no progress for [`STALL`](crate::pingpong::STALL).
    Stalled,
    /// The other side (child process or thread) finished before the exchange did.
    PeerGone,
    /// The child process failed; `code` is its exit code, or 128 + the signal that killed it.
    ChildFailed {
        /// Exit code, or 128 + signal number.
        code: i32,
    },
}

/// Exit code a child uses for a panic (the same as a panicking Rust `main`).
pub(crate) const PANIC_EXIT: i32 = 101;

impl BenchError {
    /// The exit code a child process reports this error with (the parent
    /// turns it back into words with [`BenchError::ChildFailed`]'s `Display`).
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            BenchError::Mismatch { .. } => 3,
            BenchError::Stalled => 4,
            BenchError::PeerGone => 5,
            BenchError::Ring(_) => 6,
            BenchError::Os { .. } => 7,
            BenchError::Segment(_) => 8,
            BenchError::ChildFailed { .. } => 9,
            BenchError::Corrupt { .. } => 10,
        }
    }
}

fn child_reason(code: i32) -> &'static str {
    match code {
        3 => "it saw a descriptor out of order or altered",
        4 => "it stalled waiting for the parent",
        5 => "the parent went away",
        6 => "a ring protocol violation",
        7 => "a system call failed",
        8 => "a segment error",
        10 => "it saw an altered descriptor",
        PANIC_EXIT => "it panicked",
        c if c > 128 => "it was killed by a signal",
        _ => "unknown exit code",
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Os { op, errno } => write!(f, "{op} failed: {}", errno.desc()),
            BenchError::Segment(e) => write!(f, "cannot set up shared memory: {e}"),
            BenchError::Ring(e) => e.fmt(f),
            BenchError::Mismatch { expected, got } => write!(
                f,
                "data mismatch: expected sequence number {expected}, got {got}; the figure would be meaningless"
            ),
            BenchError::Corrupt { seq } => {
                write!(f, "descriptor {seq} arrived altered (kind, route or fields); the figure would be meaningless")
            }
            BenchError::Stalled => {
                write!(f, "the other side made no progress for {} s", crate::pingpong::STALL.as_secs())
            }
            BenchError::PeerGone => f.write_str("the other side finished before the exchange did"),
            BenchError::ChildFailed { code } => {
                write!(f, "child process failed with code {code}: {}", child_reason(*code))
            }
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Segment(e) => Some(e),
            BenchError::Ring(e) => Some(e),
            _ => None,
        }
    }
}

impl From<SegmentError> for BenchError {
    fn from(e: SegmentError) -> Self {
        BenchError::Segment(e)
    }
}

impl From<RingError> for BenchError {
    fn from(e: RingError) -> Self {
        BenchError::Ring(e)
    }
}

/// Maps an errno to a [`BenchError::Os`] naming the operation.
pub(crate) fn os(op: &'static str) -> impl FnOnce(Errno) -> BenchError {
    move |errno| BenchError::Os { op, errno }
}
