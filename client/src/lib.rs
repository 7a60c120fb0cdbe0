//! `hybus`: the client of the hybus message bus.
//!
//! Services link this crate and talk through the local daemon `hybusd`.
//! Payloads travel in shared memory and are never copied by the daemon.
//!
//! * [`Bus`] — a connection: register, resolve, call, fire, loan, watch;
//! * [`PendingCall`], [`CallCanceller`] — calls in flight, to collect later or cancel;
//! * [`Service`], [`Incoming`], [`Request`], [`StreamRequest`] — the serving side;
//!   [`Service::serve`] (and [`Serving`]) is the serving loop, [`Reply`] and
//!   [`ServiceError`] what its handler answers;
//! * [`Publisher`], [`Subscription`] — topics;
//! * [`Stream`] — the caller's end of a request-stream or request-channel;
//! * [`Sample`], [`Loan`] — received payloads and in-place writes (zero-copy);
//! * [`typed`] — values as payloads (rkyv), checked where they arrive;
//! * [`Error`] — what went wrong;
//! * `AsyncBus` (feature `tokio`) — the same waits as futures, on the same doorbells;
//! * [`WakeFds`], [`Bus::arm`], [`Bus::disarm`] — the same waits from another event loop (asyncio).
//!
//! # Examples
//!
//! ```no_run
//! # fn main() -> Result<(), hybus::Error> {
//! use std::time::Duration;
//! use hybus::Bus;
//!
//! // A service...
//! let server = Bus::connect()?;
//! let echo = server.register("demo.echo")?;
//! // Serves until the instance is drained; a handler's Err is answered as a service error.
//! std::thread::spawn(move || echo.serve(|req| Ok(req.payload().to_ascii_uppercase().into())));
//! // ...and a caller.
//! let bus = Bus::connect()?;
//! let route = bus.resolve("demo.echo")?;
//! let answer = bus.call(&route, b"hello", Duration::from_secs(1))?;
//! assert_eq!(&*answer, b"HELLO");
//! # Ok(()) }
//! ```
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "tokio")]
mod asynch;
mod bus;
mod core;
mod direct;
mod error;
mod external;
mod idle;
mod park;
mod pending;
mod sample;
mod serve;
#[cfg(feature = "tokio")]
mod serve_async;
mod service;
mod stream;
mod topic;
pub mod typed;
mod wait;

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(feature = "tokio")]
pub use asynch::{AsyncBus, StreamEnd};
pub use bus::{Bus, BusOptions};
pub use error::{Error, Result};
pub use external::WakeFds;
pub use hybus_layout::control::{
    ActivationInfo, ChannelStats, DaemonStatus, InstanceInfo, InstanceStats, Remote, ServiceInfo, StatsReport,
};
pub use hybus_layout::IdleStrategy;
pub use hybus_os::socket::default_socket_path;
pub use pending::{CallCanceller, PendingCall};
/// The rkyv this crate archives typed payloads with (see [`typed`]): derive
/// with it (`#[rkyv(crate = hybus::rkyv)]`) to be sure both agree.
pub use rkyv;
pub use sample::{Loan, Sample, INLINE_PAYLOAD};
pub use serve::{Reply, ServiceError, Serving};
#[cfg(feature = "tokio")]
pub use serve_async::{AsyncServing, NoFire, NoStream};
pub use service::{Incoming, Request, Service, ServiceOptions, StreamRequest, MAX_ERROR_MESSAGE};
pub use stream::{Batch, BatchIter, Stream};
pub use topic::{Publisher, Subscription};

/// Something that happened on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusEvent {
    /// An instance started serving a watched name.
    ServiceUp {
        /// Service name.
        name: String,
        /// Its route id.
        route: u32,
        /// The instance id.
        instance: u32,
        /// The serving process.
        pid: i32,
    },
    /// An instance of a watched name is gone.
    ServiceDown {
        /// Service name.
        name: String,
        /// Its route id.
        route: u32,
        /// The instance id.
        instance: u32,
        /// The serving process.
        pid: i32,
    },
    /// A fire (or a publication) could not be delivered.
    FireFailed {
        /// The route fired (or published) at.
        route: u32,
        /// Why.
        error: Error,
    },
    /// A brokered descriptor (see [`Bus::monitor`]).
    Traffic {
        /// Descriptor kind byte ([`hybus_layout::Kind`]).
        kind: u8,
        /// Sender's client id.
        from: u32,
        /// Receiver's client id: the serving instance's client for a
        /// request or fire, the caller for an answer; 0 for a publication
        /// (every subscriber).
        to: u32,
        /// Route id.
        route: u32,
        /// Correlation id.
        correlation: u64,
        /// Payload bytes.
        len: u32,
        /// Sender's pid, as the kernel told the daemon.
        from_pid: i32,
        /// Receiver's pid; 0 when `to` is 0.
        to_pid: i32,
    },
    /// A direct channel to a peer is open: traffic of that pair bypasses the daemon.
    DirectOpened {
        /// Channel id.
        channel: u32,
        /// The service it serves.
        service: String,
        /// The peer's pid.
        peer_pid: i32,
        /// Why the daemon made it.
        reason: String,
    },
    /// A direct channel closed; traffic falls back to the daemon.
    DirectClosed {
        /// Channel id.
        channel: u32,
        /// The service it served.
        service: String,
        /// Why.
        reason: String,
    },
    /// The daemon asks our instance to drain and exit: it started the
    /// process on demand (`[[activate]]`) and the instance got no request
    /// for `stop_when_idle_s`. It gets no new requests; answer what came
    /// and exit (see [`Service::drain_asked`]).
    DrainAsked {
        /// The instance.
        instance: u32,
        /// Why.
        reason: String,
    },
    /// The daemon ended a subscription (a policy reload no longer allows
    /// it); its [`Subscription::next`] fails with [`Error::AccessDenied`]
    /// once the publications already received are read.
    SubscriptionEnded {
        /// The topic's route id.
        route: u32,
        /// Why (ends with "revoked by a policy reload").
        reason: String,
    },
    /// The daemon stopped this connection's monitor (a policy reload no
    /// longer allows it): no more [`BusEvent::Traffic`].
    MonitorStopped {
        /// Why.
        reason: String,
    },
    /// The daemon unregistered an instance of this connection (a policy
    /// reload no longer lets it own the name); its [`Service::next`] fails
    /// with [`Error::AccessDenied`], and calls it was answering failed.
    Unregistered {
        /// The instance id.
        instance: u32,
        /// Its route id.
        route: u32,
        /// Why.
        reason: String,
    },
    /// The connection to the daemon was lost; [`Bus::reconnect`] restores it.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// A resolved service name. Resolve once, call many times; after a
/// reconnect it re-resolves by itself.
#[derive(Debug)]
pub struct Route {
    name: String,
    /// Route id in the low 32 bits, connection epoch in the high 32.
    packed: AtomicU64,
}

impl Clone for Route {
    fn clone(&self) -> Self {
        Route { name: self.name.clone(), packed: AtomicU64::new(self.packed.load(Ordering::Relaxed)) }
    }
}

impl Route {
    pub(crate) fn new(name: &str, id: u32, epoch: u64) -> Route {
        Route { name: name.to_owned(), packed: AtomicU64::new(pack(id, epoch)) }
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route id (as of the last resolve).
    pub fn id(&self) -> u32 {
        self.packed.load(Ordering::Relaxed) as u32
    }

    pub(crate) fn id_at(&self, epoch: u64) -> Option<u32> {
        let p = self.packed.load(Ordering::Relaxed);
        ((p >> 32) == epoch & 0xffff_ffff).then_some(p as u32)
    }

    pub(crate) fn set(&self, id: u32, epoch: u64) {
        self.packed.store(pack(id, epoch), Ordering::Relaxed);
    }

    /// Takes what `other`, a copy of this route resolved since, learnt.
    #[cfg(feature = "tokio")]
    pub(crate) fn take_from(&self, other: &Route) {
        self.packed.store(other.packed.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

fn pack(id: u32, epoch: u64) -> u64 {
    (epoch & 0xffff_ffff) << 32 | id as u64
}

/// The README's code blocks compile as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
