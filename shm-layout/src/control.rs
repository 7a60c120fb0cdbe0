//! Control-protocol messages, encoded with rkyv and validated on receipt.
//!
//! One message is one `SOCK_SEQPACKET` datagram of at most [`MAX_MESSAGE`]
//! bytes, with up to [`MAX_FDS`] descriptors attached by SCM_RIGHTS. The
//! client speaks [`ClientMessage`]s, the daemon answers with
//! [`DaemonMessage`]s: replies carry the request's id, events carry none.
//! Bytes from a peer are checked by rkyv's validator before anything is
//! deserialized ([`decode`]); a message that fails is a protocol violation.
// rkyv's derive generates `Archived*` twins of these types whose fields
// carry no docs; every hand-written item here is documented.
#![allow(missing_docs)]

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};

/// Version of the control protocol; Hello and Welcome must agree on it.
/// Bump it for any change to these messages that [`SCHEMA_HASH`] cannot
/// see (fields of one size swapped, a variant's meaning changed).
pub const PROTOCOL_VERSION: u32 = 1;

/// A hash of the size and alignment of every archived control message type.
///
/// rkyv reads an archive by offsets fixed at build time: a daemon and a
/// client built from different versions of these types do not fail to
/// decode each other's messages, they misread them (a reply from an older
/// `hybusd` once read as "bad request" followed by blanks). Adding or
/// widening a field changes some archived type's size, and so this hash,
/// which travels in the [`Preamble`] and is compared before anything is
/// decoded.
pub const SCHEMA_HASH: u64 = {
    use std::mem::{align_of, size_of};
    macro_rules! shape {
        ($($t:ty),* $(,)?) => {
            [
                PROTOCOL_VERSION as u64,
                $(size_of::<<$t as Archive>::Archived>() as u64, align_of::<<$t as Archive>::Archived>() as u64),*
            ]
        };
    }
    crate::header::fnv1a(&shape![
        ClientMessage,
        Request,
        DaemonMessage,
        Reply,
        Welcome,
        ServiceInfo,
        InstanceInfo,
        StatsReport,
        ChannelStats,
        DirectInfo,
        DaemonStatus,
        InstanceStats,
        Event,
        ErrorReply,
        ErrorCode,
        Crowding,
        ActivationInfo,
    ])
};

/// What a client and a daemon must agree on before either decodes the
/// other's messages: the protocol version, the control schema
/// ([`SCHEMA_HASH`]) and the shared-memory layout
/// ([`LAYOUT_HASH`](crate::header::LAYOUT_HASH)).
///
/// Its bytes ([`to_bytes`](Self::to_bytes): a magic word, then the three
/// values little endian) are the same in every version of hybus. A
/// client's first message starts with its preamble; a daemon that finds a
/// different one answers with its own preamble, raw, and closes, so each
/// side can say which versions met instead of misreading the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// [`SCHEMA_HASH`].
    pub schema: u64,
    /// [`LAYOUT_HASH`](crate::header::LAYOUT_HASH).
    pub layout: u64,
}

impl Preamble {
    /// Bytes of a preamble.
    pub const LEN: usize = 32;
    const MAGIC: [u8; 8] = *b"hybus\0\0\x01";
    /// This build's preamble.
    pub const OURS: Preamble =
        Preamble { protocol: PROTOCOL_VERSION, schema: SCHEMA_HASH, layout: crate::header::LAYOUT_HASH };

    /// The preamble's bytes.
    pub fn to_bytes(self) -> [u8; Preamble::LEN] {
        let mut b = [0u8; Preamble::LEN];
        b[..8].copy_from_slice(&Self::MAGIC);
        b[8..12].copy_from_slice(&self.protocol.to_le_bytes());
        b[16..24].copy_from_slice(&self.schema.to_le_bytes());
        b[24..32].copy_from_slice(&self.layout.to_le_bytes());
        b
    }

    /// The preamble `bytes` start with, if they start with one.
    pub fn parse(bytes: &[u8]) -> Option<Preamble> {
        let b: &[u8; Preamble::LEN] = bytes.get(..Preamble::LEN)?.try_into().ok()?;
        if b[..8] != Self::MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let protocol = u32::from_le_bytes(b[8..12].try_into().unwrap_or_default());
        Some(Preamble { protocol, schema: u64_at(16), layout: u64_at(24) })
    }
}

impl fmt::Display for Preamble {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "protocol {} (control schema {:#018x}, memory layout {:#018x})",
            self.protocol, self.schema, self.layout
        )
    }
}

/// Encodes a client's first message: this build's [`Preamble`], then `msg`.
pub fn encode_first(msg: &ClientMessage) -> Result<Vec<u8>, CodecError> {
    let body = encode(msg)?;
    let mut bytes = Vec::with_capacity(Preamble::LEN + body.len());
    bytes.extend_from_slice(&Preamble::OURS.to_bytes());
    bytes.extend_from_slice(&body);
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Largest control message, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Most file descriptors attached to one message.
pub const MAX_FDS: usize = 8;

/// Longest service or topic name, in bytes.
pub const MAX_NAME: usize = 255;

/// A request from a client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// Chosen by the client; the reply carries it back.
    pub id: u64,
    /// What the client asks for.
    pub request: Request,
}

/// What a client may ask the daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First message on a connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The client's [`crate::header::LAYOUT_HASH`].
        layout_hash: u64,
        /// A label for listings (`hybusctl list`); not trusted for anything.
        label: String,
        /// After a daemon restart: the client's existing pool comes attached
        /// as the one fd, to be adopted (its direct-channel peers map it).
        reuse_pool: bool,
    },
    /// Offer a service instance under a dotted name.
    Register {
        /// Dotted service name, e.g. `kv.store`.
        name: String,
        /// The instance's version (informational; newest serving wins ties).
        version: u32,
        /// Load-balancing weight, at least 1.
        weight: u32,
        /// Hold the name alone: refused if another instance serves it, and
        /// while this one serves, registrations of the name without
        /// `replace` are refused.
        exclusive: bool,
        /// Take the name over: every instance serving it now drains (as in
        /// hot replacement) and this one gets the new requests.
        replace: bool,
    },
    /// Withdraw a service instance now.
    Unregister {
        /// The instance id from [`Reply::Registered`].
        instance: u32,
    },
    /// Stop sending new requests to an instance; it finishes what it has.
    Drain {
        /// The instance id.
        instance: u32,
    },
    /// Look up the route id of a topic to publish on, creating the topic if new.
    Topic {
        /// Dotted topic name.
        name: String,
    },
    /// Look up the route id of a service; fails if no instance serves it.
    Resolve {
        /// Dotted service or topic name.
        name: String,
    },
    /// List services and their instances.
    List,
    /// Receive [`Event::ServiceUp`] / [`Event::ServiceDown`] for names under a prefix ("" for all).
    Watch {
        /// Name prefix.
        prefix: String,
    },
    /// Subscribe to a topic; publications arrive as [`crate::Kind::Publish`] descriptors.
    Subscribe {
        /// Topic name.
        topic: String,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// The route id from [`Reply::Subscribed`].
        route: u32,
    },
    /// Traffic counters of every instance and connection.
    Stats,
    /// The daemon's own state: clients, services, loans, backend.
    Status,
    /// Ask for a direct channel to an instance of `route` (subject to policy).
    Direct {
        /// The service's route id.
        route: u32,
    },
    /// Close a direct channel; both sides fall back to the brokered path.
    CloseDirect {
        /// The channel id.
        channel: u32,
    },
    /// After a daemon restart: tell the new daemon about a live channel.
    /// The channel segment comes with it as the one attached fd.
    AdoptChannel {
        /// The channel's token (from [`DirectInfo::token`]).
        token: u64,
        /// 0 for side A (caller), 1 for side B (service).
        side: u8,
        /// The service the channel serves.
        service: String,
        /// The peer's pid.
        peer_pid: i32,
    },
    /// Receive a copy of every brokered descriptor's header (like `busctl monitor`).
    Monitor {
        /// Only traffic to or from names under this prefix ("" for all).
        prefix: String,
    },
    /// This client has forgotten a closed direct channel (it finished
    /// downgrading, or its peer died): the daemon need not remember the
    /// channel for it any more. No reply.
    ChannelDone {
        /// The channel id.
        channel: u32,
    },
    /// A pool the daemon handed us a view of does not validate (its header
    /// was overwritten). No reply: the daemon checks its own mapping of
    /// the pool and holds the owner to account only if it agrees.
    CorruptPool {
        /// The pool (its owner's client id).
        pool: u32,
        /// What the reporter found (for the log).
        why: String,
    },
    /// This client's idle strategy ([`crate::IdleStrategy`]): one that
    /// spins without yielding counts among the parties that spin.
    /// Answered with [`Reply::Crowding`]; a client that says nothing
    /// counts as one that parks.
    Idle {
        /// Spin-loop polls before yielding.
        spins: u32,
        /// Yields before parking.
        yields: u32,
        /// Whether it parks at all.
        park: bool,
    },
    /// The names the config declares activatable (`[[activate]]`), and
    /// what their activation is doing.
    Activations,
    /// Offer a *remote* instance of a dotted name: one a bridge serves on
    /// behalf of another host (see [`Remote`]). Otherwise as
    /// [`Request::Register`].
    RegisterRemote {
        /// Dotted service name, e.g. `kv.store`.
        name: String,
        /// The instance's version (informational).
        version: u32,
        /// Load-balancing weight, at least 1.
        weight: u32,
        /// Where it really runs, and how the balancer treats it.
        remote: Remote,
    },
}

/// What makes an instance *remote*: a bridge serves it for another host.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The bridge (and host) it is reached through, for listings.
    pub via: String,
    /// `false` (local first): the balancer sends it requests only while no
    /// local instance of the name serves; `true`: it takes part in the
    /// balancing like any local instance.
    pub balance: bool,
}

/// A message from the daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DaemonMessage {
    /// The answer to the request with this id.
    Reply {
        /// The request's id.
        id: u64,
        /// Success, or why not.
        result: Result<Reply, ErrorReply>,
    },
    /// Something happened that the client asked to hear about, or must know.
    Event(Event),
}

/// A successful answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer to Hello. Four fds come with it: the rings segment, the pool
    /// segment (read-write), the doorbell the client rings to wake the
    /// daemon, the doorbell the daemon rings to wake the client.
    Welcome(Welcome),
    /// A service instance was registered.
    Registered {
        /// Id of this instance; requests for it arrive with this route.
        instance: u32,
        /// Route id of the name.
        route: u32,
    },
    /// The route of a name.
    Resolved {
        /// Route id to send to.
        route: u32,
        /// Instances currently serving it.
        instances: u32,
    },
    /// The list of services.
    Services(Vec<ServiceInfo>),
    /// A subscription was made.
    Subscribed {
        /// Route id the publications arrive with.
        route: u32,
    },
    /// Traffic counters.
    Stats(StatsReport),
    /// A direct channel was set up; its [`Event::DirectOpen`] was sent before this reply.
    DirectGranted {
        /// The channel id.
        channel: u32,
    },
    /// The daemon's state.
    Status(DaemonStatus),
    /// Done, nothing to report.
    Done,
    /// The answer to [`Request::Idle`].
    Crowding(Crowding),
    /// The activatable names (answer to [`Request::Activations`]).
    Activations(Vec<ActivationInfo>),
}

/// How many parties spin without yielding, and on how many CPUs: sent to
/// every client that said it spins ([`Request::Idle`]), in the reply and
/// again as [`Event::Crowding`] whenever it changes.
///
/// A brokered exchange has the daemon as a third party whether it spins
/// or yields (it must run to forward each message), so it is crowded when
/// `spinners + 1` exceeds the CPUs; a direct channel only when `spinners`
/// (plus the daemon, if [`daemon_spins`](Self::daemon_spins)) does. A
/// crowded wait follows [`crate::IdleStrategy::backed_off`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crowding {
    /// Clients whose idle strategy spins without yielding
    /// ([`crate::IdleStrategy::holds_core`]).
    pub spinners: u32,
    /// The daemon itself spins without yielding now (its `[idle]` says so
    /// and it has not backed off).
    pub daemon_spins: bool,
    /// CPUs the daemon may run on (its `sched_getaffinity` mask).
    pub cpus: u32,
}

impl Crowding {
    /// Whether brokered waits of a client that may use `own_cpus` CPUs back off.
    pub fn brokered(&self, own_cpus: u32) -> bool {
        self.spinners.saturating_add(1) > self.cpus.min(own_cpus).max(1)
    }

    /// Whether waits on a direct channel back off.
    pub fn direct(&self, own_cpus: u32) -> bool {
        self.spinners.saturating_add(self.daemon_spins as u32) > self.cpus.min(own_cpus).max(1)
    }
}

/// An activatable name (`[[activate]]` in the daemon config) and the state
/// of its activation.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ActivationInfo {
    /// The service name.
    pub name: String,
    /// `"inactive"` (no process started by the daemon lives), `"starting"`
    /// (started, not registered yet), `"running"` (registered),
    /// `"back-off"` (the last start failed; the next waits).
    pub state: String,
    /// What is started: the command line, or `unit NAME`.
    pub command: String,
    /// The pid of the newest process the daemon started for it, while it
    /// lives; 0 otherwise.
    pub pid: i32,
    /// How the last process started for it ended (`exited with status 3`,
    /// `killed by signal 9`); empty if none ended yet.
    pub last_exit: String,
    /// Why the last activation failed; empty if none did.
    pub last_error: String,
    /// Failed activations in a row (reset when an instance registers).
    pub failures: u32,
    /// Milliseconds the next start waits after the last failure (0 if none).
    pub backoff_ms: u64,
    /// Milliseconds left until the next start may happen (0: at once).
    pub backoff_left_ms: u64,
    /// Processes started since the daemon started.
    pub activations: u64,
    /// Activations that failed (exited or timed out before registering).
    pub activation_failures: u64,
    /// Instances asked to drain for being idle (`stop_when_idle_s`).
    pub idle_stops: u64,
    /// Requests held now, waiting for an instance.
    pub held: u32,
}

/// What a new client gets.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The daemon's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The daemon's id for this client; also the id of its pool segment.
    pub client_id: u32,
    /// Capacity of each of the two rings.
    pub ring_capacity: u64,
    /// Offset of the client → daemon ring in the rings segment.
    pub tx_offset: u64,
    /// Offset of the daemon → client ring in the rings segment.
    pub rx_offset: u64,
    /// The pool's size classes as `(chunk_size, count)`.
    pub pool_classes: Vec<(u32, u32)>,
    /// The pool sent with Hello was adopted (then the pool fd in the Welcome is that same pool).
    pub pool_reused: bool,
}

/// One service name and its instances.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Dotted name.
    pub name: String,
    /// Route id.
    pub route: u32,
    /// The instances, serving and draining.
    pub instances: Vec<InstanceInfo>,
}

/// One service instance.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Instance id.
    pub instance: u32,
    /// Owner's uid (from SO_PEERCRED).
    pub uid: u32,
    /// Owner's pid (from SO_PEERCRED).
    pub pid: i32,
    /// Owner's client id.
    pub client_id: u32,
    /// Version the instance registered with.
    pub version: u32,
    /// Load-balancing weight.
    pub weight: u32,
    /// `true` while draining.
    pub draining: bool,
    /// `true` if the instance holds its name alone (registered exclusive).
    pub exclusive: bool,
    /// Set for an instance a bridge registered for another host.
    pub remote: Option<Remote>,
}

/// Traffic counters of instances and direct channels.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatsReport {
    /// Per service instance (brokered traffic).
    pub instances: Vec<InstanceStats>,
    /// Per direct channel (read from the channel's own counters).
    pub channels: Vec<ChannelStats>,
}

/// Traffic of one direct channel.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// Channel id.
    pub channel: u32,
    /// The service it serves.
    pub service: String,
    /// Caller's pid.
    pub a_pid: i32,
    /// Service instance's pid.
    pub b_pid: i32,
    /// Descriptors caller → service.
    pub a_messages: u64,
    /// Payload bytes caller → service.
    pub a_bytes: u64,
    /// Descriptors service → caller.
    pub b_messages: u64,
    /// Payload bytes service → caller.
    pub b_bytes: u64,
    /// The caller's exchanges open on the channel (calls and streams not ended).
    pub a_in_flight: u64,
    /// Exchanges the service is serving on the channel.
    pub b_in_flight: u64,
    /// Error answers the service sent on the channel.
    pub b_errors: u64,
    /// Descriptors caller → service the service has not taken yet.
    pub a_queued: u64,
    /// Descriptors service → caller the caller has not taken yet.
    pub b_queued: u64,
    /// Round trips of calls the caller timed (one call in
    /// [`RTT_SAMPLE_EVERY`](crate::channel::RTT_SAMPLE_EVERY)).
    pub timed_calls: u64,
    /// Their round trip, in nanoseconds, as the caller measured it:
    /// p50, p99, p99.9, max (each within an eighth; zeros before the first).
    pub latency_ns: [u64; 4],
    /// Why and how it was made ("config", "requested", "promoted: ...", "adopted after restart").
    pub reason: String,
    /// Seconds since it was made (or adopted).
    pub age_s: u64,
}

/// How a direct channel is described to each of its two sides.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DirectInfo {
    /// Channel id (unique per daemon).
    pub channel: u32,
    /// Random token identifying the channel across daemon restarts.
    pub token: u64,
    /// 0: you are side A (the caller); 1: side B (the service instance).
    pub side: u8,
    /// The service's name.
    pub service: String,
    /// The service's route id.
    pub route: u32,
    /// The serving instance.
    pub instance: u32,
    /// The peer's client id (= the id of its pool).
    pub peer: u32,
    /// The peer's pid.
    pub peer_pid: i32,
    /// Ring capacity of the channel segment.
    pub capacity: u64,
    /// The peer's pool classes as `(chunk_size, count)`.
    pub peer_classes: Vec<(u32, u32)>,
    /// Why the channel was made.
    pub reason: String,
}

/// The daemon's own state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DaemonStatus {
    /// The daemon's pid.
    pub pid: i32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Event-loop backend ("epoll" or "io_uring").
    pub backend: String,
    /// Connected clients (including ones still in the handshake).
    pub clients: u32,
    /// Names with at least one instance.
    pub services: u32,
    /// Registered instances.
    pub instances: u32,
    /// Requests and streams in flight.
    pub exchanges: u64,
    /// Payload chunks lent out (sent and not yet released by every receiver).
    pub chunks_lent: u64,
    /// Descriptors queued in the daemon for clients whose rings are full.
    pub queued: u64,
    /// Control messages waiting in the daemon for clients that have not
    /// read their control socket (it was full).
    pub control_backlog: u64,
    /// Clients disconnected for protocol violations since start.
    pub violations: u64,
    /// Publications dropped for slow subscribers since start (drop-oldest policy).
    pub drops: u64,
    /// Closed direct channels the daemon still remembers for a member that
    /// has not forgotten them yet (to forward its fences, or to tell it
    /// "peer died" if the other leaves).
    pub channels_remembered: u64,
    /// Clients that spin, whether the daemon does, and its CPUs (see [`Crowding`]).
    pub crowding: Crowding,
    /// The daemon follows the backed-off form of its idle strategy, since
    /// more parties spin than it has CPUs.
    pub idle_backed_off: bool,
}

/// Traffic counters of one service instance.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InstanceStats {
    /// Service name.
    pub name: String,
    /// Instance id.
    pub instance: u32,
    /// Owner's pid.
    pub pid: i32,
    /// Descriptors delivered to the instance.
    pub messages_in: u64,
    /// Descriptors the instance sent.
    pub messages_out: u64,
    /// Payload bytes delivered to the instance.
    pub bytes_in: u64,
    /// Payload bytes the instance sent.
    pub bytes_out: u64,
    /// Requests forwarded and not yet answered.
    pub in_flight: u64,
    /// Descriptors waiting in the daemon for the instance's ring to drain.
    pub queued: u64,
    /// Descriptors dropped (slow subscriber policy).
    pub drops: u64,
    /// Error replies produced for requests to it.
    pub errors: u64,
    /// Request-to-answer latency through the daemon, in nanoseconds:
    /// p50, p99, p99.9, max (zeros before the first answer).
    pub latency_ns: [u64; 4],
}

/// Something the client hears without asking each time.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An instance started serving a watched name.
    ServiceUp {
        /// Service name.
        name: String,
        /// Route id of the name.
        route: u32,
        /// The instance.
        instance: u32,
        /// Owner's pid.
        pid: i32,
    },
    /// An instance of a watched name is gone (unregistered, or its owner died).
    ServiceDown {
        /// Service name.
        name: String,
        /// Route id of the name.
        route: u32,
        /// The instance.
        instance: u32,
        /// Owner's pid.
        pid: i32,
    },
    /// One of the client's instances is draining (it asked, or a newer
    /// instance took its name over) and has nothing in flight any more:
    /// no request will come to it again, and its serving loop may end.
    Drained {
        /// The instance.
        instance: u32,
    },
    /// A read-only view of another client's pool follows as the one attached fd.
    /// Sent before any descriptor that refers to that pool.
    PoolView {
        /// The pool's id (its owner's client id).
        pool: u32,
        /// Its size classes as `(chunk_size, count)`.
        classes: Vec<(u32, u32)>,
    },
    /// A pool's owner is gone; the view may be unmapped once no sample uses it.
    PoolGone {
        /// The pool's id.
        pool: u32,
    },
    /// A direct channel to a peer. Four fds follow: the channel segment,
    /// the peer's pool (read-only), the peer's doorbell, the peer's pidfd.
    DirectOpen(DirectInfo),
    /// A direct channel is closed (peer gone, or either side asked); fall back to the daemon.
    DirectClosed {
        /// The channel id.
        channel: u32,
        /// Why.
        reason: String,
        /// Whether the peer died (in-flight calls over the channel fail with "peer gone").
        peer_died: bool,
    },
    /// A copy of a brokered descriptor's header, for monitors.
    Traffic {
        /// Descriptor kind byte.
        kind: u8,
        /// Sender's client id.
        from: u32,
        /// Receiver's client id.
        to: u32,
        /// Route id.
        route: u32,
        /// Correlation id as the sender wrote it.
        correlation: u64,
        /// Payload size.
        len: u32,
        /// Sender's pid (from SO_PEERCRED).
        from_pid: i32,
        /// Receiver's pid (from SO_PEERCRED); 0 when `to` is 0.
        to_pid: i32,
    },
    /// The number of parties that spin changed (sent to clients that spin).
    Crowding(Crowding),
    /// The daemon asks this instance to drain and exit (it started it on
    /// demand and it has been idle for `stop_when_idle_s`): it gets no new
    /// requests; it should answer what it has, unregister and exit.
    DrainAsked {
        /// The instance.
        instance: u32,
        /// Why.
        reason: String,
    },
    /// A subscription ended without the client asking: a policy reload
    /// no longer allows it. Publications already on their way may follow.
    Unsubscribed {
        /// The topic's route id.
        route: u32,
        /// Why, for a person.
        reason: String,
    },
    /// The client's monitor stopped: a policy reload no longer allows it.
    MonitorStopped {
        /// Why, for a person.
        reason: String,
    },
    /// An instance was unregistered without its owner asking (a policy
    /// reload no longer lets it own the name); calls it was answering fail.
    Unregistered {
        /// The instance.
        instance: u32,
        /// Its route id.
        route: u32,
        /// Why, for a person.
        reason: String,
    },
}

/// Why a control request failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// Words for a person.
    pub message: String,
}

/// Kinds of control-plane failure.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request was malformed (bad name, bad id).
    BadRequest,
    /// The protocol or layout version differs.
    VersionMismatch,
    /// No such service, topic or instance.
    NotFound,
    /// The name is owned by another uid.
    NameOwned,
    /// Policy forbids it.
    AccessDenied,
    /// A per-uid quota is exhausted.
    QuotaExceeded,
    /// The daemon is shutting down.
    ShuttingDown,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Codes carried in the `aux` word of a [`crate::Kind::Error`] descriptor.
#[repr(u64)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataError {
    /// No service has this route.
    NoSuchService = 1,
    /// The service has no serving instance.
    NoInstance = 2,
    /// The deadline passed.
    DeadlineExceeded = 3,
    /// The instance died or left with the request in flight.
    PeerGone = 4,
    /// The payload is larger than the receiver accepts.
    PayloadTooLarge = 5,
    /// The sender's pool is exhausted.
    OutOfPool = 6,
    /// The receiver's queue is full.
    QueueFull = 7,
    /// The caller cancelled.
    Cancelled = 8,
    /// Policy forbids it.
    AccessDenied = 9,
    /// The service answered with an application error (payload says why).
    Service = 10,
    /// The sender's uid has as many requests in flight as it may
    /// (`limits.in_flight_per_uid`).
    QuotaExceeded = 11,
    /// The daemon started the service on demand and it failed before it
    /// registered; the inline payload says how (`exited with status 3`,
    /// `did not register in 5000 ms`).
    ActivationFailed = 12,
}

impl DataError {
    /// Decodes an `aux` word; unknown codes are reported as [`DataError::Service`].
    /// Only the low 32 bits hold the code: a [`DataError::Service`] error
    /// carries the service's own code in the high 32 (see [`service_code`]).
    pub fn from_aux(aux: u64) -> DataError {
        match aux & 0xffff_ffff {
            1 => DataError::NoSuchService,
            2 => DataError::NoInstance,
            3 => DataError::DeadlineExceeded,
            4 => DataError::PeerGone,
            5 => DataError::PayloadTooLarge,
            6 => DataError::OutOfPool,
            7 => DataError::QueueFull,
            8 => DataError::Cancelled,
            9 => DataError::AccessDenied,
            11 => DataError::QuotaExceeded,
            12 => DataError::ActivationFailed,
            _ => DataError::Service,
        }
    }
}

/// The `aux` word of a [`DataError::Service`] error carrying the service's
/// own error `code` (0: none given).
pub const fn service_aux(code: u32) -> u64 {
    DataError::Service as u64 | (code as u64) << 32
}

/// The service's own error code in the `aux` word of a [`DataError::Service`] error (0: none given).
pub const fn service_code(aux: u64) -> u32 {
    (aux >> 32) as u32
}

/// A control message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// Larger than [`MAX_MESSAGE`].
    TooLarge(usize),
    /// Empty datagram.
    Empty,
    /// The bytes do not validate as the expected message.
    Invalid(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "control message of {n} bytes exceeds {MAX_MESSAGE}"),
            Self::Empty => f.write_str("empty control message"),
            Self::Invalid(e) => write!(f, "malformed control message: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Encodes a message. Fails only if it would exceed [`MAX_MESSAGE`].
pub fn encode<T>(msg: &T) -> Result<rkyv::util::AlignedVec, CodecError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(msg).map_err(|e| CodecError::Invalid(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Validates and decodes a message received from a peer.
///
/// The bytes are copied into an aligned private buffer first, so the
/// caller's buffer needs no particular alignment.
pub fn decode<T>(bytes: &[u8]) -> Result<T, CodecError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + Deserialize<T, rkyv::rancor::Strategy<rkyv::de::Pool, rkyv::rancor::BoxedError>>,
{
    if bytes.is_empty() {
        return Err(CodecError::Empty);
    }
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    // BoxedError, not rancor's `Error`: in a release build that one says
    // only "failed without error information", and a peer's malformed
    // message must say what was wrong with it (the check's trace names the
    // field and the value).
    rkyv::from_bytes::<T, rkyv::rancor::BoxedError>(&aligned).map_err(|e| CodecError::Invalid(e.to_string()))
}

/// Checks a dotted name: 1..=[`MAX_NAME`] bytes of `[A-Za-z0-9_-]` segments joined by dots.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("name must be 1 to {MAX_NAME} bytes long"));
    }
    for part in name.split('.') {
        if part.is_empty() {
            return Err(format!("name {name:?} has an empty segment"));
        }
        if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            return Err(format!("name {name:?} contains {c:?}; use letters, digits, '_', '-' and '.'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_round_trip_and_rejects() {
        let theirs = Preamble { protocol: 9, schema: 0x1122_3344_5566_7788, layout: 42 };
        assert_eq!(Preamble::parse(&theirs.to_bytes()), Some(theirs));
        let first = encode_first(&ClientMessage { id: 1, request: Request::List }).unwrap();
        assert_eq!(Preamble::parse(&first), Some(Preamble::OURS));
        assert_eq!(decode::<ClientMessage>(&first[Preamble::LEN..]).unwrap().request, Request::List);
        // Too short, or no magic: not a preamble (an rkyv message, garbage).
        assert_eq!(Preamble::parse(&Preamble::OURS.to_bytes()[..Preamble::LEN - 1]), None);
        assert_eq!(Preamble::parse(&encode(&ClientMessage { id: 1, request: Request::List }).unwrap()), None);
        assert_eq!(Preamble::parse(&[0u8; 64]), None);
    }

    #[test]
    fn round_trip() {
        let m = ClientMessage {
            id: 7,
            request: Request::Register {
                name: "kv.store".into(),
                version: 2,
                weight: 1,
                exclusive: true,
                replace: false,
            },
        };
        let b = encode(&m).unwrap();
        assert_eq!(decode::<ClientMessage>(&b).unwrap(), m);
        let r = DaemonMessage::Reply {
            id: 7,
            result: Err(ErrorReply { code: ErrorCode::NameOwned, message: "owned".into() }),
        };
        assert_eq!(decode::<DaemonMessage>(&encode(&r).unwrap()).unwrap(), r);
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(decode::<ClientMessage>(&[]), Err(CodecError::Empty));
        let mut x = 1u32;
        for len in [1usize, 7, 16, 64, 300] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            assert!(decode::<ClientMessage>(&bytes).is_err());
        }
        let good = encode(&ClientMessage { id: 1, request: Request::List }).unwrap();
        assert!(decode::<ClientMessage>(&good[..good.len() - 3]).is_err(), "truncated");
        assert!(matches!(decode::<ClientMessage>(&vec![0; MAX_MESSAGE + 1]), Err(CodecError::TooLarge(_))));
    }

    /// A malformed message says what was wrong with it, in a release build
    /// too (rancor's `Error` said only "failed without error information").
    #[test]
    fn a_malformed_message_says_what_is_wrong() {
        let good = encode(&ClientMessage { id: 1, request: Request::Watch { prefix: "kv.".into() } }).unwrap();
        let mut errors = Vec::new();
        for at in 0..good.len() {
            let mut b = good.to_vec();
            b[at] = 0xff;
            if let Err(e) = decode::<ClientMessage>(&b) {
                errors.push(e.to_string());
            }
        }
        assert!(!errors.is_empty());
        for e in errors {
            assert!(!e.contains("without error information") && e.len() > 20, "{e}");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("kv.store").is_ok());
        assert!(check_name("camera.front-1").is_ok());
        for bad in ["", ".", "a..b", "a b", "a/b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
