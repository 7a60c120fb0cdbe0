//! Payloads: samples (received, read in place) and loans (our chunks,
//! written in place), and the calls and fires that send a loan.

use std::sync::Mutex;

use hybus::{Loan, Sample};

use crate::args::{need, put, timeout};
use crate::bus::{hybus_bus, hybus_route};
use crate::handle::{borrow, free, give, handle, take, Head};
use crate::status::{guard, hybus_status, Fail};

/// A received payload (an answer, a publication, a fire). Large payloads
/// are read in place from the sender's shared chunk, which goes back to
/// the sender when the sample is freed: free samples soon.
///
/// Thread-safe for reading (`hybus_sample_data` from several threads);
/// freed by one thread once no other reads it.
#[allow(non_camel_case_types)]
pub struct hybus_sample {
    head: Head,
    pub(crate) sample: Sample,
}
handle!(hybus_sample, 0x6879_6275_735f_736d);

impl hybus_sample {
    /// Hands `sample` to C.
    pub(crate) fn give(sample: Sample) -> *mut hybus_sample {
        give(hybus_sample { head: Head::of::<hybus_sample>(), sample })
    }
}

/// A chunk of this connection's pool lent to the application to write a
/// payload in place (`hybus_loan_data`), then sent with `hybus_call_loan`,
/// `hybus_fire_loan`, `hybus_publish_loan` or `hybus_request_reply_loan`
/// (which consume it), or given back with `hybus_loan_free`.
///
/// One thread at a time.
#[allow(non_camel_case_types)]
pub struct hybus_loan {
    head: Head,
    loan: Mutex<Loan>,
}
handle!(hybus_loan, 0x6879_6275_735f_6c6e);

/// Takes the loan behind `loan` out of its handle (consumed).
pub(crate) fn take_loan(loan: *mut hybus_loan) -> Result<Loan, Fail> {
    Ok(take(loan)?.loan.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The payload of `sample`: `*data` points to `*len` bytes in the shared
/// chunk (or inside the sample for small ones), valid until
/// `hybus_sample_free`. Read only: the memory is mapped read-only.
#[no_mangle]
pub extern "C" fn hybus_sample_data(
    sample: *const hybus_sample,
    data: *mut *const u8,
    len: *mut usize,
) -> hybus_status {
    guard(|| {
        need(data)?;
        need(len)?;
        let s = borrow(sample)?;
        let b = s.sample.bytes();
        put(data, b.as_ptr())?;
        put(len, b.len())
    })
}

/// Whether the sample is read in place from the sender's shared chunk
/// (`*zero_copy`: 1), or was small enough to travel in the descriptor (0).
#[no_mangle]
pub extern "C" fn hybus_sample_is_zero_copy(sample: *const hybus_sample, zero_copy: *mut i32) -> hybus_status {
    guard(|| put(zero_copy, borrow(sample)?.sample.is_zero_copy() as i32))
}

/// Frees a sample (NULL: nothing); its chunk goes back to the sender.
#[no_mangle]
pub extern "C" fn hybus_sample_free(sample: *mut hybus_sample) -> hybus_status {
    guard(|| free(sample))
}

/// Lends a chunk of at least `len` bytes of this connection's pool,
/// waiting up to `timeout_ms` for one to be free: `*out`.
#[no_mangle]
pub extern "C" fn hybus_loan_new(
    bus: *const hybus_bus,
    len: usize,
    timeout_ms: u64,
    out: *mut *mut hybus_loan,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let loan = borrow(bus)?.bus.loan(len, timeout(timeout_ms))?;
        put(out, give(hybus_loan { head: Head::of::<hybus_loan>(), loan: Mutex::new(loan) }))
    })
}

/// Where to write the loan's payload: `*data`, `*len` bytes, valid until
/// the loan is sent or freed.
#[no_mangle]
pub extern "C" fn hybus_loan_data(loan: *const hybus_loan, data: *mut *mut u8, len: *mut usize) -> hybus_status {
    guard(|| {
        need(data)?;
        need(len)?;
        let l = borrow(loan)?;
        let mut loan = l.loan.lock().unwrap_or_else(|p| p.into_inner());
        let b: &mut [u8] = &mut loan;
        put(data, b.as_mut_ptr())?;
        put(len, b.len())
    })
}

/// Shrinks the loan's payload to `len` bytes (it cannot grow).
#[no_mangle]
pub extern "C" fn hybus_loan_truncate(loan: *const hybus_loan, len: usize) -> hybus_status {
    guard(|| {
        borrow(loan)?.loan.lock().unwrap_or_else(|p| p.into_inner()).truncate(len);
        Ok(())
    })
}

/// Gives an unsent loan back to the pool (NULL: nothing).
#[no_mangle]
pub extern "C" fn hybus_loan_free(loan: *mut hybus_loan) -> hybus_status {
    guard(|| free(loan))
}

/// Calls `route` with the payload written in `loan` (consumed, whatever
/// the result) and waits up to `timeout_ms` for the answer, `*out`.
#[no_mangle]
pub extern "C" fn hybus_call_loan(
    bus: *const hybus_bus,
    route: *const hybus_route,
    loan: *mut hybus_loan,
    timeout_ms: u64,
    out: *mut *mut hybus_sample,
) -> hybus_status {
    guard(|| {
        let loan = take_loan(loan)?;
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let (bus, route) = (borrow(bus)?, borrow(route)?);
        let sample = bus.bus.call_loan(&route.route, loan, timeout(timeout_ms))?;
        put(out, hybus_sample::give(sample))
    })
}

/// Fires the payload written in `loan` (consumed, whatever the result) at `route`.
#[no_mangle]
pub extern "C" fn hybus_fire_loan(
    bus: *const hybus_bus,
    route: *const hybus_route,
    loan: *mut hybus_loan,
) -> hybus_status {
    guard(|| {
        let loan = take_loan(loan)?;
        let (bus, route) = (borrow(bus)?, borrow(route)?);
        Ok(bus.bus.fire_loan(&route.route, loan)?)
    })
}
