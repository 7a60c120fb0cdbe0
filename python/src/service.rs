//! The serving side: `Service` and the `Request`s it takes.

use std::sync::Mutex;

use pyo3::prelude::*;

use crate::bus::Data;
use crate::errors::{to_py, BadRequest};
use crate::payload::PySample;
use crate::wait::{seconds, sliced};

/// A registered service instance; `close()` (or collection) unregisters it.
#[pyclass(module = "hybus", name = "Service", frozen)]
pub(crate) struct PyService {
    svc: Mutex<Option<std::sync::Arc<hybus::Service>>>,
}

impl PyService {
    pub(crate) fn new(svc: hybus::Service) -> PyService {
        PyService { svc: Mutex::new(Some(std::sync::Arc::new(svc))) }
    }

    fn svc(&self) -> PyResult<std::sync::Arc<hybus::Service>> {
        self.svc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| BadRequest::new_err("this service is closed"))
    }
}

/// What came to a service: a call (answer it with `reply` or `fail`) or a
/// fire (`is_fire`; nothing to answer). `payload` is a Sample read in place.
/// A call collected unanswered fails at its caller.
#[pyclass(module = "hybus", name = "Request", frozen)]
pub(crate) struct PyRequest {
    req: Mutex<Option<hybus::Request>>,
    payload: Py<PySample>,
    fire: bool,
}

#[pymethods]
impl PyService {
    /// The service name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.svc()?.name().to_owned())
    }

    /// Waits up to `timeout` seconds (None: no limit) for the next request
    /// or fire: a Request, or None if none came. The GIL is released;
    /// Ctrl-C raises KeyboardInterrupt.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyRequest>> {
        let svc = self.svc()?;
        let t = seconds(timeout)?;
        loop {
            let got = sliced(py, t, |slice| svc.next(slice))?;
            let (req, payload, fire) = match got {
                None => return Ok(None),
                Some(hybus::Incoming::Request(mut r)) => {
                    let p = r.take_payload();
                    (Some(r), p, false)
                }
                Some(hybus::Incoming::Fire(s)) => (None, Some(s), true),
                Some(hybus::Incoming::Stream(s)) => {
                    let _ = s.fail("streams are not served by the Python binding");
                    continue;
                }
            };
            let payload = match payload {
                Some(p) => Py::new(py, PySample::new(p))?,
                None => return Err(BadRequest::new_err("a request came without its payload")),
            };
            return Ok(Some(PyRequest { req: Mutex::new(req), payload, fire }));
        }
    }

    /// Unregisters the instance.
    fn close(&self) {
        self.svc.lock().unwrap_or_else(|p| p.into_inner()).take();
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

    /// The next request, waiting as long as it takes.
    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyRequest>> {
        self.next(py, None)
    }
}

impl PyRequest {
    fn take(&self) -> PyResult<hybus::Request> {
        if self.fire {
            return Err(BadRequest::new_err("a fire has no caller to answer"));
        }
        self.req
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BadRequest::new_err("this request was answered already"))
    }
}

#[pymethods]
impl PyRequest {
    /// The payload: a Sample (buffer protocol, read in place; it stays
    /// readable after the answer went, until released or collected).
    #[getter]
    fn payload(&self, py: Python<'_>) -> Py<PySample> {
        self.payload.clone_ref(py)
    }

    /// Whether it is a fire (nothing to answer).
    #[getter]
    fn is_fire(&self) -> bool {
        self.fire
    }

    /// Seconds the caller still waits for the answer (0.0 once its deadline
    /// passed), or None if it set none or it is a fire. Never less than
    /// the caller's own, at most a few milliseconds more.
    #[getter]
    fn deadline(&self) -> Option<f64> {
        let req = self.req.lock().unwrap_or_else(|p| p.into_inner());
        let at = req.as_ref()?.deadline()?;
        Some(at.saturating_duration_since(std::time::Instant::now()).as_secs_f64())
    }

    /// Whether the caller cancelled (or timed out) meanwhile.
    #[getter]
    fn cancelled(&self) -> bool {
        self.req.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|r| r.is_cancelled())
    }

    /// Answers with `data` (buffer-protocol object, str, or Loan).
    fn reply(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = Data::of(data)?;
        let r = self.take()?;
        match data {
            Data::Bytes(b) => r.reply(b.as_slice()),
            Data::Loan(l) => py.detach(|| r.reply_loan(l)),
        }
        .map_err(to_py)
    }

    /// Fails the call: its caller gets ServiceError with `message`.
    fn fail(&self, message: &str) -> PyResult<()> {
        self.take()?.fail(message).map_err(to_py)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<hybus.Request len={} fire={}>", self.payload.bind(py).len().unwrap_or(0), self.fire)
    }
}
