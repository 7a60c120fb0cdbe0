//! Publish/subscribe: one chunk, every subscriber reads it in place.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::control::{Reply, Request};
use hybus_layout::Kind;

use crate::bus::{Bus, Shared};
use crate::core::{Core, Origin};
use crate::error::{Error, Result};
use crate::sample::{Loan, Sample};
use crate::wait::deadline_in;
use crate::Route;

/// Publishes on one topic. After a reconnect it learns the topic's new
/// route id by itself.
#[derive(Debug, Clone)]
pub struct Publisher {
    bus: Bus,
    route: Route,
}

/// Receives a topic's publications. Dropping it unsubscribes. After a
/// reconnect it is subscribed again by itself (publications sent while the
/// daemon was away are lost).
///
/// One per topic and connection: the daemon sends a connection each
/// publication once, so two subscriptions to a topic on one connection
/// would share its publications rather than each get all of them.
/// [`Bus::subscribe`] refuses the second; subscribe on another connection.
#[derive(Debug)]
pub struct Subscription {
    bus: Bus,
    /// Shared with the bus's list of subscriptions, which a reconnect renews.
    route: Arc<Route>,
}

impl Bus {
    /// A publisher for `topic` (created if new).
    pub fn publisher(&self, topic: &str) -> Result<Publisher> {
        let (id, epoch) = self.topic_raw(topic)?;
        Ok(Publisher { bus: self.clone(), route: Route::new(topic, id, epoch) })
    }

    /// Subscribes to `topic`. Refused if this connection already has a
    /// subscription to it (see [`Subscription`]).
    pub fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let subscribed = |subs: &[Arc<Route>]| subs.iter().any(|r| r.name() == topic);
        let refused = || {
            Error::BadRequest(format!(
                "this connection already subscribes to {topic}: share that subscription, or subscribe on another connection"
            ))
        };
        if subscribed(&self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner())) {
            return Err(refused());
        }
        // (Not under the list's lock: a reconnect during the request takes it.)
        let (id, epoch) = self.subscribe_topic(topic)?;
        let route = Arc::new(Route::new(topic, id, epoch));
        let mut subs = self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if subscribed(&subs) {
            // Another thread subscribed meanwhile; its subscription has the inbox.
            return Err(refused());
        }
        subs.push(route.clone());
        Ok(Subscription { bus: self.clone(), route })
    }

    /// Subscribes this connection to topic `name` and opens its inbox; its
    /// route id. A publication that comes for a topic without an inbox goes
    /// straight back, except while a subscription is being made: the
    /// daemon may send the first ones before its reply is read. Also
    /// returns the connection epoch the id belongs to.
    pub(crate) fn subscribe_topic(&self, name: &str) -> Result<(u32, u64)> {
        self.shared.lock().subscribing += 1;
        let r = self.subscribe_raw(name);
        let mut core = self.shared.lock();
        core.subscribing -= 1;
        let (id, epoch) = r?;
        // (An id of a connection lost meanwhile opens nothing: the
        // reconnect subscribes again.)
        if epoch == core.epoch {
            core.topics.entry(id).or_default();
        }
        Ok((id, epoch))
    }

    /// The route id of topic `name` (made if new), with the connection
    /// epoch it belongs to (see [`Bus::control_on`]).
    fn topic_raw(&self, name: &str) -> Result<(u32, u64)> {
        match self.control_on(Request::Topic { name: name.to_owned() })? {
            (Reply::Resolved { route, .. }, epoch) => Ok((route, epoch)),
            (r, _) => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Subscribes this connection to topic `name`; its route id, with the
    /// connection epoch it belongs to.
    fn subscribe_raw(&self, name: &str) -> Result<(u32, u64)> {
        match self.control_on(Request::Subscribe { topic: name.to_owned() })? {
            (Reply::Subscribed { route }, epoch) => Ok((route, epoch)),
            (r, _) => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// The id of topic `route` on this connection: asked again after a
    /// reconnect (the new daemon numbers names afresh; an old id may name
    /// another topic there).
    /// With the connection epoch the id is of (see [`Bus::route_id`]).
    fn topic_id(&self, route: &Route) -> Result<(u32, u64)> {
        let epoch = self.shared.lock_live().epoch;
        if let Some(id) = route.id_at(epoch) {
            return Ok((id, epoch));
        }
        let (id, epoch) = self.topic_raw(route.name())?;
        route.set(id, epoch);
        Ok((id, epoch))
    }
}

impl Publisher {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        self.route.name()
    }

    /// Publishes `payload` to every subscriber. Waits for room in the ring
    /// or the pool (up to 10 s for the pool); never for a slow subscriber.
    pub fn publish(&self, payload: &[u8]) -> Result<()> {
        self.publish_by(payload, Instant::now() + Duration::from_secs(10), None)
    }

    /// Like [`publish`](Self::publish), waiting at most `timeout` for pool
    /// space and ring room: [`Error::OutOfPool`] or [`Error::WouldBlock`]
    /// once it passes, and nothing is published.
    pub fn publish_within(&self, payload: &[u8], timeout: Duration) -> Result<()> {
        let deadline = deadline_in(timeout);
        self.publish_by(payload, deadline, Some(deadline))
    }

    /// Publishes, waiting for pool space until `pool` and for ring room until `ring`.
    fn publish_by(&self, payload: &[u8], pool: Instant, ring: Option<Instant>) -> Result<()> {
        let route = self.bus.topic_id(&self.route)?;
        let (d, epoch) = self.bus.shared.build_to(Kind::Publish, route, payload, Some(pool))?;
        self.bus.shared.send_or_reclaim(Origin::Daemon, &publication(d), ring, epoch)
    }

    /// Publishes without waiting: [`Error::WouldBlock`] if the ring is full,
    /// [`Error::OutOfPool`] if no chunk is free.
    pub fn try_publish(&self, payload: &[u8]) -> Result<()> {
        let (route, epoch) = self.bus.topic_id(&self.route)?;
        let mut core = self.bus.shared.lock();
        if core.epoch != epoch {
            return Err(crate::bus::stale_route());
        }
        let d = publication(core.payload(hybus_layout::Descriptor::new(Kind::Publish, route, 0), payload)?);
        let r = core.try_send(&d);
        if r.is_err() {
            core.free_unsent(&d, None);
        }
        r
    }

    /// Publishes a loaned chunk written in place (zero-copy fan-out).
    pub fn publish_loan(&self, loan: Loan) -> Result<()> {
        let (d, epoch) = loan.into_routed(Kind::Publish, self.bus.topic_id(&self.route)?)?;
        self.bus.shared.send_or_reclaim(Origin::Daemon, &publication(d), None, epoch)
    }
}

/// Marks a publication like a fire: a refusal the daemon sends back (the
/// policy, since a reload) comes as [`BusEvent::FireFailed`](crate::BusEvent::FireFailed).
fn publication(d: hybus_layout::Descriptor) -> hybus_layout::Descriptor {
    hybus_layout::Descriptor { correlation: crate::core::FIRE_BIT, ..d }
}

impl Subscription {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        self.route.name()
    }

    /// The next publication, waiting up to `timeout`; `Ok(None)` if none came.
    pub fn next(&self, timeout: Duration) -> Result<Option<Sample>> {
        // The route read on every round: a reconnect during the wait subscribes again under a new id.
        let shared = &self.bus.shared;
        let r = shared.wait(Some(deadline_in(timeout)), false, |core| publication_check(shared, core, self.route()));
        match r {
            Ok(s) => Ok(Some(s)),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes a batch of publications into `out`: waits up to `timeout` for
    /// the first, then adds what else has come already, without waiting,
    /// until the batch holds `max` publications or `max_bytes` payload
    /// bytes (the one that reaches `max_bytes` is the last taken). Returns
    /// how many it added: 0 if none came in time.
    ///
    /// One wait and one lock for the whole batch: for a relay that sends
    /// publications on in batches (`hybus-bridge` puts them on Zenoh
    /// so), where [`next`](Self::next) paid both per publication.
    /// A payload that cannot be read fails the call as it fails `next`,
    /// unless publications were taken before it: then it is dropped (its
    /// chunk goes back) and the batch ends there.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// use std::time::Duration;
    /// let bus = hybus::Bus::connect()?;
    /// let sub = bus.subscribe("camera.front")?;
    /// let mut batch = Vec::new();
    /// while sub.next_batch(&mut batch, 64, 1 << 16, Duration::from_secs(1))? > 0 {
    ///     let bytes: usize = batch.drain(..).map(|s| s.len()).sum();
    ///     println!("{bytes} bytes in one batch");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn next_batch(&self, out: &mut Vec<Sample>, max: usize, max_bytes: usize, timeout: Duration) -> Result<usize> {
        let shared = &self.bus.shared;
        let r = shared.wait(Some(deadline_in(timeout)), false, |core| {
            let route = self.route();
            let (mut n, mut bytes) = (0, 0);
            while n < max.max(1) && (n == 0 || bytes < max_bytes) {
                match publication_check(shared, core, route) {
                    Ok(Some(s)) => {
                        bytes += s.len();
                        out.push(s);
                        n += 1;
                    }
                    Ok(None) => break,
                    Err(e) if n == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            Ok((n > 0).then_some(n))
        });
        match r {
            Ok(n) => Ok(n),
            Err(Error::DeadlineExceeded) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The topic's route id (as renewed by the last reconnect).
    pub(crate) fn route(&self) -> u32 {
        self.route.id()
    }

    /// Publications this client dropped because the application read too slowly.
    pub fn dropped(&self) -> u64 {
        self.bus.shared.lock().dropped_publications
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus
            .shared
            .subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| !Arc::ptr_eq(r, &self.route));
        let route = self.route();
        let mut core = self.bus.shared.lock();
        if core.gone.is_none() {
            // Sent, not waited for: a drop must not block (an async task's
            // drop runs on the executor, where a control round trip stalled
            // every task of the thread), and the answer changes nothing
            // here. What the daemon still sends for the topic comes back
            // to its publishers (`drop_topic`).
            let _ = core.send_control(Request::Unsubscribe { route });
        }
        core.drop_topic(route);
    }
}

/// A wait's check for the next publication of topic `route`, mapped under
/// the check's lock (see [`Sample::new_locked`]); for the blocking and the
/// async reads alike.
pub(crate) fn publication_check(shared: &Arc<Shared>, core: &mut Core, route: u32) -> Result<Option<Sample>> {
    match core.next_publication(route)? {
        Some(d) => Sample::new_locked(shared, core, d, Origin::Daemon).map(Some),
        None => Ok(None),
    }
}
