//! `PendingCall`: a call in flight.

use std::sync::Mutex;

use pyo3::prelude::*;

use crate::errors::{to_py, BadRequest};
use crate::payload::PySample;
use crate::wait::{seconds, sliced};

/// A call sent and not yet answered: `wait()` for it, `try_answer()`, or
/// `cancel()`. Collected unanswered, it is cancelled (the server is told).
#[pyclass(module = "hybus", name = "PendingCall", frozen)]
pub(crate) struct PyPendingCall {
    call: Mutex<Option<hybus::PendingCall>>,
}

impl PyPendingCall {
    pub(crate) fn new(call: hybus::PendingCall) -> PyPendingCall {
        PyPendingCall { call: Mutex::new(Some(call)) }
    }
}

fn over() -> PyErr {
    BadRequest::new_err("this call is over (answered, failed or cancelled)")
}

#[pymethods]
impl PyPendingCall {
    /// Waits up to `timeout` seconds (None: until the call's deadline) for
    /// the answer: a Sample, or None if it has not come yet (the call stays
    /// pending). Raises the call's error (DeadlineExceeded at its
    /// deadline). The GIL is released; Ctrl-C cancels the call.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PySample>> {
        let t = seconds(timeout)?;
        let mut call = self.call.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or_else(over)?;
        match sliced(py, t, |slice| call.wait_timeout(slice)) {
            Ok(Some(s)) => Ok(Some(PySample::new(s))),
            Ok(None) => {
                *self.call.lock().unwrap_or_else(|p| p.into_inner()) = Some(call);
                Ok(None)
            }
            // The call is dropped, which cancels it if it is not over.
            Err(e) => Err(e),
        }
    }

    /// The answer if it has come (a Sample), else None; never waits.
    fn try_answer(&self) -> PyResult<Option<PySample>> {
        let mut g = self.call.lock().unwrap_or_else(|p| p.into_inner());
        let call = g.as_mut().ok_or_else(over)?;
        match call.try_answer() {
            Ok(None) => Ok(None),
            Ok(Some(s)) => {
                g.take();
                Ok(Some(PySample::new(s)))
            }
            Err(e) => {
                g.take();
                Err(to_py(e))
            }
        }
    }

    /// Gives up on the call: the server is told. Nothing if it is over.
    fn cancel(&self) {
        if let Some(c) = self.call.lock().unwrap_or_else(|p| p.into_inner()).take() {
            c.cancel();
        }
    }
}
