//! The async serving loop (feature `tokio`): [`AsyncBus::serve`] and
//! [`AsyncServing`], the twins of [`Service::serve`] and
//! [`Serving`](crate::Serving), with async handlers.

use std::future::Ready;
use std::time::{Duration, Instant};

use hybus_layout::Kind;

use crate::asynch::AsyncBus;
use crate::error::Result;
use crate::sample::Sample;
use crate::serve::{Reply, ServiceError};
use crate::service::{Incoming, Request, Service, StreamRequest};

/// How long an async answer waits for room in our pool (as a blocking one).
const REPLY_POOL_WAIT: Duration = Duration::from_secs(10);

/// The fire handler of a loop that has none: fires are dropped.
pub type NoFire = fn(Sample) -> Ready<()>;

/// The stream handler of a loop that has none: streams are refused.
pub type NoStream = for<'x> fn(&'x mut StreamRequest) -> Ready<Result<(), ServiceError>>;

/// An async serving loop being set up: [`AsyncBus::serving`], then
/// optional handlers for fires and streams, then [`run`](Self::run).
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), hybus::Error> {
/// let bus = hybus::Bus::connect()?.to_async()?;
/// let svc = bus.bus().register("demo.upper")?;
/// bus.serving(&svc)
///     .on_fire(async |sample: hybus::Sample| println!("fired {} bytes", sample.len()))
///     .run(async |req: &hybus::Request| Ok(req.payload().to_ascii_uppercase().into()))
///     .await?;
/// # Ok(()) }
/// ```
pub struct AsyncServing<'s, Fi = NoFire, St = NoStream> {
    bus: &'s AsyncBus,
    service: &'s Service,
    on_fire: Option<Fi>,
    on_stream: Option<St>,
}

impl<Fi, St> std::fmt::Debug for AsyncServing<'_, Fi, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncServing")
            .field("service", &self.service.name())
            .field("on_fire", &self.on_fire.is_some())
            .field("on_stream", &self.on_stream.is_some())
            .finish()
    }
}

impl<'s, Fi, St> AsyncServing<'s, Fi, St> {
    /// Fires go to `handler` (awaited before the next incoming); without
    /// one they are dropped.
    pub fn on_fire<G: AsyncFnMut(Sample)>(self, handler: G) -> AsyncServing<'s, G, St> {
        AsyncServing { bus: self.bus, service: self.service, on_fire: Some(handler), on_stream: self.on_stream }
    }

    /// Request-streams and request-channels go to `handler` (send with
    /// [`AsyncBus::send_item`], read with [`AsyncBus::next_item`]); the
    /// stream ends when it returns `Ok` and fails with its error when it
    /// returns `Err`. Without one, streams are refused.
    pub fn on_stream<G>(self, handler: G) -> AsyncServing<'s, Fi, G>
    where
        G: for<'x> AsyncFnMut(&'x mut StreamRequest) -> Result<(), ServiceError>,
    {
        AsyncServing { bus: self.bus, service: self.service, on_fire: self.on_fire, on_stream: Some(handler) }
    }

    /// Serves until the instance is drained and every request in flight
    /// is answered, as [`Serving::run`](crate::Serving::run) does, awaiting
    /// each request's `handler` in turn. Waits for requests, and for pool
    /// space for large answers, without blocking the executor.
    pub async fn run<F>(mut self, mut handler: F) -> Result<()>
    where
        F: for<'x> AsyncFnMut(&'x Request) -> Result<Reply<'static>, ServiceError>,
        Fi: AsyncFnMut(Sample),
        St: for<'x> AsyncFnMut(&'x mut StreamRequest) -> Result<(), ServiceError>,
    {
        while let Some(incoming) = self.bus.wait_incoming(self.service).await? {
            match incoming {
                Incoming::Request(req) => {
                    let answer = match handler(&req).await {
                        Ok(Reply::Bytes(b)) if b.len() > hybus_layout::descriptor::INLINE_CAPACITY => {
                            let deadline = Some(Instant::now() + REPLY_POOL_WAIT);
                            match self.bus.build(Kind::Response, req.instance(), &b, deadline).await {
                                Ok((d, epoch)) => (d, Some(epoch)),
                                Err(e) => req.error(0, &format!("the service could not send its answer: {e}")),
                            }
                        }
                        Ok(reply) => req.build(reply),
                        Err(e) => req.error(e.code(), e.message()),
                    };
                    // As in the blocking loop: a failed answer is this exchange's.
                    let _ = req.send(answer);
                }
                Incoming::Fire(sample) => {
                    if let Some(f) = &mut self.on_fire {
                        f(sample).await;
                    }
                }
                Incoming::Stream(mut st) => {
                    let _ = match &mut self.on_stream {
                        Some(f) => match f(&mut st).await {
                            Ok(()) => st.end(),
                            Err(e) => st.fail_with(e.code(), e.message()),
                        },
                        None => st.fail(&format!("{} serves no streams", self.service.name())),
                    };
                }
            }
        }
        Ok(())
    }
}

impl AsyncBus {
    /// Serves `service`'s requests with the async `handler` until the
    /// instance is drained (see [`Service::serve`]); fires are dropped and
    /// streams refused ([`serving`](Self::serving) sets handlers for them).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), hybus::Error> {
    /// let bus = hybus::Bus::connect()?.to_async()?;
    /// let svc = bus.bus().register("demo.upper")?;
    /// bus.serve(&svc, async |req: &hybus::Request| Ok(req.payload().to_ascii_uppercase().into())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F>(&self, service: &Service, handler: F) -> Result<()>
    where
        F: for<'x> AsyncFnMut(&'x Request) -> Result<Reply<'static>, ServiceError>,
    {
        self.serving(service).run(handler).await
    }

    /// An async serving loop for `service` to set up (see [`AsyncServing`]).
    pub fn serving<'s>(&'s self, service: &'s Service) -> AsyncServing<'s> {
        AsyncServing { bus: self, service, on_fire: None::<NoFire>, on_stream: None::<NoStream> }
    }

    /// Awaits, as long as it takes, the next request, fire or stream for
    /// `service`; `Ok(None)` once the instance drained (the twin of
    /// [`Service::next_blocking`]).
    pub async fn wait_incoming(&self, service: &Service) -> Result<Option<Incoming>> {
        // Read on every round, as in the blocking `Service::next`.
        let r = self
            .wait(None, None, |core| {
                let (instance, epoch) = service.inbox();
                match core.take_incoming(instance) {
                    // Mapped under the check's lock (see `Sample::new_locked`).
                    Some((d, origin)) => Ok(Some(Some((
                        Sample::new_locked(&self.bus().shared, core, d, origin)?,
                        origin,
                        instance,
                        epoch,
                    )))),
                    None if core.drained.contains(&instance) => Ok(Some(None)),
                    None => Ok(None),
                }
            })
            .await?;
        match r {
            Some((p, origin, instance, epoch)) => Ok(Some(service.incoming(p, origin, instance, epoch))),
            None => Ok(None),
        }
    }
}
