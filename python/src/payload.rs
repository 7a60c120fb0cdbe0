//! `Sample` (received, read in place through the buffer protocol) and
//! `Loan` (a chunk of our pool, written in place through it).

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffer::export;
use crate::errors::BusGone;

/// A received payload, read in place in the sender's shared chunk.
///
/// `memoryview(sample)` and `numpy.frombuffer(sample)` read it without a
/// copy (read-only). The chunk goes back to the sender on `release()`, on
/// leaving a `with` block, or when the sample is collected; a sample with
/// views still alive refuses `release()` (BufferError) and is given back
/// when the last view goes.
#[pyclass(module = "hybus", name = "Sample", frozen)]
pub(crate) struct PySample {
    /// Boxed: a small payload lives inside the sample itself, and the
    /// exported address must not move with it.
    sample: Mutex<Option<Box<hybus::Sample>>>,
    /// Buffers exported and not yet released.
    exports: AtomicUsize,
    ptr: usize,
    len: usize,
    zero_copy: bool,
}

impl PySample {
    pub(crate) fn new(sample: hybus::Sample) -> PySample {
        let sample = Box::new(sample);
        let (ptr, len, zero_copy) = (sample.as_ptr() as usize, sample.len(), sample.is_zero_copy());
        PySample { sample: Mutex::new(Some(sample)), exports: AtomicUsize::new(0), ptr, len, zero_copy }
    }

    fn live(&self) -> PyResult<()> {
        match self.sample.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            true => Ok(()),
            false => Err(BusGone::new_err("this sample was released")),
        }
    }
}

#[pymethods]
impl PySample {
    /// Its length in bytes.
    fn __len__(&self) -> usize {
        self.len
    }

    /// A copy of the bytes.
    fn __bytes__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.live()?;
        // SAFETY: live (checked just now; released only with the GIL we hold).
        Ok(PyBytes::new(py, unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }))
    }

    /// A copy of the bytes (as `bytes(sample)`).
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.__bytes__(py)
    }

    /// Whether it is read in place in the sender's shared chunk (larger
    /// payloads), rather than carried inside the descriptor (up to 40 bytes).
    #[getter]
    fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The address of its first byte (in the shared mapping when `zero_copy`).
    #[getter]
    fn address(&self) -> usize {
        self.ptr
    }

    /// Gives the chunk back now. Refused (BufferError) while a memoryview
    /// of it is alive. Releasing twice is nothing.
    fn release(&self) -> PyResult<()> {
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err("a memoryview of this sample is still alive: release it first"));
        }
        let s = self.sample.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(s);
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        _t: Option<&Bound<'_, PyAny>>,
        _v: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.release()?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<hybus.Sample len={} zero_copy={}>", self.len, self.zero_copy)
    }

    /// # Safety
    ///
    /// Called by CPython with a view to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let me = slf.get();
        me.live()?;
        // SAFETY: the sample is live and cannot be released while this
        // export is counted (release refuses, the drop waits for our owner ref).
        unsafe { export(slf.as_any(), view, flags, me.ptr as *mut u8, me.len, true) }?;
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// # Safety
    ///
    /// Called by CPython once per filled view.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A chunk of this connection's pool, to write a payload in place:
/// `memoryview(loan)` is writable. Send it by passing it as the data of
/// `Bus.call`, `Bus.fire`, `Bus.publish`, `Publisher.publish` or
/// `Request.reply` (release its memoryviews first); unsent, it goes back
/// to the pool on `release()` or collection.
#[pyclass(module = "hybus", name = "Loan", frozen)]
pub(crate) struct PyLoan {
    loan: Mutex<Option<hybus::Loan>>,
    exports: AtomicUsize,
    ptr: usize,
    len: AtomicUsize,
}

impl PyLoan {
    pub(crate) fn new(mut loan: hybus::Loan) -> PyLoan {
        let b: &mut [u8] = &mut loan;
        let (ptr, len) = (b.as_mut_ptr() as usize, b.len());
        PyLoan { loan: Mutex::new(Some(loan)), exports: AtomicUsize::new(0), ptr, len: AtomicUsize::new(len) }
    }

    /// Takes the loan out to send it: refused while a view is alive.
    pub(crate) fn take(&self) -> PyResult<hybus::Loan> {
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err("a memoryview of this loan is still alive: release it before sending"));
        }
        self.loan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BusGone::new_err("this loan was sent or released already"))
    }
}

#[pymethods]
impl PyLoan {
    /// Its length in bytes.
    fn __len__(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Shrinks the payload to `n` bytes (it cannot grow).
    fn truncate(&self, n: usize) -> PyResult<()> {
        let mut g = self.loan.lock().unwrap_or_else(|p| p.into_inner());
        let loan = g.as_mut().ok_or_else(|| BusGone::new_err("this loan was sent or released already"))?;
        loan.truncate(n);
        self.len.store(loan.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Gives the chunk back unsent. Refused while a memoryview is alive.
    fn release(&self) -> PyResult<()> {
        if self.exports.load(Ordering::Acquire) > 0 {
            return Err(PyBufferError::new_err("a memoryview of this loan is still alive: release it first"));
        }
        drop(self.loan.lock().unwrap_or_else(|p| p.into_inner()).take());
        Ok(())
    }

    /// The address of its first byte in our shared pool.
    #[getter]
    fn address(&self) -> usize {
        self.ptr
    }

    fn __repr__(&self) -> String {
        format!("<hybus.Loan len={}>", self.len.load(Ordering::Relaxed))
    }

    /// # Safety
    ///
    /// Called by CPython with a view to fill.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        let me = slf.get();
        if me.loan.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Err(BusGone::new_err("this loan was sent or released already"));
        }
        // SAFETY: the chunk is this loan's alone, and stays so while the
        // export is counted (sending and releasing refuse meanwhile).
        unsafe { export(slf.as_any(), view, flags, me.ptr as *mut u8, me.len.load(Ordering::Relaxed), false) }?;
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// # Safety
    ///
    /// Called by CPython once per filled view.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }
}
