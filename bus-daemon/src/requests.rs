//! The control plane: what the daemon does for each [`Request`].

use std::sync::Arc;

use hybus_layout::control::{
    self, ClientMessage, DaemonMessage, DaemonStatus, ErrorCode, Event, InstanceInfo, InstanceStats, Remote, Reply,
    Request, ServiceInfo, StatsReport, Welcome,
};
use hybus_layout::header::{SegmentKind, HEADER_REGION, LAYOUT_HASH};
use hybus_layout::ring;
use hybus_os::segment::{EventFd, Segment};

use crate::config::{Action, Who};
use crate::daemon::{error_reply, Daemon, DOORBELL_TOKEN};
use crate::registry::{Claim, RegisterError};
use crate::router::Violation;
use crate::session::DataPlane;

type Answer = Result<Reply, (ErrorCode, String)>;

/// Most prefixes one connection may watch (`Bus::watch`).
const MAX_WATCHES: usize = 64;

/// Most live direct channels one client may ask for or adopt.
const MAX_CHANNELS_PER_CLIENT: usize = 256;

fn bad(msg: impl Into<String>) -> (ErrorCode, String) {
    (ErrorCode::BadRequest, msg.into())
}

impl Daemon {
    /// Handles one control request from client `id`.
    pub(crate) fn handle_request(&mut self, id: u32, m: ClientMessage, fds: Vec<std::os::fd::OwnedFd>) {
        let hello_done = self.sessions.get(&id).is_some_and(|s| s.data.is_some());
        // A client that speaks reads its socket again: what did not fit before goes now.
        self.flush_outbox(id);
        self.tell_pools_gone(id);
        let answer = match m.request {
            Request::Hello { version, layout_hash, label, reuse_pool } => {
                if hello_done {
                    Err(bad("Hello sent twice"))
                } else {
                    let pool = if reuse_pool { fds.into_iter().next() } else { None };
                    match self.hello(id, m.id, version, layout_hash, label, pool) {
                        Ok(()) => return,
                        Err((code, msg)) => {
                            self.send(id, &error_reply(m.id, code, msg.clone()), &[]);
                            self.cut_off(id, crate::ratelog::LogKind::Refused, &format!("Hello refused: {msg}"));
                            return;
                        }
                    }
                }
            }
            _ if !hello_done => {
                let msg = "the first message must be Hello".to_string();
                self.send(id, &error_reply(m.id, ErrorCode::BadRequest, msg.clone()), &[]);
                self.cut_off(id, crate::ratelog::LogKind::Malformed, &msg);
                return;
            }
            Request::Register { name, version, weight, exclusive, replace } => {
                self.register(id, &name, version, weight, Claim { exclusive, replace }, None)
            }
            Request::RegisterRemote { name, version, weight, remote } => {
                self.register(id, &name, version, weight, Claim::default(), Some(remote))
            }
            Request::Unregister { instance } => self.owned_instance(id, instance).map(|_| {
                self.remove_instance(instance);
                Reply::Done
            }),
            Request::Drain { instance } => self.owned_instance(id, instance).map(|_| {
                if let Some(i) = self.registry.instance_mut(instance) {
                    i.draining = true;
                    let route = i.route;
                    self.close_channels_no_longer_served(id, route, "the instance drains");
                }
                self.tell_if_drained(instance);
                Reply::Done
            }),
            Request::Resolve { name } => self.resolve(id, &name),
            Request::Topic { name } => self.topic(id, &name),
            Request::List => Ok(Reply::Services(self.list())),
            Request::Idle { spins, yields, park } => {
                Ok(Reply::Crowding(self.set_idle(id, hybus_layout::IdleStrategy { spins, yields, park })))
            }
            Request::ChannelDone { channel } => {
                self.channel_done(id, channel);
                return;
            }
            Request::CorruptPool { pool, why } => {
                self.corrupt_pool_reported(id, pool, &why);
                return;
            }
            Request::Watch { prefix } => {
                // Each watch is matched on every registration and
                // unregistration of anyone: a bounded number, once each.
                let mut refused = None;
                if prefix.len() > control::MAX_NAME {
                    refused =
                        Some((ErrorCode::BadRequest, format!("a watch prefix is at most {} bytes", control::MAX_NAME)));
                } else if let Some(s) = self.sessions.get_mut(&id).filter(|s| !s.watches.contains(&prefix)) {
                    if s.watches.len() >= MAX_WATCHES {
                        refused = Some((
                            ErrorCode::QuotaExceeded,
                            format!("a connection watches at most {MAX_WATCHES} prefixes"),
                        ));
                    } else {
                        s.watches.push(prefix.clone());
                    }
                }
                if let Some((code, message)) = refused {
                    self.send(id, &error_reply(m.id, code, message), &[]);
                    return;
                }
                self.send(id, &DaemonMessage::Reply { id: m.id, result: Ok(Reply::Done) }, &[]);
                // Then the current state, so a watcher needs no separate list.
                for info in self.list() {
                    if !info.name.starts_with(&prefix) {
                        continue;
                    }
                    for i in info.instances {
                        let ev = Event::ServiceUp {
                            name: info.name.clone(),
                            route: info.route,
                            instance: i.instance,
                            pid: i.pid,
                        };
                        self.send(id, &DaemonMessage::Event(ev), &[]);
                    }
                }
                return;
            }
            Request::Subscribe { topic } => self.subscribe(id, &topic),
            Request::Unsubscribe { route } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.subscriptions.retain(|&r| r != route);
                }
                if let Some(r) = self.registry.route_mut(route) {
                    r.subscribers.retain(|&c| c != id);
                }
                Ok(Reply::Done)
            }
            Request::Stats => Ok(Reply::Stats(StatsReport { instances: self.stats(), channels: self.channel_stats() })),
            Request::Direct { route } => {
                let name = self.registry.route(route).map(|r| r.name.clone()).unwrap_or_default();
                self.check(id, Action::Direct, &name)
                    .and_then(|_| self.channel_room(id))
                    .and_then(|_| self.open_channel(id, route, "requested by the caller", true))
                    .map(|channel| Reply::DirectGranted { channel })
            }
            Request::CloseDirect { channel } => match self.channels.get(&channel) {
                Some(c) if c.a == id || c.b == id => {
                    self.close_channel(channel, "closed at one side's request", None);
                    Ok(Reply::Done)
                }
                _ => Err((ErrorCode::NotFound, format!("no channel {channel} of yours"))),
            },
            Request::AdoptChannel { token, side, service, peer_pid } => match fds.into_iter().next() {
                // A caller adopts what it may ask for, a service what it
                // serves (it registers again before it adopts); each
                // channel costs the daemon a mapping and a descriptor.
                Some(fd) => control::check_name(&service)
                    .map_err(bad)
                    .and_then(|_| match side {
                        0 => self.check(id, Action::Direct, &service),
                        _ => self.serves(id, &service),
                    })
                    .and_then(|_| self.channel_room(id))
                    .and_then(|_| self.adopt_channel(id, token, side, &service, peer_pid, fd))
                    .map(|channel| Reply::DirectGranted { channel }),
                None => Err(bad("AdoptChannel needs the channel segment attached")),
            },
            Request::Status => Ok(Reply::Status(self.daemon_status())),
            Request::Activations => Ok(Reply::Activations(self.activation_infos())),
            Request::Monitor { prefix } => self.check(id, Action::Monitor, &prefix).map(|_| {
                if let Some(s) = self.sessions.get_mut(&id) {
                    if s.monitor.replace(prefix).is_none() {
                        self.monitors += 1;
                    }
                }
                Reply::Done
            }),
        };
        let msg = match answer {
            Ok(r) => DaemonMessage::Reply { id: m.id, result: Ok(r) },
            Err((code, message)) => error_reply(m.id, code, message),
        };
        self.send(id, &msg, &[]);
    }

    /// Whether client `id` has an instance of `service` registered.
    fn serves(&self, id: u32, service: &str) -> Result<(), (ErrorCode, String)> {
        let serves =
            self.registry.lookup(service).is_some_and(|route| self.registry.of_client(id, route).next().is_some());
        if serves {
            Ok(())
        } else {
            Err((ErrorCode::AccessDenied, format!("only a client serving {service} may adopt its side of a channel")))
        }
    }

    /// Refused once client `id` is a side of [`MAX_CHANNELS_PER_CLIENT`]
    /// live channels: each holds a segment mapped in the daemon, and a
    /// DirectOpen with four descriptors for the other side.
    fn channel_room(&self, id: u32) -> Result<(), (ErrorCode, String)> {
        let mine = self.channels.values().filter(|c| c.a == id || c.b == id).count();
        if mine >= MAX_CHANNELS_PER_CLIENT {
            return Err((
                ErrorCode::QuotaExceeded,
                format!("a client may be a side of at most {MAX_CHANNELS_PER_CLIENT} direct channels"),
            ));
        }
        Ok(())
    }

    fn check(&self, id: u32, action: Action, name: &str) -> Result<(), (ErrorCode, String)> {
        let who = self.sessions.get(&id).map_or(Who { uid: u32::MAX, gid: u32::MAX }, |s| s.creds.who());
        let uid = who.uid;
        if self.config.policy.allows(who, self.owner, action, name) {
            Ok(())
        } else {
            Err((ErrorCode::AccessDenied, format!("uid {uid} may not {action:?} {name:?}").to_lowercase()))
        }
    }

    fn hello(
        &mut self,
        id: u32,
        req: u64,
        version: u32,
        layout_hash: u64,
        label: String,
        old_pool: Option<std::os::fd::OwnedFd>,
    ) -> Result<(), (ErrorCode, String)> {
        if version != control::PROTOCOL_VERSION || layout_hash != LAYOUT_HASH {
            return Err((
                ErrorCode::VersionMismatch,
                format!(
                    "protocol version mismatch: client speaks {version} (layout {layout_hash:#x}), daemon speaks {} (layout {LAYOUT_HASH:#x})",
                    control::PROTOCOL_VERSION
                ),
            ));
        }
        let os =
            |e: hybus_os::segment::SegmentError| (ErrorCode::QuotaExceeded, format!("cannot create segments: {e}"));
        self.check_pool_quota(id)?;
        let uid = self.sessions.get(&id).map_or(0, |s| s.creds.uid);
        self.check_connection_quota(id, uid)?;
        let cap = self.config.ring_capacity;
        let ring_bytes = ring::memory_size(cap);
        let tx_offset = HEADER_REGION;
        let rx_offset = (tx_offset + ring_bytes).next_multiple_of(4096);
        let size = (rx_offset + ring_bytes).next_multiple_of(4096);
        let rings = Arc::new(Segment::create(c"hybus-rings", SegmentKind::ClientRings, size, cap).map_err(os)?);
        let (_, tx) = rings.init_ring(tx_offset, cap).map_err(os)?;
        let (rx, _) = rings.init_ring(rx_offset, cap).map_err(os)?;
        // A client back after a daemon restart brings its pool: its direct
        // channels' peers map it. Adopt it if it is a sealed pool of our
        // geometry (re-stamped with the new id); otherwise make a new one.
        let size = self.geometry.size() as usize;
        let adopted = old_pool.and_then(|fd| {
            let (seg, _) = Segment::open(fd, hybus_os::segment::Access::ReadWrite, SegmentKind::Pool).ok()?;
            // Only a memfd of our own uid can be made private (mode 0400)
            // again: one the client made itself could be reopened for
            // writing by whoever we hand its read-only views to.
            if let Err(e) = seg.restrict() {
                tracing::warn!(client = id, "not adopting the pool it brought back: {e}");
                return None;
            }
            (seg.len() == size).then(|| {
                seg.header().init(SegmentKind::Pool, size as u64, id as u64);
                seg
            })
        });
        let pool_reused = adopted.is_some();
        let pool = match adopted {
            Some(p) => p,
            None => Segment::create(c"hybus-pool", SegmentKind::Pool, size, id as u64).map_err(os)?,
        };
        let tx_bell = EventFd::new().map_err(os)?;
        let rx_bell = EventFd::new().map_err(os)?;
        let welcome = Welcome {
            version: control::PROTOCOL_VERSION,
            client_id: id,
            ring_capacity: cap,
            tx_offset: tx_offset as u64,
            rx_offset: rx_offset as u64,
            pool_classes: self.geometry.classes().map(|c| (c.chunk_size, c.count)).collect(),
            pool_reused,
        };
        let msg = DaemonMessage::Reply { id: req, result: Ok(Reply::Welcome(welcome)) };
        self.send(id, &msg, &[rings.fd(), pool.fd(), tx_bell.fd(), rx_bell.fd()]);
        if !self.sessions.contains_key(&id) {
            // The Welcome could not be sent and the client is gone already.
            return Ok(());
        }
        if let Err(e) = self.poller.add(tx_bell.fd(), DOORBELL_TOKEN | id as u64) {
            return Err((ErrorCode::QuotaExceeded, format!("cannot watch doorbell: {}", e.desc())));
        }
        if !self.sessions.contains_key(&id) {
            return Ok(());
        }
        self.count_established(uid);
        let Some(s) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        s.label = label;
        s.hello_deadline = None;
        s.data = Some(DataPlane {
            tx,
            rx,
            tx_bell,
            rx_bell,
            _rings: rings,
            pool,
            geometry: self.geometry.clone(),
            queue: Default::default(),
            // The Welcome itself (it carries the rings) may wait in the outbox.
            held: s.outbox.carries_descriptors(),
            views: Default::default(),
            gone_views: Vec::new(),
            dirty: false,
            active: true,
            drops: 0,
            listed: false,
        });
        self.active.push(id);
        tracing::debug!(client = id, "hello: segments handed out");
        Ok(())
    }

    fn owned_instance(&self, id: u32, instance: u32) -> Result<(), (ErrorCode, String)> {
        match self.registry.instance(instance) {
            Some(i) if i.client == id => Ok(()),
            Some(_) => Err((ErrorCode::AccessDenied, format!("instance {instance} is not yours"))),
            None => Err((ErrorCode::NotFound, format!("no instance {instance}"))),
        }
    }

    /// Refuses a pool for client `id` if its uid would then hold more than
    /// `limits.pool_bytes_per_uid` bytes of pools (0: no limit). A pool's
    /// pages cost memory only once written, but its owner may write all of
    /// them: without a bound, one uid's connections could take all of tmpfs.
    fn check_pool_quota(&self, id: u32) -> Result<(), (ErrorCode, String)> {
        let limit = self.config.limits.pool_bytes_per_uid;
        let Some(uid) = self.sessions.get(&id).map(|s| s.creds.uid) else {
            return Err(bad("gone"));
        };
        if limit == 0 {
            return Ok(());
        }
        let held: u64 = self
            .sessions
            .values()
            .filter(|s| s.creds.uid == uid)
            .filter_map(|s| s.data.as_ref())
            .map(|d| d.pool.len() as u64)
            .sum();
        let more = self.geometry.size();
        if held.saturating_add(more) > limit {
            return Err((
                ErrorCode::QuotaExceeded,
                format!(
                    "uid {uid} holds {held} bytes of pools; one more ({more}) passes limits.pool_bytes_per_uid {limit}"
                ),
            ));
        }
        Ok(())
    }

    fn register(
        &mut self,
        id: u32,
        name: &str,
        version: u32,
        weight: u32,
        claim: Claim,
        remote: Option<Remote>,
    ) -> Answer {
        control::check_name(name).map_err(bad)?;
        self.check(id, Action::Own, name)?;
        let Some(s) = self.sessions.get(&id) else {
            return Err(bad("gone"));
        };
        let (uid, pid) = (s.creds.uid, s.creds.pid);
        let owned = self
            .registry
            .instances()
            .filter(|(_, i)| self.sessions.get(&i.client).is_some_and(|s| s.creds.uid == uid))
            .count();
        if owned >= self.config.limits.instances_per_uid as usize {
            return Err((
                ErrorCode::QuotaExceeded,
                format!("uid {uid} already has {owned} instances (limit {})", self.config.limits.instances_per_uid),
            ));
        }
        let registered = self.registry.register_as(name, id, uid, version, weight, claim);
        let (instance, route, drained) = registered.map_err(|e| match e {
            RegisterError::Owned { uid: owner } => {
                (ErrorCode::NameOwned, format!("name {name:?} is already owned by uid {owner}"))
            }
            RegisterError::TooManyNames(limit) => too_many_names(limit),
            RegisterError::HeldExclusively { instance, client } => {
                let pid = self.sessions.get(&client).map_or(0, |s| s.creds.pid);
                (
                    ErrorCode::NameOwned,
                    format!(
                        "name {name:?} is held exclusively by instance {instance} (pid {pid}); \
                         register with replace to take it over"
                    ),
                )
            }
            RegisterError::Served { instances } => (
                ErrorCode::NameOwned,
                format!(
                    "name {name:?} is served by {instances} instance(s): an exclusive registration needs it free \
                     (or replace, to take it over)"
                ),
            ),
        })?;
        let via = remote.as_ref().map(|r| r.via.clone());
        if let Some(i) = self.registry.instance_mut(instance) {
            i.remote = remote;
        }
        let mode = if claim.exclusive { "exclusive" } else { "shared" };
        tracing::info!(client = id, pid, name, instance, route, mode, via = via.as_deref(), replaced = ?drained, "registered");
        for old in drained {
            if let Some(client) = self.registry.instance(old).map(|i| i.client) {
                self.close_channels_no_longer_served(client, route, "the instance was replaced");
            }
            self.tell_if_drained(old);
        }
        self.broadcast_watch(name, Event::ServiceUp { name: name.to_owned(), route, instance, pid });
        // What was held for the name goes on now: the client files requests
        // for an instance it has not heard of yet under its id.
        self.activation_registered(name, pid);
        Ok(Reply::Registered { instance, route })
    }

    fn resolve(&mut self, id: u32, name: &str) -> Answer {
        control::check_name(name).map_err(bad)?;
        self.check(id, Action::Call, name)?;
        let route = self.registry.lookup(name);
        let instances = route.and_then(|r| self.registry.route(r)).map_or(0, |r| r.instances.len() as u32);
        match route {
            Some(route) if instances > 0 => {
                if self.configured_pair(id, name) {
                    if let Err((_, e)) = self.open_channel(id, route, "configured [[direct]] pair", false) {
                        let uid = self.sessions.get(&id).map_or(u32::MAX, |s| s.creds.uid);
                        if self.ratelog.admit(crate::ratelog::LogKind::Refused, uid, std::time::Instant::now()) {
                            tracing::warn!(
                                client = id,
                                service = name,
                                "cannot open the configured direct channel: {e}"
                            );
                        }
                    }
                }
                Ok(Reply::Resolved { route, instances })
            }
            _ => match self.activate_on_resolve(id, name) {
                // Activatable: the route works once the process registers.
                Some(route) => route.map(|route| Reply::Resolved { route, instances: 0 }),
                None => Err((ErrorCode::NotFound, format!("no service named {name:?}"))),
            },
        }
    }

    /// The route of topic `name` to publish on, created if new.
    fn topic(&mut self, id: u32, name: &str) -> Answer {
        control::check_name(name).map_err(bad)?;
        self.check(id, Action::Publish, name)?;
        let route = self.route_for(id, name)?;
        Ok(Reply::Resolved { route, instances: 0 })
    }

    /// [`Registry::route_for`](crate::registry::Registry::route_for) for client `id`, refused with a quota error at a name limit.
    pub(crate) fn route_for(&mut self, id: u32, name: &str) -> Result<u32, (ErrorCode, String)> {
        let uid = self.sessions.get(&id).ok_or_else(|| bad("gone"))?.creds.uid;
        self.registry.route_for(name, uid).map_err(too_many_names)
    }

    fn subscribe(&mut self, id: u32, topic: &str) -> Answer {
        control::check_name(topic).map_err(bad)?;
        self.check(id, Action::Subscribe, topic)?;
        let Some(s) = self.sessions.get(&id) else {
            return Err(bad("gone"));
        };
        let uid = s.creds.uid;
        let subs: usize = self.sessions.values().filter(|s| s.creds.uid == uid).map(|s| s.subscriptions.len()).sum();
        if subs >= self.config.limits.subscriptions_per_uid as usize {
            return Err((ErrorCode::QuotaExceeded, format!("uid {uid} has {subs} subscriptions (limit reached)")));
        }
        let route = self.route_for(id, topic)?;
        if let Some(r) = self.registry.route_mut(route) {
            if !r.subscribers.contains(&id) {
                r.subscribers.push(id);
            }
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.subscriptions.contains(&route) {
                s.subscriptions.push(route);
            }
        }
        Ok(Reply::Subscribed { route })
    }

    fn list(&self) -> Vec<ServiceInfo> {
        let mut out: Vec<ServiceInfo> = self
            .registry
            .routes()
            .filter(|(_, r)| !r.instances.is_empty())
            .map(|(route, r)| ServiceInfo {
                name: r.name.clone(),
                route,
                instances: r
                    .instances
                    .iter()
                    .filter_map(|&iid| {
                        let i = self.registry.instance(iid)?;
                        let s = self.sessions.get(&i.client)?;
                        Some(InstanceInfo {
                            instance: iid,
                            uid: s.creds.uid,
                            pid: s.creds.pid,
                            client_id: i.client,
                            version: i.version,
                            weight: i.weight,
                            draining: i.draining,
                            exclusive: i.exclusive,
                            remote: i.remote.clone(),
                        })
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn daemon_status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id() as i32,
            uptime_s: self.started.elapsed().as_secs(),
            backend: self.backend().to_owned(),
            clients: self.sessions.len() as u32,
            services: self.registry.routes().filter(|(_, r)| !r.instances.is_empty()).count() as u32,
            instances: self.registry.instances().count() as u32,
            exchanges: self.exchanges.len() as u64,
            chunks_lent: self.chunks.len() as u64,
            queued: self.sessions.values().filter_map(|s| s.data.as_ref()).map(|d| d.queue.len() as u64).sum(),
            control_backlog: self
                .outboxed
                .iter()
                .filter_map(|id| self.sessions.get(id))
                .map(|s| s.outbox.len() as u64)
                .sum(),
            violations: self.violations,
            drops: self.drops,
            channels_remembered: self.channel_members.keys().filter(|id| !self.channels.contains_key(id)).count()
                as u64,
            crowding: self.crowding(),
            idle_backed_off: self.idle_backed_off(),
        }
    }

    fn stats(&self) -> Vec<InstanceStats> {
        let mut out: Vec<InstanceStats> = self
            .registry
            .instances()
            .map(|(iid, i)| {
                let s = self.sessions.get(&i.client);
                let d = s.and_then(|s| s.data.as_ref());
                InstanceStats {
                    name: self.registry.route(i.route).map(|r| r.name.clone()).unwrap_or_default(),
                    instance: iid,
                    pid: s.map_or(0, |s| s.creds.pid),
                    messages_in: i.stats.messages_in,
                    messages_out: i.stats.messages_out,
                    bytes_in: i.stats.bytes_in,
                    bytes_out: i.stats.bytes_out,
                    in_flight: i.outstanding as u64,
                    queued: d.map_or(0, |d| d.queue.len() as u64),
                    drops: d.map_or(0, |d| d.drops),
                    errors: i.stats.errors,
                    latency_ns: if i.stats.latency.is_empty() {
                        [0; 4]
                    } else {
                        let h = &i.stats.latency;
                        [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max()]
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.name, a.instance).cmp(&(&b.name, b.instance)));
        out
    }
}

/// The error for a new name past `limits.names` or `limits.names_per_uid`.
fn too_many_names(limit: crate::registry::NameLimit) -> (ErrorCode, String) {
    (ErrorCode::QuotaExceeded, limit.to_string())
}

impl Daemon {
    /// Client `by` found pool `pool` corrupt. Its word is not proof (a
    /// client could say so of anyone), so the daemon checks its own mapping
    /// of the pool: if the header does not validate there either, the owner,
    /// the only one who can write it, broke the protocol.
    fn corrupt_pool_reported(&mut self, by: u32, pool: u32, why: &str) {
        let Some(owner) = self.sessions.get(&pool).and_then(|s| s.data.as_ref()) else {
            return;
        };
        let seg = &owner.pool;
        let found = match seg.header().validate(SegmentKind::Pool, seg.len()) {
            Ok(h) if h.param == pool as u64 => None,
            Ok(h) => Some(format!("it names pool {} in its header", h.param)),
            Err(e) => Some(e.to_string()),
        };
        match found {
            Some(e) => self.violation(pool, &Violation::CorruptPool(e)),
            None => tracing::debug!(client = by, pool, "reported a pool corrupt that validates here: {why}"),
        }
    }
}
