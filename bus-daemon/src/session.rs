//! One connected client, as the daemon sees it.

use hybus_layout::idhash::IdSet;
use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use hybus_layout::pool::PoolGeometry;
use hybus_layout::{Consumer, Descriptor, Kind, Producer, PushError, RingError};
use hybus_os::segment::{EventFd, Segment};
use hybus_os::socket::ControlSocket;

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

impl Credentials {
    /// Who they are, to the policy.
    pub fn who(&self) -> crate::config::Who {
        crate::config::Who { uid: self.uid, gid: self.gid }
    }
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
    /// Descriptors for the client that did not fit in `rx` yet, or that
    /// wait behind control messages (see [`held`](Self::held)).
    pub queue: VecDeque<Descriptor>,
    /// Control messages that carry file descriptors wait in the session's
    /// [`Outbox`]: descriptors go to [`queue`](Self::queue), not to the
    /// ring, until they are sent. A descriptor may refer to a pool whose
    /// view (a `PoolView`) or to a channel whose segment (a `DirectOpen`) is
    /// one of them, and the client must have it before it reads the
    /// descriptor. Other control messages (replies, events) need no such
    /// order, and holding the ring behind them would only make the queue
    /// overflow sooner (a publication dropped, or a subscriber of a
    /// "disconnect" topic cut off, while its ring has room).
    pub held: bool,
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
    /// Control messages its socket had no room for.
    pub outbox: Outbox,
    /// The policy lets it do everything (`Policy::trusts`): its calls,
    /// fires and publications need no check. Set again on a reload.
    pub trusted: bool,
    /// For a client not trusted: what the policy said of its sends by route
    /// and action, asked at the first send (forgotten on a reload).
    pub permits: std::collections::HashMap<(u32, crate::config::Action), bool>,
    /// Its idle strategy holds a core while it waits (it said so with
    /// `Request::Idle`); counted among the parties that spin.
    pub spins: bool,
}

/// Control messages for a client whose socket is full, in order.
///
/// Why: a client reads its control socket only when its application calls
/// into the bus. A service busy elsewhere while a few hundred new callers
/// send it chunks (each brings a pool view), or a watcher that does not
/// look while a few hundred services come and go, fills the socket (about
/// 250 messages: the kernel counts each datagram's buffer, not its bytes).
/// Cutting such a client off at the first message that does not fit, as
/// the daemon did, punished a client that did nothing wrong. It is cut off
/// now only when this outbox is full too ([`Outbox::MAX_MESSAGES`]).
///
/// The outbox is flushed when the client speaks, and when the poller says
/// its socket has room again (`Poller::notify_writable`).
#[derive(Debug, Default)]
pub struct Outbox {
    messages: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    bytes: usize,
    fds: usize,
}

/// The outbox had no room: the client does not read its control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxFull;

impl Outbox {
    /// Messages kept for one client before it is cut off.
    pub const MAX_MESSAGES: usize = 16_384;
    /// Encoded bytes kept for one client.
    pub const MAX_BYTES: usize = 4 << 20;
    /// Descriptors kept for one client (each is a descriptor the daemon holds).
    pub const MAX_FDS: usize = 1_024;

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether a waiting message carries file descriptors (see [`DataPlane::held`]).
    pub fn carries_descriptors(&self) -> bool {
        self.fds > 0
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Keeps an encoded message and copies of its descriptors.
    pub fn push(&mut self, bytes: Vec<u8>, fds: &[BorrowedFd<'_>]) -> Result<(), OutboxFull> {
        if self.messages.len() >= Self::MAX_MESSAGES
            || self.bytes + bytes.len() > Self::MAX_BYTES
            || self.fds + fds.len() > Self::MAX_FDS
        {
            return Err(OutboxFull);
        }
        let fds: Vec<OwnedFd> = fds.iter().map(|f| f.try_clone_to_owned()).collect::<Result<_, _>>().map_err(|e| {
            tracing::warn!("cannot keep a descriptor for a control message: {e}");
            OutboxFull
        })?;
        self.fds += fds.len();
        self.bytes += bytes.len();
        self.messages.push_back((bytes, fds));
        Ok(())
    }

    /// Sends what waits, in order, until the socket is full again.
    /// `Ok(true)` once nothing waits; an error other than a full socket
    /// means the connection is broken.
    pub fn flush(&mut self, sock: &ControlSocket) -> Result<bool, nix::errno::Errno> {
        while let Some((bytes, fds)) = self.messages.front() {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            match sock.send(bytes, &borrowed) {
                Ok(()) => {}
                Err(nix::errno::Errno::EAGAIN) => return Ok(false),
                Err(e) => return Err(e),
            }
            self.fds -= fds.len();
            self.bytes -= bytes.len();
            self.messages.pop_front();
        }
        Ok(true)
    }
}

/// Result of trying to hand a descriptor to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// On its ring or in its queue.
    Queued,
    /// Its queue is full; nothing was queued.
    Full,
    /// Its queue passed [`QUEUE_CAP`]: the client does not read its ring,
    /// and is cut off rather than let grow the daemon without bound.
    Overflow,
}

/// The most descriptors queued for one client whatever their kind (64 MiB
/// of them). Answers, releases, credits, stream items and errors are not
/// refused at `limit` like requests and fires: each is bounded by what some
/// client started, but not by anything the daemon could rely on (a client
/// that fires at a missing route and never reads gets an error queued per
/// fire; a stream's credits are the caller's to grant).
pub const QUEUE_CAP: usize = 1 << 20;

impl DataPlane {
    /// Pushes `d` to the client, or queues it if the ring is full.
    ///
    /// `limit` bounds the queue for descriptors that may be refused
    /// (requests, fires, publications); the others are queued up to
    /// [`QUEUE_CAP`]. A credit queued right behind another of the same
    /// exchange is added to it (a caller granting credits one by one to a
    /// server that lags does not grow its queue).
    #[inline]
    pub fn deliver(&mut self, d: Descriptor, limit: usize) -> Result<Delivery, RingError> {
        if self.queue.is_empty() && !self.held {
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
        if d.kind == Kind::Credit as u8 {
            if let Some(last) = self.queue.back_mut().filter(|l| {
                l.kind == Kind::Credit as u8
                    && l.correlation == d.correlation
                    && l.flags == d.flags
                    && l.route == d.route
            }) {
                last.aux = last.aux.saturating_add(d.aux);
                return Ok(Delivery::Queued);
            }
        }
        if self.queue.len() >= QUEUE_CAP {
            return Ok(Delivery::Overflow);
        }
        self.queue.push_back(d);
        Ok(Delivery::Queued)
    }

    /// Moves queued descriptors onto the ring as room allows (none while
    /// control messages are [`held`](Self::held)).
    pub fn flush_queue(&mut self) -> Result<(), RingError> {
        if self.held {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What does not fit waits, goes in order once the peer reads, and is bounded.
    #[test]
    fn outbox_keeps_order_and_bounds() {
        let (ours, theirs) = ControlSocket::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut sent = 0u32;
        while ours.send(&sent.to_le_bytes(), &[]).is_ok() {
            sent += 1;
        }
        let mut outbox = Outbox::default();
        let fd = theirs.fd().try_clone_to_owned().unwrap();
        for i in sent..sent + 10 {
            outbox.push(i.to_le_bytes().to_vec(), &[fd.as_fd()]).unwrap();
        }
        assert_eq!(outbox.flush(&ours), Ok(false), "nothing was read: nothing goes");
        assert!(outbox.carries_descriptors());
        let mut buf = vec![0u8; 64 * 1024];
        let mut next = 0u32;
        let mut read_one = |next: &mut u32| {
            let (n, fds) = theirs.recv(&mut buf).unwrap();
            assert_eq!(buf[..n], next.to_le_bytes(), "in order");
            assert_eq!(fds.len(), usize::from(*next >= sent));
            *next += 1;
        };
        while next < sent {
            read_one(&mut next);
        }
        assert_eq!(outbox.flush(&ours), Ok(true));
        assert!(outbox.is_empty() && !outbox.carries_descriptors());
        while next < sent + 10 {
            read_one(&mut next);
        }
        // Bounded in messages and in descriptors.
        let fds = vec![fd.as_fd(); Outbox::MAX_FDS];
        assert_eq!(outbox.push(Vec::new(), &fds), Ok(()));
        assert_eq!(outbox.push(Vec::new(), &[fd.as_fd()]), Err(OutboxFull));
        let mut outbox = Outbox::default();
        for _ in 0..Outbox::MAX_MESSAGES {
            outbox.push(Vec::new(), &[]).unwrap();
        }
        assert_eq!(outbox.push(Vec::new(), &[]), Err(OutboxFull));
        let mut outbox = Outbox::default();
        assert_eq!(outbox.push(vec![0; Outbox::MAX_BYTES], &[]), Ok(()));
        assert_eq!(outbox.push(vec![0], &[]), Err(OutboxFull));
    }
}
