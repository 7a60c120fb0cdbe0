//! Publish/subscribe: `Publisher`, `Subscription`.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;

use crate::bus::Data;
use crate::errors::{to_py, BadRequest};
use crate::payload::PySample;
use crate::wait::{seconds, sliced};

/// Publishes on one topic.
#[pyclass(module = "hybus", name = "Publisher", frozen)]
pub(crate) struct PyPublisher {
    pub(crate) publisher: hybus::Publisher,
}

/// Publishes `data` through `p`.
pub(crate) fn publish(py: Python<'_>, p: &hybus::Publisher, data: &Bound<'_, PyAny>) -> PyResult<()> {
    match Data::of(data)? {
        Data::Bytes(b) => p.publish(b.as_slice()),
        Data::Loan(l) => py.detach(|| p.publish_loan(l)),
    }
    .map_err(to_py)
}

#[pymethods]
impl PyPublisher {
    /// The topic.
    #[getter]
    fn topic(&self) -> &str {
        self.publisher.topic()
    }

    /// Publishes `data` (buffer-protocol object, str, or Loan: every
    /// subscriber reads that very chunk).
    fn publish(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        publish(py, &self.publisher, data)
    }
}

/// A topic's publications: iterate it (`for sample in sub`), `next(timeout)`,
/// or `async for sample in sub`. `close()` (or collection) unsubscribes.
#[pyclass(module = "hybus", name = "Subscription", frozen)]
pub(crate) struct PySubscription {
    sub: Mutex<Option<std::sync::Arc<hybus::Subscription>>>,
    /// The bus it was made on (its asyncio waits arm that connection).
    bus: Py<crate::bus::PyBus>,
}

impl PySubscription {
    pub(crate) fn new(sub: hybus::Subscription, bus: Py<crate::bus::PyBus>) -> PySubscription {
        PySubscription { sub: Mutex::new(Some(std::sync::Arc::new(sub))), bus }
    }

    fn sub(&self) -> PyResult<std::sync::Arc<hybus::Subscription>> {
        self.sub
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| BadRequest::new_err("this subscription is closed"))
    }
}

#[pymethods]
impl PySubscription {
    /// The topic.
    #[getter]
    fn topic(&self) -> PyResult<String> {
        Ok(self.sub()?.topic().to_owned())
    }

    /// Waits up to `timeout` seconds (None: no limit) for the next
    /// publication: a Sample, or None if none came. The GIL is released;
    /// Ctrl-C raises KeyboardInterrupt.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PySample>> {
        let sub = self.sub()?;
        Ok(sliced(py, seconds(timeout)?, |slice| sub.next(slice))?.map(PySample::new))
    }

    /// The next publication if one is there, else None; never waits.
    fn try_next(&self) -> PyResult<Option<PySample>> {
        Ok(self.sub()?.next(Duration::ZERO).map_err(to_py)?.map(PySample::new))
    }

    /// The Bus it was made on.
    #[getter]
    fn _bus(&self, py: Python<'_>) -> Py<crate::bus::PyBus> {
        self.bus.clone_ref(py)
    }

    /// Publications dropped because this client read too slowly.
    #[getter]
    fn dropped(&self) -> PyResult<u64> {
        Ok(self.sub()?.dropped())
    }

    /// Unsubscribes.
    fn close(&self) {
        self.sub.lock().unwrap_or_else(|p| p.into_inner()).take();
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

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next publication, waiting as long as it takes.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PySample>> {
        self.next(py, None)
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// `async for`: the next publication, awaited on the connection's doorbell.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("hybus._aio")?.getattr("next_publication")?.call1((slf,))
    }
}
