//! The daemon: one thread, one event loop.
//!
//! The loop alternates between the data plane (draining the rings of
//! recently active clients, see [`crate::router`]) and the control plane
//! (accepting connections, reading control sockets, doorbells, signals).
//! While traffic flows it polls only the active rings; when they stay
//! empty for the idle budget it parks each of them (the doorbell
//! handshake) and sleeps in the poller, so an idle daemon uses no CPU.

use hybus_layout::idhash::IdMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hybus_layout::control::{self, DaemonMessage, ErrorCode, ErrorReply, Event, Preamble};
use hybus_layout::pool::PoolGeometry;
use hybus_layout::{IdleStrategy, Wake};
use hybus_os::segment::EventFd;
use hybus_os::socket::ControlSocket;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::chunks::Chunks;
use crate::config::Config;
use crate::exchange::Exchanges;
use crate::poller::Poller;
use crate::registry::Registry;
use crate::session::{Credentials, Session};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
const SIGNALS: u64 = 2;
const CONTROL: u64 = 1 << 32;
pub(crate) const DOORBELL_TOKEN: u64 = 2 << 32;
/// A client's control socket, full a moment ago, has room again.
const WRITABLE: u64 = 3 << 32;

/// Connections accepted per round of the event loop (see `Daemon::accept`).
const ACCEPT_BUDGET: usize = 32;

/// How the daemon gets its listening socket and where it reports.
#[derive(Debug, Default)]
pub struct Options {
    /// The configuration.
    pub config: Config,
    /// Where the configuration came from (reloaded on SIGHUP).
    pub config_path: Option<PathBuf>,
    /// Socket path to bind (ignored when `listener` is given).
    pub socket: PathBuf,
    /// An already listening socket (systemd socket activation).
    pub listener: Option<OwnedFd>,
    /// Signals to handle (SIGTERM, SIGINT, SIGHUP), already blocked by the caller.
    pub signals: Option<nix::sys::signalfd::SignalFd>,
    /// Talk to systemd (`NOTIFY_SOCKET`, `WATCHDOG_USEC`).
    pub systemd: bool,
}

/// Stops a running daemon from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<EventFd>);

impl StopHandle {
    /// Asks the daemon to drain and exit.
    pub fn stop(&self) {
        self.0.wake();
    }
}

/// The daemon's state.
#[derive(Debug)]
pub struct Daemon {
    pub(crate) config: Config,
    /// The uid the daemon runs as: the owner of a user bus (see `Policy::allows`).
    pub(crate) owner: u32,
    config_path: Option<PathBuf>,
    pub(crate) socket_path: Option<PathBuf>,
    pub(crate) listener: OwnedFd,
    pub(crate) poller: Poller,
    pub(crate) sessions: IdMap<u32, Session>,
    next_client: u32,
    pub(crate) registry: Registry,
    pub(crate) chunks: Chunks,
    /// What each uid holds of others' pools (see [`crate::holds`]).
    pub(crate) holds: crate::holds::Holds,
    pub(crate) exchanges: Exchanges,
    /// Clients whose tx ring is polled (not parked).
    pub(crate) active: Vec<u32>,
    stop: Arc<EventFd>,
    /// Stopping: until when exchanges in flight may finish, and why.
    stopping: Option<(Instant, String)>,
    signals: Option<nix::sys::signalfd::SignalFd>,
    pub(crate) geometry: PoolGeometry,
    /// The idle strategy the daemon follows now: the configured one, or
    /// its backed-off form while more parties spin than there are CPUs
    /// (see `crowding`).
    pub(crate) idle: IdleStrategy,
    /// The idle strategy of the configuration.
    pub(crate) configured_idle: IdleStrategy,
    /// CPUs the daemon may run on (its affinity mask; read at start and on reload).
    pub(crate) cpus: u32,
    /// What spinning clients were last told.
    pub(crate) last_crowding: hybus_layout::control::Crowding,
    /// The crowding warning was logged once.
    pub(crate) crowding_warned: bool,
    buf: Vec<u8>,
    /// Connections per uid that said Hello (`limits.connections_per_uid`).
    pub(crate) uid_connections: IdMap<u32, u32>,
    /// Connections per uid that have not said Hello yet
    /// (`limits.pre_hello_per_uid`): counted apart, so that a flood of
    /// connections that never speak cannot lock the uid's tools out.
    uid_pre_hello: IdMap<u32, u32>,
    /// Rate limits of the log lines peers can trigger.
    pub(crate) ratelog: crate::ratelog::RateLog,
    systemd: bool,
    watchdog: Option<Duration>,
    pub(crate) monitors: usize,
    pub(crate) started: Instant,
    /// Clients disconnected for protocol violations.
    pub(crate) violations: u64,
    /// Publications dropped for slow subscribers.
    pub(crate) drops: u64,
    /// Reused list of active ids for one polling round.
    pub(crate) scratch: Vec<u32>,
    /// Reused list of one publication's subscribers, then of its chunk's
    /// holders (see `publish`): a publication allocates nothing here but
    /// the record of who holds its chunk.
    pub(crate) fanout: Vec<u32>,
    /// Reused descriptor buffer for one polling round.
    pub(crate) dbuf: Vec<hybus_layout::Descriptor>,
    /// Clients pushed to (or with queued descriptors) since the last flush.
    pub(crate) touched: Vec<u32>,
    /// Clients with control messages in their outbox (see [`flush_outbox`](Self::flush_outbox)).
    pub(crate) outboxed: Vec<u32>,
    /// The poller could not watch a full socket for room: outboxes are
    /// then tried every millisecond instead.
    outbox_tick: bool,
    /// Connections that have not said Hello yet, with their deadline.
    pending_hellos: Vec<(u32, Instant)>,
    /// Live direct channels.
    pub(crate) channels: IdMap<u32, crate::direct::Channel>,
    pub(crate) next_channel: u32,
    /// Channel ids have wrapped once: any id may have been handed out.
    pub(crate) channel_ids_wrapped: bool,
    /// The two clients of every channel, open or closed, until one of them leaves (for fences).
    pub(crate) channel_members: IdMap<u32, (u32, u32)>,
    /// Brokered rates per (caller, route), when promotion is on.
    pub(crate) pair_rates: IdMap<(u32, u32), crate::direct::PairRate>,
    /// The `[[activate]]` names and their processes.
    pub(crate) activations: crate::activation::Activations,
    /// Direct channel opens per caller uid (`limits.direct_opens_per_s`).
    pub(crate) open_rate: crate::openrate::OpenRate,
}

/// Whether the listener that took our probe connection belongs to a
/// process that still exists. A daemon killed with SIGKILL leaves its
/// listening socket taking connections for some milliseconds after it has
/// been reaped (the kernel releases its files late; measured by
/// `tests/chaos.rs`, which restarts right after `kill -9`): a restart then
/// must not take that for a running daemon. The peer's credentials are
/// those of whoever called `listen`; a pid of 0 (another pid namespace) or
/// a failed query counts as alive.
fn listener_alive(probe: &ControlSocket) -> bool {
    match probe.peer_credentials() {
        Ok(c) if c.pid() > 0 => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid()), None) != Err(nix::errno::Errno::ESRCH)
        }
        _ => true,
    }
}

fn bind_socket(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create socket directory {}", dir.display()))?;
    }
    if path.exists() {
        // A live daemon answers; a stale socket file from a crash does not.
        match ControlSocket::connect(path) {
            Ok(probe) if listener_alive(&probe) => {
                anyhow::bail!("another hybusd is already listening on {}", path.display())
            }
            Ok(_) | Err(_) => {
                std::fs::remove_file(path).with_context(|| format!("cannot remove stale socket {}", path.display()))?;
            }
        }
    }
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .context("cannot create socket")?;
    let addr = UnixAddr::new(path).with_context(|| format!("bad socket path {}", path.display()))?;
    socket::bind(fd.as_raw_fd(), &addr).with_context(|| format!("cannot bind {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Some(group) = group {
        let gid = group_id(group)?;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {group}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    socket::listen(&fd, socket::Backlog::new(1024).unwrap_or(socket::Backlog::MAXCONN)).context("cannot listen")?;
    Ok(fd)
}

/// A group by name, or by number.
fn group_id(group: &str) -> anyhow::Result<nix::unistd::Gid> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => anyhow::bail!("socket_group: no group named {group:?}"),
        Err(e) => anyhow::bail!("socket_group: cannot look up {group:?}: {e}"),
    }
}

/// Half of `WATCHDOG_USEC`, if the watchdog is meant for this process.
///
/// Like libsystemd's `sd_watchdog_enabled`: `WATCHDOG_PID`, when set, must
/// name us; when unset (some supervisors omit it) the watchdog is ours.
/// (sd-notify 0.4's `watchdog_enabled` insists on the pid.)
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|&u| u > 0)?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// The longest the daemon (or a waiting client) yields before it parks.
pub const MAX_YIELD: Duration = hybus_layout::doorbell::MAX_YIELD;

fn yielded_too_long(start: Option<Instant>) -> bool {
    start.is_some_and(|s| s.elapsed() >= MAX_YIELD)
}

/// Raises the soft open-files limit to the hard limit: each client costs
/// the daemon five descriptors (socket, two memfds, two eventfds).
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

impl Daemon {
    /// Binds the socket (or takes the given listener) and prepares the loop.
    pub fn new(opts: Options) -> anyhow::Result<Daemon> {
        opts.config.check()?;
        raise_fd_limit();
        let (listener, socket_path) = match opts.listener {
            Some(l) => {
                nix::fcntl::fcntl(&l, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
                    .context("cannot make the inherited socket non-blocking")?;
                (l, None)
            }
            None => (
                bind_socket(&opts.socket, opts.config.socket_mode, opts.config.socket_group.as_deref())?,
                Some(opts.socket.clone()),
            ),
        };
        let mut poller = Poller::new(opts.config.force_epoll).context("cannot create the event loop")?;
        tracing::info!(backend = poller.backend(), "event loop");
        poller.add(listener.as_fd(), LISTENER)?;
        let stop = Arc::new(EventFd::new()?);
        poller.add(stop.fd(), STOP)?;
        if let Some(s) = &opts.signals {
            poller.add(s.as_fd(), SIGNALS)?;
        }
        let mut watchdog = None;
        if opts.systemd {
            watchdog = watchdog_interval();
        }
        let geometry = opts.config.pool_geometry()?;
        let idle = opts.config.idle_strategy();
        let limits = opts.config.limits;
        let balance = opts.config.balance;
        let activations = crate::activation::Activations::new(&opts.config)?;
        Ok(Daemon {
            config: opts.config,
            owner: nix::unistd::geteuid().as_raw(),
            config_path: opts.config_path,
            socket_path,
            listener,
            poller,
            sessions: IdMap::default(),
            next_client: 0,
            registry: Registry::with_limits(limits.names as usize, limits.names_per_uid as usize).balanced(balance),
            chunks: Chunks::default(),
            holds: Default::default(),
            exchanges: Exchanges::default(),
            active: Vec::new(),
            stop,
            stopping: None,
            signals: opts.signals,
            geometry,
            idle,
            configured_idle: idle,
            cpus: hybus_os::cpus::usable(),
            last_crowding: hybus_layout::control::Crowding { spinners: 0, daemon_spins: false, cpus: 0 },
            crowding_warned: false,
            buf: vec![0; control::MAX_MESSAGE],
            uid_connections: IdMap::default(),
            uid_pre_hello: IdMap::default(),
            ratelog: Default::default(),
            systemd: opts.systemd,
            watchdog,
            monitors: 0,
            started: Instant::now(),
            violations: 0,
            drops: 0,
            scratch: Vec::new(),
            fanout: Vec::new(),
            dbuf: Vec::new(),
            touched: Vec::new(),
            outboxed: Vec::new(),
            outbox_tick: false,
            pending_hellos: Vec::new(),
            channels: IdMap::default(),
            next_channel: 0,
            channel_ids_wrapped: false,
            channel_members: IdMap::default(),
            pair_rates: IdMap::default(),
            activations,
            open_rate: Default::default(),
        })
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.stop.clone())
    }

    /// The backend of the event loop.
    pub fn backend(&self) -> &'static str {
        self.poller.backend()
    }

    fn notify(&self, states: &[sd_notify::NotifyState<'_>]) {
        if self.systemd {
            let _ = sd_notify::notify(false, states);
        }
    }

    fn status(&self) -> String {
        format!(
            "{} clients, {} services, {} chunks lent",
            self.sessions.len(),
            self.registry.routes().filter(|(_, r)| !r.instances.is_empty()).count(),
            self.chunks.len()
        )
    }

    /// Runs until stopped (SIGTERM, SIGINT, or the [`StopHandle`]). Returns
    /// after every client was disconnected and the socket file removed.
    pub fn run(mut self) -> anyhow::Result<()> {
        tracing::info!(backend = self.backend(), "hybusd ready");
        let status = format!("STATUS=ready, {}", self.status());
        self.notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Custom(&status)]);
        let mut events = Vec::with_capacity(64);
        let mut idle_rounds: u64 = 0;
        // When the yield phase began: it is bounded in time as well as in
        // count, since on a saturated machine one yield can take a whole
        // time slice, and a daemon that keeps yielding steals slices from
        // the direct-channel pairs that need those cores.
        let mut yield_start: Option<Instant> = None;
        let mut loops: u64 = 0;
        let mut last_watchdog = Instant::now();
        let mut last_status = Instant::now();
        let mut last_tick = Instant::now();
        let mut last_outbox = Instant::now();
        loop {
            loops += 1;
            let worked = self.poll_rings();
            if worked {
                yield_start = None;
            }
            self.flush_clients();
            let spin_budget = self.idle.spins as u64 + self.idle.yields as u64;
            let timeout = if worked {
                idle_rounds = 0;
                if loops % 64 != 0 {
                    continue;
                }
                Some(Duration::ZERO)
            } else if !self.active.is_empty()
                && (!self.idle.park || (idle_rounds < spin_budget && !yielded_too_long(yield_start)))
            {
                idle_rounds = idle_rounds.saturating_add(1);
                if idle_rounds <= self.idle.spins as u64 {
                    std::hint::spin_loop();
                    if idle_rounds % 256 != 0 {
                        continue;
                    }
                } else {
                    yield_start.get_or_insert_with(Instant::now);
                    std::thread::yield_now();
                }
                Some(Duration::ZERO)
            } else {
                yield_start = None;
                // Park: every active ring must agree that it is empty.
                if !self.park_active() {
                    idle_rounds = 0;
                    continue;
                }
                idle_rounds = 0;
                self.sleep_timeout()
            };
            events.clear();
            self.poller.wait(&mut events, timeout).context("event loop wait failed")?;
            // New connections last: the hang-ups of this round are reaped
            // first, so closed connections never count against a quota
            // while new ones are admitted (a connect/close flood did that).
            let mut listener_ready = false;
            for &ev in &events {
                match ev {
                    LISTENER => listener_ready = true,
                    STOP => {
                        self.stop.try_consume();
                        self.begin_stop("stop requested");
                    }
                    SIGNALS => {
                        if let Some(sig) = self.read_signal() {
                            match sig {
                                nix::sys::signal::Signal::SIGHUP => self.reload(),
                                s => self.begin_stop(s.as_str()),
                            }
                        }
                    }
                    t if t & !0xffff_ffff == CONTROL => self.read_control(t as u32),
                    t if t & !0xffff_ffff == DOORBELL_TOKEN => self.doorbell(t as u32),
                    t if t & !0xffff_ffff == WRITABLE => self.flush_outbox(t as u32),
                    t if t & !0xffff_ffff == crate::activation::CHILD_TOKEN => self.activation_child(t as u32),
                    _ => {}
                }
            }
            if listener_ready {
                self.accept();
            }
            if let Some((until, why)) = &self.stopping {
                if self.exchanges.is_empty() || Instant::now() >= *until {
                    let why = why.clone();
                    return self.shutdown(&why);
                }
            }
            self.expire_hellos();
            if self.activations.due.is_some_and(|t| t <= Instant::now()) {
                self.activation_tick();
            }
            // Only if the poller could not tell us when a socket has room.
            if self.outbox_tick && last_outbox.elapsed() >= Duration::from_millis(1) {
                last_outbox = Instant::now();
                for id in self.outboxed.clone() {
                    self.flush_outbox(id);
                }
                self.outbox_tick = !self.outboxed.is_empty();
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.promote_busy_pairs();
                self.ratelog.flush(last_tick);
                let l = self.config.limits;
                self.open_rate.forget_full(l.direct_opens_per_s, l.direct_open_burst, last_tick);
            }
            if let Some(w) = self.watchdog {
                if last_watchdog.elapsed() >= w {
                    last_watchdog = Instant::now();
                    self.notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
            if self.systemd && last_status.elapsed() >= Duration::from_secs(5) {
                last_status = Instant::now();
                let s = self.status();
                self.notify(&[sd_notify::NotifyState::Status(&s)]);
            }
        }
    }

    /// How long the poller may sleep: until the next hello deadline,
    /// watchdog ping, or queued-descriptor retry.
    fn sleep_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut t: Option<Duration> = self.watchdog;
        let mut bound = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        // Only connections still in their handshake, not every session: the
        // cost of going to sleep must not grow with the number of clients.
        for &(_, dl) in &self.pending_hellos {
            bound(dl.saturating_duration_since(now));
        }
        if self.outbox_tick {
            // A full control socket the poller cannot watch: retry soon.
            bound(Duration::from_millis(1));
        }
        if let Some((until, _)) = &self.stopping {
            bound(until.saturating_duration_since(now));
        }
        if !self.touched.is_empty() {
            // A client with a full ring (queued descriptors stay on the
            // touched list): retry soon, it does not ring us when it drains.
            bound(Duration::from_millis(1));
        }
        if self.systemd {
            bound(Duration::from_secs(5));
        }
        if self.config.promotion.enabled && !self.pair_rates.is_empty() {
            bound(Duration::from_millis(100));
        }
        if let Some(due) = self.ratelog.next_report() {
            // The "… and N more" line of a window that ends.
            bound(due.saturating_duration_since(now));
        }
        if let Some(d) = self.activation_sleep() {
            bound(d);
        }
        t
    }

    fn park_active(&mut self) -> bool {
        let mut all = true;
        let mut i = 0;
        while i < self.active.len() {
            let id = self.active[i];
            let Some(d) = self.sessions.get_mut(&id).and_then(|s| s.data.as_mut()) else {
                self.active.swap_remove(i);
                continue;
            };
            match d.tx.prepare_park() {
                Ok(true) => {
                    d.active = false;
                    self.active.swap_remove(i);
                }
                Ok(false) => {
                    all = false;
                    i += 1;
                }
                Err(e) => {
                    self.violation(id, &crate::router::Violation::Ring(e));
                }
            }
        }
        all
    }

    fn doorbell(&mut self, id: u32) {
        let Some(d) = self.sessions.get_mut(&id).and_then(|s| s.data.as_mut()) else {
            return;
        };
        d.tx_bell.try_consume();
        d.tx.finish_park();
        if !d.active {
            d.active = true;
            self.active.push(id);
        }
    }

    fn read_signal(&mut self) -> Option<nix::sys::signal::Signal> {
        let s = self.signals.as_ref()?.read_signal().ok()??;
        nix::sys::signal::Signal::try_from(s.ssi_signo as i32).ok()
    }

    fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::info!("SIGHUP: no config file to reload");
            return;
        };
        match Config::load(&path) {
            Ok(c) => {
                if let Err(e) = self.activations.reload(&c) {
                    tracing::warn!("SIGHUP: keeping the old configuration: {e:#}");
                    return;
                }
                // Ring and pool sizes apply to new clients only; policy and limits at once.
                self.configured_idle = c.idle_strategy();
                self.cpus = hybus_os::cpus::usable();
                match c.pool_geometry() {
                    Ok(g) => self.geometry = g,
                    Err(e) => tracing::warn!("SIGHUP: keeping old pool geometry: {e}"),
                }
                // Names made stay; new ones count against the new limits.
                self.registry.max_names = c.limits.names as usize;
                self.registry.max_names_per_uid = c.limits.names_per_uid as usize;
                self.registry.balance = c.balance;
                self.config = c;
                self.recount_spinners(None);
                // The policy applies at once, to sends already made possible too.
                for s in self.sessions.values_mut() {
                    s.trusted = self.config.policy.trusts(s.creds.who(), self.owner);
                    s.permits.clear();
                }
                // And to what it allowed before: subscriptions, monitors,
                // channels and registrations it forbids now end.
                self.revoke_forbidden();
                tracing::info!(path = %path.display(), "configuration reloaded");
                let s = format!("STATUS=configuration reloaded, {}", self.status());
                self.notify(&[sd_notify::NotifyState::Custom(&s)]);
            }
            Err(e) => tracing::warn!("SIGHUP: keeping the old configuration: {e:#}"),
        }
    }

    /// Starts stopping: no new connections; requests and streams in
    /// flight get up to `shutdown_grace_ms` to finish (traffic goes on
    /// meanwhile), then [`shutdown`](Self::shutdown). Asked a second time,
    /// it stops at once.
    ///
    /// Why: a restart under systemd should not fail the calls a service is
    /// answering at that moment; its callers reconnect to the next daemon
    /// by themselves, but an answer lost is lost.
    fn begin_stop(&mut self, why: &str) {
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        match &mut self.stopping {
            Some((until, _)) => *until = Instant::now(),
            None => {
                tracing::info!(reason = why, in_flight = self.exchanges.len(), "hybusd stopping");
                self.notify(&[sd_notify::NotifyState::Stopping]);
                // New connections wait in the backlog (for the next daemon, under socket activation).
                self.poller.remove(self.listener.as_fd());
                self.stopping = Some((Instant::now() + grace, why.to_owned()));
            }
        }
    }

    fn shutdown(mut self, why: &str) -> anyhow::Result<()> {
        tracing::info!(reason = why, unfinished = self.exchanges.len(), "hybusd stopping now");
        // Drain: deliver what is queued as far as rings allow, then say goodbye.
        self.poll_rings();
        self.flush_clients();
        let ids: Vec<u32> = self.sessions.keys().copied().collect();
        for id in ids {
            self.disconnect(id, "daemon shutting down");
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!(uptime_s = self.started.elapsed().as_secs(), "hybusd stopped");
        Ok(())
    }

    /// Accepts at most [`ACCEPT_BUDGET`] connections (the listener is
    /// level-triggered: the rest come next round, after the hang-ups and
    /// messages of that round). A uid's connections that have not said Hello
    /// are held to `limits.pre_hello_per_uid`: past it the oldest of them is
    /// let go, so a flood of silent connections cannot keep out the
    /// connection of a tool that speaks at once. The quota of established
    /// connections is checked at Hello.
    fn accept(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let fd = match socket::accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    // EMFILE and friends: log and let the backlog wait.
                    tracing::warn!("accept failed: {}", e.desc());
                    return;
                }
            };
            let sock = ControlSocket::from_fd(fd);
            let creds = match sock.peer_credentials() {
                Ok(c) => Credentials { uid: c.uid(), gid: c.gid(), pid: c.pid() },
                Err(e) => {
                    tracing::warn!("SO_PEERCRED failed: {}", e.desc());
                    continue;
                }
            };
            if self.uid_pre_hello.get(&creds.uid).copied().unwrap_or(0) >= self.config.limits.pre_hello_per_uid {
                self.evict_oldest_silent(creds.uid);
            }
            let id = self.new_client_id();
            if let Err(e) = self.poller.add(sock.fd(), CONTROL | id as u64) {
                tracing::warn!("cannot watch a new connection: {}", e.desc());
                continue;
            }
            // Counted once it is a session: `disconnect` gives it back.
            *self.uid_pre_hello.entry(creds.uid).or_default() += 1;
            let deadline = Instant::now() + Duration::from_millis(self.config.limits.hello_timeout_ms);
            tracing::debug!(client = id, uid = creds.uid, pid = creds.pid, "connected");
            self.sessions.insert(
                id,
                Session {
                    id,
                    creds,
                    sock,
                    label: String::new(),
                    data: None,
                    hello_deadline: Some(deadline),
                    watches: Vec::new(),
                    monitor: None,
                    subscriptions: Vec::new(),
                    outbox: Default::default(),
                    trusted: self.config.policy.trusts(creds.who(), self.owner),
                    permits: Default::default(),
                    spins: false,
                },
            );
            self.pending_hellos.push((id, deadline));
            // A client usually sends its Hello right after connect, and a
            // flood's connection is often closed already: either is known
            // now, before the next accept could count against it.
            self.read_control(id);
        }
    }

    /// Lets go of `uid`'s oldest connection that has not said Hello.
    fn evict_oldest_silent(&mut self, uid: u32) {
        let sessions = &self.sessions;
        let oldest = self
            .pending_hellos
            .iter()
            .map(|&(id, _)| id)
            .find(|id| sessions.get(id).is_some_and(|s| s.creds.uid == uid && s.data.is_none()));
        let Some(id) = oldest else { return };
        let limit = self.config.limits.pre_hello_per_uid;
        if self.ratelog.admit(crate::ratelog::LogKind::ConnectionQuota, uid, Instant::now()) {
            tracing::warn!(client = id, uid, "uid {uid} has {limit} connections that have not said Hello (limits.pre_hello_per_uid): letting the oldest go");
        }
        if let Some(s) = self.sessions.get(&id) {
            let msg = format!("too many connections of uid {uid} that have not said Hello (limit {limit})");
            send_to(&s.sock, &error_reply(0, ErrorCode::QuotaExceeded, msg), &[]);
        }
        self.disconnect(id, "evicted: too many connections that have not said Hello");
    }

    /// Whether `uid` may have one more established connection (checked at Hello).
    pub(crate) fn check_connection_quota(&mut self, id: u32, uid: u32) -> Result<(), (ErrorCode, String)> {
        let conns = self.uid_connections.get(&uid).copied().unwrap_or(0);
        let limit = self.config.limits.connections_per_uid;
        if conns < limit {
            return Ok(());
        }
        let msg = format!("uid {uid} already has {conns} connections (limits.connections_per_uid = {limit})");
        if self.ratelog.admit(crate::ratelog::LogKind::ConnectionQuota, uid, Instant::now()) {
            tracing::warn!(client = id, "{msg}");
        }
        Err((ErrorCode::QuotaExceeded, msg))
    }

    /// Counts a connection that said Hello as established: out of the
    /// pre-Hello count, into the quota (`disconnect` gives back to the one
    /// its state says, so call this where the session gets its data plane).
    pub(crate) fn count_established(&mut self, uid: u32) {
        if let Some(c) = self.uid_pre_hello.get_mut(&uid) {
            *c = c.saturating_sub(1);
        }
        *self.uid_connections.entry(uid).or_default() += 1;
    }

    fn new_client_id(&mut self) -> u32 {
        loop {
            self.next_client = self.next_client.wrapping_add(1);
            if self.next_client != 0 && !self.sessions.contains_key(&self.next_client) {
                return self.next_client;
            }
        }
    }

    fn expire_hellos(&mut self) {
        if self.pending_hellos.is_empty() {
            return;
        }
        let now = Instant::now();
        // Forget the ones that said Hello or left meanwhile.
        let sessions = &self.sessions;
        self.pending_hellos.retain(|(id, _)| sessions.get(id).is_some_and(|s| s.hello_deadline.is_some()));
        let late: Vec<u32> = self.pending_hellos.iter().filter(|(_, d)| *d <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(s) = self.sessions.get(&id) {
                send_to(&s.sock, &error_reply(0, ErrorCode::BadRequest, "no Hello within the timeout".into()), &[]);
            }
            self.disconnect(id, "said nothing within the hello timeout");
        }
    }

    fn read_control(&mut self, id: u32) {
        // Bounded: a client cannot keep the loop here forever.
        for _ in 0..64 {
            let Some(s) = self.sessions.get(&id) else {
                return;
            };
            let (n, fds) = match s.sock.recv(&mut self.buf) {
                Ok(x) => x,
                Err(hybus_os::socket::RecvError::WouldBlock) => return,
                Err(hybus_os::socket::RecvError::Closed) => {
                    self.drain_client(id);
                    self.disconnect(id, "closed the connection");
                    return;
                }
                Err(e) => {
                    let msg = format!("bad control message: {e}");
                    send_to(&s.sock, &error_reply(0, ErrorCode::BadRequest, msg.clone()), &[]);
                    self.disconnect(id, &msg);
                    return;
                }
            };
            // A client's first message starts with its preamble: compared
            // before anything is decoded, since a client of another build
            // would be misread rather than fail to decode.
            let start = match Preamble::parse(&self.buf[..n]) {
                Some(p) if p == Preamble::OURS => Preamble::LEN,
                Some(p) => {
                    // Our preamble, raw, is all such a client can read safely.
                    let _ = s.sock.send(&Preamble::OURS.to_bytes(), &[]);
                    if self.ratelog.admit(crate::ratelog::LogKind::Malformed, s.creds.uid, Instant::now()) {
                        tracing::warn!(
                            client = id,
                            pid = s.creds.pid,
                            "refused: speaks {p}, we speak {}",
                            Preamble::OURS
                        );
                    }
                    self.disconnect(id, "another hybus version");
                    return;
                }
                None if s.data.is_none() => {
                    let msg =
                        "the first message must start with the hybus preamble (a client of another hybus version?)";
                    send_to(&s.sock, &error_reply(0, ErrorCode::BadRequest, msg.into()), &[]);
                    self.cut_off(id, crate::ratelog::LogKind::Malformed, msg);
                    return;
                }
                None => 0,
            };
            match control::decode::<control::ClientMessage>(&self.buf[start..n]) {
                Ok(m) => {
                    self.drain_client(id);
                    self.handle_request(id, m, fds)
                }
                Err(e) => {
                    let msg = format!("malformed control message ({n} bytes): {e}");
                    if let Some(s) = self.sessions.get(&id) {
                        let (uid, pid) = (s.creds.uid, s.creds.pid);
                        send_to(&s.sock, &error_reply(0, ErrorCode::BadRequest, msg.clone()), &[]);
                        if self.ratelog.admit(crate::ratelog::LogKind::Malformed, uid, Instant::now()) {
                            tracing::warn!(client = id, uid, pid, "{msg}");
                        }
                    }
                    self.disconnect(id, &msg);
                    return;
                }
            }
        }
    }

    /// Sends `msg` to client `id`, or keeps it in the client's outbox while
    /// its socket is full (see [`Outbox`](crate::session::Outbox)). A
    /// client whose outbox is full too does not read its control socket: it
    /// is disconnected rather than letting it hold us or our memory.
    pub(crate) fn send(&mut self, id: u32, msg: &DaemonMessage, fds: &[std::os::fd::BorrowedFd<'_>]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let bytes = match control::encode(msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(client = id, "cannot encode a control message: {e}");
                // A reply that cannot go is answered with why (a `list` of
                // more services than a message holds): its requester would
                // otherwise wait for it in vain.
                let DaemonMessage::Reply { id: rid, .. } = msg else { return };
                let why = format!("the reply does not fit in a control message: {e}");
                let Some(b) = encoded(&error_reply(*rid, ErrorCode::QuotaExceeded, why)) else { return };
                b
            }
        };
        if s.outbox.is_empty() {
            match s.sock.send(&bytes, fds) {
                Ok(()) => return,
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => {
                    // Gone, or worse; its hang-up is read next anyway.
                    self.disconnect(id, &format!("control socket: {e}"));
                    return;
                }
            }
        }
        if s.outbox.push(bytes.to_vec(), fds).is_err() {
            self.cut_off(id, crate::ratelog::LogKind::Refused, "does not read its control socket");
            return;
        }
        if let Some(d) = s.data.as_mut() {
            d.held |= !fds.is_empty();
        }
        if s.outbox.len() == 1 {
            tracing::debug!(client = id, "its control socket is full: messages wait in its outbox");
            self.outboxed.push(id);
            self.watch_for_room(id);
        }
    }

    /// Asks the poller to say when client `id`'s control socket has room.
    ///
    /// Why not a timer: a client that stops reading (stopped, or stuck)
    /// would wake an idle daemon every millisecond for as long as it lives.
    fn watch_for_room(&mut self, id: u32) {
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        if let Err(e) = self.poller.notify_writable(s.sock.fd(), WRITABLE | id as u64) {
            tracing::warn!(client = id, "cannot watch a full control socket: {e}; retrying every millisecond");
            self.outbox_tick = true;
        }
    }

    /// Sends what waits in client `id`'s outbox, as far as its socket takes
    /// it now; if all went, the descriptors that waited behind it go to its
    /// ring at the next flush. Watches the socket again if some is left.
    pub(crate) fn flush_outbox(&mut self, id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.outbox.is_empty() {
            return; // a late report: flushed when the client spoke
        }
        let flushed = s.outbox.flush(&s.sock);
        if let Some(d) = s.data.as_mut().filter(|d| d.held && !s.outbox.carries_descriptors()) {
            d.held = false;
            if !d.listed {
                d.listed = true;
                self.touched.push(id);
            }
        }
        match flushed {
            Ok(true) => self.outboxed.retain(|&o| o != id),
            Ok(false) => {
                if !self.outbox_tick {
                    self.watch_for_room(id);
                }
            }
            Err(e) => self.disconnect(id, &format!("control socket: {e}")),
        }
    }

    /// Disconnects a client for something it did, saying so in the log at
    /// WARN, rate-limited per uid ([`crate::ratelog`]): the client decides
    /// how often this happens.
    pub(crate) fn cut_off(&mut self, id: u32, kind: crate::ratelog::LogKind, why: &str) {
        if let Some(s) = self.sessions.get(&id) {
            let (uid, pid) = (s.creds.uid, s.creds.pid);
            if self.ratelog.admit(kind, uid, Instant::now()) {
                tracing::warn!(client = id, uid, pid, "cut off: {why}");
            }
        }
        self.disconnect(id, why);
    }

    /// Removes a client and everything it held.
    pub(crate) fn disconnect(&mut self, id: u32, why: &str) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        // DEBUG: a peer decides how often this happens (a connect/close
        // flood wrote one INFO line per connection).
        tracing::debug!(client = id, pid = s.creds.pid, uid = s.creds.uid, label = %s.label, "disconnected: {why}");
        self.poller.remove(s.sock.fd());
        if let Some(d) = &s.data {
            self.poller.remove(d.tx_bell.fd());
        }
        let counted = if s.data.is_some() { &mut self.uid_connections } else { &mut self.uid_pre_hello };
        if let Some(c) = counted.get_mut(&s.creds.uid) {
            *c = c.saturating_sub(1);
        }
        self.active.retain(|&a| a != id);
        if !s.outbox.is_empty() {
            self.outboxed.retain(|&o| o != id);
        }
        if s.monitor.is_some() {
            self.monitors -= 1;
        }
        for route in &s.subscriptions {
            if let Some(r) = self.registry.route_mut(*route) {
                r.subscribers.retain(|&c| c != id);
            }
        }
        for inst in self.registry.instances_of(id) {
            self.remove_instance(inst);
        }
        self.fail_exchanges_of(id);
        self.activation_forget_client(id);
        for chunk in self.chunks.drop_holder(id) {
            self.return_chunk(chunk);
        }
        self.chunks.drop_pool(id);
        self.holds.drop_holder(id);
        self.holds.drop_pool(id);
        self.close_channels_of(id);
        self.retire_views_of(id);
        if s.spins {
            self.recount_spinners(None);
        }
        // Dropping `s` closes its socket and unmaps its segments.
    }

    /// Tells every client that maps pool `pool` that its owner is gone, so
    /// that it can unmap the view (a client that came and went must not
    /// leave a mapping and a descriptor in every service it called).
    fn retire_views_of(&mut self, pool: u32) {
        let mut viewers = Vec::new();
        for (&id, s) in self.sessions.iter_mut() {
            if let Some(d) = s.data.as_mut() {
                if d.views.remove(&pool) {
                    d.gone_views.push(pool);
                    viewers.push(id);
                }
            }
        }
        for id in viewers {
            self.tell_pools_gone(id);
        }
    }

    /// Sends client `id` an [`Event::PoolGone`] for each pool of its
    /// `gone_views`, as many as its control socket takes now, once its
    /// queue is on its ring (so that every descriptor referring to those
    /// pools is there before it hears that they are gone).
    ///
    /// They only let it unmap what it no longer needs, so unlike a reply they
    /// never cut off a client whose socket is full (one busy elsewhere while
    /// many of its callers came and went), nor fill it: they go while less
    /// than 16 KiB of what we sent is unread. What waits goes at the
    /// client's next request ([`handle_request`](Self::handle_request)) or
    /// flush ([`flush_clients`](Self::flush_clients)).
    pub(crate) fn tell_pools_gone(&mut self, id: u32) {
        /// Unread bytes in a client's socket beyond which hints wait: the
        /// room is kept for replies and pool views, which must get through.
        const HINT_ROOM: usize = 16 * 1024;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if !s.outbox.is_empty() {
            return;
        }
        let Some(d) = s.data.as_mut().filter(|d| d.queue.is_empty()) else {
            return;
        };
        while let Some(&pool) = d.gone_views.last() {
            if !s.sock.unread_by_peer().is_ok_and(|n| n < HINT_ROOM)
                || !send_to(&s.sock, &DaemonMessage::Event(Event::PoolGone { pool }), &[])
            {
                break;
            }
            d.gone_views.pop();
        }
    }

    /// Removes an instance and tells watchers.
    pub(crate) fn remove_instance(&mut self, inst: u32) {
        let Some(i) = self.registry.unregister(inst) else {
            return;
        };
        let name = self.registry.route(i.route).map(|r| r.name.clone()).unwrap_or_default();
        let pid = self.sessions.get(&i.client).map_or(0, |s| s.creds.pid);
        self.fail_exchanges_served_by(inst);
        self.close_channels_no_longer_served(i.client, i.route, "the instance unregistered");
        self.broadcast_watch(&name, Event::ServiceDown { name: name.clone(), route: i.route, instance: inst, pid });
    }

    /// One exchange of `instance` is over (answered, cancelled, failed).
    pub(crate) fn one_less(&mut self, instance: u32) {
        if let Some(i) = self.registry.instance_mut(instance) {
            i.outstanding = i.outstanding.saturating_sub(1);
            if i.draining && i.outstanding == 0 {
                self.tell_if_drained(instance);
            }
        }
    }

    /// Tells the owner of `instance`, once, that it drained: it is
    /// draining and nothing is in flight to it (its serving loop may end).
    pub(crate) fn tell_if_drained(&mut self, instance: u32) {
        let Some(i) = self.registry.instance_mut(instance) else {
            return;
        };
        if !i.draining || i.outstanding != 0 || i.told_drained {
            return;
        }
        i.told_drained = true;
        let client = i.client;
        self.send(client, &DaemonMessage::Event(Event::Drained { instance }), &[]);
    }

    pub(crate) fn broadcast_watch(&mut self, name: &str, ev: Event) {
        let targets: Vec<u32> = self
            .sessions
            .values()
            .filter(|s| s.watches.iter().any(|p| name.starts_with(p.as_str())))
            .map(|s| s.id)
            .collect();
        let msg = DaemonMessage::Event(ev);
        for t in targets {
            self.send(t, &msg, &[]);
        }
    }
}

/// Encodes and sends; returns false if the peer's buffer is full or the socket is gone.
pub(crate) fn send_to(sock: &ControlSocket, msg: &DaemonMessage, fds: &[std::os::fd::BorrowedFd<'_>]) -> bool {
    encoded(msg).is_none_or(|bytes| sock.send(&bytes, fds).is_ok())
}

/// `msg` encoded; `None` (logged: our own message is too large) if it cannot be.
fn encoded(msg: &DaemonMessage) -> Option<rkyv::util::AlignedVec> {
    control::encode(msg).map_err(|e| tracing::error!("cannot encode a control message: {e}")).ok()
}

pub(crate) fn error_reply(id: u64, code: ErrorCode, message: String) -> DaemonMessage {
    DaemonMessage::Reply { id, result: Err(ErrorReply { code, message }) }
}
