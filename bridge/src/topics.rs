//! Topics across hosts.
//!
//! * Export: one local subscription per exported topic; each publication
//!   is put on [`keys::topic_key`]`(topic, this bridge)`.
//! * Import: one Zenoh subscription on [`keys::ALL_TOPICS`]; each sample of
//!   an imported topic from another bridge is written once into a loaned
//!   chunk and published locally (zero-copy to the local subscribers).
//!
//! No loops: the republishing connection always publishes from a chunk of
//! its own pool, and the exporting side skips every publication whose
//! chunk belongs to that connection ([`hybus::Sample::pool_owner`], which
//! the daemon guarantees: it refuses a chunk of anyone else's pool). A
//! publication that came from another host is thus never sent back out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hybus::{Bus, Publisher};
use zenoh::sample::Sample;
use zenoh::Wait;

use crate::bridge::Ctx;
use crate::keys;

/// How long a republication waits for room in this host's pool before it is dropped.
const POOL_WAIT: Duration = Duration::from_millis(200);

/// Exports one topic until the bridge stops.
pub fn export(ctx: Arc<Ctx>, topic: String) {
    let Some(bus) = ctx.connect("topic export") else {
        return;
    };
    let key = keys::topic_key(&topic, &ctx.id);
    // Blocking, not dropping, when the link is congested: the local
    // topic's own policy (drop-oldest for the bridge's subscription) then
    // decides what a slow network loses, as for any slow subscriber.
    let publisher =
        match ctx.session.declare_publisher(key).congestion_control(zenoh::qos::CongestionControl::Block).wait() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(topic, "cannot declare a Zenoh publisher; the topic is not exported: {e}");
                return;
            }
        };
    let sub = loop {
        if ctx.stopping() {
            return;
        }
        match bus.subscribe(&topic) {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(topic, "cannot subscribe (retrying): {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tracing::info!(topic, "exported");
    while !ctx.stopping() {
        match sub.next(Duration::from_millis(200)) {
            Ok(Some(sample)) => {
                let ours = ctx.republisher.load(Ordering::Acquire);
                if sample.pool_owner() == Some(ours) {
                    continue;
                }
                if let Err(e) = publisher.put(sample.bytes().to_vec()).wait() {
                    tracing::debug!(topic, "a publication is not sent to other hosts: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(topic, "waiting for publications: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The republishing side: one Zenoh subscription for every imported topic.
pub fn import(ctx: Arc<Ctx>) {
    if ctx.config.import.iter().all(|n| n.topics.is_empty()) {
        return;
    }
    let Some(bus) = ctx.connect("topic import") else {
        return;
    };
    ctx.republisher.store(bus.client_id(), Ordering::Release);
    let republisher = Arc::new(Republisher { bus, publishers: Default::default() });
    let sub = {
        let (c, r) = (ctx.clone(), republisher.clone());
        ctx.session.declare_subscriber(keys::ALL_TOPICS).callback(move |s| r.republish(&c, s)).wait()
    };
    let _sub = match sub {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe on Zenoh; no topic is imported: {e}");
            return;
        }
    };
    while !ctx.stopping() {
        // A reconnect gives the connection a new client id.
        if republisher.bus.is_connected() {
            ctx.republisher.store(republisher.bus.client_id(), Ordering::Release);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes imported samples locally.
struct Republisher {
    bus: Bus,
    publishers: std::sync::Mutex<HashMap<String, Publisher>>,
}

impl Republisher {
    fn republish(&self, ctx: &Ctx, s: Sample) {
        let Some((topic, bridge)) = keys::parse_topic_key(s.key_expr().as_str()) else {
            return;
        };
        if bridge == ctx.id || !ctx.config.imports_topic(topic) {
            return;
        }
        if let Err(e) = self.publish(ctx, topic, &s) {
            tracing::warn!(topic, from = bridge, "a publication from another host is dropped: {e}");
        }
    }

    fn publish(&self, ctx: &Ctx, topic: &str, s: &Sample) -> hybus::Result<()> {
        let payload = s.payload();
        let len = payload.len();
        let max = self.bus.max_payload();
        if len > max as usize {
            return Err(hybus::Error::PayloadTooLarge { len, max });
        }
        let publisher = {
            let mut map = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(topic) {
                Some(p) => p.clone(),
                None => {
                    let p = self.bus.publisher(topic)?;
                    map.insert(topic.to_owned(), p.clone());
                    p
                }
            }
        };
        // Always a chunk, even for a few bytes: its pool tells the exporting side it is ours.
        let mut loan = self.bus.loan(len, POOL_WAIT)?;
        let mut at = 0;
        for slice in payload.slices() {
            loan[at..at + slice.len()].copy_from_slice(slice);
            at += slice.len();
        }
        // After a reconnect our client id is new: say so before the
        // publication can reach the exporting side.
        ctx.republisher.store(self.bus.client_id(), Ordering::Release);
        publisher.publish_loan(loan)
    }
}
