//! Starting the process of an `[[activate]]` name, and saying how it ended.
//!
//! The daemon's side of activation is in [`crate::activation`]; this is the
//! part that meets the OS: the command line (no shell), the user, the
//! environment, and the words for an exit status.
//!
//! # Safety
//!
//! One `unsafe`: the hook that runs in the child between `fork` and
//! `exec` ([`CommandExt::pre_exec`]), which only calls `sigemptyset` and
//! `sigprocmask`, both async-signal-safe, on a set on its own stack.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use crate::config::Activate;

/// Environment variables of hybusd's own that a started process must not
/// see: they speak of hybusd's socket activation and notify socket.
const PRIVATE_ENV: &[&str] =
    &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// What starts one instance of an activatable name.
#[derive(Debug)]
pub struct Launch {
    /// Ready to spawn.
    pub command: Command,
    /// It is `systemctl start`, not the service itself.
    pub systemctl: bool,
    /// For the log: the program, or the systemctl command line.
    pub what: String,
}

/// The command for `spec`: `exec` as `run_as` (uid, gid) with
/// `HYBUS_SOCKET` set to `socket`, or `systemctl start --no-block UNIT`.
/// Stdin is `/dev/null`; stdout and stderr are hybusd's (the journal under
/// systemd); every descriptor of ours is close-on-exec. The signals hybusd
/// blocks (it takes SIGTERM, SIGINT and SIGHUP through a signalfd) are
/// unblocked in the child: std leaves the mask as it is, and a service
/// started with SIGTERM blocked could not be stopped.
pub fn command(spec: &Activate, run_as: Option<(u32, u32)>, socket: Option<&Path>) -> Launch {
    let (mut command, systemctl, what) = match &spec.unit {
        Some(unit) => {
            let mut c = Command::new("systemctl");
            c.args(["start", "--no-block", unit.as_str()]);
            (c, true, format!("systemctl start --no-block {unit}"))
        }
        None => {
            let mut c = Command::new(&spec.exec[0]);
            c.args(&spec.exec[1..]).envs(&spec.environment);
            if let Some(p) = socket {
                c.env("HYBUS_SOCKET", p);
            }
            if let Some((uid, gid)) = run_as {
                // std drops the supplementary groups when root changes uid.
                c.uid(uid).gid(gid);
            }
            (c, false, spec.exec[0].clone())
        }
    };
    for v in PRIVATE_ENV {
        command.env_remove(v);
    }
    command.stdin(Stdio::null());
    // SAFETY: the hook runs in the forked child before exec and calls only
    // async-signal-safe functions (sigemptyset, sigprocmask) on its own stack.
    unsafe {
        command.pre_exec(|| {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            if libc::sigemptyset(set.as_mut_ptr()) != 0
                || libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut()) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Launch { command, systemctl, what }
}

/// The uid and gid of `user` (a name or a number).
pub fn lookup_user(user: &str) -> anyhow::Result<(u32, u32)> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        Ok(None) => match user.parse::<u32>() {
            // A uid without a passwd entry: its own number as the group.
            Ok(uid) => Ok((uid, uid)),
            Err(_) => anyhow::bail!("no user named {user:?}"),
        },
        Err(e) => anyhow::bail!("cannot look up user {user:?}: {e}"),
    }
}

/// `exited with status 3`, `killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => format!("ended: {status}"),
    }
}

/// What a failed spawn says, in the OS's words (`No such file or directory`).
pub fn spawn_error(err: &std::io::Error) -> String {
    err.raw_os_error().map_or_else(|| err.to_string(), |n| nix::errno::Errno::from_raw(n).desc().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }

    #[test]
    fn the_daemons_own_environment_stays_behind() {
        let spec = crate::Config::parse("[[activate]]\nname = \"a\"\nexec = [\"/bin/x\", \"-v\"]\n").unwrap().activate;
        let l = command(&spec[0], None, Some(Path::new("/run/hybus/bus.sock")));
        let envs: Vec<_> = l.command.get_envs().collect();
        assert!(envs.contains(&("HYBUS_SOCKET".as_ref(), Some("/run/hybus/bus.sock".as_ref()))));
        assert!(envs.contains(&("NOTIFY_SOCKET".as_ref(), None)));
        assert_eq!(l.command.get_args().collect::<Vec<_>>(), ["-v"]);
        assert!(!l.systemctl);
    }
}
