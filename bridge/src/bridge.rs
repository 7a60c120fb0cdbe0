//! The bridge process: a Zenoh session, connections to the local daemon,
//! and the threads that keep both sides in step.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{Bus, BusOptions};
use zenoh::Wait;

use crate::config::Config;

/// What every part of a running bridge shares.
#[derive(Debug)]
pub struct Ctx {
    /// The configuration.
    pub config: Config,
    /// This bridge's name on the Zenoh network.
    pub id: String,
    /// The Zenoh session.
    pub session: zenoh::Session,
    /// The local daemon's socket.
    pub socket: PathBuf,
    /// Set when the bridge is to stop.
    pub stop: AtomicBool,
    /// The client id of the connection that republishes imported topics:
    /// what it publishes is never exported again (see [`crate::topics`]).
    pub republisher: AtomicU32,
    /// Instances exported now (for [`crate::status`]).
    pub exported: AtomicUsize,
    /// Remote instances registered here now (for [`crate::status`]).
    pub imported: AtomicUsize,
    /// Publications of exported topics sent to other hosts, and the Zenoh
    /// puts they took (fewer: a burst goes in batches; for [`crate::status`]).
    pub published_out: AtomicU64,
    /// See [`published_out`](Self::published_out).
    pub puts_out: AtomicU64,
}

impl Ctx {
    /// Whether the bridge is stopping.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// A connection to the local daemon labelled `role`, retried until it
    /// is made or the bridge stops (`None` then). Says in the log what it
    /// waits for, once, and when it got it.
    pub fn connect(&self, role: &str) -> Option<Bus> {
        let opts = || BusOptions {
            path: Some(self.socket.clone()),
            label: format!("hybus-bridge {} ({role})", self.id),
            ..BusOptions::default()
        };
        let mut said = false;
        while !self.stopping() {
            match Bus::connect_with(opts()) {
                Ok(b) => {
                    if said {
                        tracing::info!(role, "connected to the local daemon");
                    }
                    return Some(b);
                }
                Err(e) => {
                    if !said {
                        tracing::warn!(role, "cannot connect to the local daemon (retrying every second): {e}");
                        said = true;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        None
    }
}

/// Why a bridge could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is not usable.
    Config(crate::config::ConfigError),
    /// Zenoh refused to open a session.
    Zenoh(String),
    /// A thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Zenoh(e) => write!(f, "cannot open a Zenoh session: {e}"),
            Self::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running bridge. Dropping it stops it.
#[derive(Debug)]
pub struct Bridge {
    ctx: Arc<Ctx>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Opens the Zenoh session and starts exporting and importing as
    /// `config` says, through the daemon at `socket`. Returns at once: the
    /// daemon and the Zenoh peers need not be reachable yet (both are
    /// retried, and the log says so).
    pub fn start(config: Config, socket: PathBuf) -> Result<Bridge, StartError> {
        let zconfig = config.zenoh().map_err(StartError::Config)?;
        let session = zenoh::open(zconfig).wait().map_err(|e| StartError::Zenoh(e.to_string()))?;
        let id = config.name.clone().unwrap_or_else(|| session.zid().to_string());
        tracing::info!(bridge = id, zid = %session.zid(), "zenoh session open");
        let ctx = Arc::new(Ctx {
            config,
            id,
            session,
            socket,
            stop: AtomicBool::new(false),
            republisher: AtomicU32::new(u32::MAX),
            exported: AtomicUsize::new(0),
            imported: AtomicUsize::new(0),
            published_out: AtomicU64::new(0),
            puts_out: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, f: fn(Arc<Ctx>), threads: &mut Vec<_>| {
            let c = ctx.clone();
            std::thread::Builder::new().name(name.into()).spawn(move || f(c)).map(|t| threads.push(t))
        };
        spawn("export", crate::export::run, &mut threads).map_err(StartError::Thread)?;
        spawn("import", crate::import::run, &mut threads).map_err(StartError::Thread)?;
        spawn("topics-in", crate::topics::import, &mut threads).map_err(StartError::Thread)?;
        spawn("status", crate::status::run, &mut threads).map_err(StartError::Thread)?;
        for topic in ctx.config.exported_topics() {
            let c = ctx.clone();
            let t = std::thread::Builder::new()
                .name("topic-out".into())
                .spawn(move || crate::topics::export(c, topic))
                .map_err(StartError::Thread)?;
            threads.push(t);
        }
        Ok(Bridge { ctx, threads })
    }

    /// This bridge's name on the Zenoh network.
    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    /// Whether Zenoh has at least one peer or router connected (or none is
    /// configured to connect to).
    pub fn zenoh_connected(&self) -> bool {
        if self.ctx.config.connect.is_empty() {
            return true;
        }
        let info = self.ctx.session.info();
        info.peers_zid().wait().next().is_some() || info.routers_zid().wait().next().is_some()
    }

    /// Waits until Zenoh is connected (see [`zenoh_connected`](Self::zenoh_connected)),
    /// logging every few seconds while it is not. `false` if `stop` is set
    /// first.
    pub fn wait_zenoh(&self, stop: &AtomicBool) -> bool {
        let mut next_log = Instant::now() + Duration::from_secs(1);
        while !self.ctx.stopping() && !stop.load(Ordering::Acquire) {
            if self.zenoh_connected() {
                return true;
            }
            if Instant::now() >= next_log {
                tracing::warn!(connect = ?self.ctx.config.connect, "no Zenoh peer reachable yet; retrying in the background");
                next_log = Instant::now() + Duration::from_secs(5);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Stops every thread and closes the session.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.ctx.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = self.ctx.session.close().wait();
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}
