//! Publish/subscribe: publishers, subscriptions, publications.

use std::ffi::c_char;

use hybus::{Publisher, Subscription};

use crate::args::{bytes, need, put, str_arg, timeout};
use crate::bus::hybus_bus;
use crate::handle::{borrow, free, give, handle, Head};
use crate::payload::{hybus_loan, hybus_sample, take_loan};
use crate::status::{guard, hybus_status};

/// Publishes on one topic.
///
/// Thread-safe: several threads may publish through one publisher at once.
#[allow(non_camel_case_types)]
pub struct hybus_publisher {
    head: Head,
    publisher: Publisher,
}
handle!(hybus_publisher, 0x6879_6275_735f_7062);

/// Receives a topic's publications; freeing it unsubscribes. One per topic
/// and connection.
///
/// Thread-safe: several threads may wait on it at once (each publication
/// goes to one of them).
#[allow(non_camel_case_types)]
pub struct hybus_subscription {
    head: Head,
    sub: Subscription,
}
handle!(hybus_subscription, 0x6879_6275_735f_7362);

/// A publisher for `topic` (created if new): `*out`, to free with `hybus_publisher_free`.
#[no_mangle]
pub extern "C" fn hybus_publisher_new(
    bus: *const hybus_bus,
    topic: *const c_char,
    out: *mut *mut hybus_publisher,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let bus = borrow(bus)?;
        let publisher = bus.bus.publisher(str_arg(topic, "the topic")?)?;
        put(out, give(hybus_publisher { head: Head::of::<hybus_publisher>(), publisher }))
    })
}

/// Frees a publisher (NULL: nothing).
#[no_mangle]
pub extern "C" fn hybus_publisher_free(publisher: *mut hybus_publisher) -> hybus_status {
    guard(|| free(publisher))
}

/// Publishes `len` bytes at `data` to every subscriber of the topic.
#[no_mangle]
pub extern "C" fn hybus_publish(publisher: *const hybus_publisher, data: *const u8, len: usize) -> hybus_status {
    guard(|| {
        let (p, payload) = (borrow(publisher)?, bytes(data, len)?);
        Ok(p.publisher.publish(payload)?)
    })
}

/// Publishes the payload written in `loan` (consumed, whatever the result):
/// every subscriber reads that very chunk.
#[no_mangle]
pub extern "C" fn hybus_publish_loan(publisher: *const hybus_publisher, loan: *mut hybus_loan) -> hybus_status {
    guard(|| {
        let loan = take_loan(loan)?;
        Ok(borrow(publisher)?.publisher.publish_loan(loan)?)
    })
}

/// Subscribes to `topic`: `*out`, to free with `hybus_subscription_free`.
#[no_mangle]
pub extern "C" fn hybus_subscribe(
    bus: *const hybus_bus,
    topic: *const c_char,
    out: *mut *mut hybus_subscription,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let bus = borrow(bus)?;
        let sub = bus.bus.subscribe(str_arg(topic, "the topic")?)?;
        put(out, give(hybus_subscription { head: Head::of::<hybus_subscription>(), sub }))
    })
}

/// Waits up to `timeout_ms` for the next publication: `*out`, or NULL (with
/// `HYBUS_OK`) if none came in time.
#[no_mangle]
pub extern "C" fn hybus_subscription_next(
    sub: *const hybus_subscription,
    timeout_ms: u64,
    out: *mut *mut hybus_sample,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        if let Some(s) = borrow(sub)?.sub.next(timeout(timeout_ms))? {
            put(out, hybus_sample::give(s))?;
        }
        Ok(())
    })
}

/// Unsubscribes and frees a subscription (NULL: nothing).
#[no_mangle]
pub extern "C" fn hybus_subscription_free(sub: *mut hybus_subscription) -> hybus_status {
    guard(|| free(sub))
}
