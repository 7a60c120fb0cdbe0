//! Sleeping on every doorbell, the control socket and the peers' pidfds of a
//! connection with one syscall, and waking with none to spare.
//!
//! A parked waiter used to `poll(2)` its doorbell, the control socket, the
//! doorbells of older channels and the peers' pidfds, then `read(2)` the
//! doorbell that fired to reset it: three syscalls per message on the
//! receiving side of a blocking round trip (the sender's `write` being the
//! fourth), where a bare eventfd ping-pong makes two (`write`, blocking
//! `read`). A [`Parker`] keeps one epoll set with the doorbells registered
//! edge-triggered: each `write` to a doorbell is one edge, so the waiter
//! neither rebuilds a poll set nor reads the counter back. The counter only
//! grows (by one per wake-up: 2⁶⁴ of them will not happen); the async API,
//! which reads it, is unaffected. The socket and the pidfds stay
//! level-triggered: they are drained or acted on after each wake-up.
//!
//! A wake-up that comes between the parking handshake and `epoll_wait` is
//! not lost: the write puts the doorbell on the epoll's ready list, and the
//! wait returns at once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hybus_os::segment::EventFd;
use hybus_os::socket::ControlSocket;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::core::Core;

/// Event data of a doorbell.
const BELL: u64 = 0;
/// Event data of the control socket.
const CONTROL: u64 = 1;
/// Event data of a peer's pidfd.
const PEER_EXIT: u64 = 2;

/// What woke a sleeping waiter.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Woke {
    /// The control socket has something (or hung up), or the wait failed or timed out.
    pub control: bool,
    /// A channel peer's pidfd became readable (or the wait failed or timed out).
    pub peer_exit: bool,
}

/// One epoll set over what a parked waiter of a connection sleeps on.
///
/// It holds a clone of everything it registered, so no descriptor it
/// watches can be closed and its number reused behind its back.
#[derive(Debug)]
pub(crate) struct Parker {
    epoll: Epoll,
    /// Our doorbell and those of older channels, edge-triggered.
    bells: Vec<Arc<EventFd>>,
    /// The control socket (one; none before the first sync).
    sock: Vec<Arc<ControlSocket>>,
    /// The channel peers' pidfds.
    pidfds: Vec<Arc<OwnedFd>>,
}

impl Parker {
    pub(crate) fn new() -> std::io::Result<Parker> {
        Ok(Parker {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            bells: Vec::new(),
            sock: Vec::new(),
            pidfds: Vec::new(),
        })
    }

    /// Makes the epoll set what `core` has now: its doorbell and those of its
    /// channels, its control socket, its peers' pidfds. A few pointer
    /// comparisons when nothing changed (the usual case).
    pub(crate) fn sync(&mut self, core: &Core) -> nix::Result<()> {
        let edge = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, BELL);
        let bells = || std::iter::once(&core.rx_bell).chain(core.channels.values().map(|c| &c.my_bell));
        sync_set(&self.epoll, &mut self.bells, bells, |b| b.fd(), edge)?;
        let exits = EpollEvent::new(EpollFlags::EPOLLIN, PEER_EXIT);
        sync_set(&self.epoll, &mut self.pidfds, || core.channels.values().map(|c| &c.pidfd), |p| p.as_fd(), exits)?;
        let control = EpollEvent::new(EpollFlags::EPOLLIN, CONTROL);
        // Not once the daemon is gone: its end closed, so the socket reads as
        // ready for ever, and a waiter woken by it at once spun at 100 % CPU
        // for as long as the daemon stayed away (a reconnecting waiter wakes
        // every 200 ms by its own timeout instead).
        let live = || core.gone.is_none().then_some(&core.sock).into_iter();
        sync_set(&self.epoll, &mut self.sock, live, |s| s.fd(), control)
    }

    /// Sleeps until a doorbell rings, the socket has something, a peer
    /// exits, or `timeout` passes. One `epoll_wait`.
    pub(crate) fn sleep(&self, timeout: Option<Duration>) -> Woke {
        let t = match timeout {
            None => PollTimeout::NONE,
            Some(t) => {
                PollTimeout::try_from(t.as_millis().clamp(1, i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut events = [EpollEvent::empty(); 8];
        let n = match self.epoll.wait(&mut events, t) {
            Ok(n) if n > 0 => n,
            // Timed out or interrupted: look at everything, it is cheap now.
            _ => return Woke { control: true, peer_exit: !self.pidfds.is_empty() },
        };
        let mut woke = Woke::default();
        for e in &events[..n] {
            match e.data() {
                CONTROL => woke.control = true,
                PEER_EXIT => woke.peer_exit = true,
                _ => {}
            }
        }
        woke
    }
}

/// Makes `registered` (and the epoll set) hold exactly the descriptors
/// `wanted` yields, compared by identity: deletes the registration of those
/// no longer wanted before dropping their clone, adds the new ones with `event`.
fn sync_set<'a, T: 'a, I: Iterator<Item = &'a Arc<T>>>(
    epoll: &Epoll,
    registered: &mut Vec<Arc<T>>,
    wanted: impl Fn() -> I,
    fd: impl Fn(&T) -> BorrowedFd<'_>,
    event: EpollEvent,
) -> nix::Result<()> {
    // Delete before the clone is dropped: the registration must go before
    // the descriptor can close.
    registered.retain(|r| {
        let keep = wanted().any(|w| Arc::ptr_eq(w, r));
        if !keep {
            let _ = epoll.delete(fd(r));
        }
        keep
    });
    for w in wanted() {
        if !registered.iter().any(|r| Arc::ptr_eq(r, w)) {
            epoll.add(fd(w), event)?;
            registered.push(w.clone());
        }
    }
    Ok(())
}
