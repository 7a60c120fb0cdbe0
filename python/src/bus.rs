//! `Bus` and `Route`: connect, resolve, call, fire, loan, publish, direct channels, stats.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffer::Bytes;
use crate::errors::{to_py, BusGone};
use crate::payload::{PyLoan, PySample};
use crate::pending::PyPendingCall;
use crate::service::PyService;
use crate::topic::{PyPublisher, PySubscription};
use crate::wait::{seconds, sliced};

/// What is sent: bytes of a buffer-protocol object, or a loan written in place.
pub(crate) enum Data {
    Bytes(Bytes),
    Loan(hybus::Loan),
}

impl Data {
    pub(crate) fn of(obj: &Bound<'_, PyAny>) -> PyResult<Data> {
        match obj.cast::<PyLoan>() {
            Ok(l) => Ok(Data::Loan(l.get().take()?)),
            Err(_) => Ok(Data::Bytes(Bytes::of(obj)?)),
        }
    }
}

/// A resolved service name. Resolve once, call many times; after a
/// reconnect it re-resolves by itself.
#[pyclass(module = "hybus", name = "Route", frozen)]
pub(crate) struct PyRoute {
    pub(crate) route: hybus::Route,
}

#[pymethods]
impl PyRoute {
    /// The service name.
    #[getter]
    fn name(&self) -> &str {
        self.route.name()
    }

    /// The route id (as of the last resolve).
    #[getter]
    fn id(&self) -> u32 {
        self.route.id()
    }

    fn __repr__(&self) -> String {
        format!("<hybus.Route {} id={}>", self.route.name(), self.route.id())
    }
}

/// A connection to the daemon `hybusd`.
///
/// `Bus(socket=None)` connects to `socket`, or to `$HYBUS_SOCKET`, else
/// `$XDG_RUNTIME_DIR/hybus/bus.sock`, else `/run/hybus/bus.sock`. Use it
/// as a context manager, or `close()` it. Safe to share between threads.
///
/// `idle` is how a waiting call spends its time before an answer: "default"
/// (spin, yield, then sleep on the doorbell), "spin" (yield, never sleep:
/// lowest latency, a core's worth of CPU), "busy" (spin only) or "park"
/// (sleep at once).
#[pyclass(module = "hybus", name = "Bus", frozen, weakref)]
pub(crate) struct PyBus {
    bus: Mutex<Option<hybus::Bus>>,
    publishers: Mutex<HashMap<String, hybus::Publisher>>,
    /// The fds an asyncio waiter watches, for the current connection epoch.
    wake: Mutex<Option<hybus::WakeFds>>,
}

impl PyBus {
    pub(crate) fn bus(&self) -> PyResult<hybus::Bus> {
        self.bus.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| BusGone::new_err("this bus is closed"))
    }
}

/// A route from a `Route` or a service name.
fn route_of(bus: &hybus::Bus, route: &Bound<'_, PyAny>) -> PyResult<hybus::Route> {
    if let Ok(r) = route.cast::<PyRoute>() {
        return Ok(r.get().route.clone());
    }
    let name: String = route.extract()?;
    bus.resolve(&name).map_err(to_py)
}

/// The idle strategy of a name (as `hybusctl worker --idle`).
pub(crate) fn idle_strategy(name: &str) -> PyResult<hybus::IdleStrategy> {
    Ok(match name {
        "default" => hybus::IdleStrategy::DEFAULT,
        "spin" => hybus::IdleStrategy { spins: 0, yields: u32::MAX, park: false },
        "busy" => hybus::IdleStrategy::BUSY,
        "park" => hybus::IdleStrategy::PARK,
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown idle strategy {other:?}: use default, spin, busy or park"
            )))
        }
    })
}

pub(crate) fn timeout_or(timeout: Option<f64>) -> PyResult<Duration> {
    Ok(seconds(timeout)?.unwrap_or(Duration::MAX))
}

#[pymethods]
impl PyBus {
    #[new]
    #[pyo3(signature = (socket=None, idle="default"))]
    fn new(py: Python<'_>, socket: Option<std::path::PathBuf>, idle: &str) -> PyResult<PyBus> {
        let idle = idle_strategy(idle)?;
        let opts = hybus::BusOptions { path: socket, idle, ..hybus::BusOptions::default() };
        let bus = py.detach(|| hybus::Bus::connect_with(opts)).map_err(to_py)?;
        Ok(PyBus { bus: Mutex::new(Some(bus)), publishers: Mutex::new(HashMap::new()), wake: Mutex::new(None) })
    }

    /// Closes this handle: later calls raise BusGone. Services,
    /// subscriptions and samples made from it keep the connection up until
    /// they go too.
    fn close(&self) {
        self.publishers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.wake.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.bus.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    /// The socket path it is connected to.
    #[getter]
    fn socket(&self) -> PyResult<String> {
        Ok(self.bus()?.path().display().to_string())
    }

    /// The daemon's id of this connection.
    #[getter]
    fn client_id(&self) -> PyResult<u32> {
        Ok(self.bus()?.client_id())
    }

    /// Resolves a service name to a Route.
    fn resolve(&self, py: Python<'_>, name: &str) -> PyResult<PyRoute> {
        let bus = self.bus()?;
        let route = py.detach(|| bus.resolve(name)).map_err(to_py)?;
        Ok(PyRoute { route })
    }

    /// Calls `route` (a Route or a service name) with `data` (any object
    /// with the buffer protocol, a str, or a Loan) and waits up to
    /// `timeout` seconds (None: no limit) for the answer, a Sample. The GIL
    /// is released meanwhile; Ctrl-C cancels the call and raises
    /// KeyboardInterrupt.
    #[pyo3(signature = (route, data, timeout=1.0))]
    fn call(
        &self,
        py: Python<'_>,
        route: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<PySample> {
        let mut call = self.begin(route, data, timeout)?;
        // Dropped unanswered (an exception, Ctrl-C), the call is cancelled.
        match sliced(py, None, |slice| call.wait_timeout(slice))? {
            Some(s) => Ok(PySample::new(s)),
            None => Err(to_py(hybus::Error::DeadlineExceeded)),
        }
    }

    /// Sends a call and returns at once with its PendingCall.
    #[pyo3(signature = (route, data, timeout=1.0))]
    fn begin_call(
        &self,
        route: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<PyPendingCall> {
        Ok(PyPendingCall::new(self.begin(route, data, timeout)?))
    }

    /// Sends `data` to `route` without waiting for an answer.
    fn fire(&self, py: Python<'_>, route: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bus = self.bus()?;
        let route = route_of(&bus, route)?;
        let r = match Data::of(data)? {
            Data::Bytes(b) => bus.fire(&route, b.as_slice()),
            Data::Loan(l) => py.detach(|| bus.fire_loan(&route, l)),
        };
        r.map_err(to_py)
    }

    /// Lends a chunk of at least `size` bytes of this connection's pool
    /// (waiting up to `timeout` seconds for one): write it through
    /// `memoryview(loan)`, then pass the loan as the data of a call, fire,
    /// publish or reply.
    #[pyo3(signature = (size, timeout=1.0))]
    fn loan(&self, py: Python<'_>, size: usize, timeout: Option<f64>) -> PyResult<PyLoan> {
        let bus = self.bus()?;
        let t = timeout_or(timeout)?;
        let loan = py.detach(|| bus.loan(size, t)).map_err(to_py)?;
        Ok(PyLoan::new(loan))
    }

    /// Registers an instance of the service `name`: a Service.
    fn register(&self, py: Python<'_>, name: &str) -> PyResult<PyService> {
        let bus = self.bus()?;
        let svc = py.detach(|| bus.register(name)).map_err(to_py)?;
        Ok(PyService::new(svc))
    }

    /// A Publisher for `topic` (created if new).
    fn publisher(&self, py: Python<'_>, topic: &str) -> PyResult<PyPublisher> {
        let bus = self.bus()?;
        let p = py.detach(|| bus.publisher(topic)).map_err(to_py)?;
        Ok(PyPublisher { publisher: p })
    }

    /// Publishes `data` (buffer-protocol object, str or Loan) on `topic`.
    fn publish(&self, py: Python<'_>, topic: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let bus = self.bus()?;
        let p = {
            let mut map = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(topic) {
                Some(p) => p.clone(),
                None => {
                    let p = py.detach(|| bus.publisher(topic)).map_err(to_py)?;
                    map.insert(topic.to_owned(), p.clone());
                    p
                }
            }
        };
        crate::topic::publish(py, &p, data)
    }

    /// Subscribes to `topic`: a Subscription (iterate it, or `async for`).
    fn subscribe(slf: &Bound<'_, Self>, topic: &str) -> PyResult<PySubscription> {
        let bus = slf.get().bus()?;
        let sub = slf.py().detach(|| bus.subscribe(topic)).map_err(to_py)?;
        Ok(PySubscription::new(sub, slf.clone().unbind()))
    }

    /// Asks for a direct channel to `route`'s service (a Route or a name):
    /// its id. Traffic of this pair then bypasses the daemon.
    fn request_direct(&self, py: Python<'_>, route: &Bound<'_, PyAny>) -> PyResult<u32> {
        let bus = self.bus()?;
        let route = route_of(&bus, route)?;
        py.detach(|| bus.request_direct(&route)).map_err(to_py)
    }

    /// Whether calls to `route` go over a direct channel now.
    fn is_direct(&self, route: &Bound<'_, PyAny>) -> PyResult<bool> {
        let bus = self.bus()?;
        let route = route_of(&bus, route)?;
        Ok(bus.is_direct(&route))
    }

    /// Chunks of this connection's own pool in use (sent and not yet given back).
    fn chunks_in_use(&self) -> PyResult<u32> {
        Ok(self.bus()?.chunks_in_use())
    }

    /// The daemon's state: a dict (pid, clients, services, instances,
    /// exchanges, chunks_lent, queued, drops, ...).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let bus = self.bus()?;
        let s = py.detach(|| bus.status()).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("pid", s.pid)?;
        d.set_item("uptime_s", s.uptime_s)?;
        d.set_item("backend", s.backend)?;
        d.set_item("clients", s.clients)?;
        d.set_item("services", s.services)?;
        d.set_item("instances", s.instances)?;
        d.set_item("exchanges", s.exchanges)?;
        d.set_item("chunks_lent", s.chunks_lent)?;
        d.set_item("queued", s.queued)?;
        d.set_item("violations", s.violations)?;
        d.set_item("drops", s.drops)?;
        Ok(d)
    }

    /// Traffic per service instance and per direct channel: a dict with
    /// lists "instances" and "channels" of dicts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let bus = self.bus()?;
        let r = py.detach(|| bus.stats()).map_err(to_py)?;
        let instances = pyo3::types::PyList::empty(py);
        for i in r.instances {
            let d = PyDict::new(py);
            d.set_item("name", i.name)?;
            d.set_item("instance", i.instance)?;
            d.set_item("pid", i.pid)?;
            d.set_item("messages_in", i.messages_in)?;
            d.set_item("messages_out", i.messages_out)?;
            d.set_item("bytes_in", i.bytes_in)?;
            d.set_item("bytes_out", i.bytes_out)?;
            d.set_item("in_flight", i.in_flight)?;
            d.set_item("errors", i.errors)?;
            d.set_item("latency_ns", i.latency_ns.to_vec())?;
            instances.append(d)?;
        }
        let channels = pyo3::types::PyList::empty(py);
        for c in r.channels {
            let d = PyDict::new(py);
            d.set_item("channel", c.channel)?;
            d.set_item("service", c.service)?;
            d.set_item("a_messages", c.a_messages)?;
            d.set_item("b_messages", c.b_messages)?;
            channels.append(d)?;
        }
        let d = PyDict::new(py);
        d.set_item("instances", instances)?;
        d.set_item("channels", channels)?;
        Ok(d)
    }

    /// `await bus.call_async(route, data, timeout=1.0)`: `call` for
    /// asyncio, waiting on the connection's doorbell in the running loop.
    #[pyo3(signature = (route, data, timeout=1.0))]
    fn call_async<'py>(
        slf: &Bound<'py, Self>,
        route: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let pending = Bound::new(py, PyPendingCall::new(slf.get().begin(route, data, timeout)?))?;
        py.import("hybus._aio")?.getattr("wait_call")?.call1((slf, pending, timeout))
    }

    /// The doorbell and control fds for an asyncio waiter: (bell, control).
    fn _wake_fds(&self) -> PyResult<(i32, i32)> {
        let bus = self.bus()?;
        let mut w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if w.as_ref().is_none_or(|w| w.epoch != bus.wake_epoch()) {
            *w = Some(bus.wake_fds().map_err(to_py)?);
        }
        let w = w.as_ref().ok_or_else(|| BusGone::new_err("no wake fds"))?;
        Ok((w.bell.as_raw_fd(), w.control.as_raw_fd()))
    }

    /// Arms the rings for an asyncio wait: whether to wait now.
    fn _arm(&self) -> PyResult<bool> {
        self.bus()?.arm().map_err(to_py)
    }

    /// Ends an asyncio wait `_arm` began.
    fn _disarm(&self, control: bool) -> PyResult<()> {
        let bus = self.bus()?;
        let w = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = w.as_ref() {
            bus.disarm(w, control);
        }
        Ok(())
    }

    /// Whether the daemon is gone (an asyncio waiter then retries on a timer).
    fn _gone(&self) -> PyResult<bool> {
        Ok(self.bus()?.daemon_gone())
    }

    fn __repr__(&self) -> String {
        match self.bus.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(b) => format!("<hybus.Bus {} client={}>", b.path().display(), b.client_id()),
            None => "<hybus.Bus closed>".into(),
        }
    }
}

impl PyBus {
    fn begin(
        &self,
        route: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        timeout: Option<f64>,
    ) -> PyResult<hybus::PendingCall> {
        let bus = self.bus()?;
        let route = route_of(&bus, route)?;
        let t = timeout_or(timeout)?;
        let r = match Data::of(data)? {
            Data::Bytes(b) => bus.begin_call(&route, b.as_slice(), t),
            Data::Loan(l) => bus.begin_call_loan(&route, l, t),
        };
        r.map_err(to_py)
    }
}
