//! Requests and streams in flight: the daemon's correlation table.
//!
//! A caller numbers its exchanges itself; the daemon gives each one its
//! own id when it forwards it to a server, so that ids from different
//! callers never collide at the server. The table maps both ways.

use std::collections::HashMap;

use hybus_layout::idhash::IdMap;

/// Credits of a stream or channel, enforced by the daemon so that a sender
/// that ignores them is caught rather than trusted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credits {
    /// Items the server may still send to the caller.
    pub to_caller: u64,
    /// Items the caller may still send to the server (channels only).
    pub to_server: u64,
    /// The server ended its direction.
    pub server_ended: bool,
    /// The caller ended its direction.
    pub caller_ended: bool,
}

/// One exchange in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The client that started it.
    pub caller: u32,
    /// Its uid (in-flight exchanges are counted per uid).
    pub caller_uid: u32,
    /// The caller's correlation id.
    pub caller_corr: u64,
    /// The route the caller addressed.
    pub route: u32,
    /// The client that serves it.
    pub server: u32,
    /// The serving instance.
    pub instance: u32,
    /// Present for streams and channels.
    pub stream: Option<Credits>,
    /// When the daemon forwarded it (for the latency histogram).
    pub opened: std::time::Instant,
}

/// The table.
#[derive(Debug, Default)]
pub struct Exchanges {
    by_id: IdMap<u64, Exchange>,
    /// Keyed by ids callers choose, in one table for all of them: with
    /// `IdHasher`, whose low bits follow the key's, ids like `i << 32`
    /// all start their probe in one place, and one caller's 65 536 of them
    /// would slow every lookup of everyone. std's keyed SipHash, here only
    /// (two lookups an exchange, beside a brokered round trip of µs).
    by_caller: HashMap<(u32, u64), u64>,
    /// Exchanges in flight by caller uid.
    per_uid: IdMap<u32, u32>,
    next: u64,
}

/// Why an exchange was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The caller already uses its correlation id for another one (a protocol violation).
    Duplicate,
    /// The caller's uid has `limit` in flight.
    Quota,
}

impl Exchanges {
    /// Starts an exchange; returns the daemon's id for it. Refused if the
    /// caller already uses `caller_corr` for another one, or if its uid has
    /// `per_uid` in flight (0: no limit).
    ///
    /// Why a limit: each exchange is an entry here until the server
    /// answers, and a server may never answer; without one, callers could
    /// grow the daemon's memory without bound.
    pub fn open(&mut self, ex: Exchange, per_uid: u32) -> Result<u64, Refused> {
        use std::collections::hash_map::Entry;
        if per_uid > 0 && self.per_uid.get(&ex.caller_uid).is_some_and(|&n| n >= per_uid) {
            return Err(Refused::Quota);
        }
        match self.by_caller.entry((ex.caller, ex.caller_corr)) {
            Entry::Occupied(_) => Err(Refused::Duplicate),
            Entry::Vacant(v) => {
                self.next += 1;
                let id = self.next;
                v.insert(id);
                self.by_id.insert(id, ex);
                *self.per_uid.entry(ex.caller_uid).or_default() += 1;
                Ok(id)
            }
        }
    }

    /// The exchange with the daemon's id `id`.
    pub fn get(&self, id: u64) -> Option<&Exchange> {
        self.by_id.get(&id)
    }

    /// The exchange with the daemon's id `id`, to change.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Exchange> {
        self.by_id.get_mut(&id)
    }

    /// The daemon's id of the caller's exchange `corr`.
    pub fn id_of(&self, caller: u32, corr: u64) -> Option<u64> {
        self.by_caller.get(&(caller, corr)).copied()
    }

    /// Ends an exchange.
    pub fn close(&mut self, id: u64) -> Option<Exchange> {
        let ex = self.by_id.remove(&id)?;
        self.by_caller.remove(&(ex.caller, ex.caller_corr));
        if let Some(n) = self.per_uid.get_mut(&ex.caller_uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&ex.caller_uid);
            }
        }
        Some(ex)
    }

    /// Removes and returns every exchange matching `f`.
    pub fn drain_where(&mut self, mut f: impl FnMut(&Exchange) -> bool) -> Vec<(u64, Exchange)> {
        let ids: Vec<u64> = self.by_id.iter().filter(|(_, e)| f(e)).map(|(id, _)| *id).collect();
        ids.into_iter().filter_map(|id| self.close(id).map(|e| (id, e))).collect()
    }

    /// Exchanges in flight.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none are in flight.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
