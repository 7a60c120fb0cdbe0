//! The control socket: `SOCK_SEQPACKET` datagrams with file descriptors.
//!
//! # Safety
//!
//! File descriptors received with SCM_RIGHTS arrive as raw integers; this
//! module is the one place that turns them into `OwnedFd`s, once each,
//! right after `recvmsg` returns them (the kernel installed them in our
//! table for us alone).
#![allow(unsafe_code)]

use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials,
};

use hybus_layout::control::{MAX_FDS, MAX_MESSAGE};

/// Why a control datagram could not be received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecvError {
    /// Nothing to read on a non-blocking socket.
    WouldBlock,
    /// The peer closed the connection.
    Closed,
    /// The datagram or its descriptors did not fit: the peer broke the protocol.
    Truncated,
    /// The system call failed.
    Os(Errno),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WouldBlock => f.write_str("no message ready"),
            Self::Closed => f.write_str("connection closed by peer"),
            Self::Truncated => {
                write!(f, "control message larger than {MAX_MESSAGE} bytes or with more than {MAX_FDS} descriptors")
            }
            Self::Os(e) => write!(f, "recvmsg failed: {}", e.desc()),
        }
    }
}

impl std::error::Error for RecvError {}

/// One end of a control connection.
#[derive(Debug)]
pub struct ControlSocket {
    fd: OwnedFd,
}

impl ControlSocket {
    /// Connects to the daemon's socket at `path` (blocking socket).
    pub fn connect(path: &Path) -> Result<ControlSocket, Errno> {
        let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)?;
        let addr = UnixAddr::new(path)?;
        socket::connect(fd.as_raw_fd(), &addr)?;
        Ok(ControlSocket { fd })
    }

    /// A connected pair (tests, embedded daemons).
    pub fn pair() -> Result<(ControlSocket, ControlSocket), Errno> {
        let (a, b) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        Ok((ControlSocket { fd: a }, ControlSocket { fd: b }))
    }

    /// Wraps an accepted or inherited socket.
    pub fn from_fd(fd: OwnedFd) -> ControlSocket {
        ControlSocket { fd }
    }

    /// The socket's descriptor (for epoll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Makes reads and writes non-blocking (or blocking again).
    pub fn set_nonblocking(&self, on: bool) -> Result<(), Errno> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(&self.fd, FcntlArg::F_GETFL)?);
        let flags = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
        fcntl(&self.fd, FcntlArg::F_SETFL(flags)).map(drop)
    }

    /// The peer's uid, gid and pid as the kernel saw them at connect time.
    pub fn peer_credentials(&self) -> Result<UnixCredentials, Errno> {
        socket::getsockopt(&self.fd, socket::sockopt::PeerCredentials)
    }

    /// Sends one datagram with `fds` attached.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Errno> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
        let iov = [IoSlice::new(bytes)];
        loop {
            match socket::sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// Bytes we sent that the peer has not read yet (`SIOCOUTQ`), to keep
    /// room in its socket for what matters more than a hint.
    pub fn unread_by_peer(&self) -> Result<usize, Errno> {
        let mut n: nix::libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ's number) writes one `int` through the
        // pointer, which points at `n`, alive for the call; the descriptor
        // is ours for the life of `self`.
        let r = unsafe { nix::libc::ioctl(self.fd.as_raw_fd(), nix::libc::TIOCOUTQ, &mut n as *mut nix::libc::c_int) };
        Errno::result(r).map(|_| n.max(0) as usize)
    }

    /// Waits up to `timeout` for something to read (or the peer's hang-up);
    /// `Ok(false)` if the time passed first.
    ///
    /// A signal that interrupts the wait does not end it: the wait resumes
    /// for the time that is left. (A bare `poll` returns `EINTR` at every
    /// signal the process handles, a timer's or a profiler's, and a caller
    /// that took that for "nothing came" failed at random.)
    pub fn wait_readable(&self, timeout: std::time::Duration) -> Result<bool, Errno> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            // Rounded up: a wait of under a millisecond must not become a spin.
            let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut pfd = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut pfd, ms) {
                Ok(n) => return Ok(n > 0),
                Err(Errno::EINTR) if !left.is_zero() => continue,
                Err(Errno::EINTR) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one datagram into `buf` (at least [`MAX_MESSAGE`] bytes) with its descriptors.
    ///
    /// A datagram that did not fit, or whose descriptors were cut off, is
    /// [`RecvError::Truncated`]; the descriptors that did arrive are closed.
    pub fn recv(&self, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>), RecvError> {
        // Room for the kernel's maximum (SCM_MAX_FD = 253) so that the
        // control data is never cut: a truncated SCM_RIGHTS message still
        // installs the fds that fit, and nix will not iterate a truncated
        // buffer, so they would leak. Too many fds is refused below instead.
        let mut cmsg_buf = nix::cmsg_space!([RawFd; 253]);
        let mut reset = false;
        loop {
            let mut iov = [IoSliceMut::new(buf)];
            let msg = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(RecvError::WouldBlock),
                // The peer closed with data of ours unread; what it sent
                // before closing is still queued and comes next, then EOF.
                Err(Errno::ECONNRESET) if !reset => {
                    reset = true;
                    continue;
                }
                Err(Errno::ECONNRESET) => return Err(RecvError::Closed),
                Err(e) => return Err(RecvError::Os(e)),
                Ok(m) => m,
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for r in raw {
                            // SAFETY: the kernel just installed `r` in our fd
                            // table for this message; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                        }
                    }
                }
            }
            let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS;
            let n = msg.bytes;
            if truncated {
                return Err(RecvError::Truncated);
            }
            if n == 0 && fds.is_empty() {
                return Err(RecvError::Closed);
            }
            return Ok((n, fds));
        }
    }
}

impl AsFd for ControlSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Environment variable naming the daemon's socket.
pub const SOCKET_ENV: &str = "HYBUS_SOCKET";

/// The default socket path: `$HYBUS_SOCKET`, else `$XDG_RUNTIME_DIR/hybus/bus.sock`,
/// else `/run/hybus/bus.sock`.
pub fn default_socket_path() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return p.into();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return Path::new(&d).join("hybus/bus.sock");
    }
    "/run/hybus/bus.sock".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_and_fds() {
        let (a, b) = ControlSocket::pair().unwrap();
        let ev = crate::segment::EventFd::new().unwrap();
        a.send(b"hello", &[ev.fd()]).unwrap();
        let mut buf = vec![0; MAX_MESSAGE];
        let (n, fds) = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let creds = b.peer_credentials().unwrap();
        assert_eq!(creds.pid(), std::process::id() as i32);
        b.set_nonblocking(true).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap_err(), RecvError::WouldBlock);
        a.send(&vec![1; MAX_MESSAGE + 10], &[]).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap_err(), RecvError::Truncated);
        drop(a);
        assert_eq!(b.recv(&mut buf).unwrap_err(), RecvError::Closed);
    }
}
