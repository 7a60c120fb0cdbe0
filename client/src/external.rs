//! Waiting from someone else's event loop (Python's asyncio, a C program's
//! epoll): the fds to watch, and the parking handshake split in two calls.
//!
//! A loop-driven waiter does what [`AsyncBus`](crate::AsyncBus) does on
//! tokio, one step at a time:
//!
//! 1. try without waiting ([`PendingCall::try_answer`](crate::PendingCall::try_answer),
//!    [`Subscription::next`](crate::Subscription::next) with a zero timeout, ...);
//! 2. [`Bus::arm`]: `false` means something arrived meanwhile, go to 1;
//! 3. wait until a [`WakeFds`] fd is readable (or a timeout);
//! 4. [`Bus::disarm`], then go to 1.
//!
//! The daemon and every direct-channel peer ring the one doorbell of the
//! connection, and only while it is armed, exactly as for a blocking waiter.
//! Do not wait on one connection from a loop and from blocking calls at once.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use crate::bus::Bus;
use crate::error::{Error, Result};

/// What a loop-driven waiter watches for readability, for one connection
/// epoch (a reconnect makes new ones: see [`Bus::wake_epoch`]).
#[derive(Debug)]
pub struct WakeFds {
    /// The doorbell eventfd (a copy, non-blocking): rung when something
    /// arrives in an armed ring.
    pub bell: OwnedFd,
    /// The control socket (a copy): the daemon's messages, and its death.
    /// Not to be watched once the daemon is gone (its closed end reads as
    /// ready for ever).
    pub control: OwnedFd,
    /// The connection epoch they belong to.
    pub epoch: u64,
}

impl Bus {
    /// Copies of the fds a loop-driven waiter watches (see the module docs).
    pub fn wake_fds(&self) -> Result<WakeFds> {
        let core = self.shared.lock();
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| Error::os("dup", e));
        let (bell, control) = (dup(core.rx_bell.fd())?, dup(core.sock.fd())?);
        // Read only after a readiness report (see `disarm`); non-blocking
        // so that a read another waiter won never stalls the loop. The flag
        // is on the shared file description: every reader of it in this
        // crate reads only after such a report.
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&bell, FcntlArg::F_GETFL).map_err(|e| Error::os("F_GETFL", e))?);
        fcntl(&bell, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(|e| Error::os("F_SETFL", e))?;
        Ok(WakeFds { bell, control, epoch: core.epoch })
    }

    /// The current connection epoch: fds of another epoch are stale.
    pub fn wake_epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Whether the daemon is gone (then watch only the doorbell, and retry
    /// every few hundred milliseconds: the next try reconnects).
    pub fn daemon_gone(&self) -> bool {
        self.shared.lock().gone.is_some()
    }

    /// Arms the rings for a loop-driven wait: `Ok(true)` if the caller
    /// should now wait for a [`WakeFds`] fd, and then call
    /// [`disarm`](Self::disarm) once; `Ok(false)` if something arrived
    /// meanwhile (try again; nothing is armed). Reconnects first if the
    /// daemon went away and a reconnect is due (a blocking handshake).
    pub fn arm(&self) -> Result<bool> {
        let shared = &self.shared;
        let mut core = shared.lock();
        if shared.reconnect_due(&mut core) {
            drop(core);
            self.reconnect()?;
            return Ok(false);
        }
        if core.releases_queued {
            core.flush_releases();
        }
        if core.pump_data() > 0 {
            return Ok(false);
        }
        if let Some(g) = &core.gone {
            if core.channels.is_empty() && !shared.reconnects() {
                return Err(Error::BusGone(g.clone()));
            }
        }
        match core.prepare_park() {
            Ok(true) => {
                core.async_parked += 1;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => Err(Error::BusGone(format!("daemon ring corrupt: {e}"))),
        }
    }

    /// Ends a wait [`arm`](Self::arm) began (woken or timed out): resets
    /// the doorbell of `fds` (from [`wake_fds`](Self::wake_fds)), and reads
    /// the control socket if `control` (it was reported readable).
    pub fn disarm(&self, fds: &WakeFds, control: bool) {
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&fds.bell, &mut b);
        let mut core = self.shared.lock();
        core.async_parked = core.async_parked.saturating_sub(1);
        core.leave_park();
        core.want_releases = false;
        if control {
            core.pump_control();
            core.check_peers();
        }
    }
}
