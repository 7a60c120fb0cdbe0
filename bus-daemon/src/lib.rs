//! `hybusd`, the hybus daemon, as a library: tests and `hybusctl demo` run
//! it in-process; the `hybusd` binary wraps it with flags, logs and systemd.
//!
//! * [`daemon`] — the event loop, connections and lifecycle;
//! * [`activation`] — starting `[[activate]]` services on demand, scale to zero;
//! * [`launch`] — the command line, user and environment of a started service;
//! * [`requests`](crate::daemon::Daemon) — the control plane (module `requests`);
//! * [`router`] — the data plane: checking and forwarding descriptors;
//! * [`direct`] — the direct-channel broker and automatic promotion;
//! * [`registry`] — names, routes, instances, load balancing;
//! * [`exchange`] — requests and streams in flight;
//! * [`chunks`] — who holds which payload chunk;
//! * [`holds`] — what each uid holds of others' pools, and what was taken back;
//! * [`ratelog`] — rate limits of the log lines a peer can trigger;
//! * [`session`] — one client as the daemon sees it;
//! * [`poller`] — the readiness source;
//! * [`config`] — the TOML configuration and policy;
//! * `crowding` — who spins on how many CPUs, and the back-off when they outnumber them;
//! * [`log`] — where log lines go and how they look (terminal, file, journald);
//! * [`systemd`] — socket activation and the notify protocol.
#![deny(unsafe_op_in_unsafe_fn, missing_docs, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod activation;
pub mod chunks;
pub mod config;
mod crowding;
pub mod daemon;
pub mod direct;
pub mod exchange;
pub mod holds;
pub mod launch;
pub mod log;
pub mod openrate;
pub mod poller;
pub mod ratelog;
pub mod registry;
mod requests;
mod revoke;
pub mod router;
pub mod session;
pub mod systemd;

pub use config::Config;
pub use daemon::{Daemon, Options, StopHandle};

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// A daemon running on a thread of this process (tests, `hybusctl demo`).
/// Stopped and joined on drop.
#[derive(Debug)]
pub struct Embedded {
    path: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Embedded {
    /// Starts a daemon with `config` listening on `path`.
    pub fn start(path: &Path, config: Config) -> anyhow::Result<Embedded> {
        let d = Daemon::new(Options { config, socket: path.to_owned(), ..Options::default() })?;
        let stop = d.stop_handle();
        let thread = std::thread::Builder::new().name("hybusd".into()).spawn(move || d.run())?;
        Ok(Embedded { path: path.to_owned(), stop, thread: Some(thread) })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the daemon and waits for it.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stop.stop();
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => anyhow::bail!("the daemon thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
