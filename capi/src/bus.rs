//! The connection: connect, close, resolve, call, fire, direct channels, stats.

use std::ffi::c_char;

use hybus::{Bus, BusOptions, IdleStrategy, Route};

use crate::args::{bytes, need, opt_path, put, str_arg, timeout};
use crate::handle::{borrow, free, give, handle, Head};
use crate::payload::hybus_sample;
use crate::status::{guard, hybus_status, Fail};

/// A connection to the daemon.
///
/// Thread-safe: any number of threads may use one bus at once (calls,
/// fires, loans, registers, subscribes). Close it only when no other thread
/// uses it or anything made from it any more.
#[allow(non_camel_case_types)]
pub struct hybus_bus {
    head: Head,
    pub(crate) bus: Bus,
}
handle!(hybus_bus, 0x6879_6275_735f_6275);

/// A resolved service name. Resolve once, call many times; after a
/// reconnect it re-resolves by itself.
///
/// Thread-safe: may be used by several threads at once (read only).
#[allow(non_camel_case_types)]
pub struct hybus_route {
    head: Head,
    pub(crate) route: Route,
}
handle!(hybus_route, 0x6879_6275_735f_7274);

/// Traffic counters summed over a daemon's service instances, and the
/// daemon's count of lent chunks (see `hybus_stats`).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct hybus_stats_t {
    /// Registered service instances.
    pub instances: u32,
    /// Open direct channels.
    pub channels: u32,
    /// Connected clients.
    pub clients: u32,
    /// Descriptors delivered to instances.
    pub messages_in: u64,
    /// Descriptors the instances sent.
    pub messages_out: u64,
    /// Payload bytes delivered to instances.
    pub bytes_in: u64,
    /// Payload bytes the instances sent.
    pub bytes_out: u64,
    /// Requests forwarded and not answered yet.
    pub in_flight: u64,
    /// Error replies produced.
    pub errors: u64,
    /// Payload chunks lent out by the daemon (sent, not yet released by every receiver).
    pub chunks_lent: u64,
    /// Chunks of this connection's own pool in use.
    pub own_chunks_in_use: u32,
}

/// Connects to the daemon listening at `socket_path`; NULL for the default
/// (`$HYBUS_SOCKET`, else `$XDG_RUNTIME_DIR/hybus/bus.sock`, else
/// `/run/hybus/bus.sock`). On success `*out` is a new bus, to close with
/// `hybus_close`; on failure it is NULL.
#[no_mangle]
pub extern "C" fn hybus_connect(socket_path: *const c_char, out: *mut *mut hybus_bus) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let bus = match opt_path(socket_path)? {
            Some(p) => Bus::connect_to(p)?,
            None => Bus::connect()?,
        };
        put(out, give(hybus_bus { head: Head::of::<hybus_bus>(), bus }))
    })
}

/// `hybus_connect` with an idle strategy: how a waiting call spends its
/// time before the answer. `idle`: "default" (spin, yield, then sleep on
/// the doorbell; also for NULL), "spin" (yield, never sleep: lowest latency,
/// a core's worth of CPU), "busy" (spin only) or "park" (sleep at once).
#[no_mangle]
pub extern "C" fn hybus_connect_idle(
    socket_path: *const c_char,
    idle: *const c_char,
    out: *mut *mut hybus_bus,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let idle = match if idle.is_null() { "default" } else { str_arg(idle, "the idle strategy")? } {
            "default" => IdleStrategy::DEFAULT,
            "spin" => IdleStrategy { spins: 0, yields: u32::MAX, park: false },
            "busy" => IdleStrategy::BUSY,
            "park" => IdleStrategy::PARK,
            other => {
                return Err(Fail::arg(format!("unknown idle strategy {other:?}: use default, spin, busy or park")))
            }
        };
        let path = opt_path(socket_path)?.map(std::path::PathBuf::from);
        let bus = Bus::connect_with(BusOptions { path, idle, ..BusOptions::default() })?;
        put(out, give(hybus_bus { head: Head::of::<hybus_bus>(), bus }))
    })
}

/// Closes a bus (NULL: nothing). Services, subscriptions, samples and
/// loans made from it keep the connection alive until they are freed too.
#[no_mangle]
pub extern "C" fn hybus_close(bus: *mut hybus_bus) -> hybus_status {
    guard(|| free(bus))
}

/// Resolves a service name to a route (`*out`, to free with `hybus_route_free`).
#[no_mangle]
pub extern "C" fn hybus_resolve(
    bus: *const hybus_bus,
    name: *const c_char,
    out: *mut *mut hybus_route,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let bus = borrow(bus)?;
        let route = bus.bus.resolve(str_arg(name, "the service name")?)?;
        put(out, give(hybus_route { head: Head::of::<hybus_route>(), route }))
    })
}

/// Frees a route (NULL: nothing).
#[no_mangle]
pub extern "C" fn hybus_route_free(route: *mut hybus_route) -> hybus_status {
    guard(|| free(route))
}

/// Calls `route` with `len` bytes at `data` and waits up to `timeout_ms`
/// (`HYBUS_FOREVER`: no limit) for the answer, `*out` (read it with
/// `hybus_sample_data`, free it with `hybus_sample_free`).
#[no_mangle]
pub extern "C" fn hybus_call(
    bus: *const hybus_bus,
    route: *const hybus_route,
    data: *const u8,
    len: usize,
    timeout_ms: u64,
    out: *mut *mut hybus_sample,
) -> hybus_status {
    guard(|| {
        need(out)?;
        put(out, std::ptr::null_mut())?;
        let (bus, route, payload) = (borrow(bus)?, borrow(route)?, bytes(data, len)?);
        let sample = bus.bus.call(&route.route, payload, timeout(timeout_ms))?;
        put(out, hybus_sample::give(sample))
    })
}

/// Sends `len` bytes at `data` to `route` without waiting for an answer
/// (waits for room in the ring if it is full).
#[no_mangle]
pub extern "C" fn hybus_fire(
    bus: *const hybus_bus,
    route: *const hybus_route,
    data: *const u8,
    len: usize,
) -> hybus_status {
    guard(|| {
        let (bus, route, payload) = (borrow(bus)?, borrow(route)?, bytes(data, len)?);
        Ok(bus.bus.fire(&route.route, payload)?)
    })
}

/// Asks the daemon for a direct channel to `route`'s service (subject to
/// policy): traffic of this pair then bypasses the daemon. `*channel`
/// (may be NULL) receives the channel id.
#[no_mangle]
pub extern "C" fn hybus_request_direct(
    bus: *const hybus_bus,
    route: *const hybus_route,
    channel: *mut u32,
) -> hybus_status {
    guard(|| {
        let (bus, route) = (borrow(bus)?, borrow(route)?);
        let id = bus.bus.request_direct(&route.route)?;
        if !channel.is_null() {
            put(channel, id)?;
        }
        Ok(())
    })
}

/// Whether calls to `route` go over a direct channel now (`*direct`: 1 or 0).
#[no_mangle]
pub extern "C" fn hybus_is_direct(bus: *const hybus_bus, route: *const hybus_route, direct: *mut i32) -> hybus_status {
    guard(|| {
        let (bus, route) = (borrow(bus)?, borrow(route)?);
        put(direct, bus.bus.is_direct(&route.route) as i32)
    })
}

/// The daemon's traffic counters (summed over its instances) and lent chunks, in `*out`.
#[no_mangle]
pub extern "C" fn hybus_stats(bus: *const hybus_bus, out: *mut hybus_stats_t) -> hybus_status {
    guard(|| {
        need(out)?;
        let bus = borrow(bus)?;
        let (report, status) = (bus.bus.stats()?, bus.bus.status()?);
        let mut s = hybus_stats_t {
            instances: report.instances.len() as u32,
            channels: report.channels.len() as u32,
            clients: status.clients,
            chunks_lent: status.chunks_lent,
            own_chunks_in_use: bus.bus.chunks_in_use(),
            ..Default::default()
        };
        for i in &report.instances {
            s.messages_in += i.messages_in;
            s.messages_out += i.messages_out;
            s.bytes_in += i.bytes_in;
            s.bytes_out += i.bytes_out;
            s.in_flight += i.in_flight;
            s.errors += i.errors;
        }
        put(out, s)
    })
}
