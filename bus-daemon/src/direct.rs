//! The direct-channel broker: the daemon sets a channel up between a
//! caller and one service instance, hands both ends over, and steps out
//! of the path. It keeps a mapping of the segment only to read the
//! counters each side writes, so `hybusctl stats` still shows the traffic.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::channel::ChannelLayout;
use hybus_layout::control::{ChannelStats, DaemonMessage, DirectInfo, ErrorCode, Event};
use hybus_layout::descriptor::Kind;
use hybus_layout::header::SegmentKind;
use hybus_layout::Descriptor;
use hybus_os::segment::Segment;

use crate::daemon::Daemon;

/// One live channel.
#[derive(Debug)]
pub struct Channel {
    /// Side A: the caller (client id; 0 once adopted and not yet matched).
    pub a: u32,
    /// Side B: the serving client.
    pub b: u32,
    /// Pids, for listings (kept after a side is gone).
    pub a_pid: i32,
    /// Pid of side B.
    pub b_pid: i32,
    /// The service.
    pub service: String,
    /// Its route.
    pub route: u32,
    /// Token that survives daemon restarts.
    pub token: u64,
    /// The segment (for the counters).
    pub segment: Arc<Segment>,
    /// Why it exists.
    pub reason: String,
    /// When it was made or adopted.
    pub since: Instant,
    /// Slots in each of its rings.
    pub capacity: u64,
    /// The caller asked for it (so needs the `direct` permission to keep
    /// it), rather than the daemon making it (a configured pair, a promotion).
    pub asked: bool,
}

/// Per (caller, route) brokered traffic, for automatic promotion.
#[derive(Debug, Default, Clone, Copy)]
pub struct PairRate {
    count: u64,
    window_start: Option<Instant>,
    busy_since: Option<Instant>,
}

pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn token() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ (std::process::id() as u64) << 32;
    }
    u64::from_ne_bytes(b)
}

impl Daemon {
    /// Opens (or returns the existing) direct channel from `caller` to an instance of `route`.
    /// `asked`: the caller asked for it (see [`Channel::asked`]).
    pub(crate) fn open_channel(
        &mut self,
        caller: u32,
        route: u32,
        reason: &str,
        asked: bool,
    ) -> Result<u32, (ErrorCode, String)> {
        if let Some((id, _)) = self.channels.iter().find(|(_, c)| c.a == caller && c.route == route) {
            return Ok(*id);
        }
        let r = self.registry.route(route).ok_or((ErrorCode::NotFound, format!("no route {route}")))?;
        let service = r.name.clone();
        let instance =
            self.registry.pick(route).ok_or((ErrorCode::NotFound, format!("no instance serves {service:?}")))?;
        let server = self.registry.instance(instance).map_or(0, |i| i.client);
        if server == caller {
            return Err((ErrorCode::BadRequest, "a client cannot open a direct channel to itself".into()));
        }
        self.take_open_token(caller)?;
        let cap = self.config.ring_capacity;
        let layout = ChannelLayout::new(cap);
        let err =
            |e: hybus_os::segment::SegmentError| (ErrorCode::QuotaExceeded, format!("cannot create a channel: {e}"));
        let seg = Arc::new(Segment::create(c"hybus-direct", SegmentKind::Channel, layout.size, cap).map_err(err)?);
        for off in [layout.a_to_b, layout.b_to_a, layout.a_release, layout.b_release] {
            seg.init_ring(off, cap).map_err(err)?;
        }
        let id = self.new_channel_id();
        let token = token();
        let pid = |c: u32| self.sessions.get(&c).map_or(0, |s| s.creds.pid);
        let (a_pid, b_pid) = (pid(caller), pid(server));
        for (me, peer, side, peer_pid) in [(caller, server, 0u8, b_pid), (server, caller, 1u8, a_pid)] {
            let Some(p) = self.sessions.get(&peer).and_then(|s| s.data.as_ref()) else {
                return Err((ErrorCode::NotFound, "peer gone".into()));
            };
            let pool_ro = p.pool.read_only_fd().map_err(err)?;
            let Some(pidfd) = pidfd_open(peer_pid) else {
                return Err((ErrorCode::NotFound, "peer gone (pidfd_open failed)".into()));
            };
            let info = DirectInfo {
                channel: id,
                token,
                side,
                service: service.clone(),
                route,
                instance,
                peer,
                peer_pid,
                capacity: cap,
                peer_classes: p.geometry.classes().map(|c| (c.chunk_size, c.count)).collect(),
                reason: reason.to_owned(),
            };
            let bell = p.rx_bell.fd().try_clone_to_owned().map_err(|e| (ErrorCode::QuotaExceeded, e.to_string()))?;
            let msg = DaemonMessage::Event(Event::DirectOpen(info));
            self.send(me, &msg, &[seg.fd(), pool_ro.as_fd(), bell.as_fd(), pidfd.as_fd()]);
        }
        tracing::info!(channel = id, service, caller, server, reason, "direct channel opened");
        self.channel_members.insert(id, (caller, server));
        self.channels.insert(
            id,
            Channel {
                a: caller,
                b: server,
                a_pid,
                b_pid,
                service,
                route,
                token,
                segment: seg,
                reason: reason.to_owned(),
                since: Instant::now(),
                capacity: cap,
                asked,
            },
        );
        Ok(id)
    }

    /// Takes one of the caller's uid's channel opens
    /// (`limits.direct_opens_per_s`, see [`crate::openrate`]), or says
    /// when it may try again.
    fn take_open_token(&mut self, caller: u32) -> Result<(), (ErrorCode, String)> {
        let uid = self.sessions.get(&caller).map_or(u32::MAX, |s| s.creds.uid);
        let l = self.config.limits;
        let now = Instant::now();
        self.open_rate.take(uid, l.direct_opens_per_s, l.direct_open_burst, now).map_err(|e| {
            if self.ratelog.admit(crate::ratelog::LogKind::Refused, uid, now) {
                tracing::warn!(client = caller, uid, "refused a direct channel: limits.direct_opens_per_s");
            }
            (
                ErrorCode::QuotaExceeded,
                format!(
                    "uid {uid} opens direct channels faster than limits.direct_opens_per_s = {} (burst limits.direct_open_burst = {}); try again in {} ms",
                    l.direct_opens_per_s,
                    l.direct_open_burst,
                    (e.retry_in_s * 1000.0).ceil() as u64
                ),
            )
        })
    }

    /// Closes a channel and tells both sides (those still here).
    pub(crate) fn close_channel(&mut self, id: u32, reason: &str, died: Option<u32>) {
        let Some(c) = self.channels.remove(&id) else {
            return;
        };
        tracing::info!(channel = id, service = %c.service, "direct channel closed: {reason}");
        for side in [c.a, c.b] {
            if Some(side) != died && side != 0 {
                let ev = Event::DirectClosed { channel: id, reason: reason.to_owned(), peer_died: died.is_some() };
                self.send(side, &DaemonMessage::Event(ev), &[]);
            }
        }
    }

    /// Closes the channels to `route` that `server` serves once it has no
    /// instance of `route` left that takes new work (it unregistered or
    /// drains): both sides downgrade (answers to calls in flight still come
    /// on the channel), and the callers' new calls go through the daemon,
    /// to an instance that serves.
    ///
    /// Why: a channel ends at a process, not at an instance. Left open, it
    /// kept carrying new calls to a draining instance, or to one that had
    /// unregistered, whose process (alive, so no pidfd said anything) had
    /// no one to hand them to: the callers waited for their deadlines.
    pub(crate) fn close_channels_no_longer_served(&mut self, server: u32, route: u32, reason: &str) {
        if !self.sessions.contains_key(&server) {
            // It is disconnecting: `close_channels_of` tells its peers it is
            // gone, so that they reclaim everything at once. A close without
            // "peer died" here would have them wait for its end fence for good.
            return;
        }
        let serves = self.registry.of_client(server, route).any(|i| !i.draining);
        if serves {
            return;
        }
        let ids: Vec<u32> =
            self.channels.iter().filter(|(_, c)| c.b == server && c.route == route).map(|(id, _)| *id).collect();
        for id in ids {
            self.close_channel(id, reason, None);
        }
    }

    /// Client `client` has forgotten the closed channel `id`: it is no
    /// longer its member here, and the channel is forgotten once neither
    /// member is left. A live channel (the client's close not handled yet)
    /// is remembered until it closes and the client leaves.
    ///
    /// Why: remembered until a member left the bus, closed channels piled
    /// up for clients that open and close channels all their lives.
    pub(crate) fn channel_done(&mut self, client: u32, id: u32) {
        if self.channels.contains_key(&id) {
            return;
        }
        let Some((a, b)) = self.channel_members.get_mut(&id) else {
            return;
        };
        if *a == client {
            *a = 0;
        }
        if *b == client {
            *b = 0;
        }
        if *a == 0 && *b == 0 {
            self.channel_members.remove(&id);
        }
    }

    /// A client left: close its channels, telling the survivors.
    pub(crate) fn close_channels_of(&mut self, client: u32) {
        // Channels closed before but perhaps still downgrading: the survivor
        // waits for an end fence that will not come now. "Peer died" lets it
        // reclaim everything at once (a client that left the bus counts as
        // dead even when its process, which a pidfd watches, lives on).
        let mut survivors = Vec::new();
        self.channel_members.retain(|&id, &mut (a, b)| {
            let mine = a == client || b == client;
            if mine && !self.channels.contains_key(&id) {
                survivors.push((id, if a == client { b } else { a }));
            }
            !mine
        });
        for (channel, to) in survivors {
            let ev = Event::DirectClosed { channel, reason: "peer gone".into(), peer_died: true };
            self.send(to, &DaemonMessage::Event(ev), &[]);
        }
        let ids: Vec<u32> =
            self.channels.iter().filter(|(_, c)| c.a == client || c.b == client).map(|(id, _)| *id).collect();
        for id in ids {
            self.close_channel(id, "peer gone", Some(client));
        }
    }

    /// A fresh channel id: never 0, never one in use (ids wrap after 2³²
    /// channels).
    fn new_channel_id(&mut self) -> u32 {
        loop {
            self.next_channel = self.next_channel.wrapping_add(1);
            if self.next_channel == 0 {
                self.channel_ids_wrapped = true;
                continue;
            }
            if !self.channels.contains_key(&self.next_channel) && !self.channel_members.contains_key(&self.next_channel)
            {
                return self.next_channel;
            }
        }
    }

    /// Forwards an upgrade fence from one side of a channel to the other.
    pub(crate) fn forward_fence(&mut self, from: u32, d: Descriptor) -> bool {
        let Ok(id) = u32::try_from(d.aux) else {
            return false;
        };
        // A channel closed right after it opened still needs its fences
        // delivered: each side reads the other's ring only after the
        // other's upgrade fence, and must drain it before forgetting it.
        let Some(&(a, b)) = self.channel_members.get(&id) else {
            // One side is gone (the other was told), or it never existed.
            return id != 0 && (self.channel_ids_wrapped || id <= self.next_channel);
        };
        let to = if a == from {
            b
        } else if b == from {
            a
        } else {
            return false;
        };
        let out = Descriptor::new(Kind::Fence, 0, 0).with_aux(id as u64);
        self.deliver_raw(to, out);
        true
    }

    /// A direct channel found by its token after a restart.
    pub(crate) fn adopt_channel(
        &mut self,
        client: u32,
        token: u64,
        side: u8,
        service: &str,
        peer_pid: i32,
        fd: OwnedFd,
    ) -> Result<u32, (ErrorCode, String)> {
        let (seg, info) = Segment::open(fd, hybus_os::segment::Access::ReadOnly, SegmentKind::Channel)
            .map_err(|e| (ErrorCode::BadRequest, format!("not a channel segment: {e}")))?;
        let my_pid = self.sessions.get(&client).map_or(0, |s| s.creds.pid);
        if let Some((id, c)) = self.channels.iter_mut().find(|(_, c)| c.token == token) {
            if side == 0 {
                c.a = client;
                c.a_pid = my_pid
            } else {
                c.b = client;
                c.b_pid = my_pid
            }
            return Ok(*id);
        }
        let route = self.route_for(client, service)?;
        let id = self.new_channel_id();
        let (a, b, a_pid, b_pid) =
            if side == 0 { (client, 0, my_pid, peer_pid) } else { (0, client, peer_pid, my_pid) };
        self.channels.insert(
            id,
            Channel {
                a,
                b,
                a_pid,
                b_pid,
                service: service.to_owned(),
                route,
                token,
                segment: Arc::new(seg),
                reason: "adopted after a daemon restart".into(),
                since: Instant::now(),
                // From the client's segment: only a capacity a ring may have
                // (anything else would make absurd offsets; 0 reads as empty).
                capacity: Some(info.param)
                    .filter(|c| c.is_power_of_two() && *c <= hybus_layout::ring::MAX_CAPACITY)
                    .unwrap_or(0),
                // The caller's side is adopted with the `direct` permission.
                asked: true,
            },
        );
        tracing::info!(channel = id, service, "direct channel adopted");
        Ok(id)
    }

    /// Counters of every channel.
    pub(crate) fn channel_stats(&self) -> Vec<ChannelStats> {
        let mut v: Vec<ChannelStats> = self
            .channels
            .iter()
            .map(|(id, c)| {
                let k = c.segment.channel_counters();
                let (a, b) = (k.a.read(), k.b.read());
                let layout = ChannelLayout::new(c.capacity);
                let queued = |offset| c.segment.ring_depth(offset, c.capacity).unwrap_or(0);
                let rtt = k.rtt.snapshot();
                ChannelStats {
                    channel: *id,
                    service: c.service.clone(),
                    a_pid: c.a_pid,
                    b_pid: c.b_pid,
                    a_messages: a.messages,
                    a_bytes: a.bytes,
                    b_messages: b.messages,
                    b_bytes: b.bytes,
                    a_in_flight: a.in_flight,
                    b_in_flight: b.in_flight,
                    b_errors: b.errors,
                    a_queued: queued(layout.a_to_b),
                    b_queued: queued(layout.b_to_a),
                    timed_calls: rtt.samples(),
                    latency_ns: rtt.figures(),
                    reason: c.reason.clone(),
                    age_s: c.since.elapsed().as_secs(),
                }
            })
            .collect();
        v.sort_by_key(|c| c.channel);
        v
    }

    /// Counts one brokered request or fire from `caller` to `route` (promotion is on).
    #[inline]
    pub(crate) fn count_pair(&mut self, caller: u32, route: u32) {
        self.pair_rates.entry((caller, route)).or_default().count += 1;
    }

    /// Checks the pair rates once per tick and promotes the pairs that stayed busy.
    pub(crate) fn promote_busy_pairs(&mut self) {
        let p = self.config.promotion;
        if !p.enabled {
            return;
        }
        let now = Instant::now();
        let mut promote = Vec::new();
        for ((caller, route), r) in self.pair_rates.iter_mut() {
            let start = *r.window_start.get_or_insert(now);
            let dt = now.duration_since(start);
            if dt < Duration::from_millis(100) {
                continue;
            }
            let rate = r.count as f64 / dt.as_secs_f64();
            r.count = 0;
            r.window_start = Some(now);
            if rate >= p.min_rate as f64 {
                let since = *r.busy_since.get_or_insert(start);
                if now.duration_since(since) >= Duration::from_millis(p.for_ms) {
                    promote.push((*caller, *route, rate));
                }
            } else {
                r.busy_since = None;
            }
        }
        for (caller, route, rate) in promote {
            self.pair_rates.remove(&(caller, route));
            let reason = format!("promoted: {:.0} msg/s ≥ {} for {} ms", rate, p.min_rate, p.for_ms);
            if let Err((_, e)) = self.open_channel(caller, route, &reason, false) {
                tracing::debug!(caller, route, "promotion failed: {e}");
            }
        }
        self.pair_rates.retain(|(c, _), _| self.sessions.contains_key(c));
    }

    /// Whether `[[direct]]` config asks for a channel from `client` to `service`.
    pub(crate) fn configured_pair(&self, client: u32, service: &str) -> bool {
        let Some(s) = self.sessions.get(&client) else {
            return false;
        };
        let owned: Vec<String> = self
            .registry
            .instances_of(client)
            .into_iter()
            .filter_map(|i| {
                self.registry.instance(i).and_then(|i| self.registry.route(i.route)).map(|r| r.name.clone())
            })
            .collect();
        self.config
            .direct
            .iter()
            .any(|p| p.service == service && p.uid.is_none_or(|u| u == s.creds.uid) && owned.contains(&p.caller))
    }
}
