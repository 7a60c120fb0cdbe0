//! Topics across hosts.
//!
//! * Export: one local subscription per exported topic; each publication
//!   is put on [`keys::topic_key`]`(topic, this bridge)`.
//! * Import: one Zenoh subscription on [`keys::ALL_TOPICS`]; each sample of
//!   an imported topic from another bridge is published locally: written
//!   once into a loaned chunk (zero-copy to the local subscribers), or,
//!   up to [`INLINE_PAYLOAD`] bytes, carried in the descriptor itself (no
//!   chunk to allocate, lend and give back: the cheapest way there is).
//!
//! No loops: the republishing connection is known to the exporting side
//! (`Ctx::republisher`), which skips every publication that connection
//! published ([`hybus::Sample::publisher`]: the daemon writes it into each
//! publication, whatever its publisher wrote). A publication that came
//! from another host is thus never sent back out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{Bus, Publisher, INLINE_PAYLOAD};
use zenoh::bytes::ZBytesReader;
use zenoh::sample::{Locality, Sample};
use zenoh::Wait;

use crate::bridge::Ctx;
use crate::ratelog::RateLog;
use crate::{keys, payload, wire};

/// How long a republication waits for room in this host's pool before it is dropped.
const POOL_WAIT: Duration = Duration::from_millis(200);

/// Exports one topic until the bridge stops.
pub fn export(ctx: Arc<Ctx>, topic: String) {
    let Some(bus) = ctx.connect("topic export") else {
        return;
    };
    // Declared, the key goes on the wire as a number, and the receiving
    // bridges keep its route: undeclared, each of its samples is matched
    // against their subscription's wildcard anew (most of a small
    // sample's cost on the receiving side, measured with perf).
    // Blocking, not dropping, when the link is congested: the local
    // topic's own policy (drop-oldest for the bridge's subscription) then
    // decides what a slow network loses, as for any slow subscriber.
    // Remote only: this bridge's own import subscription would otherwise
    // get each sample back, to skip it.
    let publisher = ctx.session.declare_keyexpr(keys::topic_key(&topic, &ctx.id)).wait().and_then(|key| {
        ctx.session
            .declare_publisher(key)
            .congestion_control(zenoh::qos::CongestionControl::Block)
            .allowed_destination(Locality::Remote)
            .wait()
    });
    let publisher = match publisher {
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
    let mut batch = Vec::with_capacity(wire::MAX_BATCH);
    while !ctx.stopping() {
        // Wait for one publication, then take what else is queued
        // already (never waiting for more), under one lock: one Zenoh put
        // for them all.
        if let Err(e) = sub.next_batch(&mut batch, wire::MAX_BATCH, BATCH_BYTES, Duration::from_millis(200)) {
            tracing::debug!(topic, "waiting for publications: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let ours = ctx.republisher.load(Ordering::Acquire);
        batch.retain(|s| s.publisher() != Some(ours));
        if !batch.is_empty() {
            ctx.published_out.fetch_add(batch.len() as u64, Ordering::Relaxed);
            ctx.puts_out.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = put(&publisher, &mut batch) {
            tracing::debug!(topic, "publications are not sent to other hosts: {e}");
        }
    }
}

/// A batch holds at most this many payload bytes, unless its first
/// publication alone is larger: batching pays for small publications,
/// whose cost is Zenoh's per-message work, not their bytes.
const BATCH_BYTES: usize = 64 << 10;

/// Puts the publications of `batch` (emptied) on Zenoh: one as it is,
/// several as one put whose attachment lists their lengths
/// ([`wire::encode_batch`]). Their bytes are lent to Zenoh, not copied.
fn put(publisher: &zenoh::pubsub::Publisher<'_>, batch: &mut Vec<hybus::Sample>) -> zenoh::Result<()> {
    match batch.len() {
        0 => Ok(()),
        1 => publisher.put(payload::lend(batch.remove(0))).wait(),
        _ => {
            let lengths = wire::encode_batch(batch.iter().map(|s| s.len()));
            let mut w = zenoh::bytes::ZBytes::writer();
            for s in batch.drain(..) {
                w.append(payload::lend(s));
            }
            publisher.put(w.finish()).attachment(lengths).wait()
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
    let republisher =
        Arc::new(Republisher { bus, keys: Default::default(), dropped: RateLog::new("dropped publications") });
    let sub = {
        let (c, r) = (ctx.clone(), republisher.clone());
        ctx.session
            .declare_subscriber(keys::ALL_TOPICS)
            .allowed_origin(Locality::Remote)
            .callback(move |s| r.republish(&c, s))
            .wait()
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
        republisher.dropped.flush(Instant::now());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// At most this many Zenoh keys (and a few more, one per Zenoh thread
/// learning a key at the same moment) are remembered with what to do with
/// their samples; samples of further keys (a peer inventing names) take
/// the slow path each time.
const MAX_KEYS: usize = 4096;

/// Publishes imported samples locally.
struct Republisher {
    bus: Bus,
    /// What to do with the samples of each key seen, by Zenoh key.
    keys: std::sync::Mutex<HashMap<String, Arc<Target>>>,
    /// Warnings about dropped publications, limited per sending bridge:
    /// the peer decides how many there are.
    dropped: RateLog,
}

/// What the samples of one Zenoh key become.
struct Target {
    /// The local topic, and the local publisher if it is imported from another bridge.
    topic: String,
    /// The bridge that puts on the key.
    from: String,
    publisher: Option<Publisher>,
    /// The key declared to this bridge's Zenoh router: with it, the
    /// router keeps the route of the key's samples instead of matching
    /// each one against the wildcard subscription anew (most of a small
    /// sample's cost here, measured with perf).
    _declared: Option<zenoh::key_expr::KeyExpr<'static>>,
}

impl Republisher {
    fn republish(&self, ctx: &Ctx, s: Sample) {
        let key = s.key_expr().as_str();
        let known = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        let Some(target) = known.or_else(|| self.learn(ctx, key)) else {
            return;
        };
        let Some(publisher) = &target.publisher else {
            return;
        };
        if let Err(e) = self.publish(ctx, publisher, &s) {
            if self.dropped.admit(&target.from, Instant::now()) {
                tracing::warn!(topic = target.topic, key, "a publication from another host is dropped: {e}");
            }
        }
    }

    /// What to do with the samples of `key`, first seen now; `None` for a
    /// key that is not a topic's (nothing is remembered for it).
    fn learn(&self, ctx: &Ctx, key: &str) -> Option<Arc<Target>> {
        let (topic, bridge) = keys::parse_topic_key(key)?;
        let publisher = if bridge != ctx.id && ctx.config.imports_topic(topic) {
            match self.bus.publisher(topic) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Not remembered: the next sample tries again.
                    if self.dropped.admit(bridge, Instant::now()) {
                        tracing::warn!(topic, from = bridge, "a publication from another host is dropped: {e}");
                    }
                    return None;
                }
            }
        } else {
            None
        };
        // Declared only if remembered: Zenoh keeps a declared key until it
        // is undeclared, so one declared per sample of a key past
        // MAX_KEYS would grow its tables without bound.
        let remember = self.keys.lock().unwrap_or_else(|p| p.into_inner()).len() < MAX_KEYS;
        let declared = if remember && publisher.is_some() {
            ctx.session.declare_keyexpr(key.to_owned()).wait().ok()
        } else {
            None
        };
        let target =
            Arc::new(Target { topic: topic.to_owned(), from: bridge.to_owned(), publisher, _declared: declared });
        if remember {
            self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_owned(), target.clone());
        }
        Some(target)
    }

    /// Publishes what `s` carries: one publication, or a batch of them
    /// (each loses alone what it loses: a full pool drops that one).
    fn publish(&self, ctx: &Ctx, publisher: &Publisher, s: &Sample) -> hybus::Result<()> {
        let z = s.payload();
        let Some(attachment) = s.attachment() else {
            return self.publish_one(ctx, publisher, &mut z.reader(), z.len());
        };
        let lengths = wire::decode_batch(&attachment.to_bytes(), z.len())
            .ok_or_else(|| hybus::Error::Protocol("a batch whose lengths do not add up".into()))?;
        let mut reader = z.reader();
        let mut first_error = Ok(());
        for len in lengths {
            let r = self.publish_one(ctx, publisher, &mut reader, len);
            if first_error.is_ok() {
                first_error = r;
            }
        }
        first_error
    }

    /// Publishes the next `len` bytes of `reader`.
    fn publish_one(
        &self,
        ctx: &Ctx,
        publisher: &Publisher,
        reader: &mut ZBytesReader<'_>,
        len: usize,
    ) -> hybus::Result<()> {
        if len <= INLINE_PAYLOAD {
            let mut small = [0u8; INLINE_PAYLOAD];
            let small = &mut small[..len];
            payload::read_exact(reader, small)?;
            self.say_who(ctx);
            return publisher.publish(small);
        }
        let loan = payload::loan_read(&self.bus, reader, len, POOL_WAIT)?;
        self.say_who(ctx);
        publisher.publish_loan(loan)
    }

    /// Tells the exporting side which connection republishes (after a
    /// reconnect our client id is new), before a publication can reach it.
    fn say_who(&self, ctx: &Ctx) {
        ctx.republisher.store(self.bus.client_id(), Ordering::Release);
    }
}
