//! The serving side: register, take what comes, reply or fail.

use std::ffi::c_char;

use hybus::{Incoming, Request, Sample, Service};

use crate::args::{bytes, need, put, str_arg, timeout};
use crate::bus::hybus_bus;
use crate::handle::{borrow, free, give, handle, take, Head};
use crate::payload::{hybus_loan, take_loan};
use crate::status::{guard, hybus_status, Fail};

/// A registered service instance. Freeing it unregisters the instance.
///
/// Thread-safe: several threads may wait in `hybus_service_next` on one
/// service at once (each request goes to one of them). Free it only when
/// no thread waits on it.
#[allow(non_camel_case_types)]
pub struct hybus_service {
    head: Head,
    svc: Service,
}
handle!(hybus_service, 0x6879_6275_735f_7376);

/// What came to a service: a call, which expects an answer, or a fire,
/// which does not (`hybus_request_is_fire`).
enum Received {
    Call(Request),
    Fire(Sample),
}

/// A request taken by `hybus_service_next`. Answer a call with
/// `hybus_request_reply`, `hybus_request_reply_loan` or `hybus_request_fail`
/// (each consumes it); free a fire, or a call you will not answer (its
/// caller is then told it failed), with `hybus_request_free`.
///
/// One thread at a time; it may be answered on another thread than the one
/// that took it.
#[allow(non_camel_case_types)]
pub struct hybus_request {
    head: Head,
    got: Received,
}
handle!(hybus_request, 0x6879_6275_735f_7271);

/// Registers an instance of the service `name` on `bus`: `*out`, to free
/// with `hybus_service_free`.
#[no_mangle]
pub extern "C" fn hybus_register(
    bus: *const hybus_bus,
    name: *const c_char,
    out: *mut *mut hybus_service,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let bus = borrow(bus)?;
        let svc = bus.bus.register(str_arg(name, "the service name")?)?;
        put(out, give(hybus_service { head: Head::of::<hybus_service>(), svc }))
    })
}

/// Unregisters and frees a service (NULL: nothing).
#[no_mangle]
pub extern "C" fn hybus_service_free(svc: *mut hybus_service) -> hybus_status {
    guard(|| free(svc))
}

/// Waits up to `timeout_ms` for the next request or fire: `*out`, or NULL
/// (with `HYBUS_OK`) if none came in time. Request-streams and
/// request-channels are refused here (their callers are told).
#[no_mangle]
pub extern "C" fn hybus_service_next(
    svc: *const hybus_service,
    timeout_ms: u64,
    out: *mut *mut hybus_request,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let svc = borrow(svc)?;
        let got = match svc.svc.next(timeout(timeout_ms))? {
            None => return Ok(()),
            Some(Incoming::Request(r)) => Received::Call(r),
            Some(Incoming::Fire(s)) => Received::Fire(s),
            Some(Incoming::Stream(s)) => {
                let _ = s.fail("streams are not served through the C API");
                return Ok(());
            }
        };
        put(out, give(hybus_request { head: Head::of::<hybus_request>(), got }))
    })
}

/// The payload of a request or fire: `*data`, `*len` bytes (in the
/// caller's shared chunk for large ones), valid until the request is
/// answered or freed.
#[no_mangle]
pub extern "C" fn hybus_request_payload(
    req: *const hybus_request,
    data: *mut *const u8,
    len: *mut usize,
) -> hybus_status {
    guard(|| {
        need(data)?;
        need(len)?;
        let b = match &borrow(req)?.got {
            Received::Call(r) => r.payload(),
            Received::Fire(s) => s.bytes(),
        };
        put(data, b.as_ptr())?;
        put(len, b.len())
    })
}

/// Whether it is a fire (`*fire`: 1; nothing to answer) or a call (0).
#[no_mangle]
pub extern "C" fn hybus_request_is_fire(req: *const hybus_request, fire: *mut i32) -> hybus_status {
    guard(|| put(fire, matches!(borrow(req)?.got, Received::Fire(_)) as i32))
}

/// How long the caller still waits for the answer: `*ms` milliseconds (0
/// once its deadline passed), or -1 if it set no deadline or `req` is a
/// fire. Never less than the caller's own deadline, at most a few
/// milliseconds more (see the Rust `Request::deadline`).
#[no_mangle]
pub extern "C" fn hybus_request_deadline(req: *const hybus_request, ms: *mut i64) -> hybus_status {
    guard(|| {
        let left = match &borrow(req)?.got {
            Received::Call(r) => r.deadline().map(|at| at.saturating_duration_since(std::time::Instant::now())),
            Received::Fire(_) => None,
        };
        put(ms, left.map_or(-1, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX)))
    })
}

fn take_call(req: *mut hybus_request) -> Result<Request, Fail> {
    match take(req)?.got {
        Received::Call(r) => Ok(r),
        Received::Fire(_) => Err(Fail::arg("a fire has no caller to answer (free it with hybus_request_free)")),
    }
}

/// Answers a call with `len` bytes at `data`. Consumes `req`, whatever the
/// result (a fire is freed and refused).
#[no_mangle]
pub extern "C" fn hybus_request_reply(req: *mut hybus_request, data: *const u8, len: usize) -> hybus_status {
    guard(|| {
        let r = take_call(req)?;
        Ok(r.reply(bytes(data, len)?)?)
    })
}

/// Answers a call with the payload written in `loan`. Consumes both,
/// whatever the result.
#[no_mangle]
pub extern "C" fn hybus_request_reply_loan(req: *mut hybus_request, loan: *mut hybus_loan) -> hybus_status {
    guard(|| {
        let loan = take_loan(loan);
        let r = take_call(req)?;
        Ok(r.reply_loan(loan?)?)
    })
}

/// Fails a call: its caller gets `HYBUS_SERVICE_ERROR` with `message`
/// (NULL or empty: a generic one). Consumes `req`.
#[no_mangle]
pub extern "C" fn hybus_request_fail(req: *mut hybus_request, message: *const c_char) -> hybus_status {
    guard(|| {
        let r = take_call(req)?;
        let m = if message.is_null() { "failed" } else { str_arg(message, "the message").unwrap_or("failed") };
        Ok(r.fail(m)?)
    })
}

/// Frees a request (NULL: nothing): a fire is done with; a call not
/// answered fails at its caller with a service error.
#[no_mangle]
pub extern "C" fn hybus_request_free(req: *mut hybus_request) -> hybus_status {
    guard(|| free(req))
}
