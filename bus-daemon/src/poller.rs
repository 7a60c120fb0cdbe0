//! The daemon's readiness source: epoll, behind a small interface so that
//! an io_uring backend can sit beside it.
//!
//! Every registered fd carries a `u64` token; [`Poller::wait`] returns the
//! tokens that became readable. Level-triggered, so a token that was not
//! fully drained comes back on the next wait.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Waits for readiness of many fds at once.
#[derive(Debug)]
pub struct Poller {
    epoll: Epoll,
    buf: Vec<EpollEvent>,
}

impl Poller {
    /// A new, empty poller.
    pub fn new() -> nix::Result<Poller> {
        Ok(Poller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            buf: vec![EpollEvent::empty(); 256],
        })
    }

    /// The backend's name, for logs and `hybusctl stats`.
    pub fn backend(&self) -> &'static str {
        "epoll"
    }

    /// Watches `fd` for readability (and hang-up) under `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> nix::Result<()> {
        self.epoll.add(
            fd,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, token),
        )
    }

    /// Stops watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) {
        // Fails only if the fd was not registered; nothing to undo then.
        let _ = self.epoll.delete(fd);
    }

    /// Waits up to `timeout` (`None`: forever) and appends ready tokens to `out`.
    pub fn wait(&mut self, out: &mut Vec<u64>, timeout: Option<Duration>) -> nix::Result<()> {
        let t = match timeout {
            None => EpollTimeout::NONE,
            Some(d) => EpollTimeout::try_from(d.as_millis().min(i32::MAX as u128 - 1) as i32)
                .unwrap_or(EpollTimeout::NONE),
        };
        let n = match self.epoll.wait(&mut self.buf, t) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        out.extend(self.buf[..n].iter().map(|e| e.data()));
        Ok(())
    }
}
