//! What C passes in: names, buffers, timeouts and out-pointers, checked.
//!
//! # Safety
//!
//! C promises (the header says so) that a non-NULL pointer points to what
//! its type says: a NUL-terminated string, `len` readable bytes, a writable
//! out-slot. NULL where something is needed is refused here.

use std::ffi::{c_char, CStr};
use std::time::Duration;

use crate::status::Fail;

/// A timeout in milliseconds meaning "no limit".
pub const HYBUS_FOREVER: u64 = u64::MAX;

/// `ms` as a duration (`HYBUS_FOREVER`: as long as a `Duration` goes).
pub(crate) fn timeout(ms: u64) -> Duration {
    if ms == HYBUS_FOREVER {
        Duration::MAX
    } else {
        Duration::from_millis(ms)
    }
}

/// A name: not NULL, not empty, UTF-8.
pub(crate) fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::arg(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated by the header's contract.
    let s = unsafe { CStr::from_ptr(p) };
    let s = s.to_str().map_err(|_| Fail::arg(format!("{what} is not UTF-8")))?;
    if s.is_empty() {
        return Err(Fail::arg(format!("{what} is empty")));
    }
    Ok(s)
}

/// An optional path: NULL for the default.
pub(crate) fn opt_path<'a>(p: *const c_char) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        return Ok(None);
    }
    str_arg(p, "the socket path").map(Some)
}

/// `len` bytes at `data`; NULL is allowed for a zero length only.
pub(crate) fn bytes<'a>(data: *const u8, len: usize) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(Fail::arg(format!("the buffer is NULL but its length is {len}")));
    }
    // SAFETY: not NULL, and `len` readable bytes by the header's contract.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// Writes `value` to the out-slot `out`.
pub(crate) fn put<T>(out: *mut T, value: T) -> Result<(), Fail> {
    if out.is_null() {
        return Err(Fail::arg("the out-pointer is NULL"));
    }
    // SAFETY: not NULL, and writable by the header's contract.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks an out-slot before the work whose result it will hold (so that
/// nothing is done, sent or lost for a NULL one).
pub(crate) fn need<T>(out: *mut T) -> Result<(), Fail> {
    if out.is_null() {
        return Err(Fail::arg("the out-pointer is NULL"));
    }
    Ok(())
}
