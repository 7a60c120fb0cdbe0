//! Publish/subscribe: one chunk, every subscriber reads it in place.

use std::time::{Duration, Instant};

use hybus_layout::control::{Reply, Request};
use hybus_layout::Kind;

use crate::bus::Bus;
use crate::core::Origin;
use crate::error::{Error, Result};
use crate::sample::{Loan, Sample};

/// Publishes on one topic.
#[derive(Debug, Clone)]
pub struct Publisher {
    bus: Bus,
    topic: String,
    route: u32,
}

/// Receives a topic's publications. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    bus: Bus,
    topic: String,
    route: u32,
}

impl Bus {
    /// A publisher for `topic` (created if new).
    pub fn publisher(&self, topic: &str) -> Result<Publisher> {
        match self.control(Request::Topic { name: topic.to_owned() })? {
            Reply::Resolved { route, .. } => Ok(Publisher { bus: self.clone(), topic: topic.to_owned(), route }),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Subscribes to `topic`.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription> {
        match self.control(Request::Subscribe { topic: topic.to_owned() })? {
            Reply::Subscribed { route } => Ok(Subscription { bus: self.clone(), topic: topic.to_owned(), route }),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }
}

impl Publisher {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `payload` to every subscriber. Waits for room in the ring
    /// or the pool; never for a slow subscriber.
    pub fn publish(&self, payload: &[u8]) -> Result<()> {
        let d = self.bus.shared.build(
            Kind::Publish,
            self.route,
            payload,
            Some(Instant::now() + Duration::from_secs(10)),
        )?;
        self.bus.shared.send(&d, None)
    }

    /// Publishes without waiting: [`Error::WouldBlock`] if the ring is full,
    /// [`Error::OutOfPool`] if no chunk is free.
    pub fn try_publish(&self, payload: &[u8]) -> Result<()> {
        let mut core = self.bus.shared.lock();
        let d = core.payload(hybus_layout::Descriptor::new(Kind::Publish, self.route, 0), payload)?;
        let r = core.try_send(&d);
        if r.is_err() {
            if let Some(c) = d.chunk() {
                core.free_own(c);
            }
        }
        r
    }

    /// Publishes a loaned chunk written in place (zero-copy fan-out).
    pub fn publish_loan(&self, loan: Loan) -> Result<()> {
        let d = loan.into_descriptor(Kind::Publish, self.route)?;
        self.bus.shared.send(&d, None)
    }
}

impl Subscription {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next publication, waiting up to `timeout`; `Ok(None)` if none came.
    pub fn next(&self, timeout: Duration) -> Result<Option<Sample>> {
        let route = self.route();
        let r = self.bus.shared.wait(Some(Instant::now() + timeout), false, |core| {
            Ok(core.topics.get_mut(&route).and_then(|q| q.pop_front()))
        });
        match r {
            Ok(d) => Sample::new(&self.bus.shared, d, Origin::Daemon).map(Some),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The topic's route id.
    pub(crate) fn route(&self) -> u32 {
        self.route
    }

    /// Publications this client dropped because the application read too slowly.
    pub fn dropped(&self) -> u64 {
        self.bus.shared.lock().dropped_publications
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.bus.is_connected() {
            let _ = self.bus.control(Request::Unsubscribe { route: self.route });
        }
        let mut core = self.bus.shared.lock();
        if let Some(q) = core.topics.remove(&self.route) {
            for d in q {
                core.release(d, Origin::Daemon);
            }
        }
    }
}
