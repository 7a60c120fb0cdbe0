//! Calls the caller holds on to: [`PendingCall`] and [`CallCanceller`].
//!
//! [`Bus::call`] sends a request and blocks until its answer, its deadline
//! or the loss of the connection. [`Bus::begin_call`] sends it and hands
//! back a [`PendingCall`] instead, which lets one thread
//!
//! * have several calls in flight at once, to one service or to several,
//!   and collect the answers in any order;
//! * look for an answer without blocking ([`PendingCall::try_answer`]) or
//!   for a while ([`PendingCall::wait_timeout`]);
//! * give up on a call before its deadline ([`PendingCall::cancel`]), or
//!   let another thread do it ([`CallCanceller`]) while it waits.
//!
//! A cancelled call is forgotten here, and the server is told (a `Cancel`
//! descriptor, as when a deadline passes: [`Request::is_cancelled`]
//! turns true there, and its answer is refused). An answer that arrives
//! anyway is given back to its sender's pool. A [`PendingCall`] dropped
//! unfinished is cancelled.
//!
//! [`Request::is_cancelled`]: crate::Request::is_cancelled

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::control::DataError;
use hybus_layout::doorbell::Wake;
use hybus_layout::{Descriptor, Kind};

use crate::bus::Shared;
use crate::core::{Core, Hot, Origin};
use crate::error::{Error, Result};
use crate::sample::{Loan, Sample};
use crate::wait::{deadline_in, Due};
use crate::{Bus, Route};

/// A request that went out, as the caller keeps it: what waiting for its
/// answer and cancelling it need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sent {
    /// The call's correlation id.
    pub corr: u64,
    /// The path it went on.
    pub origin: Origin,
    /// The route id it was addressed to on that path (a direct call's is the instance's).
    pub route: u32,
    /// The call's deadline.
    pub due: Due,
}

impl Bus {
    /// Sends a request to one instance of `route` and returns at once with
    /// a handle on the call: wait for its answer later, make several calls
    /// before collecting their answers, or cancel it.
    ///
    /// `timeout` bounds the whole call: the wait for pool space and ring
    /// room here, and the wait for the answer in
    /// [`PendingCall::wait`]. The call otherwise behaves as
    /// [`call`](Self::call), over a direct channel where the route has one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// use std::time::Duration;
    /// let bus = hybus::Bus::connect()?;
    /// let kv = bus.resolve("kv.store")?;
    /// // Three requests in flight at once, answers collected in order.
    /// let calls = ["get a", "get b", "get c"]
    ///     .map(|q| bus.begin_call(&kv, q.as_bytes(), Duration::from_secs(1)));
    /// for call in calls {
    ///     println!("{}", String::from_utf8_lossy(&call?.wait()?));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn begin_call(&self, route: &Route, payload: &[u8], timeout: Duration) -> Result<PendingCall> {
        let deadline = deadline_in(timeout);
        let (d, epoch) = match Descriptor::new(Kind::Request, 0, 0).with_inline(payload) {
            Some(d) => (d, None),
            None => self.shared.build(Kind::Request, 0, payload, Some(deadline)).map(|(d, e)| (d, Some(e)))?,
        };
        self.pending(route, d, epoch, deadline)
    }

    /// [`begin_call`](Self::begin_call) with a loaned chunk written in place (zero-copy).
    pub fn begin_call_loan(&self, route: &Route, loan: Loan, timeout: Duration) -> Result<PendingCall> {
        let deadline = deadline_in(timeout);
        let (d, epoch) = loan.into_current(Kind::Request, 0)?;
        self.pending(route, d, Some(epoch), deadline)
    }

    fn pending(
        &self,
        route: &Route,
        d: Descriptor,
        chunk_epoch: Option<u64>,
        deadline: Instant,
    ) -> Result<PendingCall> {
        let sent = self.send_request(route, d, chunk_epoch, Due::At(deadline))?;
        Ok(PendingCall { shared: self.shared.clone(), sent, done: false })
    }
}

/// A call sent with [`Bus::begin_call`] whose answer has not been taken yet.
///
/// One thread may hold many and collect their answers in any order
/// ([`wait`](Self::wait)), look without blocking
/// ([`try_answer`](Self::try_answer)), or give up on one
/// ([`cancel`](Self::cancel), or a [`CallCanceller`] from another thread).
/// A cancelled call is forgotten here and its server is told
/// ([`Request::is_cancelled`](crate::Request::is_cancelled)); an answer
/// that comes anyway goes back to its sender's pool. Dropped unfinished,
/// it is cancelled.
#[must_use = "a pending call dropped unfinished is cancelled"]
pub struct PendingCall {
    shared: Arc<Shared>,
    sent: Sent,
    /// The answer or the call's error was handed out, or it was cancelled: nothing left to undo.
    done: bool,
}

impl fmt::Debug for PendingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCall").field("correlation", &self.sent.corr).field("done", &self.done).finish()
    }
}

impl PendingCall {
    /// Waits for the answer until the call's deadline: the answer's
    /// payload, or the error it carries, [`Error::DeadlineExceeded`] (the
    /// server is then told), [`Error::Cancelled`] if a [`CallCanceller`]
    /// cancelled it meanwhile, or the loss of the path it went on.
    pub fn wait(mut self) -> Result<Sample> {
        self.done = true;
        self.shared.await_answer(&self.sent, self.sent.due)?.ok_or(Error::DeadlineExceeded)
    }

    /// Waits at most `timeout` for the answer (never past the call's
    /// deadline): `Ok(None)` if it has not come, and the call stays
    /// pending. Otherwise as [`wait`](Self::wait), and the call is over:
    /// asked again, it answers [`Error::BadRequest`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Sample>> {
        if self.done {
            return Err(over());
        }
        let until = match self.sent.due {
            Due::At(d) => Due::At(d.min(deadline_in(timeout))),
            _ => Due::At(deadline_in(timeout)),
        };
        let r = self.shared.await_answer(&self.sent, until);
        self.done = !matches!(r, Ok(None));
        r
    }

    /// The answer if it has come, without waiting: `Ok(None)` if not
    /// (the call stays pending). Otherwise as [`wait`](Self::wait), and the
    /// call is over: asked again, it answers [`Error::BadRequest`].
    pub fn try_answer(&mut self) -> Result<Option<Sample>> {
        if self.done {
            return Err(over());
        }
        let shared = &self.shared;
        let r = {
            let mut core = shared.lock();
            core.pump_data();
            answer_check(shared, self.sent)(&mut core)
        };
        match r {
            Ok(None) => Ok(None),
            r => {
                self.done = true;
                shared.finish_call(&self.sent, r)
            }
        }
    }

    /// Gives up on the call: it is forgotten here, and the server is told.
    /// An answer that comes anyway goes back to the server's pool.
    pub fn cancel(mut self) {
        self.done = true;
        self.shared.cancel_call(&self.sent, true);
    }

    /// A handle that cancels this call from anywhere (another thread, a
    /// signal-handling loop): a waiter in [`wait`](Self::wait) then wakes
    /// at once with [`Error::Cancelled`].
    pub fn canceller(&self) -> CallCanceller {
        CallCanceller { shared: self.shared.clone(), sent: self.sent }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancel_call(&self.sent, true);
        }
    }
}

/// Cancels one [`PendingCall`] from anywhere; see
/// [`PendingCall::canceller`]. Cheap to clone. It keeps the connection
/// open, like a clone of its [`Bus`].
#[derive(Clone)]
pub struct CallCanceller {
    shared: Arc<Shared>,
    sent: Sent,
}

impl fmt::Debug for CallCanceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallCanceller").field("correlation", &self.sent.corr).finish()
    }
}

impl CallCanceller {
    /// Cancels the call if it is still waiting for its answer; `false` if
    /// it was already over (answered, failed, cancelled). Whoever waits
    /// for it gets [`Error::Cancelled`].
    pub fn cancel(&self) -> bool {
        self.shared.cancel_call(&self.sent, false)
    }
}

impl Shared {
    /// Waits until `until` for the answer to the call `sent`: the answer's
    /// sample or the error it carries, or `Ok(None)` when `until` came
    /// before the call's own deadline (the call stays pending). Once the
    /// call's deadline passes, or the wait fails, the call is forgotten;
    /// on its deadline the server is told.
    pub(crate) fn await_answer(self: &Arc<Self>, sent: &Sent, until: Due) -> Result<Option<Sample>> {
        let Sent { corr, origin, due, .. } = *sent;
        let hot = match origin {
            Origin::Direct(channel) => Hot::Answer { channel, corr },
            Origin::Daemon => Hot::All,
        };
        let r = self.wait_hot(until, hot, answer_check(self, *sent));
        match r {
            // A shorter wait than the call's ended: the call goes on.
            Err(Error::DeadlineExceeded) if until != due && !passed(due) => Ok(None),
            r => self.finish_call(sent, r.map(Some)),
        }
    }

    /// What a wait for the answer to `sent` came to, once the call is
    /// over: the answer, or the error it carries; on a failed wait the
    /// call is forgotten, and on its deadline the server is told.
    fn finish_call(&self, sent: &Sent, r: Result<Option<Sample>>) -> Result<Option<Sample>> {
        match r {
            Ok(Some(sample)) => Shared::answer_sample(sample).map(Some),
            Ok(None) => Ok(None),
            Err(e) => {
                let mut core = self.lock();
                if matches!(e, Error::DeadlineExceeded) {
                    // Tell the server (through the daemon, or directly; before
                    // the call is forgotten, which may let a closing channel
                    // go); a late answer goes back.
                    core.send_cancel(sent.origin, sent.route, sent.corr);
                }
                core.forget_call(sent.corr, sent.origin);
                Err(e)
            }
        }
    }

    /// Cancels the call `sent` if it still waits for its answer: forgets
    /// it, tells the server, and (unless `owner`) leaves
    /// [`Error::Cancelled`] as its outcome for whoever waits for it, waking
    /// that waiter. The `owner` (the [`PendingCall`] itself, giving up)
    /// forgets it in any case: an answer that came meanwhile goes back.
    /// `false` if the call was over.
    pub(crate) fn cancel_call(&self, sent: &Sent, owner: bool) -> bool {
        let Sent { corr, origin, route, .. } = *sent;
        let mut core = self.lock();
        // An answer already on its ring has come: the call is over.
        core.pump_data();
        let waiting = match origin {
            Origin::Daemon => matches!(core.calls.get(&corr), Some(None)),
            Origin::Direct(id) => {
                !core.calls.contains_key(&corr) && core.channels.get(&id).is_some_and(|c| c.has_call(corr))
            }
        };
        if waiting {
            // Before the call is forgotten, which may let a closing channel go.
            core.send_cancel(origin, route, corr);
        }
        if waiting || owner {
            core.forget_call(corr, origin);
        }
        if !waiting {
            return false;
        }
        if owner {
            return true;
        }
        let cancelled = Descriptor::new(Kind::Error, route, corr).with_aux(DataError::Cancelled as u64);
        core.calls.insert(corr, Some((cancelled, Origin::Daemon)));
        // The waiter may sleep on our doorbell (a spurious ring is harmless
        // to anyone else), or on the condvar behind it.
        if core.parked_waiter {
            core.rx_bell.wake();
        }
        let notify = core.cv_waiters > 0;
        drop(core);
        if notify {
            self.cv.notify_all();
        }
        true
    }
}

/// Whether `due` has come.
fn passed(due: Due) -> bool {
    let now = Instant::now();
    due.deadline(now).is_some_and(|d| now >= d)
}

/// A wait's check for the answer to `sent`: taken from the channel this
/// round or from the call table, as a sample mapped under the same lock.
fn answer_check(shared: &Arc<Shared>, sent: Sent) -> impl FnMut(&mut Core) -> Result<Option<Sample>> + '_ {
    move |core| {
        let Some((answer, path)) = core.take_answer(sent.corr) else {
            if sent.origin == Origin::Daemon && core.gone.is_some() {
                return Err(Error::BusGone(core.gone.clone().unwrap_or_default()));
            }
            return Ok(None);
        };
        // (A sample must not be dropped here: its drop takes the lock.)
        Sample::new_locked(shared, core, answer, path).map(Some)
    }
}

/// What a [`PendingCall`] asked for its answer again says.
fn over() -> Error {
    Error::BadRequest("the call is over: its answer or error was taken already".into())
}
