//! Streams and channels: items under credit-based flow control.
//!
//! The receiver grants credits; the sender sends at most that many items
//! and then waits for more. On the brokered path the daemon enforces the
//! same count, so a sender that ignores it is disconnected rather than
//! trusted. Both sides of both models share the two helpers here. A stream
//! stays on the path it was opened on (daemon or direct channel).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::descriptor::{flags, STREAM_CHANNEL};
use hybus_layout::{Descriptor, Kind};

use crate::bus::{Bus, Shared};
use crate::core::{Core, Origin, StreamState};
use crate::error::{Error, Result};
use crate::sample::Sample;
use crate::wait::deadline_in;
use crate::Route;

/// Which end of an exchange we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// We opened it (correlation ids are ours).
    Caller,
    /// We serve it (correlation ids are the daemon's, or the caller's on a channel).
    Server,
}

/// One end of a stream or channel: which side we are, the path it travels,
/// its correlation id there, and the route its descriptors carry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct End {
    pub side: Side,
    pub origin: Origin,
    pub corr: u64,
    pub route: u32,
}

/// Credits we grant the peer: the window, and items consumed since the last grant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub size: u32,
    pub consumed: u32,
}

fn credits(core: &mut Core, side: Side, origin: Origin, corr: u64) -> Result<Option<&mut u64>> {
    match side {
        Side::Caller => {
            let s = core.streams.get_mut(&corr).ok_or(Error::Cancelled)?;
            if let Some(e) = &s.error {
                return Err(e.clone());
            }
            if s.ended && s.items.is_empty() && s.send_credits == 0 {
                return Ok(None);
            }
            Ok(Some(&mut s.send_credits))
        }
        Side::Server => {
            let s = core.served.get_mut(&(origin, corr)).ok_or(Error::Cancelled)?;
            if s.cancelled {
                return Err(Error::Cancelled);
            }
            Ok(Some(&mut s.send_credits))
        }
    }
}

/// A wait's check that takes one of the peer's credits for `end` (see
/// [`Shared::wait`]); for the blocking and the async waits alike.
pub(crate) fn credit_check(end: End) -> impl FnMut(&mut Core) -> Result<Option<()>> {
    let End { side, origin, corr, .. } = end;
    move |core| match credits(core, side, origin, corr)? {
        Some(c) if *c > 0 => {
            *c -= 1;
            Ok(Some(()))
        }
        Some(_) => Ok(None),
        None => Err(Error::Cancelled),
    }
}

/// Returns `n` of the peer's credits that `end` took for items it did not
/// send after all (no pool space, no ring room in time): the peer granted
/// them for items it has not had, and waits for them still. Nothing to do
/// once the stream is over.
pub(crate) fn give_back(shared: &Shared, end: End, n: u64) {
    if n > 0 {
        if let Ok(Some(c)) = credits(&mut shared.lock(), end.side, end.origin, end.corr) {
            *c += n;
        }
    }
}

/// Addresses `d`, a `StreamItem` built with the route and the payload, to
/// `end`: its correlation id and, on the serving side, the server flag.
pub(crate) fn item_of(end: End, mut d: Descriptor) -> Descriptor {
    d.correlation = end.corr;
    if end.side == Side::Server {
        d.flags |= flags::SERVER;
    }
    d
}

/// Sends one item once the peer has granted a credit.
pub(crate) fn send_item(shared: &Arc<Shared>, end: End, payload: &[u8], deadline: Instant) -> Result<()> {
    shared.wait(Some(deadline), false, credit_check(end))?;
    send_credited(shared, end, payload, deadline)
}

/// Sends one item for a credit already taken; a failed send gives it back.
fn send_credited(shared: &Arc<Shared>, end: End, payload: &[u8], deadline: Instant) -> Result<()> {
    let r = shared
        .build(Kind::StreamItem, end.route, payload, Some(deadline))
        .and_then(|(d, epoch)| shared.send_or_reclaim(end.origin, &item_of(end, d), Some(deadline), epoch));
    if r.is_err() {
        give_back(shared, end, 1);
    }
    r
}

/// Adds the credit `c` to one `owed` and not sent yet (a reader dropped
/// mid-send, or one that pays later).
pub(crate) fn owe(owed: &mut Option<Descriptor>, c: Descriptor) {
    let before = owed.map_or(0, |o| o.aux);
    *owed = Some(c.with_aux(c.aux + before));
}

/// Receives one arrival of a stream (an item or a batch of items);
/// `Ok(None)` once the peer ended its direction. No credit is granted here.
pub(crate) fn recv_desc(shared: &Arc<Shared>, end: End, deadline: Instant) -> Result<Option<Sample>> {
    shared.wait(Some(deadline), false, recv_check(shared, end))
}

/// A wait's check that takes the next arrival of `end`, mapped under the
/// check's lock (see [`Sample::new_locked`]; `Some(None)` once the peer
/// ended its direction); for the blocking and the async waits alike.
pub(crate) fn recv_check(
    shared: &Arc<Shared>,
    end: End,
) -> impl FnMut(&mut Core) -> Result<Option<Option<Sample>>> + '_ {
    let End { side, origin, corr, .. } = end;
    move |core| {
        let (items, ended, err) = match side {
            Side::Caller => {
                let s = core.streams.get_mut(&corr).ok_or(Error::Cancelled)?;
                (&mut s.items, s.ended, s.error.clone())
            }
            Side::Server => {
                let s = core.served.get_mut(&(origin, corr)).ok_or(Error::Cancelled)?;
                let err = s.cancelled.then_some(Error::Cancelled);
                (&mut s.items, s.peer_ended, err)
            }
        };
        if let Some(d) = items.pop_front() {
            return Sample::new_locked(shared, core, d, origin).map(|s| Some(Some(s)));
        }
        if let Some(e) = err {
            return Err(e);
        }
        Ok(ended.then_some(None))
    }
}

impl Window {
    /// Counts `n` items consumed; after every half window, the credit to
    /// grant the peer (the caller sends it, blocking or async).
    pub(crate) fn consume(&mut self, end: End, n: u32) -> Option<Descriptor> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed < (self.size / 2).max(1) {
            return None;
        }
        let c = credit(end, self.consumed);
        self.consumed = 0;
        Some(c)
    }
}

/// A grant of `n` credits to the peer of `end`.
pub(crate) fn credit(end: End, n: u32) -> Descriptor {
    let mut c = Descriptor::new(Kind::Credit, end.route, end.corr).with_aux(n as u64);
    if end.side == Side::Server {
        c.flags |= flags::SERVER;
    }
    c
}

/// Counts `n` items consumed and grants the peer new credits after every half window.
pub(crate) fn grant(shared: &Arc<Shared>, end: End, window: &mut Window, n: u32) -> Result<()> {
    match window.consume(end, n) {
        Some(c) => shared.send_on(end.origin, &c, None),
        None => Ok(()),
    }
}

/// Receives one item; `Ok(None)` once the peer ended its direction.
/// Grants the peer new credits after every half window consumed.
/// (The server side of a channel; the caller side also unpacks batches.)
pub(crate) fn recv_item(
    shared: &Arc<Shared>,
    end: End,
    window: &mut Window,
    deadline: Instant,
) -> Result<Option<Sample>> {
    let Some(item) = recv_desc(shared, end, deadline)? else { return Ok(None) };
    grant(shared, end, window, item.descriptor().items() as u32)?;
    Ok(Some(item))
}

/// Sends `items` as batches: as many items per chunk as fit in `chunk` bytes
/// and as the peer's credits allow. Returns how many were sent.
pub(crate) fn send_batches<I, T>(shared: &Arc<Shared>, end: End, items: I, deadline: Instant) -> Result<u64>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let End { side, origin, corr, route } = end;
    use hybus_layout::batch::BatchWriter;
    const CHUNK: usize = 64 << 10;
    let mut items = items.into_iter().peekable();
    let mut sent = 0u64;
    while items.peek().is_some() {
        // Claim every credit there is (at least one).
        let claimed = shared.wait(Some(deadline), false, |core| match credits(core, side, origin, corr)? {
            Some(c) if *c > 0 => {
                let n = std::mem::take(c);
                Ok(Some(n))
            }
            Some(_) => Ok(None),
            None => Err(Error::Cancelled),
        })?;
        let first_len = items.peek().map_or(0, |i| i.as_ref().len());
        let max = shared.lock().alloc.geometry().max_payload() as usize;
        if hybus_layout::batch::item_size(first_len) > max.min(CHUNK) {
            // Too big to pack with others: send it as an item of its own.
            give_back(shared, end, claimed - 1);
            if let Some(item) = items.next() {
                send_credited(shared, end, item.as_ref(), deadline)?;
                sent += 1;
            }
            continue;
        }
        // No larger than the pool's largest chunk (a pool may have none of 64 KiB).
        let len = max.min(CHUNK);
        let (chunk, pool, epoch) = match shared.alloc(len, deadline) {
            Ok(a) => a,
            Err(e) => {
                give_back(shared, end, claimed);
                return Err(e);
            }
        };
        // Written outside the lock: held like a loan, so that a reconnect
        // meanwhile does not hand it to another payload (the push or the
        // reclaim below lets go of it).
        // (Not if a reconnect came since the allocation: it reclaimed the
        // chunk, and the reclaim below leaves it alone.)
        {
            let mut core = shared.lock();
            if core.epoch == epoch {
                core.loaned.insert(chunk.offset, epoch);
            }
        }
        let unsent = Descriptor::new(Kind::StreamItem, 0, 0).with_chunk(chunk);
        // SAFETY: the chunk was just allocated to us; nobody else reads or
        // writes it before we send it.
        let Some(buf) = (unsafe { pool.seg.bytes_mut(chunk.offset, len) }) else {
            shared.reclaim_unsent(&unsent, epoch);
            give_back(shared, end, claimed);
            return Err(Error::Protocol("pool chunk outside the mapping".into()));
        };
        let mut w = BatchWriter::new(buf);
        while (w.items() as u64) < claimed {
            let Some(item) = items.peek() else { break };
            if !w.push(item.as_ref()) {
                break;
            }
            items.next();
        }
        let n = w.items();
        let used = w.len();
        give_back(shared, end, claimed - n as u64);
        if n == 0 {
            shared.reclaim_unsent(&unsent, epoch);
            return Err(Error::PayloadTooLarge { len: first_len, max: len as u32 });
        }
        let c = hybus_layout::ChunkRef { len: used as u32, ..chunk };
        let mut d = Descriptor::new(Kind::StreamItem, route, corr).with_chunk(c).with_aux(n as u64);
        d.flags |= flags::BATCH;
        if side == Side::Server {
            d.flags |= flags::SERVER;
        }
        if let Err(e) = shared.send_or_reclaim(origin, &d, Some(deadline), epoch) {
            give_back(shared, end, n as u64);
            return Err(e);
        }
        sent += n as u64;
    }
    Ok(sent)
}

/// The caller's end of a request-stream or request-channel.
///
/// Dropping it before the stream ended cancels it at the server.
#[derive(Debug)]
pub struct Stream {
    bus: Bus,
    corr: u64,
    route: u32,
    origin: Origin,
    window: Window,
    channel: bool,
    done: bool,
    /// Our direction of a channel was ended ([`end`](Self::end)).
    sent_end: bool,
    /// The batch being handed out item by item: the whole chunk, where the
    /// next item starts, and how many are left.
    batch: Option<(Arc<Sample>, usize, u32)>,
    /// A credit for the service not sent yet: [`took`](Self::took) counts,
    /// the blocking or the async reader sends ([`pay`](Self::pay)).
    owed: Option<Descriptor>,
}

/// Several stream items that arrived together (see [`Stream::next_batch`]).
#[derive(Debug)]
pub struct Batch {
    sample: Sample,
    items: u32,
    /// Packed items (else one plain item: the whole sample).
    packed: bool,
}

impl Batch {
    /// How many items.
    pub fn len(&self) -> usize {
        self.items as usize
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items == 0
    }

    /// The items, read in place. An item that overruns the chunk (a
    /// misbehaving sender) ends the iteration with an error.
    pub fn iter(&self) -> BatchIter<'_> {
        if self.packed {
            BatchIter {
                reader: Some(hybus_layout::batch::BatchReader::new(self.sample.bytes(), self.items)),
                single: None,
            }
        } else {
            BatchIter { reader: None, single: Some(self.sample.bytes()) }
        }
    }
}

/// The items of a [`Batch`].
#[derive(Debug)]
pub struct BatchIter<'a> {
    reader: Option<hybus_layout::batch::BatchReader<'a>>,
    single: Option<&'a [u8]>,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<&'a [u8], hybus_layout::batch::BadBatch>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.reader {
            Some(r) => r.next(),
            None => self.single.take().map(Ok),
        }
    }
}

impl Bus {
    /// Opens a request-stream: the service answers `payload` with a stream of
    /// items. `window` is how many items may be in flight to us at once.
    pub fn request_stream(&self, route: &Route, payload: &[u8], window: u32) -> Result<Stream> {
        self.open_stream(route, payload, window, false)
    }

    /// Opens a request-channel: items flow both ways, each direction with its own credits.
    pub fn request_channel(&self, route: &Route, payload: &[u8], window: u32) -> Result<Stream> {
        self.open_stream(route, payload, window, true)
    }

    fn open_stream(&self, route: &Route, payload: &[u8], window: u32, channel: bool) -> Result<Stream> {
        let id = self.route_id(route)?;
        let window = window.max(1);
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut d, epoch) = self.shared.build_to(Kind::StreamOpen, id, payload, Some(deadline))?;
        let (corr, origin) = {
            let mut core = self.shared.lock();
            let corr = core.next_id();
            let origin = core.route_fire(&mut d);
            if let Origin::Direct(id) = origin {
                // Keeps the channel alive (for our side) until the stream ends.
                if let Some(ch) = core.channels.get_mut(&id) {
                    ch.open_call(corr);
                }
            }
            core.streams.insert(
                corr,
                StreamState { origin, items: Default::default(), ended: false, error: None, send_credits: 0 },
            );
            (corr, origin)
        };
        d.correlation = corr;
        d.aux = window as u64 | if channel { STREAM_CHANNEL } else { 0 };
        if let Err(e) = self.shared.send_or_reclaim(origin, &d, None, epoch) {
            let mut core = self.shared.lock();
            core.streams.remove(&corr);
            // Off its channel too (its in-flight gauge, and the channel may go once idle).
            core.forget_call(corr, origin);
            return Err(e);
        }
        Ok(Stream {
            bus: self.clone(),
            corr,
            route: d.route,
            origin,
            window: Window { size: window, consumed: 0 },
            channel,
            done: false,
            sent_end: false,
            batch: None,
            owed: None,
        })
    }
}

impl Stream {
    /// The next item, waiting up to `timeout`; `Ok(None)` once the service ended the stream.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Sample>> {
        let deadline = deadline_in(timeout);
        loop {
            if let Some(item) = self.batch_item() {
                return item.map(Some);
            }
            let r = recv_desc(&self.bus.shared, self.this_end(), deadline);
            let item = self.arrived(r);
            self.pay()?;
            if let Some(item) = item? {
                return Ok(item);
            }
        }
    }

    /// The next item of the batch being handed out, if one is.
    pub(crate) fn batch_item(&mut self) -> Option<Result<Sample>> {
        let (parent, at, left) = self.batch.as_mut()?;
        let bytes = parent.bytes();
        let mut r = hybus_layout::batch::BatchReader::new(bytes.get(*at..).unwrap_or(&[]), *left);
        match r.next_range() {
            Some(Ok(range)) => {
                let range = (*at + range.start)..(*at + range.end);
                *at += hybus_layout::batch::item_size(range.len());
                *left -= 1;
                let item = Sample::slice(parent, range);
                if *left == 0 {
                    self.batch = None;
                }
                Some(Ok(item))
            }
            Some(Err(e)) => {
                self.batch = None;
                self.finish();
                Some(Err(Error::Protocol(e.to_string())))
            }
            None => {
                self.batch = None;
                None
            }
        }
    }

    /// Takes what a wait for the next arrival gave (see [`recv_check`]):
    /// `Some(Some(item))`, `Some(None)` once the stream ended, or `None` for
    /// a batch, now handed out by [`batch_item`](Self::batch_item).
    pub(crate) fn arrived(&mut self, r: Result<Option<Sample>>) -> Result<Option<Option<Sample>>> {
        match self.took(r)? {
            None => Ok(Some(None)),
            Some(sample) if sample.descriptor().flags & flags::BATCH != 0 => {
                let items = sample.descriptor().aux as u32;
                self.batch = Some((Arc::new(sample), 0, items));
                Ok(None)
            }
            Some(sample) => Ok(Some(Some(sample))),
        }
    }

    /// The next arrival as a batch of items (a single item is a batch of
    /// one), waiting up to `timeout`; `Ok(None)` once the stream ended. The
    /// fastest way to read a busy stream of small items: no per-item
    /// allocation or reference counting.
    pub fn next_batch(&mut self, timeout: Duration) -> Result<Option<Batch>> {
        if self.batch.is_some() {
            // Items of a batch half read through `next`: hand them out one by one.
            return Ok(self.next(timeout)?.map(|sample| Batch { sample, items: 1, packed: false }));
        }
        let Some(sample) = self.next_desc(deadline_in(timeout))? else { return Ok(None) };
        let d = *sample.descriptor();
        let packed = d.flags & flags::BATCH != 0;
        Ok(Some(Batch { sample, items: if packed { d.aux as u32 } else { 1 }, packed }))
    }

    pub(crate) fn this_end(&self) -> End {
        End { side: Side::Caller, origin: self.origin, corr: self.corr, route: self.route }
    }

    /// The connection the stream was opened on.
    #[cfg(feature = "tokio")]
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Whether we may still send items: a channel whose direction we have
    /// not ended. (The daemon takes an item after our end for a protocol
    /// violation, and would cut the whole connection off.)
    pub(crate) fn may_send(&self) -> Result<()> {
        if !self.channel {
            return Err(not_a_channel());
        }
        if self.sent_end {
            return Err(Error::BadRequest("send after end: this direction of the channel is closed".into()));
        }
        Ok(())
    }

    fn next_desc(&mut self, deadline: Instant) -> Result<Option<Sample>> {
        let r = recv_desc(&self.bus.shared, self.this_end(), deadline);
        let took = self.took(r);
        self.pay()?;
        took
    }

    /// Sends the credit [`took`](Self::took) left owed, waiting for ring room (blocking).
    fn pay(&mut self) -> Result<()> {
        match self.owed.take() {
            Some(c) => self.bus.shared.send_on(self.origin, &c, None),
            None => Ok(()),
        }
    }

    /// The credit [`took`](Self::took) left owed, for the async reader to
    /// send; still owed until [`paid`](Self::paid) (a read dropped
    /// mid-send loses none).
    #[cfg(feature = "tokio")]
    pub(crate) fn owed(&self) -> Option<Descriptor> {
        self.owed
    }

    /// The credit owed was sent.
    #[cfg(feature = "tokio")]
    pub(crate) fn paid(&mut self) {
        self.owed = None;
    }

    /// Takes what a wait for the next arrival gave (mapped by the wait's
    /// check): counts the credits it frees (left [`owed`](Self::owed)); `None`
    /// once the stream ended (and forgotten, as on an error other than a
    /// deadline).
    fn took(&mut self, r: Result<Option<Sample>>) -> Result<Option<Sample>> {
        let end = self.this_end();
        let sample = match r {
            Ok(Some(s)) => s,
            Ok(None) => {
                self.finish();
                return Ok(None);
            }
            Err(Error::DeadlineExceeded) => return Err(Error::DeadlineExceeded),
            Err(e) => {
                self.finish();
                return Err(e);
            }
        };
        if let Some(c) = self.window.consume(end, sample.descriptor().items() as u32) {
            owe(&mut self.owed, c);
        }
        Ok(Some(sample))
    }

    /// Sends an item to the service (request-channel only), waiting up to
    /// `timeout` for a credit.
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<()> {
        self.may_send()?;
        send_item(&self.bus.shared, self.this_end(), payload, deadline_in(timeout))
    }

    /// Ends our direction of a channel; keep calling [`next`](Self::next)
    /// for the service's items. Ending twice is ending once.
    pub fn end(&mut self) -> Result<()> {
        if !self.channel || self.sent_end || self.done {
            return Ok(());
        }
        self.bus.shared.send_on(self.origin, &Descriptor::new(Kind::StreamEnd, self.route, self.corr), None)?;
        self.sent_end = true;
        Ok(())
    }

    fn finish(&mut self) {
        self.finish_with(false);
    }

    /// Forgets the stream; `cancel` tells the service we gave up on it.
    /// A channel whose direction we never ended is cancelled too: its
    /// exchange stays open at the daemon until both directions end, where
    /// it counts against our uid's quota of exchanges in flight.
    fn finish_with(&mut self, cancel: bool) {
        if self.done {
            return;
        }
        self.done = true;
        let mut core = self.bus.shared.lock();
        if cancel || (self.channel && !self.sent_end) {
            // Before the stream is forgotten: that may let a closing channel go.
            core.send_cancel(self.origin, self.route, self.corr);
        }
        if let Some(s) = core.streams.remove(&self.corr) {
            for d in s.items {
                core.release(d, self.origin);
            }
        }
        core.forget_call(self.corr, self.origin);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.done {
            let ended = self.bus.shared.lock().streams.get(&self.corr).is_some_and(|s| s.ended);
            self.finish_with(!ended);
        }
    }
}

/// What sending on a request-stream is.
pub(crate) fn not_a_channel() -> Error {
    Error::BadRequest("send on a request-stream; open a request-channel".into())
}

/// The error a stream ended with, for the server side's `fail`.
pub(crate) fn service_error(route: u32, corr: u64, msg: &str) -> Descriptor {
    let mut d = Descriptor::new(Kind::Error, route, corr).with_aux(hybus_layout::control::DataError::Service as u64);
    let bytes = msg.as_bytes();
    let n = bytes.len().min(hybus_layout::descriptor::INLINE_CAPACITY);
    d = d.with_inline(&bytes[..n]).unwrap_or(d);
    d.flags |= flags::SERVER;
    d
}
