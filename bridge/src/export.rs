//! Export: local service instances made reachable from other hosts.
//!
//! The registry thread watches the local daemon and keeps, for every
//! serving instance of an exported name, a Zenoh queryable (requests), a
//! subscriber (fires) and a liveliness token (what importers see) under
//! its [`InstanceKey`]. An instance a bridge registered (a *remote* one) is
//! never exported: that is what keeps services from going round in loops.
//!
//! Each query becomes a local call on the name: the daemon picks the
//! instance, as for any local caller. Its deadline is the one the
//! importing bridge attached (what its caller had left), capped by
//! `call_timeout_ms`. The answer goes back as the reply; an error goes
//! back as a reply error that keeps its hybus kind ([`crate::wire`]). A
//! cancel the importing bridge puts on the instance's cancel key (its
//! caller gave up) cancels the local call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, BusEvent, CallCanceller, PendingCall, Route, INLINE_PAYLOAD};
use zenoh::bytes::ZBytes;
use zenoh::liveliness::LivelinessToken;
use zenoh::pubsub::Subscriber;
use zenoh::query::{Query, Queryable};
use zenoh::sample::Sample;
use zenoh::Wait;

use crate::bridge::Ctx;
use crate::keys::InstanceKey;
use crate::workers::Workers;
use crate::{payload, wire};

/// How often the registry is read even without an event.
const RESCAN: Duration = Duration::from_millis(500);

/// Most calls forwarded at once (each waits on a thread of its own).
const MAX_WORKERS: usize = 256;

/// How long Zenoh's thread waits for a local answer itself before it hands
/// the wait to a worker: long enough for a fast local service (a worker's
/// wake-up costs about as much again), short enough not to hold up Zenoh.
const INLINE_WAIT: Duration = Duration::from_micros(200);

/// What is declared on Zenoh for one exported instance. The token is
/// dropped (undeclared) first: importers stop sending before the
/// queryable goes.
struct Exported {
    _token: LivelinessToken,
    _queryable: Queryable<()>,
    _fires: Subscriber<()>,
    _cancels: Subscriber<()>,
}

/// The connection forwarded calls use, and the routes resolved on it.
struct Caller {
    bus: Bus,
    routes: std::sync::Mutex<HashMap<String, Arc<Route>>>,
    workers: Workers,
    max_timeout: Duration,
    /// The calls in flight whose query can be cancelled, by cancel tag.
    cancellable: std::sync::Mutex<HashMap<Vec<u8>, CallCanceller>>,
}

/// A call in flight, cancellable by its query's tag until it is dropped.
struct Listed<'c> {
    caller: &'c Caller,
    tag: Vec<u8>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if !self.tag.is_empty() {
            self.caller.cancellable.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.tag);
        }
    }
}

impl Caller {
    fn route(&self, name: &str) -> hybus::Result<Arc<Route>> {
        if let Some(r) = self.routes.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(r.clone());
        }
        let r = Arc::new(self.bus.resolve(name)?);
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), r.clone());
        Ok(r)
    }

    /// Forwards one query to the local service `name` from Zenoh's own
    /// thread: the call is sent at once, and a fast answer (within
    /// [`INLINE_WAIT`]) is replied from here too; a slower one is waited
    /// for on a worker, so that a slow service never holds up Zenoh.
    fn start_query(self: &Arc<Self>, name: &str, query: Query) {
        let (timeout, payload) = self.query_parts(&query);
        if payload.len() > INLINE_PAYLOAD {
            let (c, n) = (self.clone(), name.to_owned());
            self.workers.run(move || c.serve_query(&n, query));
            return;
        }
        let mut pending =
            match self.route(name).and_then(|route| self.bus.begin_call(&route, &payload.to_bytes(), timeout)) {
                Ok(p) => p,
                Err(e) => return reply(name, &query, Err(e)),
            };
        match pending.wait_timeout(INLINE_WAIT) {
            Ok(None) => {
                let (c, n) = (self.clone(), name.to_owned());
                self.workers.run(move || {
                    let _listed = c.list(&query, &pending);
                    reply(&n, &query, pending.wait())
                });
            }
            Ok(Some(answer)) => reply(name, &query, Ok(answer)),
            Err(e) => reply(name, &query, Err(e)),
        }
    }

    /// The deadline and the payload of a query.
    fn query_parts<'q>(&self, query: &'q Query) -> (Duration, &'q ZBytes) {
        let timeout = query
            .attachment()
            .and_then(|a| wire::decode_timeout(&a.to_bytes()))
            .unwrap_or(self.max_timeout)
            .min(self.max_timeout);
        static EMPTY: std::sync::OnceLock<ZBytes> = std::sync::OnceLock::new();
        (timeout, query.payload().unwrap_or_else(|| EMPTY.get_or_init(ZBytes::new)))
    }

    /// Forwards one query to the local service `name` and replies.
    fn serve_query(&self, name: &str, query: Query) {
        let (timeout, payload) = self.query_parts(&query);
        let r = self.route(name).and_then(|route| self.begin(&route, payload, timeout)).and_then(|pending| {
            let _listed = self.list(&query, &pending);
            pending.wait()
        });
        reply(name, &query, r);
    }

    /// Starts a call of `route`: small payloads inline, larger ones written
    /// once into a loaned chunk, from the slices they came in.
    fn begin(&self, route: &Route, payload: &ZBytes, timeout: Duration) -> hybus::Result<PendingCall> {
        if payload.len() <= INLINE_PAYLOAD {
            return self.bus.begin_call(route, &payload.to_bytes(), timeout);
        }
        let loan = payload::loan_from(&self.bus, payload, timeout)?;
        self.bus.begin_call_loan(route, loan, timeout)
    }

    /// Lists `pending`, the call of `query`, as cancellable by the query's
    /// tag while the returned guard lives. (A call answered within
    /// [`INLINE_WAIT`] is never listed: a cancel comes too late for it.)
    fn list(&self, query: &Query, pending: &PendingCall) -> Listed<'_> {
        let tag = query.attachment().map(|a| wire::query_tag(&a.to_bytes()).to_vec()).unwrap_or_default();
        if !tag.is_empty() {
            self.cancellable.lock().unwrap_or_else(|p| p.into_inner()).insert(tag.clone(), pending.canceller());
        }
        Listed { caller: self, tag }
    }

    /// Cancels the call of the query whose tag is `tag`, if it is still in flight.
    fn cancel(&self, tag: &[u8]) {
        if let Some(c) = self.cancellable.lock().unwrap_or_else(|p| p.into_inner()).remove(tag) {
            c.cancel();
        }
    }

    /// Forwards one fire to the local service `name`.
    fn serve_fire(&self, name: &str, sample: Sample) {
        let payload = sample.payload();
        let r = self.route(name).and_then(|route| {
            if payload.len() <= INLINE_PAYLOAD {
                return self.bus.fire(&route, &payload.to_bytes());
            }
            let loan = payload::loan_from(&self.bus, payload, self.max_timeout)?;
            self.bus.fire_loan(&route, loan)
        });
        if let Err(e) = r {
            tracing::debug!(service = name, "a fire from another host is lost: {e}");
        }
    }
}

/// Sends the answer of a forwarded call as the query's reply.
fn reply(name: &str, query: &Query, r: hybus::Result<hybus::Sample>) {
    let sent = match r {
        // The answer's bytes are lent to Zenoh as they lie in the server's pool.
        Ok(answer) => query.reply(query.key_expr().clone(), payload::lend(answer)).wait(),
        // The daemon went away with the request in flight: to the
        // caller, the instance did.
        Err(hybus::Error::BusGone(_)) => query.reply_err(wire::encode_error(&hybus::Error::PeerGone)).wait(),
        Err(e) => query.reply_err(wire::encode_error(&e)).wait(),
    };
    if let Err(e) = sent {
        tracing::debug!(service = name, "cannot reply to a query: {e}");
    }
}

/// The registry thread (see the module docs). Runs until the bridge stops.
pub fn run(ctx: Arc<Ctx>) {
    let Some(registry) = ctx.connect("export registry") else {
        return;
    };
    let Some(calls) = ctx.connect("export calls") else {
        return;
    };
    let caller = Arc::new(Caller {
        bus: calls,
        routes: Default::default(),
        workers: Workers::new("export-call", MAX_WORKERS),
        max_timeout: ctx.config.call_timeout(),
        cancellable: Default::default(),
    });
    let mut exported: HashMap<(String, u32), Exported> = HashMap::new();
    let mut watching = false;
    while !ctx.stopping() {
        ctx.exported.store(exported.len(), std::sync::atomic::Ordering::Release);
        if !watching {
            watching = registry.watch("").is_ok();
        }
        match live_instances(&ctx, &registry) {
            Ok(live) => {
                exported.retain(|k, _| {
                    let keep = live.contains(k);
                    if !keep {
                        tracing::info!(service = k.0, instance = k.1, "no longer exported (gone or draining)");
                    }
                    keep
                });
                for k in live {
                    if let std::collections::hash_map::Entry::Vacant(slot) = exported.entry(k) {
                        let k = slot.key();
                        match declare(&ctx, &caller, k) {
                            Ok(e) => {
                                tracing::info!(service = k.0, instance = k.1, "exported");
                                slot.insert(e);
                            }
                            Err(e) => tracing::warn!(service = k.0, instance = k.1, "cannot export: {e}"),
                        }
                    }
                }
            }
            Err(e) => {
                // The daemon went away: what we declared for its instances is stale.
                if !exported.is_empty() {
                    tracing::warn!("the local daemon is gone ({e}); withdrawing every export until it is back");
                    exported.clear();
                }
                caller.routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
                watching = false;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        }
        // Wake at the next event of the registry, or after RESCAN.
        match registry.next_event(RESCAN) {
            Ok(Some(BusEvent::Disconnected { .. })) | Err(_) => watching = false,
            _ => {}
        }
    }
}

/// The local, serving, exported instances: (name, instance id).
fn live_instances(ctx: &Ctx, bus: &Bus) -> hybus::Result<HashSet<(String, u32)>> {
    let mut live = HashSet::new();
    for s in bus.list()? {
        if !ctx.config.exports_service(&s.name) {
            continue;
        }
        for i in &s.instances {
            // Remote instances are another bridge's: exporting them again would loop.
            if !i.draining && i.remote.is_none() {
                live.insert((s.name.clone(), i.instance));
            }
        }
    }
    Ok(live)
}

fn declare(ctx: &Ctx, caller: &Arc<Caller>, (name, instance): &(String, u32)) -> zenoh::Result<Exported> {
    let key = InstanceKey { name: name.clone(), bridge: ctx.id.clone(), instance: *instance }.key();
    let queryable = {
        let (caller, name) = (caller.clone(), name.clone());
        ctx.session.declare_queryable(&key).callback(move |q| caller.start_query(&name, q)).wait()?
    };
    let fires = {
        let (caller, name) = (caller.clone(), name.clone());
        ctx.session
            .declare_subscriber(&key)
            .callback(move |s| {
                let (c, n) = (caller.clone(), name.clone());
                caller.workers.run(move || c.serve_fire(&n, s));
            })
            .wait()?
    };
    let cancels = {
        let caller = caller.clone();
        let cancel_key = InstanceKey { name: name.clone(), bridge: ctx.id.clone(), instance: *instance }.cancel_key();
        ctx.session.declare_subscriber(cancel_key).callback(move |s| caller.cancel(&s.payload().to_bytes())).wait()?
    };
    let token = ctx.session.liveliness().declare_token(&key).wait()?;
    Ok(Exported { _token: token, _queryable: queryable, _fires: fires, _cancels: cancels })
}
