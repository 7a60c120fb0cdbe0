//! Blocking waits from Python: without the GIL, in slices, so that Ctrl-C
//! (a signal handler that raises) interrupts them.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::errors::to_py;

/// How long one slice of a wait lasts: the longest a Ctrl-C waits to be seen.
const SLICE: Duration = Duration::from_millis(50);

/// A timeout in seconds from Python: `None` for no limit.
pub(crate) fn seconds(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(pyo3::exceptions::PyValueError::new_err("the timeout must be >= 0")),
        Some(t) => Ok(Some(Duration::try_from_secs_f64(t).unwrap_or(Duration::MAX))),
    }
}

/// Runs `step(slice)` without the GIL until it yields a value, fails, or
/// `timeout` passes (`Ok(None)`), checking for signals between slices: a
/// raising handler (KeyboardInterrupt) ends the wait with its exception.
pub(crate) fn sliced<T: Send>(
    py: Python<'_>,
    timeout: Option<Duration>,
    mut step: impl FnMut(Duration) -> hybus::Result<Option<T>> + Send,
) -> PyResult<Option<T>> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        match py.detach(|| step(slice)) {
            Ok(Some(v)) => return Ok(Some(v)),
            Ok(None) => {}
            Err(e) => return Err(to_py(e)),
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
    }
}
