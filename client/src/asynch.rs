//! The async API (feature `tokio`): the same waits as the blocking API, on
//! the same doorbells, through tokio's reactor — no polling thread.
//!
//! [`Bus::to_async`] registers the connection's doorbell eventfd and its
//! control socket with tokio. A waiting task arms the rings it reads (the
//! parking handshake of [`hybus_layout::doorbell`]) and awaits readability
//! of either fd; a sender rings the doorbell only when the ring is armed,
//! exactly as for a blocking waiter.
//!
//! One [`AsyncBus`] per connection; do not wait on the same connection from
//! blocking and async code at the same time.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use hybus_layout::Kind;
use tokio::io::unix::AsyncFd;

use crate::bus::{Bus, Shared};
use crate::core::{Core, Origin};
use crate::error::{Error, Result};
use crate::sample::Sample;
use crate::service::{Incoming, Service};
use crate::topic::Subscription;
use crate::{BusEvent, Route};

/// An async view of a [`Bus`].
#[derive(Debug)]
pub struct AsyncBus {
    bus: Bus,
    bell: AsyncFd<OwnedFd>,
    sock: AsyncFd<OwnedFd>,
}

impl Bus {
    /// An async view of this connection. Must be called from within a tokio runtime.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), hybus::Error> {
    /// use std::time::Duration;
    /// let bus = hybus::Bus::connect()?.to_async()?;
    /// let route = bus.bus().resolve("kv.store")?;
    /// let answer = bus.call(&route, b"get colour", Duration::from_secs(1)).await?;
    /// # let _ = answer; Ok(()) }
    /// ```
    pub fn to_async(&self) -> Result<AsyncBus> {
        let (bell, sock) = {
            let core = self.shared.lock();
            let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| Error::os("dup", e));
            (dup(core.rx_bell.fd())?, dup(core.sock.fd())?)
        };
        // The doorbell is read after tokio says it is readable; non-blocking
        // so that a read another waiter won cannot stall the executor. (The
        // flag is on the shared file description; every reader of it in
        // this crate reads only after a readiness report.)
        set_nonblocking(&bell)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Os("to_async must be called from within a tokio runtime".into()));
        }
        let reg = |fd: OwnedFd| {
            // SAFETY: the AsyncFd owns `fd`, so it stays open and names the
            // same file description for the AsyncFd's whole life.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| Error::os("register with tokio", e))
        };
        Ok(AsyncBus { bus: self.clone(), bell: reg(bell)?, sock: reg(sock)? })
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(|e| Error::os("F_GETFL", e))?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(|e| Error::os("F_SETFL", e))?;
    Ok(())
}

impl AsyncBus {
    /// The blocking handle (for control requests: resolve, register, list, ...).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Waits until `check` yields a value, the connection is lost, or `deadline` passes.
    async fn wait<T>(&self, deadline: Instant, mut check: impl FnMut(&mut Core) -> Result<Option<T>>) -> Result<T> {
        let shared = &self.bus.shared;
        loop {
            {
                let mut core = shared.lock();
                if core.releases_queued {
                    core.flush_releases();
                }
                core.pump_data();
                if let Some(v) = check(&mut core)? {
                    return Ok(v);
                }
                if let Some(g) = &core.gone {
                    if core.channels.is_empty() {
                        return Err(Error::BusGone(g.clone()));
                    }
                }
                if Instant::now() >= deadline {
                    return Err(Error::DeadlineExceeded);
                }
                match core.prepare_park() {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => return Err(Error::BusGone(format!("daemon ring corrupt: {e}"))),
                }
            }
            let control = tokio::select! {
                r = self.bell.readable() => {
                    if let Ok(mut g) = r {
                        let mut b = [0u8; 8];
                        let _ = nix::unistd::read(self.bell.get_ref(), &mut b);
                        g.clear_ready();
                    }
                    false
                }
                r = self.sock.readable() => {
                    if let Ok(mut g) = r {
                        g.clear_ready();
                    }
                    true
                }
                _ = tokio::time::sleep_until(deadline.into()) => false,
            };
            let mut core = shared.lock();
            core.finish_park();
            if control {
                // Reads until it would block, so tokio's edge is not lost.
                core.pump_control();
                core.check_peers();
            }
        }
    }

    /// Calls `route` and awaits the answer (see [`Bus::call`]).
    pub async fn call(&self, route: &Route, payload: &[u8], timeout: Duration) -> Result<Sample> {
        let deadline = Instant::now() + timeout;
        let mut d = self.bus.shared.build(Kind::Request, 0, payload, Some(deadline))?;
        let (corr, origin, sent) = self.bus.start_call(route, &mut d, None)?;
        if !sent {
            self.bus.shared.send_on(origin, &d, Some(deadline))?;
        }
        let r = self
            .wait(deadline, |core| match core.take_answer(corr) {
                Some(answer) => Ok(Some(answer)),
                None if origin == Origin::Daemon && core.gone.is_some() => {
                    Err(Error::BusGone(core.gone.clone().unwrap_or_default()))
                }
                None => Ok(None),
            })
            .await;
        match r {
            Ok((d, origin)) => Shared::answer_sample(Sample::new(&self.bus.shared, d, origin)?),
            Err(e) => {
                let mut core = self.bus.shared.lock();
                core.forget_call(corr, origin);
                if matches!(e, Error::DeadlineExceeded) {
                    let cancel = hybus_layout::Descriptor::new(Kind::Cancel, d.route, corr);
                    let _ = core.try_send_on(origin, &cancel);
                }
                Err(e)
            }
        }
    }

    /// Awaits the next request, fire or stream for `service` (see [`Service::next`]).
    pub async fn next_incoming(&self, service: &Service, timeout: Duration) -> Result<Option<Incoming>> {
        let (instance, epoch) = service.inbox();
        let r = self.wait(Instant::now() + timeout, |core| Ok(core.take_incoming(instance))).await;
        match r {
            Ok((d, origin)) => {
                Sample::new(&self.bus.shared, d, origin).map(|p| Some(service.incoming(p, origin, instance, epoch)))
            }
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Awaits the next publication of `subscription` (see [`Subscription::next`]).
    pub async fn next_publication(&self, subscription: &Subscription, timeout: Duration) -> Result<Option<Sample>> {
        let route = subscription.route();
        let r = self
            .wait(Instant::now() + timeout, |core| Ok(core.topics.get_mut(&route).and_then(|q| q.pop_front())))
            .await;
        match r {
            Ok(d) => Sample::new(&self.bus.shared, d, Origin::Daemon).map(Some),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Awaits the next bus event (see [`Bus::next_event`]).
    pub async fn next_event(&self, timeout: Duration) -> Result<Option<BusEvent>> {
        match self.wait(Instant::now() + timeout, |core| Ok(core.events.pop_front())).await {
            Ok(e) => Ok(Some(e)),
            Err(Error::DeadlineExceeded) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
