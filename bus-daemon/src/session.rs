//! One connected client, as the daemon sees it.

use hybus_layout::idhash::IdSet;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use hybus_layout::pool::PoolGeometry;
use hybus_layout::segment::{EventFd, Segment};
use hybus_layout::socket::ControlSocket;
use hybus_layout::{Consumer, Descriptor, Kind, Producer, PushError, RingError};

/// What the kernel says about the peer (SO_PEERCRED); never what the peer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: i32,
}

/// The data-plane half of a session, present after Hello.
#[derive(Debug)]
pub struct DataPlane {
    /// The client's ring to us.
    pub tx: Consumer,
    /// Our ring to the client.
    pub rx: Producer,
    /// Rung by the client when we are parked on `tx`.
    pub tx_bell: EventFd,
    /// Rung by us when the client is parked on `rx`.
    pub rx_bell: EventFd,
    /// Keeps the rings mapped.
    pub _rings: Arc<Segment>,
    /// The client's pool (we never read it; we hand out read-only views).
    pub pool: Segment,
    /// The pool's geometry, for checking chunk references.
    pub geometry: PoolGeometry,
    /// Descriptors for the client that did not fit in `rx` yet.
    pub queue: VecDeque<Descriptor>,
    /// Pools of which the client already has a read-only view.
    pub views: IdSet<u32>,
    /// Pools whose owner left, still mapped by the client: it is told
    /// ([`Event::PoolGone`](hybus_layout::control::Event::PoolGone)) once
    /// [`queue`](Self::queue) is empty, so that every descriptor referring
    /// to them is on its ring before it hears that they are gone.
    pub gone_views: Vec<u32>,
    /// Whether something was pushed to `rx` since the last doorbell check.
    pub dirty: bool,
    /// Whether `tx` is in the daemon's active set (polled) rather than parked.
    pub active: bool,
    /// Descriptors dropped for this client (slow subscriber).
    pub drops: u64,
    /// Whether the client is on the daemon's list of clients to flush.
    pub listed: bool,
}

/// A connected client.
#[derive(Debug)]
pub struct Session {
    /// The daemon's id for it; also its pool's id.
    pub id: u32,
    /// Its credentials.
    pub creds: Credentials,
    /// Its control socket.
    pub sock: ControlSocket,
    /// The label it gave in Hello (for listings only).
    pub label: String,
    /// Set once Hello succeeded.
    pub data: Option<DataPlane>,
    /// When Hello must have arrived by.
    pub hello_deadline: Option<Instant>,
    /// Watched name prefixes.
    pub watches: Vec<String>,
    /// Monitor prefix, if monitoring.
    pub monitor: Option<String>,
    /// Subscribed topic routes.
    pub subscriptions: Vec<u32>,
}

/// Result of trying to hand a descriptor to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// On its ring or in its queue.
    Queued,
    /// Its queue is full; nothing was queued.
    Full,
}

impl DataPlane {
    /// Pushes `d` to the client, or queues it if the ring is full.
    ///
    /// `limit` bounds the queue for descriptors that may be refused
    /// (requests, fires, publications); answers and releases are always
    /// queued, since they are bounded by what the client itself started.
    #[inline]
    pub fn deliver(&mut self, d: Descriptor, limit: usize) -> Result<Delivery, RingError> {
        if self.queue.is_empty() {
            match self.rx.push(&d) {
                Ok(()) => {
                    self.dirty = true;
                    return Ok(Delivery::Queued);
                }
                Err(PushError::Full(_)) => {}
                Err(PushError::Ring(e)) => return Err(e),
            }
        }
        let refusable =
            matches!(Kind::from_u8(d.kind), Some(Kind::Request | Kind::Fire | Kind::Publish | Kind::StreamOpen));
        if refusable && self.queue.len() >= limit {
            return Ok(Delivery::Full);
        }
        self.queue.push_back(d);
        Ok(Delivery::Queued)
    }

    /// Moves queued descriptors onto the ring as room allows.
    pub fn flush_queue(&mut self) -> Result<(), RingError> {
        while let Some(d) = self.queue.front() {
            match self.rx.push(d) {
                Ok(()) => {
                    self.dirty = true;
                    self.queue.pop_front();
                }
                Err(PushError::Full(_)) => break,
                Err(PushError::Ring(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// Rings the client's doorbell if we pushed something and it is parked.
    #[inline]
    pub fn ring_bell(&mut self) {
        if self.dirty {
            self.dirty = false;
            self.rx.notify(&self.rx_bell);
        }
    }
}
