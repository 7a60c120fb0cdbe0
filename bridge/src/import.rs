//! Import: services of other hosts made local names here.
//!
//! A liveliness subscription on [`keys::ALL_SERVICES`] tells which
//! instances other bridges export. For each one whose name is imported,
//! the bridge registers a *remote* instance of the name with the local
//! daemon (`remote via <bridge>`), which sends it requests only while no
//! local instance serves the name (unless `prefer = "balance"`).
//!
//! Each request becomes a Zenoh query to that instance's key, with the
//! payload copied once onto the network. Its timeout is what is left of the
//! caller's deadline (which the request carries: [`Request::deadline`]),
//! capped by `call_timeout_ms` (also the timeout for callers that set
//! none), and it travels with the query, so the exporting bridge's call
//! ends when the caller stops waiting too. A caller that gives up earlier
//! (it cancels, or drops its call) is told to the bridge by the daemon,
//! and the bridge drops the query. The reply
//! is written once into a loaned chunk of this host's pool; a reply error
//! keeps its hybus kind. A query that ends without any reply (the
//! exporting bridge or its link died) fails with `peer gone`.
//!
//! When a token goes (the instance stopped, or its bridge or link died:
//! the Zenoh link lease is `liveliness_timeout_ms`), the remote instance
//! drains, and is unregistered once its queries in flight have ended.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hybus::{Bus, Error, Incoming, Remote, Request, ServiceOptions, INLINE_PAYLOAD};
use zenoh::bytes::ZBytes;
use zenoh::query::{ConsolidationMode, QueryTarget, Reply};
use zenoh::sample::SampleKind;
use zenoh::Wait;

use crate::bridge::Ctx;
use crate::config::Prefer;
use crate::keys::{self, InstanceKey};
use crate::{payload, wire};

/// How long a serving thread waits for a request before it looks at its
/// queries in flight (callers that gave up) and at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// How long a reply waits for room in this host's pool.
const POOL_WAIT: Duration = Duration::from_secs(1);

/// One remote instance registered here.
struct Imported {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

/// A request waiting for its Zenoh reply. Whoever takes the request
/// answers it; dropped with the request still in, it fails with `peer gone`
/// (Zenoh ended the query without a reply).
struct Answer {
    request: Mutex<Option<Request>>,
    bus: Bus,
    /// The query's cancel tag (see [`wire::encode_cancel`]).
    tag: Vec<u8>,
}

/// Numbers this bridge's queries, for their cancel tags.
static QUERIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Answer {
    fn take(&self) -> Option<Request> {
        self.request.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn is_open(&self) -> bool {
        self.request.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Drops the request if its caller gave up, and tells the exporting
    /// side (`cancel_key`), whose call then ends too; whether it did.
    fn drop_if_cancelled(&self, ctx: &Ctx, cancel_key: &str) -> bool {
        let mut slot = self.request.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|r| r.is_cancelled()) {
            // Answered into the void: the daemon drops it, nobody waits for it.
            if let Some(r) = slot.take() {
                let _ = r.fail_as(&Error::Cancelled);
            }
            if let Err(e) = ctx.session.put(cancel_key, self.tag.clone()).wait() {
                tracing::debug!("cannot pass a cancel on: {e}");
            }
            return true;
        }
        false
    }

    /// Answers with the first reply of the query.
    fn reply(&self, reply: Reply) {
        let Some(req) = self.take() else {
            return;
        };
        let r = match reply.result() {
            Ok(sample) => self.answer(req, sample.payload()),
            Err(e) => req.fail_as(&wire::decode_error(&e.payload().to_bytes())),
        };
        if let Err(e) = r {
            tracing::debug!("cannot answer a bridged request: {e}");
        }
    }

    /// Answers `req` with `payload`: inline, or written once into a loaned chunk.
    fn answer(&self, req: Request, payload: &ZBytes) -> hybus::Result<()> {
        if payload.len() <= INLINE_PAYLOAD {
            return req.reply(&payload.to_bytes());
        }
        match payload::loan_from(&self.bus, payload, POOL_WAIT) {
            Ok(loan) => req.reply_loan(loan),
            Err(Error::PayloadTooLarge { len, max }) => req.fail(&format!("answer {len} B > pool max {max} B")),
            Err(e) => req.fail_as(&e),
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(req) = self.take() {
            let _ = req.fail_as(&Error::PeerGone);
        }
    }
}

/// What the query's callback holds: when Zenoh ends the query (every
/// reply came, or none will), it drops the callback, and a request still
/// unanswered fails with `peer gone`.
struct Guard(Arc<Answer>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(req) = self.0.take() {
            let _ = req.fail_as(&Error::PeerGone);
        }
    }
}

/// The import thread (see the module docs). Runs until the bridge stops.
pub fn run(ctx: Arc<Ctx>) {
    let Some(bus) = ctx.connect("import") else {
        return;
    };
    let (tx, rx) = channel();
    let subscriber = ctx
        .session
        .liveliness()
        .declare_subscriber(keys::ALL_SERVICES)
        .history(true)
        .callback(move |s| {
            let _ = tx.send((s.key_expr().as_str().to_owned(), s.kind()));
        })
        .wait();
    let _subscriber = match subscriber {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe to Zenoh liveliness; nothing is imported: {e}");
            return;
        }
    };
    let mut imported: HashMap<InstanceKey, Imported> = HashMap::new();
    while !ctx.stopping() {
        let (key, kind) = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(RecvTimeoutError::Timeout) => {
                imported.retain(|_, i| !i.thread.is_finished());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let Some(k) = InstanceKey::parse(&key) else {
            continue;
        };
        if k.bridge == ctx.id || !ctx.config.imports_service(&k.name) {
            continue;
        }
        match kind {
            SampleKind::Put => {
                if imported.get(&k).is_some_and(|i| !i.stop.load(Ordering::Acquire)) {
                    continue;
                }
                let stop = Arc::new(AtomicBool::new(false));
                let (c, b, kk, s) = (ctx.clone(), bus.clone(), k.clone(), stop.clone());
                match std::thread::Builder::new().name("import-serve".into()).spawn(move || serve(c, b, kk, s)) {
                    Ok(thread) => {
                        if let Some(old) = imported.insert(k, Imported { stop, thread }) {
                            old.stop.store(true, Ordering::Release);
                        }
                    }
                    Err(e) => tracing::warn!(service = k.name, "cannot start a thread for a remote instance: {e}"),
                }
            }
            SampleKind::Delete => {
                if let Some(i) = imported.get(&k) {
                    i.stop.store(true, Ordering::Release);
                }
            }
        }
    }
    for (_, i) in imported.drain() {
        i.stop.store(true, Ordering::Release);
        let _ = i.thread.join();
    }
}

/// Registers the remote instance `k` and serves it until `stop`.
fn serve(ctx: Arc<Ctx>, bus: Bus, k: InstanceKey, stop: Arc<AtomicBool>) {
    let remote = Remote { via: k.bridge.clone(), balance: ctx.config.prefer == Prefer::Balance };
    let service = loop {
        if stop.load(Ordering::Acquire) || ctx.stopping() {
            return;
        }
        match bus.register_remote(&k.name, ServiceOptions::default(), remote.clone()) {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(service = k.name, via = k.bridge, "cannot register the remote instance (retrying): {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tracing::info!(service = k.name, via = k.bridge, remote_instance = k.instance, "imported");
    ctx.imported.fetch_add(1, Ordering::AcqRel);
    let key = k.key();
    let cancel_key = k.cancel_key();
    let mut in_flight: Vec<Arc<Answer>> = Vec::new();
    let mut drained_at: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Acquire) || ctx.stopping();
        if stopping && drained_at.is_none() {
            let _ = service.drain();
            drained_at = Some(Instant::now());
        }
        in_flight.retain(|a| a.is_open() && !a.drop_if_cancelled(&ctx, &cancel_key));
        if let Some(t) = drained_at {
            // Queries in flight end by their timeout at the latest.
            if in_flight.is_empty() || t.elapsed() > ctx.config.call_timeout() + Duration::from_secs(1) {
                break;
            }
        }
        match service.next(POLL) {
            Ok(Some(Incoming::Request(req))) => {
                if let Some(a) = forward(&ctx, &bus, &key, req) {
                    in_flight.push(a);
                }
            }
            Ok(Some(Incoming::Fire(sample))) => {
                if let Err(e) = ctx.session.put(&key, payload::lend(sample)).wait() {
                    tracing::debug!(service = k.name, "a fire to another host is lost: {e}");
                }
            }
            Ok(Some(Incoming::Stream(s))) => {
                let _ = s.fail("streams do not cross hybus-bridge");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(service = k.name, "waiting for requests: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(in_flight);
    let _ = service.unregister();
    ctx.imported.fetch_sub(1, Ordering::AcqRel);
    tracing::info!(service = k.name, via = k.bridge, remote_instance = k.instance, "remote instance gone");
}

/// Sends `req` as a Zenoh query to `key`; the reply (or the end of the
/// query without one) answers it.
fn forward(ctx: &Ctx, bus: &Bus, key: &str, mut req: Request) -> Option<Arc<Answer>> {
    let cap = ctx.config.call_timeout();
    let timeout = req.deadline().map_or(cap, |d| d.saturating_duration_since(Instant::now()).min(cap));
    if timeout.is_zero() {
        // Nobody waits for it any more: no query for it.
        let _ = req.fail_as(&Error::DeadlineExceeded);
        return None;
    }
    // Lent to Zenoh as it lies in the caller's pool: the network copy is the only one.
    let payload = req.take_payload().map(payload::lend).unwrap_or_default();
    let tag = wire::encode_cancel(QUERIES.fetch_add(1, Ordering::Relaxed), &ctx.id);
    let attachment = wire::encode_query(timeout, &tag);
    let answer = Arc::new(Answer { request: Mutex::new(Some(req)), bus: bus.clone(), tag });
    let guard = Guard(answer.clone());
    let r = ctx
        .session
        .get(key)
        .payload(payload)
        .attachment(attachment)
        .timeout(timeout)
        .target(QueryTarget::BestMatching)
        .consolidation(ConsolidationMode::None)
        .callback(move |reply| guard.0.reply(reply))
        .wait();
    match r {
        Ok(()) => Some(answer),
        Err(e) => {
            if let Some(req) = answer.take() {
                let _ = req.fail_as(&crate::wire::service(format!("zenoh: {e}")));
            }
            None
        }
    }
}
