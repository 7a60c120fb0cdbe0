//! systemd integration: socket activation (`LISTEN_FDS`) and the rest of
//! the notify protocol lives in [`crate::daemon`] (`READY=1`, `STATUS=`,
//! `WATCHDOG=1`, `STOPPING=1`), through the `sd-notify` crate.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::Context;

/// Takes the listening socket systemd passed us, if any.
///
/// Checks `LISTEN_PID`, prefers the fd named `hybus` (`FileDescriptorName=`)
/// and otherwise the first, and verifies that it is a `SOCK_SEQPACKET`
/// socket so that a wrong unit file gives a clear error instead of odd
/// failures later.
pub fn listen_fd() -> anyhow::Result<Option<OwnedFd>> {
    let fds: Vec<(i32, String)> = match sd_notify::listen_fds_with_names(true) {
        Ok(f) => f.collect(),
        Err(_) => return Ok(None),
    };
    let Some(&(raw, _)) = fds.iter().find(|(_, n)| n == "hybus").or_else(|| fds.first()) else {
        return Ok(None);
    };
    // SAFETY: systemd passed this descriptor to us (LISTEN_PID matched) and
    // nothing in this process has taken ownership of it yet.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ty = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
        .context("socket activation: the passed fd is not a socket")?;
    anyhow::ensure!(
        ty == nix::sys::socket::SockType::SeqPacket,
        "socket activation: the passed socket is {ty:?}, not SOCK_SEQPACKET (ListenSequentialPacket= in the .socket unit)"
    );
    // Others we do not use: close them so they do not leak.
    for &(other, _) in fds.iter().filter(|(r, _)| *r != raw) {
        // SAFETY: as above; each is ours and otherwise unowned.
        drop(unsafe { OwnedFd::from_raw_fd(other) });
    }
    Ok(Some(fd))
}
