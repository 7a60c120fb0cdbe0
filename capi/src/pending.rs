//! Calls in flight: begin, wait, cancel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use hybus::PendingCall;

use crate::args::{bytes, need, put, timeout};
use crate::bus::{hybus_bus, hybus_route};
use crate::handle::{borrow, give, handle, take, Head};
use crate::payload::{hybus_loan, hybus_sample, take_loan};
use crate::status::{guard, hybus_status};

/// A call sent and not yet answered. Consumed by `hybus_pending_wait` or
/// `hybus_pending_cancel` (one of them must be called, once).
///
/// One thread at a time.
#[allow(non_camel_case_types)]
pub struct hybus_pending {
    head: Head,
    call: Mutex<PendingCall>,
    /// The call is over (a `hybus_pending_wait_for` had its answer or error).
    over: AtomicBool,
}
handle!(hybus_pending, 0x6879_6275_735f_7063);

/// Sends a call to `route` with `len` bytes at `data` and returns at once
/// with `*out`, the call in flight; its deadline is `timeout_ms` from now.
#[no_mangle]
pub extern "C" fn hybus_begin_call(
    bus: *const hybus_bus,
    route: *const hybus_route,
    data: *const u8,
    len: usize,
    timeout_ms: u64,
    out: *mut *mut hybus_pending,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let (bus, route, payload) = (borrow(bus)?, borrow(route)?, bytes(data, len)?);
        let call = bus.bus.begin_call(&route.route, payload, timeout(timeout_ms))?;
        put(
            out,
            give(hybus_pending {
                head: Head::of::<hybus_pending>(),
                call: Mutex::new(call),
                over: AtomicBool::new(false),
            }),
        )
    })
}

/// `hybus_begin_call` with the payload written in `loan` (consumed, whatever the result).
#[no_mangle]
pub extern "C" fn hybus_begin_call_loan(
    bus: *const hybus_bus,
    route: *const hybus_route,
    loan: *mut hybus_loan,
    timeout_ms: u64,
    out: *mut *mut hybus_pending,
) -> hybus_status {
    guard(|| {
        let loan = take_loan(loan)?;
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let (bus, route) = (borrow(bus)?, borrow(route)?);
        let call = bus.bus.begin_call_loan(&route.route, loan, timeout(timeout_ms))?;
        put(
            out,
            give(hybus_pending {
                head: Head::of::<hybus_pending>(),
                call: Mutex::new(call),
                over: AtomicBool::new(false),
            }),
        )
    })
}

/// Waits for the answer of `pending` (consumed) until the call's deadline:
/// `*out` on success; `HYBUS_DEADLINE_EXCEEDED` (the server is told),
/// `HYBUS_CANCELLED`, or the error the answer carries otherwise.
#[no_mangle]
pub extern "C" fn hybus_pending_wait(pending: *mut hybus_pending, out: *mut *mut hybus_sample) -> hybus_status {
    guard(|| {
        let p = take(pending)?;
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let sample = p.call.into_inner().unwrap_or_else(|e| e.into_inner()).wait()?;
        put(out, hybus_sample::give(sample))
    })
}

/// Waits at most `timeout_ms` for the answer of `pending` (never past its
/// deadline). `HYBUS_OK` with `*out` NULL if it has not come: the call stays
/// pending, and so does the handle (wait again, or cancel). Otherwise, as
/// `hybus_pending_wait`, the call is over, but the handle stays to be
/// freed by `hybus_pending_cancel` (which then only frees it).
#[no_mangle]
pub extern "C" fn hybus_pending_wait_for(
    pending: *const hybus_pending,
    timeout_ms: u64,
    out: *mut *mut hybus_sample,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let p = borrow(pending)?;
        let mut call = p.call.lock().unwrap_or_else(|e| e.into_inner());
        let r = call.wait_timeout(timeout(timeout_ms));
        p.over.store(!matches!(r, Ok(None)), Ordering::Relaxed);
        match r? {
            None => Ok(()),
            Some(s) => put(out, hybus_sample::give(s)),
        }
    })
}

/// Gives up on `pending` (consumed): the server is told; an answer that
/// comes anyway goes back to the server's pool.
#[no_mangle]
pub extern "C" fn hybus_pending_cancel(pending: *mut hybus_pending) -> hybus_status {
    guard(|| {
        let p = take(pending)?;
        let call = p.call.into_inner().unwrap_or_else(|e| e.into_inner());
        if !p.over.load(Ordering::Relaxed) {
            call.cancel();
        }
        Ok(())
    })
}
