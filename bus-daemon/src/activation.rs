//! On-demand activation: the `[[activate]]` names of the config.
//!
//! A resolve or a request for such a name while no instance serves it
//! starts its process, once however many callers arrive together, and holds
//! their requests (at most `max_held`) until an instance registers; they
//! then go on in arrival order through the router, as if they had just
//! arrived. A process that exits before it registers, or does not register
//! within `timeout_ms`, fails every held request with
//! [`DataError::ActivationFailed`] and a short reason in the descriptor's
//! inline payload (`exited with status 3`); the next start then waits a
//! back-off that doubles with each failure in a row.
//!
//! Processes are started directly (no shell) with `HYBUS_SOCKET` set,
//! stdin on `/dev/null`, stdout and stderr inherited, and reaped through a
//! pidfd the event loop watches, so the daemon never blocks on a child and
//! never polls for one. `unit = ` runs `systemctl start --no-block UNIT`
//! instead and waits for the registration the same way.
//!
//! Scale to zero: with `stop_when_idle_s = N`, an instance the daemon
//! started that got no request for N seconds is marked draining (no new
//! requests) and sent [`Event::DrainAsked`]; it answers what it has and
//! exits. A request that comes meanwhile is held and starts the process
//! again: nothing is lost.
//!
//! Policy is the usual one: only declared names are activated; a resolve
//! or a request is checked for the call permission before it can start
//! anything, and the started process registers only what its uid may own.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use hybus_layout::control::{ActivationInfo, DaemonMessage, DataError, ErrorCode, Event};
use hybus_layout::descriptor::INLINE_CAPACITY;
use hybus_layout::{ChunkRef, Descriptor, Kind};

use crate::config::{Activate, Config};
use crate::daemon::Daemon;

/// Poller token of a started process's pidfd (the low 32 bits: its slot).
pub(crate) const CHILD_TOKEN: u64 = 4 << 32;

/// How often an idle check runs while activated instances may be stopped.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Every activatable name and what its activation is doing.
#[derive(Debug, Default)]
pub struct Activations {
    entries: Vec<Entry>,
    next_slot: u32,
    /// When [`Daemon::activation_tick`] must run next (a registration
    /// deadline, the end of a back-off, an idle check); `None`: never.
    pub(crate) due: Option<Instant>,
}

/// One `[[activate]]` name.
#[derive(Debug)]
struct Entry {
    spec: Activate,
    /// Still in the config: false once a reload dropped it (it then starts
    /// nothing, and goes once its processes are gone).
    declared: bool,
    /// `(uid, gid)` to run `exec` as, from `user`.
    run_as: Option<(u32, u32)>,
    /// Processes started for it that have not been reaped yet.
    procs: Vec<Proc>,
    /// The start in progress: since when, until when it may take to
    /// register, and the pid (none for a unit).
    starting: Option<Starting>,
    /// Requests and fires waiting for an instance, in arrival order.
    held: VecDeque<Held>,
    /// A start is wanted once the back-off is over.
    start_wanted: bool,
    /// No start before this (back-off after a failure).
    not_before: Option<Instant>,
    failures: u32,
    backoff: Duration,
    last_exit: String,
    last_error: String,
    activations: u64,
    activation_failures: u64,
    idle_stops: u64,
    /// Instances watched for idleness: (instance, messages seen, since when unchanged).
    idle: Vec<(u32, u64, Instant)>,
}

#[derive(Debug, Clone, Copy)]
struct Starting {
    deadline: Instant,
    pid: Option<i32>,
}

/// A process the daemon started and has not reaped.
#[derive(Debug)]
struct Proc {
    slot: u32,
    child: Child,
    pidfd: OwnedFd,
    /// `systemctl start`, not the service itself.
    systemctl: bool,
    /// When its instance was asked to drain for being idle.
    drain_asked: Option<Instant>,
    /// It was sent SIGTERM: asked to drain, it answered what it had and
    /// still did not exit within `timeout_ms`.
    termed: bool,
}

/// A request or fire held for an instance to come.
#[derive(Debug, Clone, Copy)]
struct Held {
    from: u32,
    d: Descriptor,
}

/// `reason`, cut to what fits inline in a descriptor (at a char boundary).
fn inline_reason(reason: &str) -> &str {
    let mut end = reason.len().min(INLINE_CAPACITY);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl Activations {
    /// The activatable names of `config`; fails if a `user` is unknown, or
    /// given while hybusd does not run as root.
    pub fn new(config: &Config) -> anyhow::Result<Activations> {
        let root = nix::unistd::geteuid().is_root();
        let me = nix::unistd::geteuid().as_raw();
        let mut entries = Vec::with_capacity(config.activate.len());
        for spec in &config.activate {
            let run_as = match &spec.user {
                None => None,
                Some(u) => {
                    let (uid, gid) = crate::launch::lookup_user(u)
                        .map_err(|e| anyhow::anyhow!("[[activate]] {:?}: {e}", spec.name))?;
                    anyhow::ensure!(
                        root || uid == me,
                        "[[activate]] {:?}: user = {u:?} needs hybusd to run as root (it runs as uid {me})",
                        spec.name
                    );
                    (uid != me).then_some((uid, gid))
                }
            };
            entries.push(Entry {
                spec: spec.clone(),
                declared: true,
                run_as,
                procs: Vec::new(),
                starting: None,
                held: VecDeque::new(),
                start_wanted: false,
                not_before: None,
                failures: 0,
                backoff: Duration::ZERO,
                last_exit: String::new(),
                last_error: String::new(),
                activations: 0,
                activation_failures: 0,
                idle_stops: 0,
                idle: Vec::new(),
            });
        }
        Ok(Activations { entries, next_slot: 0, due: None })
    }

    /// Takes the declarations of a reloaded config: entries whose
    /// declaration stays keep their processes, held requests and counters
    /// (with the new settings); dropped ones keep only what is in flight
    /// until it ends. New ones start empty.
    pub fn reload(&mut self, config: &Config) -> anyhow::Result<()> {
        let fresh = Activations::new(config)?;
        for e in fresh.entries {
            if let Some(old) = self.entries.iter_mut().find(|o| o.spec.name == e.spec.name) {
                old.spec = e.spec;
                old.run_as = e.run_as;
                old.declared = true;
                continue;
            }
            self.entries.push(e);
        }
        // An entry no longer declared starts nothing more, and goes once
        // nothing of it is left (its processes are reaped, what it held
        // goes on when they register or fails when they exit).
        for e in &mut self.entries {
            e.declared = config.activate.iter().any(|a| a.name == e.spec.name);
        }
        self.entries.retain(|e| e.declared || !e.procs.is_empty() || !e.held.is_empty());
        Ok(())
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.name == name)
    }

    /// The entry of `name` if the config declares it now.
    fn declared(&self, name: &str) -> Option<usize> {
        self.index(name).filter(|&i| self.entries[i].declared)
    }

    /// Whether `name` is declared activatable.
    pub fn declares(&self, name: &str) -> bool {
        self.declared(name).is_some()
    }
}

impl Daemon {
    /// The socket a started process connects to.
    fn bus_socket(&self) -> Option<PathBuf> {
        if let Some(p) = &self.socket_path {
            return Some(p.clone());
        }
        let addr: nix::sys::socket::UnixAddr =
            nix::sys::socket::getsockname(std::os::fd::AsRawFd::as_raw_fd(&self.listener)).ok()?;
        addr.path().map(|p| p.to_path_buf())
    }

    /// Resolve of `name` by client `id` (its call permission already
    /// checked) found no instance: if `name` is activatable, its route (made
    /// if new), and a start if none is under way.
    pub(crate) fn activate_on_resolve(&mut self, id: u32, name: &str) -> Option<Result<u32, (ErrorCode, String)>> {
        let idx = self.activations.declared(name)?;
        let route = match self.route_for(id, name) {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        self.want_instance(idx);
        Some(Ok(route))
    }

    /// A request or fire `d` from client `from` found no instance to take
    /// it. If its name is activatable, holds it (starting the process if
    /// needed) and returns true; a full hold queue answers "queue full".
    /// `false`: not activatable, the caller answers "no instance".
    pub(crate) fn activation_hold(&mut self, from: u32, d: Descriptor, chunk: Option<ChunkRef>) -> bool {
        if self.activations.entries.is_empty() {
            return false;
        }
        let Some(idx) = self.registry.route(d.route).and_then(|r| self.activations.declared(&r.name)) else {
            return false;
        };
        let e = &mut self.activations.entries[idx];
        if e.held.len() >= e.spec.max_held as usize {
            tracing::debug!(client = from, name = %e.spec.name, "activation: hold queue full");
            if let Some(c) = chunk {
                self.return_chunk(c);
            }
            let err = Descriptor::new(Kind::Error, d.route, d.correlation).with_aux(DataError::QueueFull as u64);
            self.deliver_raw(from, err);
            return true;
        }
        e.held.push_back(Held { from, d });
        self.want_instance(idx);
        true
    }

    /// The caller cancelled (its deadline passed) request `corr`: if it is
    /// held, it is dropped, its chunk goes back, and true is returned.
    pub(crate) fn activation_cancel(&mut self, from: u32, corr: u64) -> bool {
        for e in &mut self.activations.entries {
            let opens = |h: &Held| {
                h.from == from
                    && h.d.correlation == corr
                    && (h.d.kind == Kind::Request as u8 || h.d.kind == Kind::StreamOpen as u8)
            };
            if let Some(pos) = e.held.iter().position(opens) {
                let h = e.held.remove(pos);
                if let Some(c) = h.and_then(|h| h.d.chunk()) {
                    self.return_chunk(c);
                }
                return true;
            }
        }
        false
    }

    /// Client `id` is gone: what it had held is forgotten (its chunks went with its pool).
    pub(crate) fn activation_forget_client(&mut self, id: u32) {
        for e in &mut self.activations.entries {
            if !e.held.is_empty() {
                e.held.retain(|h| h.from != id);
            }
        }
    }

    /// An instance of `name` registered: a start under way is done, and
    /// the held requests go on, in arrival order.
    pub(crate) fn activation_registered(&mut self, name: &str, pid: i32) {
        let Some(idx) = self.activations.index(name) else {
            return;
        };
        let e = &mut self.activations.entries[idx];
        if let Some(s) = e.starting.take() {
            let ours = s.pid.is_none_or(|p| p == pid);
            tracing::info!(name, pid, ours, "activation: registered");
            e.failures = 0;
            e.backoff = Duration::ZERO;
            e.not_before = None;
        }
        e.start_wanted = false;
        let held: Vec<Held> = e.held.drain(..).collect();
        for h in held {
            if !self.sessions.contains_key(&h.from) {
                continue;
            }
            if let Err(v) = self.route_descriptor(h.from, h.d) {
                self.violation(h.from, &v);
            }
        }
        self.reschedule_activations();
    }

    /// Starts entry `idx`'s process unless a start is under way, or marks
    /// it wanted for when its back-off ends.
    fn want_instance(&mut self, idx: usize) {
        let e = &mut self.activations.entries[idx];
        if e.starting.is_some() {
            return;
        }
        if e.not_before.is_some_and(|t| t > Instant::now()) {
            if !e.start_wanted {
                tracing::info!(name = %e.spec.name, backoff_ms = e.backoff.as_millis() as u64, "activation: waiting out the back-off");
            }
            e.start_wanted = true;
            self.reschedule_activations();
            return;
        }
        self.start(idx);
        self.reschedule_activations();
    }

    /// Starts entry `idx`'s process (or asks systemd to).
    fn start(&mut self, idx: usize) {
        let socket = self.bus_socket();
        let e = &mut self.activations.entries[idx];
        e.start_wanted = false;
        let crate::launch::Launch { mut command, systemctl, what } =
            crate::launch::command(&e.spec, e.run_as, socket.as_deref());
        let now = Instant::now();
        e.activations += 1;
        let child = match command.spawn() {
            Ok(c) => c,
            Err(err) => {
                // The whole story for the log and `hybusctl status`; the
                // gist for the callers (what fits in a descriptor).
                let desc = crate::launch::spawn_error(&err);
                let why = format!("cannot start {what}: {desc}");
                self.activation_failed_as(idx, &why, &format!("cannot exec: {desc}"));
                return;
            }
        };
        let pid = child.id() as i32;
        // The child is ours and not reaped: its pid cannot be reused before
        // we wait for it, so the pidfd names it.
        let Some(pidfd) = crate::direct::pidfd_open(pid) else {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            self.activation_failed(idx, "cannot watch it: pidfd_open failed");
            return;
        };
        self.activations.next_slot = self.activations.next_slot.wrapping_add(1);
        let slot = self.activations.next_slot;
        if let Err(err) = self.poller.add(pidfd.as_fd(), CHILD_TOKEN | slot as u64) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            self.activation_failed(idx, &format!("cannot watch the process: {}", err.desc()));
            return;
        }
        let e = &mut self.activations.entries[idx];
        let deadline = now + Duration::from_millis(e.spec.timeout_ms);
        e.starting = Some(Starting { deadline, pid: (!systemctl).then_some(pid) });
        e.procs.push(Proc { slot, child, pidfd, systemctl, drain_asked: None, termed: false });
        tracing::info!(name = %e.spec.name, pid, command = %what, held = e.held.len(), "activation: started");
    }

    /// The start of entry `idx` failed: every held request fails with
    /// `why`, and the next start waits a doubled back-off.
    fn activation_failed(&mut self, idx: usize, why: &str) {
        self.activation_failed_as(idx, why, why);
    }

    /// [`activation_failed`](Self::activation_failed), telling the callers
    /// `short` (cut to what fits inline in a descriptor) where `why` is longer.
    fn activation_failed_as(&mut self, idx: usize, why: &str, short: &str) {
        let e = &mut self.activations.entries[idx];
        e.starting = None;
        e.failures = e.failures.saturating_add(1);
        e.activation_failures += 1;
        let base = Duration::from_millis(e.spec.backoff_ms);
        let max = Duration::from_millis(e.spec.max_backoff_ms);
        e.backoff = base.saturating_mul(1u32 << (e.failures - 1).min(20)).min(max);
        e.not_before = Some(Instant::now() + e.backoff);
        e.last_error = why.to_owned();
        tracing::warn!(
            name = %e.spec.name,
            failures = e.failures,
            backoff_ms = e.backoff.as_millis() as u64,
            held = e.held.len(),
            "activation of {} failed: {why}; the next start waits {} ms",
            e.spec.name,
            e.backoff.as_millis()
        );
        let held: Vec<Held> = e.held.drain(..).collect();
        let reason = inline_reason(short).to_owned();
        for h in held {
            if !self.sessions.contains_key(&h.from) {
                continue;
            }
            if let Some(c) = h.d.chunk() {
                self.return_chunk(c);
            }
            let err = Descriptor::new(Kind::Error, h.d.route, h.d.correlation)
                .with_aux(DataError::ActivationFailed as u64)
                .with_inline(reason.as_bytes())
                .unwrap_or_else(|| Descriptor::new(Kind::Error, h.d.route, h.d.correlation));
            self.deliver_raw(h.from, err);
        }
        self.reschedule_activations();
    }

    /// The pidfd of slot `slot` is readable: its process ended. Reaps it.
    pub(crate) fn activation_child(&mut self, slot: u32) {
        let Some((idx, pos)) = self
            .activations
            .entries
            .iter()
            .enumerate()
            .find_map(|(i, e)| e.procs.iter().position(|p| p.slot == slot).map(|p| (i, p)))
        else {
            return;
        };
        let status = match self.activations.entries[idx].procs[pos].child.try_wait() {
            Ok(Some(s)) => s,
            Ok(None) => return, // not yet (a pidfd is readable only once it ended)
            Err(err) => {
                tracing::warn!("activation: cannot reap a started process: {err}");
                return;
            }
        };
        let p = self.activations.entries[idx].procs.swap_remove(pos);
        self.poller.remove(p.pidfd.as_fd());
        let pid = p.child.id() as i32;
        let how = crate::launch::describe(status);
        let e = &mut self.activations.entries[idx];
        let name = e.spec.name.clone();
        if p.systemctl {
            if !status.success() && e.starting.is_some() {
                let why = format!("systemctl {how}");
                self.activation_failed(idx, &why);
            }
            return;
        }
        e.last_exit = how.clone();
        let was_starting = e.starting.is_some_and(|s| s.pid == Some(pid));
        if was_starting {
            self.activation_failed(idx, &how);
        } else {
            tracing::info!(name = %name, pid, "activated process {how}");
            let e = &mut self.activations.entries[idx];
            if !e.held.is_empty() && e.starting.is_none() {
                if e.declared {
                    // Held while it drained, and it is gone: start again.
                    self.want_instance(idx);
                } else {
                    self.activation_failed(idx, "no longer activatable (config reloaded)");
                }
            }
        }
        self.reschedule_activations();
    }

    /// Runs what is due: registration deadlines, ends of back-off, idle checks.
    pub(crate) fn activation_tick(&mut self) {
        let now = Instant::now();
        for idx in 0..self.activations.entries.len() {
            let e = &mut self.activations.entries[idx];
            if let Some(s) = e.starting.filter(|s| s.deadline <= now) {
                let why = format!("did not register in {} ms", e.spec.timeout_ms);
                if let Some(pid) = s.pid {
                    // Killed, reaped through its pidfd like any other exit.
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                self.activation_failed(idx, &why);
                continue;
            }
            let e = &mut self.activations.entries[idx];
            if e.start_wanted && e.declared && e.not_before.is_none_or(|t| t <= now) {
                self.start(idx);
                continue;
            }
            self.check_idle(idx, now);
        }
        self.reschedule_activations();
    }

    /// Asks the instances entry `idx` started to drain once they had no
    /// request for `stop_when_idle_s`.
    fn check_idle(&mut self, idx: usize, now: Instant) {
        let e = &self.activations.entries[idx];
        let idle_for = Duration::from_secs(e.spec.stop_when_idle_s);
        if idle_for.is_zero() || e.procs.is_empty() {
            return;
        }
        let Some(route) = self.registry.lookup(&e.spec.name) else {
            return;
        };
        self.terminate_lingering(idx, route, now);
        let e = &self.activations.entries[idx];
        let pids: Vec<i32> = e.procs.iter().filter(|p| !p.systemctl).map(|p| p.child.id() as i32).collect();
        let instances = self.registry.route(route).map(|r| r.instances.clone()).unwrap_or_default();
        let mut watched = Vec::new();
        let mut drain = Vec::new();
        for inst in instances {
            let Some(i) = self.registry.instance(inst) else { continue };
            if i.draining {
                continue;
            }
            let Some(pid) = self.sessions.get(&i.client).map(|s| s.creds.pid) else { continue };
            if !pids.contains(&pid) {
                continue; // not started by us
            }
            // Calls over its direct channels count too: the daemon does not
            // carry them, the channel's own counters do.
            let (mut seen, mut busy) = (i.stats.messages_in, i.outstanding > 0);
            for c in self.channels.values().filter(|c| c.b == i.client && c.route == route) {
                let k = c.segment.channel_counters();
                let (a, b) = (k.a.read(), k.b.read());
                seen = seen.wrapping_add(a.messages);
                busy |= a.in_flight > 0 || b.in_flight > 0;
            }
            let e = &self.activations.entries[idx];
            let since = match e.idle.iter().find(|w| w.0 == inst) {
                Some(&(_, s, t)) if s == seen && !busy => t,
                _ => now,
            };
            if now.duration_since(since) >= idle_for {
                drain.push((inst, i.client, pid));
            } else {
                watched.push((inst, seen, since));
            }
        }
        self.activations.entries[idx].idle = watched;
        for (inst, client, pid) in drain {
            let e = &mut self.activations.entries[idx];
            e.idle_stops += 1;
            if let Some(p) = e.procs.iter_mut().find(|p| p.child.id() as i32 == pid) {
                p.drain_asked = Some(now);
            }
            let reason = format!("no request for {} s (stop_when_idle_s)", e.spec.stop_when_idle_s);
            tracing::info!(name = %e.spec.name, instance = inst, "activation: asking an idle instance to drain and exit");
            if let Some(i) = self.registry.instance_mut(inst) {
                i.draining = true;
            }
            self.close_channels_no_longer_served(client, route, "the instance drains (idle)");
            self.send(client, &DaemonMessage::Event(Event::DrainAsked { instance: inst, reason }), &[]);
        }
    }

    /// Sends SIGTERM to the processes of entry `idx` that were asked to
    /// drain, have nothing in flight, and still live `timeout_ms` later: a
    /// service that ignores [`Event::DrainAsked`] is stopped the way a
    /// service manager would stop it.
    fn terminate_lingering(&mut self, idx: usize, route: u32, now: Instant) {
        let grace = Duration::from_millis(self.activations.entries[idx].spec.timeout_ms);
        let late: Vec<i32> = self.activations.entries[idx]
            .procs
            .iter()
            .filter(|p| !p.termed && p.drain_asked.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|p| p.child.id() as i32)
            .collect();
        for pid in late {
            let busy = self.registry.route(route).is_some_and(|r| {
                r.instances
                    .iter()
                    .filter_map(|&i| self.registry.instance(i))
                    .any(|i| i.outstanding > 0 && self.sessions.get(&i.client).is_some_and(|s| s.creds.pid == pid))
            });
            if busy {
                continue;
            }
            let e = &mut self.activations.entries[idx];
            tracing::info!(name = %e.spec.name, pid, "activation: asked to drain, it did not exit: SIGTERM");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            if let Some(p) = e.procs.iter_mut().find(|p| p.child.id() as i32 == pid) {
                p.termed = true;
            }
        }
    }

    /// Recomputes when [`activation_tick`](Self::activation_tick) must run.
    fn reschedule_activations(&mut self) {
        let mut due: Option<Instant> = None;
        let mut bound = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        let now = Instant::now();
        for e in &self.activations.entries {
            if let Some(s) = e.starting {
                bound(s.deadline);
            }
            if e.start_wanted {
                bound(e.not_before.unwrap_or(now));
            }
            if e.spec.stop_when_idle_s > 0 && e.procs.iter().any(|p| !p.systemctl) {
                bound(now + IDLE_CHECK);
            }
        }
        self.activations.due = due;
    }

    /// How long the loop may sleep for the activations' sake.
    pub(crate) fn activation_sleep(&self) -> Option<Duration> {
        self.activations.due.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The state of every activatable name.
    pub(crate) fn activation_infos(&self) -> Vec<ActivationInfo> {
        let now = Instant::now();
        self.activations
            .entries
            .iter()
            .filter(|e| e.declared)
            .map(|e| {
                let live = self
                    .registry
                    .lookup(&e.spec.name)
                    .and_then(|r| self.registry.route(r))
                    .is_some_and(|r| !r.instances.is_empty());
                let backoff_left = e.not_before.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
                let state = if e.starting.is_some() {
                    "starting"
                } else if live && !e.procs.is_empty() {
                    "running"
                } else if !backoff_left.is_zero() {
                    "back-off"
                } else {
                    "inactive"
                };
                let pid = e.procs.iter().filter(|p| !p.systemctl).map(|p| p.child.id() as i32).next_back().unwrap_or(0);
                let command = match &e.spec.unit {
                    Some(u) => format!("unit {u}"),
                    None => e.spec.exec.join(" "),
                };
                ActivationInfo {
                    name: e.spec.name.clone(),
                    state: state.to_owned(),
                    command,
                    pid,
                    last_exit: e.last_exit.clone(),
                    last_error: e.last_error.clone(),
                    failures: e.failures,
                    backoff_ms: e.backoff.as_millis() as u64,
                    backoff_left_ms: backoff_left.as_millis() as u64,
                    activations: e.activations,
                    activation_failures: e.activation_failures,
                    idle_stops: e.idle_stops,
                    held: e.held.len() as u32,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_inline() {
        assert_eq!(inline_reason("exited with status 3"), "exited with status 3");
        let long = "did not register in 5000 ms and then some more words";
        assert_eq!(inline_reason(long).len(), INLINE_CAPACITY);
        assert!(inline_reason("ééééééééééééééééééééééééééé").len() <= INLINE_CAPACITY);
    }

    #[test]
    fn users_need_root() {
        let c = Config::parse("[[activate]]\nname = \"a\"\nexec = [\"x\"]\nuser = \"no-such-user-here\"\n").unwrap();
        assert!(Activations::new(&c).is_err());
        let me = nix::unistd::geteuid().as_raw();
        let c = Config::parse(&format!("[[activate]]\nname = \"a\"\nexec = [\"x\"]\nuser = \"{me}\"\n")).unwrap();
        assert!(Activations::new(&c).unwrap().declares("a"));
    }
}
