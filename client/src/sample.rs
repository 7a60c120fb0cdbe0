//! Payloads: [`Sample`] (received, borrowed from the sender's pool) and
//! [`Loan`] (a chunk of our own pool, written in place before sending).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use hybus_layout::descriptor::INLINE_CAPACITY;
use hybus_layout::{ChunkRef, Descriptor, Kind};

use crate::bus::Shared;
use crate::core::{Core, Origin, View};
use crate::error::{Error, Result};

/// A received payload. Derefs to its bytes.
///
/// Small payloads were carried inside the descriptor; larger ones are read
/// in place from the sender's pool through a read-only mapping, and the
/// chunk goes back to the sender when the sample is dropped. Hold samples
/// briefly: the sender cannot reuse the chunk meanwhile.
///
/// The sender keeps a writable mapping of its pool, so a misbehaving sender
/// could change the bytes while you read them: copy them out before
/// validating anything that must stay valid ([`decode`](Self::decode) and
/// [`checked`](Self::checked), the typed payloads of [`typed`](crate::typed), do so).
pub struct Sample {
    d: Descriptor,
    /// For one item of a batch: its bytes within the batch's payload.
    range: Option<std::ops::Range<usize>>,
    /// For one item of a batch: the batch, which releases the chunk when
    /// its last item is dropped.
    _parent: Option<Arc<Sample>>,
    origin: Origin,
    view: Option<Arc<View>>,
    shared: Option<Arc<Shared>>,
    epoch: u64,
}

impl Sample {
    /// The sample of `d`, which a wait's check just took under the lock it
    /// holds (`core`), mapped under that same lock.
    ///
    /// Why under the same lock, and why there is no `new` that takes its
    /// own: a sample releases its chunk to the daemon of the connection
    /// epoch it was made on. Made under a second lock, a reconnect in
    /// between gave an old daemon's payload the new epoch (and the new
    /// daemon's numbering of pools), and its release reached a daemon that
    /// never lent it. One lock is also one lock fewer per payload.
    pub(crate) fn new_locked(shared: &Arc<Shared>, core: &mut Core, d: Descriptor, origin: Origin) -> Result<Sample> {
        let Some(c) = d.chunk() else {
            return Ok(Sample::inline(d, origin));
        };
        let epoch = core.epoch;
        let view = match core.view_for(c, origin) {
            Ok(v) => v,
            Err(e) => {
                // This payload fails; its chunk still goes back.
                if let Error::CorruptPool { pool, why } = &e {
                    core.report_corrupt(*pool, why);
                }
                release_to(core, &d, origin, epoch);
                return Err(e);
            }
        };
        Ok(Sample { d, range: None, _parent: None, origin, view: Some(view), shared: Some(shared.clone()), epoch })
    }

    fn inline(d: Descriptor, origin: Origin) -> Sample {
        Sample { d, range: None, _parent: None, origin, view: None, shared: None, epoch: 0 }
    }

    /// The descriptor it came in.
    pub(crate) fn descriptor(&self) -> &Descriptor {
        &self.d
    }

    /// Gives the chunk back now, under a lock the caller holds (what
    /// dropping it does, without taking the lock a second time).
    pub(crate) fn release_locked(mut self, core: &mut Core) {
        if self.shared.take().is_some() {
            release_to(core, &self.d, self.origin, self.epoch);
        }
    }

    /// One item of a batch: `range` of `parent`'s bytes (checked by the batch reader).
    pub(crate) fn slice(parent: &Arc<Sample>, range: std::ops::Range<usize>) -> Sample {
        Sample {
            d: parent.d,
            range: Some(range),
            _parent: Some(parent.clone()),
            origin: parent.origin,
            view: parent.view.clone(),
            shared: None,
            epoch: parent.epoch,
        }
    }

    /// The payload bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        let all = match (&self.view, self.d.chunk()) {
            (Some(v), Some(c)) => v.seg.bytes(c.offset, c.len as usize).unwrap_or(&[]),
            _ => self.d.inline(),
        };
        match &self.range {
            Some(r) => all.get(r.clone()).unwrap_or(&[]),
            None => all,
        }
    }

    /// Whether the payload was read in place from the sender's pool (zero-copy).
    pub fn is_zero_copy(&self) -> bool {
        self.view.is_some()
    }

    /// The daemon's id of the client whose pool holds the payload (the
    /// sender: the daemon refuses a chunk of any other pool), or `None` for
    /// a payload carried inline. (A relay that tells its own publications
    /// apart uses [`publisher`](Self::publisher), which inline ones carry too.)
    pub fn pool_owner(&self) -> Option<u32> {
        self.d.chunk().map(|c| c.segment)
    }

    /// For a publication, the daemon's id of the client that published it
    /// (the daemon writes it, whatever the publisher did), inline or in a
    /// chunk; `None` for anything else. A relay tells its own publications
    /// by it (compare with [`Bus::client_id`](crate::Bus::client_id)).
    pub fn publisher(&self) -> Option<u32> {
        let published = self.d.kind == Kind::Publish as u8 && self.origin == Origin::Daemon;
        published.then_some(self.d.aux as u32)
    }

    /// The correlation id the descriptor carried.
    pub fn correlation(&self) -> u64 {
        self.d.correlation
    }
}

impl Deref for Sample {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample").field("len", &self.bytes().len()).field("zero_copy", &self.is_zero_copy()).finish()
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            release_to(&mut shared.lock(), &self.d, self.origin, self.epoch);
        }
    }
}

/// Gives a received chunk back by the path it came, unless it came through
/// a daemon we have since lost: the old daemon's loans are gone with it (a
/// direct channel's are not).
fn release_to(core: &mut Core, d: &Descriptor, origin: Origin, epoch: u64) {
    if core.epoch == epoch || matches!(origin, Origin::Direct(_)) {
        core.release(*d, origin);
    }
}

/// A chunk of this client's pool, lent to the application to write a payload in place.
///
/// Derefs mutably to its bytes. Send it with [`Bus::call_loan`](crate::Bus::call_loan),
/// [`Bus::fire_loan`](crate::Bus::fire_loan), [`Publisher::publish_loan`](crate::Publisher::publish_loan)
/// or [`Request::reply_loan`](crate::Request::reply_loan); dropped unsent, it goes back to the pool.
pub struct Loan {
    shared: Arc<Shared>,
    /// Our pool's mapping, held so the bytes stay mapped whatever the connection does.
    pool: Arc<View>,
    chunk: ChunkRef,
    len: usize,
    epoch: u64,
    sent: bool,
}

impl Loan {
    /// A loan of `chunk`, just allocated from `core` (whose lock the caller
    /// holds), which keeps it out of a reconnect's reclaiming until it is
    /// sent or dropped ([`Core::loaned`]).
    pub(crate) fn new(shared: Arc<Shared>, core: &mut Core, chunk: ChunkRef, len: usize) -> Loan {
        core.loaned.insert(chunk.offset, core.epoch);
        Loan { shared, pool: core.pool.clone(), chunk, len, epoch: core.epoch, sent: false }
    }

    /// Shrinks the payload to `len` bytes (it cannot grow past the loan).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The descriptor that sends the loan, and the connection epoch it was
    /// lent in, which the sender checks under the lock it sends with (the
    /// chunk is not ours to free if a reconnect came in between).
    fn into_parts(mut self, kind: Kind, route: u32) -> (Descriptor, u64) {
        self.sent = true;
        let c = ChunkRef { len: self.len as u32, ..self.chunk };
        (Descriptor::new(kind, route, 0).with_chunk(c), self.epoch)
    }

    /// The loan as a descriptor of `kind` to `route`, with the connection
    /// epoch it was made on; refused if the bus reconnected since (the
    /// chunk belongs to a pool the old daemon took with it).
    ///
    /// A refused loan is dropped as unsent: its chunk goes back if the
    /// reconnect kept our pool.
    ///
    /// Read without the lock: a reconnect between this and the push is
    /// caught at the push, and the chunk still goes back
    /// ([`Core::free_unsent`] knows a kept loan).
    pub(crate) fn into_current(self, kind: Kind, route: u32) -> Result<(Descriptor, u64)> {
        if self.shared.epoch.load(std::sync::atomic::Ordering::Acquire) != self.epoch {
            return Err(Error::BusGone("the loan is from before a reconnect".into()));
        }
        Ok(self.into_parts(kind, route))
    }

    /// [`into_current`](Self::into_current) to a route id read with the
    /// connection epoch it is of (see `Bus::route_id`): refused unless that
    /// is the loan's epoch too, so the send's epoch check covers the id.
    pub(crate) fn into_routed(self, kind: Kind, (route, ids): (u32, u64)) -> Result<(Descriptor, u64)> {
        if ids != self.epoch {
            return Err(crate::bus::stale_route());
        }
        self.into_current(kind, route)
    }
}

impl Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.pool.seg.bytes(self.chunk.offset, self.len).unwrap_or(&[])
    }
}

impl DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: the chunk was allocated to this loan alone; nobody else
        // writes or reads it until it is sent, which consumes the loan.
        unsafe { self.pool.seg.bytes_mut(self.chunk.offset, self.len) }.unwrap_or(&mut [])
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).field("offset", &self.chunk.offset).finish()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if !self.sent {
            let mut core = self.shared.lock();
            // Still ours if it is still held for a loan of this very pool: a
            // reconnect that replaced the pool forgot the loans of the old one.
            if Arc::ptr_eq(&self.pool, &core.pool) && core.loaned.contains_key(&self.chunk.offset) {
                core.free_own(self.chunk);
            }
        }
    }
}

/// Payloads up to this many bytes travel inside the descriptor.
pub const INLINE_PAYLOAD: usize = INLINE_CAPACITY;
