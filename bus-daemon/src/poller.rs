//! The daemon's readiness source: io_uring where the kernel allows it,
//! epoll where it does not (`kernel.io_uring_disabled`, a container's
//! seccomp filter, a kernel older than 5.11), behind one small interface.
//!
//! Every registered fd carries a `u64` token; [`Poller::wait`] returns the
//! tokens that became readable. Both backends are level-triggered: a token
//! that was not fully drained comes back on the next wait. The daemon
//! relies on that, because it reads at most 64 control messages per event
//! so that one client cannot hold the loop.
//!
//! Writability is asked for once at a time ([`Poller::notify_writable`]):
//! the daemon wants it only while a client's control socket is full, and
//! a socket watched for writing all the time would report it on every wait.
//!
//! ## io_uring: single-shot polls, re-armed inside `wait`
//!
//! A multishot `POLL_ADD` posts a completion per wake-up of the file, which
//! makes it edge-triggered: a socket left with unread messages would never
//! be reported again. So each fd has at most one single-shot poll in the
//! kernel. When it completes, `wait` reports the token and re-arms the fd at
//! the start of the *next* `wait`, after the daemon has handled the event.
//! io_uring checks readiness when it arms a poll, so a still-readable fd
//! completes again at once: level-triggered. The re-arming entries go to
//! the kernel with the `io_uring_enter` that waits, so they cost no syscall.
//!
//! [`Poller::add`] arms at once (one `io_uring_enter`, as epoll pays one
//! `epoll_ctl`): the poll then holds the file itself, as an epoll
//! registration does, so an fd closed without `remove` leaves a poll on a
//! file nobody can wake, never a poll on whatever file gets the fd number
//! next (a memfd, always readable, would make the loop spin). Only before
//! the loop's first wait are adds deferred to it: io_uring runs a poll's
//! completion work on the thread that submitted it, and an embedded daemon
//! is built on one thread and run on another.
//!
//! ## io_uring: removing
//!
//! An armed poll holds a reference to the file: closing the fd neither
//! cancels the poll nor closes the file (a peer would not see the hang-up).
//! [`Poller::remove`] therefore submits `POLL_REMOVE` at once, and must be
//! called before the fd is closed, as `Daemon::disconnect` does. Polls are
//! named by a key that is never reused, not by token or fd, so a late
//! completion of a removed poll is recognised and dropped even when the fd
//! number or the token has been recycled. Adding an fd number that is still
//! registered means it was closed without `remove` (epoll forgets such fds
//! on close): the old registration is cancelled, which releases its file,
//! and replaced.
//!
//! # Safety
//!
//! Pushing a submission entry is `unsafe` because the kernel may use memory
//! the entry points to until the operation completes. The entries pushed
//! here, `POLL_ADD` and `POLL_REMOVE`, point to no memory: the fd, the event
//! mask and the keys are copied into the entry. A polled fd closed against
//! the contract above leaks a file reference until the ring is dropped; it
//! cannot break memory safety, since the kernel holds its own reference.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use io_uring::types::{SubmitArgs, Timespec};
use io_uring::{opcode, squeue, types, IoUring};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// Waits for readiness of many fds at once.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::io::Write;
/// use std::os::fd::AsFd;
/// use std::time::Duration;
/// use hybusd::poller::Poller;
///
/// let mut poller = Poller::new(false)?; // io_uring where the kernel allows it
/// let (a, mut b) = std::os::unix::net::UnixStream::pair()?;
/// poller.add(a.as_fd(), 7)?;
/// b.write_all(b"x")?;
/// let mut ready = Vec::new();
/// while !ready.contains(&7) {
///     poller.wait(&mut ready, Some(Duration::from_secs(1)))?;
/// }
/// poller.remove(a.as_fd()); // before `a` is closed
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Poller {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Uring(Box<Uring>),
    Epoll(EpollPoller),
}

impl Poller {
    /// A new, empty poller: io_uring unless `force_epoll` is set or the
    /// kernel refuses io_uring, epoll otherwise.
    pub fn new(force_epoll: bool) -> nix::Result<Poller> {
        if !force_epoll {
            match Uring::new() {
                Ok(u) => return Ok(Poller { backend: Backend::Uring(Box::new(u)) }),
                Err(e) => {
                    let why = match e.raw_os_error() {
                        Some(libc::EPERM | libc::EACCES) => " (kernel.io_uring_disabled or a seccomp filter)",
                        Some(libc::ENOSYS) => " (not in this kernel, or hidden by seccomp)",
                        Some(libc::ENOMEM) => " (no memory for the ring: RLIMIT_MEMLOCK?)",
                        _ => "",
                    };
                    tracing::info!("io_uring unavailable: {e}{why}; using epoll")
                }
            }
        }
        Ok(Poller { backend: Backend::Epoll(EpollPoller::new()?) })
    }

    /// The backend's name, "io_uring" or "epoll", for logs and `hybusctl stats`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Uring(_) => "io_uring",
            Backend::Epoll(_) => "epoll",
        }
    }

    /// Watches `fd` for readability (and hang-up) under `token`.
    pub fn add(&mut self, fd: BorrowedFd<'_>, token: u64) -> nix::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => {
                u.add(fd.as_raw_fd(), token);
                Ok(())
            }
            Backend::Epoll(e) => e.add(fd, token),
        }
    }

    /// Reports `token` once, when `fd` (watched with [`add`](Self::add))
    /// can be written to: at the next wait if it can now. Ask again after a
    /// write that found it full. [`remove`](Self::remove) drops the request.
    pub fn notify_writable(&mut self, fd: BorrowedFd<'_>, token: u64) -> nix::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => {
                u.notify_writable(fd.as_raw_fd(), token);
                Ok(())
            }
            Backend::Epoll(e) => e.notify_writable(fd, token),
        }
    }

    /// Stops watching `fd`. Call it before closing `fd`: an io_uring poll
    /// keeps the file open (see the module docs).
    pub fn remove(&mut self, fd: BorrowedFd<'_>) {
        match &mut self.backend {
            Backend::Uring(u) => u.remove(fd.as_raw_fd()),
            Backend::Epoll(e) => e.remove(fd),
        }
    }

    /// Waits up to `timeout` (`None`: forever) and appends ready tokens to
    /// `out`. May return with no token before the timeout.
    pub fn wait(&mut self, out: &mut Vec<u64>, timeout: Option<Duration>) -> nix::Result<()> {
        match &mut self.backend {
            Backend::Uring(u) => u.wait(out, timeout).map_err(errno),
            Backend::Epoll(e) => e.wait(out, timeout),
        }
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Submission-queue entries; arming more fds than this in one wait submits
/// in batches.
const RING_ENTRIES: u32 = 256;

/// `user_data` of `POLL_REMOVE` entries, whose completions are ignored. Poll
/// keys start at 1.
const CANCEL: u64 = 0;

/// What a poll waits for, as with epoll's `EPOLLIN | EPOLLRDHUP`; errors and
/// hang-ups are always reported.
const POLL_MASK: u32 = (libc::POLLIN | libc::POLLRDHUP) as u32;

/// What a [`Poller::notify_writable`] poll waits for.
const WRITE_MASK: u32 = libc::POLLOUT as u32;

/// One registered fd.
#[derive(Debug)]
struct Watch {
    fd: RawFd,
    token: u64,
    /// A poll for this key is in the kernel (submitted or queued in the SQ)
    /// and its completion has not been reaped.
    armed: bool,
    /// The key is in `Uring::ready`, not yet reported.
    ready: bool,
    /// A [`Poller::notify_writable`] request: polls for [`WRITE_MASK`]
    /// once, and is forgotten when reported.
    once: bool,
}

struct Uring {
    ring: IoUring,
    /// The key of each registered fd.
    by_fd: HashMap<RawFd, u64>,
    /// The key of each fd's pending writability request.
    writes: HashMap<RawFd, u64>,
    /// Registrations by key. Keys are never reused: a completion whose key
    /// is not here belongs to a removed or replaced registration.
    watches: HashMap<u64, Watch>,
    /// The next key; always above [`CANCEL`].
    next_key: u64,
    /// Keys with no poll in the kernel, armed at the start of the next wait.
    unarmed: Vec<u64>,
    /// Keys whose poll completed, reported by the next wait.
    ready: Vec<u64>,
    /// `wait` has run: we are on the loop's thread, `add` arms at once.
    looping: bool,
}

impl std::fmt::Debug for Uring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uring")
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("watches", &self.watches.len())
            .field("unarmed", &self.unarmed.len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl Uring {
    fn new() -> io::Result<Uring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            // `wait` needs a timeout on io_uring_enter itself (Linux 5.11).
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11)",
            ));
        }
        // A seccomp filter may allow io_uring_setup and refuse io_uring_enter:
        // find out now rather than in the first wait.
        ring.submit()?;
        Ok(Uring {
            ring,
            by_fd: HashMap::new(),
            writes: HashMap::new(),
            watches: HashMap::new(),
            next_key: CANCEL + 1,
            unarmed: Vec::new(),
            ready: Vec::new(),
            looping: false,
        })
    }

    fn add(&mut self, fd: RawFd, token: u64) {
        let key = self.next_key;
        self.next_key += 1;
        if let Some(old) = self.by_fd.insert(fd, key) {
            // The fd number is registered, so it was closed without `remove`
            // and has been reused.
            tracing::debug!(fd, "fd re-added without remove; replacing its poll");
            self.forget(old);
            if let Some(old) = self.writes.remove(&fd) {
                self.forget(old);
            }
        }
        self.watches.insert(key, Watch { fd, token, armed: false, ready: false, once: false });
        self.arm_new(key);
    }

    fn notify_writable(&mut self, fd: RawFd, token: u64) {
        if let Some(w) = self.writes.get(&fd).and_then(|k| self.watches.get_mut(k)) {
            w.token = token;
            return;
        }
        let key = self.next_key;
        self.next_key += 1;
        self.writes.insert(fd, key);
        self.watches.insert(key, Watch { fd, token, armed: false, ready: false, once: true });
        self.arm_new(key);
    }

    /// Arms a new registration: at once on the loop's thread, else at the first wait.
    fn arm_new(&mut self, key: u64) {
        if !self.looping {
            self.unarmed.push(key);
            return;
        }
        // Only this key: the others wait for the next `wait`, so that fds
        // the daemon is still draining are not re-armed under its feet.
        let r = self.arm_one(key).and_then(|()| self.ring.submit());
        match r {
            Ok(_) => {}
            // Still queued; the next wait submits it.
            Err(e) if transient(&e) => {}
            Err(e) => {
                self.unarmed.push(key);
                tracing::warn!(fd = self.watches.get(&key).map(|w| w.fd), "cannot arm an io_uring poll: {e}");
            }
        }
    }

    fn remove(&mut self, fd: RawFd) {
        if let Some(key) = self.by_fd.remove(&fd) {
            self.forget(key);
        }
        if let Some(key) = self.writes.remove(&fd) {
            self.forget(key);
        }
    }

    /// Drops registration `key` and cancels its poll if the kernel has one.
    fn forget(&mut self, key: u64) {
        let Some(w) = self.watches.remove(&key) else {
            return;
        };
        if !w.armed {
            return;
        }
        let sqe = opcode::PollRemove::new(key).build().user_data(CANCEL);
        // Submit now: until the kernel drops the poll it keeps the file open,
        // and the caller is about to close its fd.
        let r = self.push(&sqe).and_then(|()| self.ring.submit());
        match r {
            Ok(_) => {}
            // Still queued; the next wait submits it.
            Err(e) if transient(&e) => {}
            Err(e) => tracing::warn!(fd = w.fd, "cannot cancel an io_uring poll: {e}"),
        }
    }

    fn wait(&mut self, out: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        self.looping = true;
        self.arm()?;
        let timeout = if self.ready.is_empty() { timeout } else { Some(Duration::ZERO) };
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            // A timed io_uring_enter sleeps on an hrtimer even for a zero
            // timeout (about 20 µs with the default timer slack), and the
            // daemon polls with a zero timeout while traffic flows. Without
            // a timeout there is nothing to wait for: completions reach the
            // CQ on their own (their task work runs whenever this thread
            // returns to user space, kicked by an IPI), so enter only to
            // submit or to flush an overflowed CQ.
            Some(d) if d.is_zero() => {
                let sq = self.ring.submission();
                if sq.is_empty() && !sq.cq_overflow() && !sq.taskrun() {
                    Ok(0)
                } else {
                    drop(sq);
                    self.ring.submit()
                }
            }
            Some(d) => {
                let ts = Timespec::from(d);
                self.ring.submitter().submit_with_args(1, &SubmitArgs::new().timespec(&ts))
            }
        };
        match r {
            Ok(_) => {}
            // ETIME: timed out. The entries were submitted all the same.
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || transient(&e) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        for key in self.ready.drain(..) {
            if let Some(w) = self.watches.get_mut(&key) {
                w.ready = false;
                out.push(w.token);
                if w.once {
                    let fd = w.fd;
                    self.watches.remove(&key);
                    self.writes.remove(&fd);
                }
            }
        }
        Ok(())
    }

    /// Queues a poll for every registration that has none.
    fn arm(&mut self) -> io::Result<()> {
        while let Some(key) = self.unarmed.pop() {
            if let Err(e) = self.arm_one(key) {
                self.unarmed.push(key);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Queues a poll for `key` unless it is gone or has one.
    fn arm_one(&mut self, key: u64) -> io::Result<()> {
        let Some(w) = self.watches.get(&key) else {
            return Ok(()); // removed since
        };
        if w.armed {
            return Ok(());
        }
        let mask = if w.once { WRITE_MASK } else { POLL_MASK };
        let sqe = opcode::PollAdd::new(types::Fd(w.fd), mask).build().user_data(key);
        self.push(&sqe)?;
        if let Some(w) = self.watches.get_mut(&key) {
            w.armed = true;
        }
        Ok(())
    }

    /// Queues `sqe`; when the submission queue is full, submits it first.
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: only POLL_ADD and POLL_REMOVE come here, which point to no memory (module docs).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                // EBUSY: completions must be reaped before the kernel takes
                // more entries (CQ overflow backlog on older kernels).
                Err(e) if transient(&e) => self.reap(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves completions into `ready` and `unarmed`.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let key = cqe.user_data();
            if key == CANCEL {
                continue;
            }
            let Some(w) = self.watches.get_mut(&key) else {
                continue; // removed or replaced
            };
            w.armed = false;
            let res = cqe.result();
            if res == -libc::ECANCELED {
                // Not by us (we forget a key before cancelling it): poll again.
                self.unarmed.push(key);
                continue;
            }
            if res >= 0 {
                if !w.once {
                    self.unarmed.push(key);
                }
            } else {
                // EBADF, EINVAL: polling again would fail again. Report the
                // token so that its owner reads the fd and finds the error.
                tracing::warn!(fd = w.fd, token = w.token, "io_uring poll failed: {}", Errno::from_raw(-res).desc());
            }
            if !w.ready {
                w.ready = true;
                self.ready.push(key);
            }
        }
    }
}

/// Errors after which the submission is simply tried again later.
fn transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN))
}

/// The epoll backend.
#[derive(Debug)]
struct EpollPoller {
    epoll: Epoll,
    buf: Vec<EpollEvent>,
    /// The token of each registered fd. (An fd closed without `remove`
    /// leaves its entry until its number is added again; epoll itself
    /// forgets it.)
    reads: HashMap<RawFd, u64>,
    /// Fds watched for writing too ([`Poller::notify_writable`]), by their
    /// read token: the fd, and the token to report when it is writable.
    writes: HashMap<u64, (RawFd, u64)>,
}

/// What epoll waits for on every registered fd.
const EPOLL_READ: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLRDHUP);

impl EpollPoller {
    fn new() -> nix::Result<EpollPoller> {
        Ok(EpollPoller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            buf: vec![EpollEvent::empty(); 256],
            reads: HashMap::new(),
            writes: HashMap::new(),
        })
    }

    fn add(&mut self, fd: BorrowedFd<'_>, token: u64) -> nix::Result<()> {
        self.epoll.add(fd, EpollEvent::new(EPOLL_READ, token))?;
        if let Some(old) = self.reads.insert(fd.as_raw_fd(), token) {
            // Closed without `remove` and reused: its request went with it.
            self.writes.remove(&old);
        }
        Ok(())
    }

    /// One epoll registration per fd: `EPOLLOUT` is added to it, under its
    /// read token, until [`wait`](Self::wait) reports writability.
    fn notify_writable(&mut self, fd: BorrowedFd<'_>, token: u64) -> nix::Result<()> {
        let read = *self.reads.get(&fd.as_raw_fd()).ok_or(Errno::ENOENT)?;
        self.epoll.modify(fd, &mut EpollEvent::new(EPOLL_READ | EpollFlags::EPOLLOUT, read))?;
        self.writes.insert(read, (fd.as_raw_fd(), token));
        Ok(())
    }

    fn remove(&mut self, fd: BorrowedFd<'_>) {
        // Fails only if the fd was not registered; nothing to undo then.
        let _ = self.epoll.delete(fd);
        if let Some(read) = self.reads.remove(&fd.as_raw_fd()) {
            self.writes.remove(&read);
        }
    }

    fn wait(&mut self, out: &mut Vec<u64>, timeout: Option<Duration>) -> nix::Result<()> {
        let t = match timeout {
            None => EpollTimeout::NONE,
            // Round up, so that a sub-millisecond timeout does not spin.
            Some(d) => EpollTimeout::try_from(d.as_micros().div_ceil(1000).min(i32::MAX as u128 - 1) as i32)
                .unwrap_or(EpollTimeout::NONE),
        };
        let n = match self.epoll.wait(&mut self.buf, t) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e),
        };
        for e in &self.buf[..n] {
            let (token, events) = (e.data(), e.events());
            if events.contains(EpollFlags::EPOLLOUT) {
                let fd = match self.writes.remove(&token) {
                    Some((fd, write)) => {
                        out.push(write);
                        Some(fd)
                    }
                    // Only if a modify below failed before: find the fd.
                    None => self.reads.iter().find(|(_, &t)| t == token).map(|(&fd, _)| fd),
                };
                if let Some(fd) = fd {
                    // SAFETY: `fd` is registered (`remove` forgets it before
                    // the owner closes it), so it is open for this call.
                    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                    // Back to reading only. If that fails (no kernel memory),
                    // the next wait tries again.
                    let _ = self.epoll.modify(fd, &mut EpollEvent::new(EPOLL_READ, token));
                }
            }
            if events != EpollFlags::EPOLLOUT {
                out.push(token);
            }
        }
        Ok(())
    }
}
