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
use crate::Route;

/// Which end of an exchange we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// We opened it (correlation ids are ours).
    Caller,
    /// We serve it (correlation ids are the daemon's, or the caller's on a channel).
    Server,
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

/// Sends one item once the peer has granted a credit.
pub(crate) fn send_item(
    shared: &Arc<Shared>,
    side: Side,
    origin: Origin,
    corr: u64,
    route: u32,
    payload: &[u8],
    deadline: Instant,
) -> Result<()> {
    shared.wait(Some(deadline), false, |core| match credits(core, side, origin, corr)? {
        Some(c) if *c > 0 => {
            *c -= 1;
            Ok(Some(()))
        }
        Some(_) => Ok(None),
        None => Err(Error::Cancelled),
    })?;
    let mut d = shared.build(Kind::StreamItem, route, payload, Some(deadline))?;
    d.correlation = corr;
    if side == Side::Server {
        d.flags |= flags::SERVER;
    }
    shared.send_on(origin, &d, Some(deadline))
}

/// Receives one item; `Ok(None)` once the peer ended its direction.
/// Grants the peer new credits after every half window consumed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recv_item(
    shared: &Arc<Shared>,
    side: Side,
    origin: Origin,
    corr: u64,
    route: u32,
    window: u32,
    consumed: &mut u32,
    deadline: Instant,
) -> Result<Option<Sample>> {
    let d = shared.wait(Some(deadline), false, |core| {
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
            return Ok(Some(Some(d)));
        }
        if let Some(e) = err {
            return Err(e);
        }
        Ok(ended.then_some(None))
    })?;
    let Some(d) = d else { return Ok(None) };
    *consumed += 1;
    if *consumed >= (window / 2).max(1) {
        let mut c = Descriptor::new(Kind::Credit, route, corr).with_aux(*consumed as u64);
        if side == Side::Server {
            c.flags |= flags::SERVER;
        }
        *consumed = 0;
        shared.send_on(origin, &c, Some(deadline))?;
    }
    Ok(Some(Sample::new(shared, d, origin)?))
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
    window: u32,
    consumed: u32,
    channel: bool,
    done: bool,
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
        let mut d = self.shared.build(Kind::StreamOpen, id, payload, Some(deadline))?;
        let (corr, origin) = {
            let mut core = self.shared.lock();
            let corr = core.next_id();
            let origin = core.route_fire(&mut d);
            if let Origin::Direct(id) = origin {
                // Keeps the channel alive (for our side) until the stream ends.
                if let Some(ch) = core.channels.get_mut(&id) {
                    ch.calls.insert(corr);
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
        if let Err(e) = self.shared.send_on(origin, &d, None) {
            self.shared.lock().streams.remove(&corr);
            return Err(e);
        }
        Ok(Stream { bus: self.clone(), corr, route: d.route, origin, window, consumed: 0, channel, done: false })
    }
}

impl Stream {
    /// The next item, waiting up to `timeout`; `Ok(None)` once the service ended the stream.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Sample>> {
        let r = recv_item(
            &self.bus.shared,
            Side::Caller,
            self.origin,
            self.corr,
            self.route,
            self.window,
            &mut self.consumed,
            Instant::now() + timeout,
        );
        if matches!(r, Ok(None) | Err(_)) && !matches!(r, Err(Error::DeadlineExceeded)) {
            self.finish();
        }
        r
    }

    /// Sends an item to the service (request-channel only), waiting up to
    /// `timeout` for a credit.
    pub fn send(&mut self, payload: &[u8], timeout: Duration) -> Result<()> {
        if !self.channel {
            return Err(Error::BadRequest("send on a request-stream; open a request-channel".into()));
        }
        send_item(&self.bus.shared, Side::Caller, self.origin, self.corr, self.route, payload, Instant::now() + timeout)
    }

    /// Ends our direction of a channel; keep calling [`next`](Self::next) for the service's items.
    pub fn end(&mut self) -> Result<()> {
        if !self.channel {
            return Ok(());
        }
        self.bus.shared.send_on(self.origin, &Descriptor::new(Kind::StreamEnd, self.route, self.corr), None)
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let mut core = self.bus.shared.lock();
            if let Some(s) = core.streams.remove(&self.corr) {
                for d in s.items {
                    core.release(d, self.origin);
                }
            }
            core.forget_call(self.corr, self.origin);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.done {
            let ended = self.bus.shared.lock().streams.get(&self.corr).is_some_and(|s| s.ended);
            if !ended {
                let cancel = Descriptor::new(Kind::Cancel, self.route, self.corr);
                let _ = self.bus.shared.lock().try_send_on(self.origin, &cancel);
            }
            self.finish();
        }
    }
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
