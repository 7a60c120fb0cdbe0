//! Names, routes and service instances.
//!
//! A name gets a numeric route id the first time anyone registers,
//! resolves or subscribes to it, and keeps it for the daemon's life, so a
//! caller that resolved once keeps working while instances come and go
//! (hot replacement). The data plane only ever sees route and instance ids.

use hybus_layout::idhash::IdMap;

/// How the router picks among a name's serving instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Smooth weighted round-robin (nginx's): spreads by weight, evenly interleaved.
    #[default]
    WeightedRoundRobin,
    /// The instance with the fewest requests in flight (ties by weighted round-robin).
    LeastOutstanding,
}

/// One name.
#[derive(Debug)]
pub struct RouteEntry {
    /// The dotted name.
    pub name: String,
    /// Instances serving or draining this name, oldest first.
    pub instances: Vec<u32>,
    /// Clients subscribed (topics).
    pub subscribers: Vec<u32>,
    /// The uid that owns the name while it has instances.
    pub owner_uid: Option<u32>,
}

/// One registered instance.
#[derive(Debug)]
pub struct InstanceEntry {
    /// Its name's route.
    pub route: u32,
    /// The client that serves it.
    pub client: u32,
    /// Version it registered with.
    pub version: u32,
    /// Load-balancing weight (≥ 1).
    pub weight: u32,
    /// Draining: gets no new requests.
    pub draining: bool,
    /// Holds its name alone while serving (see [`Claim::exclusive`]).
    pub exclusive: bool,
    /// Its owner was told it drained ([`Event::Drained`](hybus_layout::control::Event::Drained)), once.
    pub told_drained: bool,
    /// Set for a *remote* instance (a bridge serves it for another host).
    pub remote: Option<hybus_layout::control::Remote>,
    /// Requests forwarded and not answered yet.
    pub outstanding: u32,
    /// Smooth-WRR state.
    current: i64,
    /// Traffic counters.
    pub stats: Counters,
}

/// Traffic counters of an instance.
#[derive(Debug, Clone)]
pub struct Counters {
    /// Descriptors delivered to it.
    pub messages_in: u64,
    /// Descriptors it sent.
    pub messages_out: u64,
    /// Payload bytes delivered to it.
    pub bytes_in: u64,
    /// Payload bytes it sent.
    pub bytes_out: u64,
    /// Error replies made on its behalf (peer gone, queue full).
    pub errors: u64,
    /// Request-to-answer latency in nanoseconds, as the daemon saw it.
    pub latency: hdrhistogram::Histogram<u64>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            errors: 0,
            // 1 ns .. 100 s at two significant digits: a few KiB per instance.
            latency: hdrhistogram::Histogram::new_with_bounds(1, 100_000_000_000, 2)
                .unwrap_or_else(|_| hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable!())),
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterError {
    /// Another uid owns the name.
    Owned {
        /// The owner.
        uid: u32,
    },
    /// The name is new and a limit on names was reached.
    TooManyNames(NameLimit),
    /// A serving instance holds the name alone (registered exclusive).
    HeldExclusively {
        /// That instance.
        instance: u32,
        /// Its client.
        client: u32,
    },
    /// An exclusive registration of a name others serve.
    Served {
        /// How many instances serve it.
        instances: usize,
    },
}

/// How a registration claims its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claim {
    /// Alone: refused while another instance serves the name, and while
    /// this one serves, registrations without `replace` are refused.
    pub exclusive: bool,
    /// Take over: every serving instance drains, the newcomer gets the new
    /// requests (an exclusive holder is replaced too: that is how an
    /// exclusive service is hot-replaced).
    pub replace: bool,
}

/// Why a new name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLimit {
    /// The bus holds [`Registry::max_names`] names.
    Bus {
        /// The limit.
        limit: usize,
    },
    /// The uid made [`Registry::max_names_per_uid`] names.
    Uid {
        /// Who asked.
        uid: u32,
        /// The limit.
        limit: usize,
    },
}

impl std::fmt::Display for NameLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bus { limit } => write!(f, "the bus holds {limit} names (limits.names reached)"),
            Self::Uid { uid, limit } => write!(f, "uid {uid} made {limit} names (limits.names_per_uid reached)"),
        }
    }
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    names: IdMap<String, u32>,
    routes: IdMap<u32, RouteEntry>,
    instances: IdMap<u32, InstanceEntry>,
    next_route: u32,
    next_instance: u32,
    /// How to pick instances.
    pub balance: Balance,
    /// Most names the registry holds (`limits.names`); 0 for no limit.
    ///
    /// A name keeps its route id for the daemon's lifetime, so that a
    /// client's resolved route stays valid while its service is replaced or
    /// restarted; without a bound, clients creating names (topics,
    /// registrations under fresh names) would grow the daemon without end.
    pub max_names: usize,
    /// Most names one uid may make (`limits.names_per_uid`); 0 for no limit.
    /// Without it, one uid could take every name the bus may hold and
    /// leave none for the others (quotas are charged per uid, DESIGN §7).
    pub max_names_per_uid: usize,
    /// Names made, by the uid that made them (a name is charged once, to
    /// whoever first registered, published on or subscribed to it).
    made_by: IdMap<u32, usize>,
}

impl Registry {
    /// An empty registry that holds at most `max_names` names, and at most
    /// `max_names_per_uid` made by one uid (0: no limit).
    pub fn with_limits(max_names: usize, max_names_per_uid: usize) -> Registry {
        Registry { max_names, max_names_per_uid, ..Registry::default() }
    }

    /// The route of `name`, made for `uid` if new; refused if it is new and
    /// a limit is reached.
    pub fn route_for(&mut self, name: &str, uid: u32) -> Result<u32, NameLimit> {
        if let Some(&r) = self.names.get(name) {
            return Ok(r);
        }
        if self.max_names != 0 && self.names.len() >= self.max_names {
            return Err(NameLimit::Bus { limit: self.max_names });
        }
        let made = self.made_by.entry(uid).or_default();
        if self.max_names_per_uid != 0 && *made >= self.max_names_per_uid {
            return Err(NameLimit::Uid { uid, limit: self.max_names_per_uid });
        }
        *made += 1;
        self.next_route += 1;
        let r = self.next_route;
        self.names.insert(name.to_owned(), r);
        self.routes.insert(
            r,
            RouteEntry { name: name.to_owned(), instances: Vec::new(), subscribers: Vec::new(), owner_uid: None },
        );
        Ok(r)
    }

    /// The instances of `route` that client `client` registered.
    pub fn of_client(&self, client: u32, route: u32) -> impl Iterator<Item = &InstanceEntry> {
        self.instances.values().filter(move |i| i.client == client && i.route == route)
    }

    /// The route of `name`, if it exists.
    pub fn lookup(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    /// A route.
    pub fn route(&self, route: u32) -> Option<&RouteEntry> {
        self.routes.get(&route)
    }

    /// A route, mutably.
    pub fn route_mut(&mut self, route: u32) -> Option<&mut RouteEntry> {
        self.routes.get_mut(&route)
    }

    /// An instance.
    pub fn instance(&self, id: u32) -> Option<&InstanceEntry> {
        self.instances.get(&id)
    }

    /// An instance, mutably.
    pub fn instance_mut(&mut self, id: u32) -> Option<&mut InstanceEntry> {
        self.instances.get_mut(&id)
    }

    /// All routes, by id.
    pub fn routes(&self) -> impl Iterator<Item = (u32, &RouteEntry)> {
        self.routes.iter().map(|(k, v)| (*k, v))
    }

    /// Adds an instance of `name` served by `client` (owned by `uid`), shared
    /// with the name's other instances.
    pub fn register(
        &mut self,
        name: &str,
        client: u32,
        uid: u32,
        version: u32,
        weight: u32,
    ) -> Result<(u32, u32), RegisterError> {
        self.register_as(name, client, uid, version, weight, Claim::default()).map(|(i, r, _)| (i, r))
    }

    /// Adds an instance of `name` served by `client` (owned by `uid`),
    /// claiming the name as `claim` says. Returns the instance, the route,
    /// and the instances it set draining (`claim.replace`).
    pub fn register_as(
        &mut self,
        name: &str,
        client: u32,
        uid: u32,
        version: u32,
        weight: u32,
        claim: Claim,
    ) -> Result<(u32, u32, Vec<u32>), RegisterError> {
        let route = self.route_for(name, uid).map_err(RegisterError::TooManyNames)?;
        let entry = self.routes.get(&route).ok_or(RegisterError::Owned { uid })?;
        if let Some(owner) = entry.owner_uid.filter(|&o| o != uid && !entry.instances.is_empty()) {
            return Err(RegisterError::Owned { uid: owner });
        }
        let serving: Vec<u32> =
            entry.instances.iter().copied().filter(|id| self.instances.get(id).is_some_and(|i| !i.draining)).collect();
        if !claim.replace {
            let holder = serving.iter().find_map(|id| self.instances.get(id).filter(|i| i.exclusive).map(|i| (*id, i)));
            if let Some((instance, i)) = holder {
                return Err(RegisterError::HeldExclusively { instance, client: i.client });
            }
            if claim.exclusive && !serving.is_empty() {
                return Err(RegisterError::Served { instances: serving.len() });
            }
        }
        let drained = if claim.replace { serving } else { Vec::new() };
        for id in &drained {
            if let Some(i) = self.instances.get_mut(id) {
                i.draining = true;
            }
        }
        let Some(entry) = self.routes.get_mut(&route) else {
            return Err(RegisterError::Owned { uid });
        };
        entry.owner_uid = Some(uid);
        let id = new_instance_id(&mut self.next_instance, &self.instances);
        entry.instances.push(id);
        self.instances.insert(
            id,
            InstanceEntry {
                route,
                client,
                version,
                weight: weight.max(1),
                draining: false,
                exclusive: claim.exclusive,
                told_drained: false,
                remote: None,
                outstanding: 0,
                current: 0,
                stats: Counters::default(),
            },
        );
        Ok((id, route, drained))
    }

    /// Removes an instance; returns it.
    pub fn unregister(&mut self, id: u32) -> Option<InstanceEntry> {
        let inst = self.instances.remove(&id)?;
        if let Some(r) = self.routes.get_mut(&inst.route) {
            r.instances.retain(|&i| i != id);
            if r.instances.is_empty() {
                r.owner_uid = None;
            }
        }
        Some(inst)
    }

    /// This registry, picking instances by `balance`.
    pub fn balanced(mut self, balance: Balance) -> Registry {
        self.balance = balance;
        self
    }

    /// Picks a serving instance of `route` for a new request.
    #[inline]
    pub fn pick(&mut self, route: u32) -> Option<u32> {
        let r = self.routes.get(&route)?;
        match r.instances.len() {
            0 => None,
            1 => {
                let id = r.instances[0];
                (!self.instances.get(&id)?.draining).then_some(id)
            }
            _ => {
                // Local first: a remote instance registered as a stand-in
                // (not `balance`) takes requests only while no local
                // instance of the name serves.
                let local_up = r
                    .instances
                    .iter()
                    .any(|id| self.instances.get(id).is_some_and(|i| !i.draining && i.remote.is_none()));
                let skip =
                    |i: &InstanceEntry| i.draining || (local_up && i.remote.as_ref().is_some_and(|rm| !rm.balance));
                // Least outstanding: only the instances with the fewest in
                // flight take part, and among them weighted round-robin
                // decides (always the first of a tie would leave the others
                // idle whenever requests come one at a time).
                let least = match self.balance {
                    Balance::LeastOutstanding => r
                        .instances
                        .iter()
                        .filter_map(|id| self.instances.get(id))
                        .filter(|i| !skip(i))
                        .map(|i| i.outstanding)
                        .min(),
                    Balance::WeightedRoundRobin => None,
                };
                let mut total = 0i64;
                let mut best: Option<(u32, i64)> = None;
                for &id in &r.instances {
                    let Some(i) = self.instances.get_mut(&id) else {
                        continue;
                    };
                    if skip(i) || least.is_some_and(|l| i.outstanding > l) {
                        continue;
                    }
                    i.current += i.weight as i64;
                    total += i.weight as i64;
                    if best.is_none_or(|(_, c)| i.current > c) {
                        best = Some((id, i.current));
                    }
                }
                let (id, _) = best?;
                if let Some(i) = self.instances.get_mut(&id) {
                    i.current -= total;
                }
                Some(id)
            }
        }
    }

    /// Instances served by `client`.
    pub fn instances_of(&self, client: u32) -> Vec<u32> {
        self.instances.iter().filter(|(_, i)| i.client == client).map(|(id, _)| *id).collect()
    }

    /// All instances.
    pub fn instances(&self) -> impl Iterator<Item = (u32, &InstanceEntry)> {
        self.instances.iter().map(|(k, v)| (*k, v))
    }
}

/// A fresh instance id after `last`: never 0, never one in `live`. Ids
/// wrap after 2³² registrations (a client that registers and unregisters
/// in a loop gets there in hours): an id taken again while its holder
/// lives would hand that instance's requests to the newcomer.
fn new_instance_id(last: &mut u32, live: &IdMap<u32, InstanceEntry>) -> u32 {
    loop {
        *last = last.wrapping_add(1);
        if *last != 0 && !live.contains_key(last) {
            return *last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stop_at_the_limit_and_keep_their_routes() {
        let mut r = Registry::with_limits(2, 0);
        let a = r.route_for("a", 1000).unwrap();
        let (_, b) = r.register("b", 1, 1000, 1, 1).unwrap();
        let full = NameLimit::Bus { limit: 2 };
        assert_eq!(r.route_for("c", 1001), Err(full));
        assert_eq!(r.register("c", 1, 1000, 1, 1), Err(RegisterError::TooManyNames(full)));
        // Names it holds stay usable, and keep their routes after their instances leave.
        assert_eq!(r.route_for("a", 1001), Ok(a));
        let (inst, again) = r.register("b", 2, 1000, 1, 1).unwrap();
        assert_eq!(again, b);
        r.unregister(inst);
        assert_eq!(r.route_for("b", 1000), Ok(b));
        assert!(Registry::with_limits(0, 0).route_for("any", 0).is_ok());
    }

    #[test]
    fn one_uid_cannot_take_every_name() {
        let mut r = Registry::with_limits(10, 2);
        r.route_for("a", 1000).unwrap();
        r.register("b", 1, 1000, 1, 1).unwrap();
        let limit = NameLimit::Uid { uid: 1000, limit: 2 };
        assert_eq!(r.route_for("c", 1000), Err(limit));
        assert_eq!(r.register("c", 1, 1000, 1, 1), Err(RegisterError::TooManyNames(limit)));
        // Names another uid made cost it nothing; other uids still make theirs.
        assert!(r.route_for("a", 1000).is_ok());
        assert!(r.route_for("c", 1001).is_ok());
        assert!(r.route_for("c", 1000).is_ok(), "an existing name is no new name");
    }

    #[test]
    fn weighted_round_robin_spreads_by_weight() {
        let mut r = Registry::default();
        let (a, route) = r.register("svc", 1, 1000, 1, 1).unwrap();
        let (b, _) = r.register("svc", 2, 1000, 1, 3).unwrap();
        let picks: Vec<u32> = (0..8).map(|_| r.pick(route).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == a).count(), 2);
        assert_eq!(picks.iter().filter(|&&p| p == b).count(), 6);
    }

    #[test]
    fn least_outstanding_skips_the_busy_and_shares_ties() {
        let mut r = Registry::default().balanced(Balance::LeastOutstanding);
        let (a, route) = r.register("svc", 1, 1000, 1, 1).unwrap();
        let (b, _) = r.register("svc", 2, 1000, 1, 1).unwrap();
        // Both idle: requests one at a time alternate.
        let picks: Vec<u32> = (0..4).map(|_| r.pick(route).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == a).count(), 2, "{picks:?}");
        // One busy: the other gets everything until it is as busy.
        r.instance_mut(a).unwrap().outstanding = 3;
        assert!((0..5).all(|_| r.pick(route) == Some(b)));
        r.instance_mut(b).unwrap().outstanding = 3;
        let picks: Vec<u32> = (0..4).map(|_| r.pick(route).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&p| p == a).count(), 2, "{picks:?}");
    }

    #[test]
    fn remote_instances_stand_in_only_while_no_local_one_serves() {
        use hybus_layout::control::Remote;
        for balance in [Balance::WeightedRoundRobin, Balance::LeastOutstanding] {
            let mut r = Registry::default().balanced(balance);
            let (far, route) = r.register("svc", 1, 1000, 1, 1).unwrap();
            r.instance_mut(far).unwrap().remote = Some(Remote { via: "b".into(), balance: false });
            // Alone, the remote instance serves.
            assert_eq!(r.pick(route), Some(far));
            let (near, _) = r.register("svc", 2, 1000, 1, 1).unwrap();
            assert!((0..6).all(|_| r.pick(route) == Some(near)), "local first");
            // The local one drains: the remote one takes over.
            r.instance_mut(near).unwrap().draining = true;
            assert!((0..3).all(|_| r.pick(route) == Some(far)));
            r.instance_mut(near).unwrap().draining = false;
            // prefer = "balance": both share.
            r.instance_mut(far).unwrap().remote = Some(Remote { via: "b".into(), balance: true });
            let picks: Vec<u32> = (0..4).map(|_| r.pick(route).unwrap()).collect();
            assert_eq!(picks.iter().filter(|&&p| p == far).count(), 2, "{picks:?}");
        }
    }

    #[test]
    fn draining_gets_nothing_and_ownership_holds() {
        let mut r = Registry::default();
        let (a, route) = r.register("svc", 1, 1000, 1, 1).unwrap();
        assert_eq!(r.register("svc", 3, 1001, 1, 1), Err(RegisterError::Owned { uid: 1000 }));
        let (b, _) = r.register("svc", 2, 1000, 2, 1).unwrap();
        r.instance_mut(a).unwrap().draining = true;
        assert!((0..5).all(|_| r.pick(route) == Some(b)));
        r.unregister(b);
        assert_eq!(r.pick(route), None);
        r.unregister(a);
        assert!(r.register("svc", 3, 1001, 1, 1).is_ok(), "a name with no instances is free");
        assert_eq!(r.lookup("svc"), Some(route), "route ids are stable");
    }

    #[test]
    fn exclusive_names_refuse_others_and_replace_drains_them() {
        let mut r = Registry::default();
        let alone = Claim { exclusive: true, replace: false };
        let (a, route, _) = r.register_as("svc", 1, 1000, 1, 1, alone).unwrap();
        // Held alone: neither a shared nor another exclusive instance gets in.
        assert_eq!(r.register("svc", 2, 1000, 1, 1), Err(RegisterError::HeldExclusively { instance: a, client: 1 }));
        assert_eq!(
            r.register_as("svc", 2, 1000, 1, 1, alone),
            Err(RegisterError::HeldExclusively { instance: a, client: 1 })
        );
        // Another uid is refused as before, replace or not.
        let take = Claim { exclusive: false, replace: true };
        assert_eq!(r.register_as("svc", 9, 1001, 1, 1, take), Err(RegisterError::Owned { uid: 1000 }));
        // Replace takes over: the holder drains, the newcomer gets the requests.
        let (b, _, drained) = r.register_as("svc", 2, 1000, 2, 1, take).unwrap();
        assert_eq!(drained, vec![a]);
        assert!(r.instance(a).unwrap().draining);
        assert!((0..4).all(|_| r.pick(route) == Some(b)));
        // A draining holder holds nothing; a shared name refuses an exclusive claim.
        let (c, _) = r.register("svc", 3, 1000, 1, 1).unwrap();
        assert_eq!(r.register_as("svc", 4, 1000, 1, 1, alone), Err(RegisterError::Served { instances: 2 }));
        let both = Claim { exclusive: true, replace: true };
        let (d, _, drained) = r.register_as("svc", 4, 1000, 3, 1, both).unwrap();
        assert_eq!(drained, vec![b, c]);
        assert_eq!(r.register("svc", 5, 1000, 1, 1), Err(RegisterError::HeldExclusively { instance: d, client: 4 }));
    }

    #[test]
    fn instance_ids_wrap_around_the_live_ones() {
        let mut r = Registry::default();
        let (first, _) = r.register("svc.a", 1, 1000, 1, 1).unwrap();
        assert_eq!(first, 1);
        r.next_instance = u32::MAX - 1;
        let (a, _) = r.register("svc.b", 2, 1000, 1, 1).unwrap();
        let (b, _) = r.register("svc.b", 3, 1000, 1, 1).unwrap();
        assert_eq!((a, b), (u32::MAX, 2), "0 and the live 1 are skipped");
        assert_eq!(r.instance(1).map(|i| i.client), Some(1), "the live instance keeps its id");
    }
}
