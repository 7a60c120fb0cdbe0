//! Shared by the brokered, hostile and soak tests: a handle on a
//! `hybus-load` process, and the self-checking payloads it speaks.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hybus_tests::{exit_within, SOON};

#[path = "../../src/bin/load/payload.rs"]
pub mod payload;

/// `release` in a release build, `debug` in a debug build: counts that keep
/// every test well under a minute on a shared 2-core machine either way.
pub fn scaled(release: u64, debug: u64) -> u64 {
    if cfg!(debug_assertions) {
        debug
    } else {
        release
    }
}

/// A `hybus-load` process. Its stdout lines arrive on a channel; dropping it
/// kills it; closing its stdin ([`Load::finish`]) makes it exit.
#[derive(Debug)]
pub struct Load {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything it printed so far (for failure messages).
    seen: Vec<String>,
}

impl Load {
    /// Starts `hybus-load SOCKET ARGS...`.
    pub fn spawn(socket: &Path, args: &[&str]) -> Load {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hybus-load"));
        cmd.arg(socket).args(args);
        let (child, stdin, lines) = hybus_tests::spawn_with_lines(&mut cmd);
        Load { child, stdin, lines, seen: Vec::new() }
    }

    /// Starts a role and waits for its `ready` line; returns both.
    pub fn ready(socket: &Path, args: &[&str]) -> (Load, String) {
        let mut l = Load::spawn(socket, args);
        let line = l.expect_line("ready");
        (l, line)
    }

    /// The lines read from it so far (the first 200).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line starting with `prefix` (others are skipped), waiting up to `timeout`.
    pub fn line_within(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.starts_with(prefix);
                    if self.seen.len() < 200 {
                        self.seen.push(l.clone());
                    }
                    if hit {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The next line starting with `prefix`; panics after [`SOON`].
    pub fn expect_line(&mut self, prefix: &str) -> String {
        match self.line_within(prefix, SOON) {
            Some(l) => l,
            None => {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "hybus-load {} gave no line starting with {prefix:?} (exit: {status:?}); it said:\n{}",
                    self.pid(),
                    self.seen.join("\n")
                );
            }
        }
    }

    /// Sends a command line to its stdin.
    pub fn say(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// Asks for a `report` and returns the line.
    pub fn report(&mut self) -> String {
        self.say("report");
        self.expect_line("report ")
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (up to `timeout`) for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match exit_within(&mut self.child, timeout) {
            Some(s) => s,
            None => panic!("hybus-load {} did not exit; it said:\n{}", self.pid(), self.seen.join("\n")),
        }
    }

    /// Closes stdin and waits (bounded) for it to exit.
    pub fn finish(mut self) -> ExitStatus {
        self.stdin = None;
        self.wait_exit(SOON)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` of a line, parsed as a number; panics with the line if absent.
pub fn num(line: &str, key: &str) -> u64 {
    hybus_tests::field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key}= in {line:?}"))
}
