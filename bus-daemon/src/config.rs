//! The daemon's configuration, read from a TOML file.
//!
//! Every field has a default, so an empty file (or none) is a working
//! configuration for a user bus. Reloaded on SIGHUP.

use std::path::{Path, PathBuf};

use hybus_layout::pool::{PoolGeometry, SizeClass, DEFAULT_CLASSES};
use hybus_layout::IdleStrategy;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Socket path; `--socket` and `HYBUS_SOCKET` override it.
    pub socket: Option<PathBuf>,
    /// Mode bits of the socket file (who may connect), e.g. `0o660`.
    pub socket_mode: u32,
    /// Group of the socket file (a name or a number): with a mode like
    /// 0o660, only its members (and the owner) may connect. Absent: the
    /// daemon's own group. (Under systemd, `SocketGroup=` does this.)
    pub socket_group: Option<String>,
    /// Capacity of each client ring (power of two).
    pub ring_capacity: u64,
    /// Size classes of each client's pool.
    pub pool: Vec<PoolClass>,
    /// How the daemon waits for traffic.
    pub idle: IdleConfig,
    /// Limits.
    pub limits: Limits,
    /// Who may do what.
    pub policy: Policy,
    /// Force the epoll event loop even where io_uring works.
    pub force_epoll: bool,
    /// Pairs that always talk over a direct channel.
    pub direct: Vec<DirectPair>,
    /// Automatic promotion of busy brokered pairs to direct channels.
    pub promotion: Promotion,
    /// How topics treat slow subscribers (`[[topic]]`, first match wins;
    /// topics no entry matches drop the oldest).
    pub topic: Vec<TopicRule>,
    /// How a request picks among a name's instances:
    /// `"weighted-round-robin"` (default) or `"least-outstanding"`.
    pub balance: crate::registry::Balance,
    /// On SIGTERM: milliseconds requests and streams in flight may take to
    /// finish before every client is disconnected (default 2000).
    pub shutdown_grace_ms: u64,
    /// Names the daemon starts on demand (`[[activate]]`), see
    /// [`crate::activation`].
    pub activate: Vec<Activate>,
}

/// An `[[activate]]` entry: a service name whose process the daemon starts
/// when a client resolves or calls it and no instance serves it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Activate {
    /// The service name (exact).
    pub name: String,
    /// The program and its arguments, started directly (no shell). One of
    /// `exec` and `unit`.
    #[serde(default)]
    pub exec: Vec<String>,
    /// A systemd unit to start instead (`systemctl start --no-block UNIT`).
    pub unit: Option<String>,
    /// The user to run `exec` as (a name or a number); only when hybusd
    /// runs as root. Absent: hybusd's own user.
    pub user: Option<String>,
    /// Environment variables added to hybusd's own for `exec`
    /// (`HYBUS_SOCKET` is always set to the daemon's socket).
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
    /// Milliseconds the process has to register the name, from its start;
    /// past it, the held requests fail and the process is killed.
    #[serde(default = "Activate::default_timeout_ms")]
    pub timeout_ms: u64,
    /// Seconds without a request after which an instance the daemon started
    /// is asked to drain and exit (0: never).
    #[serde(default)]
    pub stop_when_idle_s: u64,
    /// Requests (and fires) held while the process starts; past it, a
    /// request fails with "queue full".
    #[serde(default = "Activate::default_max_held")]
    pub max_held: u32,
    /// Milliseconds the first start after a failed one waits; doubled per
    /// failure in a row, up to `max_backoff_ms`.
    #[serde(default = "Activate::default_backoff_ms")]
    pub backoff_ms: u64,
    /// Longest back-off, in milliseconds.
    #[serde(default = "Activate::default_max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Activate {
    fn default_timeout_ms() -> u64 {
        5000
    }
    fn default_max_held() -> u32 {
        1024
    }
    fn default_backoff_ms() -> u64 {
        100
    }
    fn default_max_backoff_ms() -> u64 {
        30_000
    }

    /// Checks one entry (names, one of exec and unit, bounds).
    fn check(&self) -> anyhow::Result<()> {
        let n = &self.name;
        hybus_layout::control::check_name(n).map_err(|e| anyhow::anyhow!("[[activate]] {n:?}: {e}"))?;
        match (&self.unit, self.exec.is_empty()) {
            (Some(_), false) => anyhow::bail!("[[activate]] {n:?}: give exec or unit, not both"),
            (None, true) => anyhow::bail!("[[activate]] {n:?}: give exec (a program and its arguments) or unit"),
            (Some(u), true) => {
                anyhow::ensure!(!u.is_empty() && !u.starts_with('-'), "[[activate]] {n:?}: bad unit name {u:?}");
                anyhow::ensure!(
                    self.user.is_none() && self.environment.is_empty(),
                    "[[activate]] {n:?}: user and environment belong in the unit file when unit is given"
                );
            }
            (None, false) => anyhow::ensure!(!self.exec[0].is_empty(), "[[activate]] {n:?}: empty program name"),
        }
        anyhow::ensure!(self.timeout_ms > 0, "[[activate]] {n:?}: timeout_ms must be at least 1");
        anyhow::ensure!(self.max_held > 0, "[[activate]] {n:?}: max_held must be at least 1");
        anyhow::ensure!(
            self.backoff_ms <= self.max_backoff_ms,
            "[[activate]] {n:?}: backoff_ms is more than max_backoff_ms"
        );
        Ok(())
    }
}

/// A `[[topic]]` entry: what a topic whose name starts with `prefix` does
/// with a subscriber that does not keep up.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Topic name prefix (`""` for every topic).
    #[serde(default)]
    pub prefix: String,
    /// What happens once the subscriber's queue is full.
    #[serde(default)]
    pub slow: SlowPolicy,
    /// Publications (with whatever else waits for the subscriber) the daemon
    /// queues for one subscriber whose ring is full; at most, and by
    /// default, `limits.queue_per_client`.
    pub queue: Option<u32>,
}

/// What a topic does with a subscriber whose queue is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SlowPolicy {
    /// Drop that subscriber's oldest queued publication (it counts as a
    /// drop in its statistics); the others get everything.
    #[default]
    DropOldest,
    /// Disconnect the subscriber: for topics where a gap is worse than
    /// starting over (it may reconnect and subscribe again).
    Disconnect,
}

/// A `[[direct]]` pair: a client that owns `caller` gets a direct channel
/// to `service` when it resolves it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectPair {
    /// A name the calling client has registered.
    pub caller: String,
    /// The service it calls.
    pub service: String,
    /// Only for callers of this uid.
    pub uid: Option<u32>,
}

/// `[promotion]`: make a pair direct when its brokered traffic stays high.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Promotion {
    /// Off by default.
    pub enabled: bool,
    /// Messages per second (caller → service) that count as busy.
    pub min_rate: u64,
    /// How long the rate must hold, in milliseconds.
    pub for_ms: u64,
}

impl Default for Promotion {
    fn default() -> Self {
        Promotion { enabled: false, min_rate: 10_000, for_ms: 1_000 }
    }
}

/// One pool size class.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolClass {
    /// Bytes per chunk (multiple of 64).
    pub chunk_size: u32,
    /// Number of chunks.
    pub count: u32,
}

/// The daemon's idle strategy.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleConfig {
    /// Spins before yielding.
    pub spins: u32,
    /// Yields before parking.
    pub yields: u32,
    /// Park (sleep on the doorbells) once spins and yields are spent;
    /// `false` keeps spinning, then yielding, for as long as any client is
    /// connected: the lowest brokered latency, a core's worth of CPU.
    pub park: bool,
}

/// Limits, per uid unless said otherwise.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections per uid.
    pub connections_per_uid: u32,
    /// Registered instances per uid.
    pub instances_per_uid: u32,
    /// Subscriptions per uid.
    pub subscriptions_per_uid: u32,
    /// Requests and streams one uid may have waiting for an answer (across
    /// its connections); past it a request is refused at once. 0: no limit.
    pub in_flight_per_uid: u32,
    /// Milliseconds a new connection has to say Hello.
    pub hello_timeout_ms: u64,
    /// Connections per uid that have not said Hello yet. Past it the
    /// oldest of them is let go (it is counted apart from
    /// `connections_per_uid`, so that silent connections cannot lock out
    /// the uid's tools, which say Hello at once).
    pub pre_hello_per_uid: u32,
    /// Percent of one size class of another client's pool that one uid (all
    /// its connections together) may hold at once as publications and
    /// answers it has not dropped: past it the oldest is taken back (or the
    /// holder cut off, for a topic whose rule is `disconnect`), so a
    /// receiver that hoards can never empty a sender's pool. 1 to 100.
    pub held_share_percent: u32,
    /// Descriptors the daemon queues for a client whose ring is full.
    pub queue_per_client: u32,
    /// Names (services and topics) the bus holds, for all uids together; 0
    /// for no limit. A name keeps its route id while the daemon runs.
    pub names: u32,
    /// Names one uid may make (the first to register, publish on or
    /// subscribe to a name makes it); 0 for no limit. Keeps one uid from
    /// taking every name the bus may hold.
    pub names_per_uid: u32,
    /// Bytes of pools (one per connection, of the `[[pool]]` geometry) one
    /// uid may hold; 0 (default) for no limit beyond `connections_per_uid`.
    pub pool_bytes_per_uid: u64,
    /// New direct channels per second the daemon opens for one caller uid
    /// (asked for, or for a configured `[[direct]]` pair); past it a
    /// request is refused with `QuotaExceeded`. 0 for no limit.
    pub direct_opens_per_s: u32,
    /// Direct channel opens one caller uid may save up and make at once
    /// (the token bucket's size); at least 1.
    pub direct_open_burst: u32,
}

/// Access policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// `true`: deny everything not allowed by a rule (system bus). `false`
    /// (default, user bus): the daemon's own uid may do everything, as root
    /// may; other uids only what a rule allows (`allow = ["all"]` with no
    /// `uid` opens the bus to everyone who can connect).
    pub default_deny: bool,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
}

/// One policy rule: a uid, a gid, both or anyone may do `actions` on
/// names under `prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The uid this applies to; absent for any.
    pub uid: Option<u32>,
    /// The (primary) gid this applies to, as the kernel reports the
    /// connecting process's credentials; absent for any.
    pub gid: Option<u32>,
    /// Name prefix ("" for all names).
    #[serde(default)]
    pub prefix: String,
    /// Allowed actions: "own", "call", "subscribe", "publish", "monitor", "direct".
    pub allow: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            socket_mode: 0o666,
            socket_group: None,
            ring_capacity: 1024,
            pool: DEFAULT_CLASSES.iter().map(|c| PoolClass { chunk_size: c.chunk_size, count: c.count }).collect(),
            idle: IdleConfig::default(),
            limits: Limits::default(),
            policy: Policy::default(),
            force_epoll: false,
            direct: Vec::new(),
            promotion: Promotion::default(),
            topic: Vec::new(),
            balance: crate::registry::Balance::default(),
            shutdown_grace_ms: 2000,
            activate: Vec::new(),
        }
    }
}

impl Default for IdleConfig {
    fn default() -> Self {
        IdleConfig { spins: IdleStrategy::DEFAULT.spins, yields: IdleStrategy::DEFAULT.yields, park: true }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_per_uid: 4096,
            instances_per_uid: 4096,
            subscriptions_per_uid: 4096,
            in_flight_per_uid: 65536,
            hello_timeout_ms: 5000,
            pre_hello_per_uid: 64,
            held_share_percent: 50,
            queue_per_client: 65536,
            names: 65536,
            names_per_uid: 16384,
            pool_bytes_per_uid: 0,
            direct_opens_per_s: 20,
            direct_open_burst: 40,
        }
    }
}

/// Actions a policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Register an instance of a name.
    Own,
    /// Call or fire at a name.
    Call,
    /// Subscribe to a topic.
    Subscribe,
    /// Publish on a topic.
    Publish,
    /// Tap traffic.
    Monitor,
    /// Open a direct channel to a service.
    Direct,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Own => "own",
            Action::Call => "call",
            Action::Subscribe => "subscribe",
            Action::Publish => "publish",
            Action::Monitor => "monitor",
            Action::Direct => "direct",
        }
    }
}

/// Who asks: the connecting process's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl Rule {
    fn applies_to(&self, who: Who) -> bool {
        self.uid.is_none_or(|u| u == who.uid) && self.gid.is_none_or(|g| g == who.gid)
    }
}

impl Policy {
    /// Whether `who` may do `action` on `name` on a bus run by uid `owner`.
    /// Root may always; then the first rule that matches and allows;
    /// otherwise only `owner`, and only unless [`default_deny`](Self::default_deny).
    pub fn allows(&self, who: Who, owner: u32, action: Action, name: &str) -> bool {
        let uid = who.uid;
        if uid == 0 {
            return true;
        }
        for r in &self.rules {
            if !r.applies_to(who) || !name.starts_with(&r.prefix) {
                continue;
            }
            if r.allow.iter().any(|a| a == action.word() || a == "all") {
                return true;
            }
        }
        !self.default_deny && uid == owner
    }

    /// Whether `uid` may do everything on a bus run by `owner` (its
    /// messages then need no check): root, the owner of a bus that does not
    /// deny by default, or anyone under a rule for all uids and names that
    /// allows all.
    pub fn trusts(&self, who: Who, owner: u32) -> bool {
        who.uid == 0
            || (!self.default_deny && who.uid == owner)
            || self.rules.iter().any(|r| r.applies_to(who) && r.prefix.is_empty() && r.allow.iter().any(|a| a == "all"))
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("bad config {}", path.display()))
    }

    /// Parses and checks the text of a configuration file.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let c: Config = toml::from_str(text)?;
        c.check()?;
        Ok(c)
    }

    /// Checks values that TOML types cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.ring_capacity.is_power_of_two()
                && (16..=hybus_layout::ring::MAX_CAPACITY).contains(&self.ring_capacity),
            "ring_capacity {} must be a power of two between 16 and {}",
            self.ring_capacity,
            hybus_layout::ring::MAX_CAPACITY
        );
        self.pool_geometry()?;
        anyhow::ensure!(
            (1..=100).contains(&self.limits.held_share_percent),
            "limits.held_share_percent {} must be between 1 and 100",
            self.limits.held_share_percent
        );
        anyhow::ensure!(self.limits.direct_open_burst >= 1, "limits.direct_open_burst must be at least 1");
        for t in &self.topic {
            anyhow::ensure!(t.queue != Some(0), "[[topic]] {:?}: queue must be at least 1", t.prefix);
        }
        for (i, a) in self.activate.iter().enumerate() {
            a.check()?;
            anyhow::ensure!(
                !self.activate[..i].iter().any(|b| b.name == a.name),
                "[[activate]] {:?} is declared twice",
                a.name
            );
        }
        for r in &self.policy.rules {
            for a in &r.allow {
                anyhow::ensure!(
                    ["own", "call", "subscribe", "publish", "monitor", "direct", "all"].contains(&a.as_str()),
                    "unknown policy action {a:?}"
                );
            }
        }
        Ok(())
    }

    /// The pool geometry every client gets.
    pub fn pool_geometry(&self) -> anyhow::Result<PoolGeometry> {
        let classes: Vec<SizeClass> =
            self.pool.iter().map(|c| SizeClass { chunk_size: c.chunk_size, count: c.count }).collect();
        PoolGeometry::new(&classes).map_err(|e| anyhow::anyhow!("pool: {e}"))
    }

    /// What a topic named `name` does with slow subscribers, and how many
    /// descriptors it queues for one of them (the first matching
    /// `[[topic]]`, capped by `limits.queue_per_client`).
    pub fn topic_rule(&self, name: &str) -> (SlowPolicy, usize) {
        let all = self.limits.queue_per_client;
        match self.topic.iter().find(|t| name.starts_with(t.prefix.as_str())) {
            Some(t) => (t.slow, t.queue.map_or(all, |q| q.min(all)) as usize),
            None => (SlowPolicy::DropOldest, all as usize),
        }
    }

    /// The daemon's idle strategy.
    pub fn idle_strategy(&self) -> IdleStrategy {
        IdleStrategy { spins: self.idle.spins, yields: self.idle.yields, park: self.idle.park }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Balance;

    #[test]
    fn empty_is_default_and_valid() {
        let c: Config = toml::from_str("").unwrap();
        c.check().unwrap();
        assert_eq!(c.ring_capacity, 1024);
    }

    #[test]
    fn bad_values_are_refused() {
        let c: Config = toml::from_str("ring_capacity = 1000").unwrap();
        assert!(c.check().is_err());
        assert!(toml::from_str::<Config>("nonsense = 1").is_err());
        let c: Config = toml::from_str("[[pool]]\nchunk_size = 100\ncount = 1").unwrap();
        assert!(c.check().is_err());
    }

    #[test]
    fn topic_rules() {
        let c = Config::parse(
            "[limits]\nqueue_per_client = 100\n\
             [[topic]]\nprefix = \"camera.raw\"\nslow = \"disconnect\"\nqueue = 8\n\
             [[topic]]\nprefix = \"camera.\"\nqueue = 1000\n",
        )
        .unwrap();
        // First match wins; the queue is capped by the per-client limit.
        assert_eq!(c.topic_rule("camera.raw.left"), (SlowPolicy::Disconnect, 8));
        assert_eq!(c.topic_rule("camera.front"), (SlowPolicy::DropOldest, 100));
        assert_eq!(c.topic_rule("kv.log"), (SlowPolicy::DropOldest, 100));
        assert!(Config::parse("[[topic]]\nslow = \"wait\"\n").is_err());
        assert_eq!(Config::parse("balance = \"least-outstanding\"\n").unwrap().balance, Balance::LeastOutstanding);
        assert_eq!(Config::default().balance, Balance::WeightedRoundRobin);
        assert!(Config::parse("balance = \"random\"\n").is_err());
        assert!(Config::parse("[[topic]]\nprefix = \"a.\"\nqueue = 0\n").is_err());
    }

    #[test]
    fn activate_entries() {
        let c = Config::parse(
            "[[activate]]\nname = \"kv.store\"\nexec = [\"/bin/kv\", \"--cache\", \"64\"]\n\
             environment = { RUST_LOG = \"info\" }\ntimeout_ms = 2000\nstop_when_idle_s = 30\n\
             [[activate]]\nname = \"cam\"\nunit = \"cam.service\"\n",
        )
        .unwrap();
        assert_eq!(c.activate.len(), 2);
        assert_eq!(c.activate[0].exec[1], "--cache");
        assert_eq!(c.activate[0].environment["RUST_LOG"], "info");
        assert_eq!((c.activate[0].timeout_ms, c.activate[0].max_held), (2000, 1024));
        assert_eq!(c.activate[1].unit.as_deref(), Some("cam.service"));
        for bad in [
            "[[activate]]\nname = \"a\"\n",
            "[[activate]]\nname = \"a\"\nexec = [\"x\"]\nunit = \"u\"\n",
            "[[activate]]\nname = \"a\"\nexec = [\"x\"]\nmax_held = 0\n",
            "[[activate]]\nname = \"a\"\nexec = [\"x\"]\nshell = true\n",
            "[[activate]]\nname = \"a\"\nexec = [\"x\"]\n[[activate]]\nname = \"a\"\nexec = [\"y\"]\n",
            "[[activate]]\nname = \"\"\nexec = [\"x\"]\n",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn direct_open_limits() {
        let l = Config::default().limits;
        assert_eq!((l.direct_opens_per_s, l.direct_open_burst), (20, 40));
        let c = Config::parse("[limits]\ndirect_opens_per_s = 0\ndirect_open_burst = 1\n").unwrap();
        assert_eq!((c.limits.direct_opens_per_s, c.limits.direct_open_burst), (0, 1));
        assert!(Config::parse("[limits]\ndirect_open_burst = 0\n").is_err());
        assert!(Config::parse("[limits]\ndirect_opens_per_s = -1\n").is_err());
        assert!(Config::parse("[limits]\ndirect_opens_per_s = \"fast\"\n").is_err());
        assert!(Config::parse("[limits]\ndirect_opens_per_sec = 5\n").is_err());
    }

    /// A uid with gid 100.
    fn who(uid: u32) -> Who {
        Who { uid, gid: 100 }
    }

    #[test]
    fn policy() {
        let c: Config = toml::from_str(
            "[policy]\ndefault_deny = true\n[[policy.rules]]\nuid = 1000\nprefix = \"kv.\"\nallow = [\"own\"]\n",
        )
        .unwrap();
        assert!(c.policy.allows(who(1000), 1000, Action::Own, "kv.store"));
        assert!(!c.policy.allows(who(1000), 1000, Action::Own, "camera"));
        assert!(!c.policy.allows(who(1001), 1000, Action::Own, "kv.store"));
        assert!(c.policy.allows(who(0), 1000, Action::Own, "anything"));
        // A user bus: its owner (and root) may do everything, others what a rule allows.
        let c: Config = toml::from_str(
            "[[policy.rules]]
prefix = \"pub.\"
allow = [\"call\"]
",
        )
        .unwrap();
        assert!(c.policy.allows(who(1000), 1000, Action::Own, "kv.store"));
        assert!(!c.policy.allows(who(1001), 1000, Action::Own, "kv.store"));
        assert!(c.policy.allows(who(1001), 1000, Action::Call, "pub.time"));
        assert!(!c.policy.allows(who(1001), 1000, Action::Call, "kv.store"));
        assert!(c.policy.trusts(who(1000), 1000) && c.policy.trusts(who(0), 1000) && !c.policy.trusts(who(1001), 1000));
        let open: Config = toml::from_str(
            "[[policy.rules]]
allow = [\"all\"]
",
        )
        .unwrap();
        assert!(open.policy.allows(who(1001), 1000, Action::Publish, "anything"));
        assert!(open.policy.trusts(who(1001), 1000));
        // By group.
        let c: Config =
            toml::from_str("[[policy.rules]]\ngid = 44\nprefix = \"camera.\"\nallow = [\"subscribe\"]\n").unwrap();
        assert!(c.policy.allows(Who { uid: 1001, gid: 44 }, 1000, Action::Subscribe, "camera.front"));
        assert!(!c.policy.allows(who(1001), 1000, Action::Subscribe, "camera.front"));
    }
}
