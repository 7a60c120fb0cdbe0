//! The buffer protocol both ways: reading any exporter's bytes (what is
//! sent), and exporting a chunk's bytes without a copy (what arrives).
//!
//! # Safety
//!
//! Raw `Py_buffer` calls: a view is released exactly once, by its owner's
//! drop; an exported view points into memory its exporter keeps alive
//! until the view is released (the exporter refuses to let go meanwhile).

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// The bytes of a buffer-protocol object (bytes, bytearray, memoryview,
/// numpy array, mmap, ...), held while this lives. A `str` is taken as UTF-8.
pub(crate) struct Bytes {
    view: Box<ffi::Py_buffer>,
    text: Option<Py<PyAny>>,
}

impl Bytes {
    /// Borrows the bytes of `obj` (C-contiguous; any item format).
    pub(crate) fn of(obj: &Bound<'_, PyAny>) -> PyResult<Bytes> {
        let (target, text) = match obj.cast::<PyString>() {
            Ok(s) => {
                let b = s.call_method1("encode", ("utf-8",))?;
                (b.clone(), Some(b.unbind()))
            }
            Err(_) => (obj.clone(), None),
        };
        // SAFETY: an all-zero Py_buffer is the documented "empty" state.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `target` is a live object; `view` is ours to fill.
        let r = unsafe { ffi::PyObject_GetBuffer(target.as_ptr(), &mut *view, ffi::PyBUF_C_CONTIGUOUS) };
        if r != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        Ok(Bytes { view, text })
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.view.buf.is_null() || self.view.len <= 0 {
            return &[];
        }
        // SAFETY: a C-contiguous view of `len` bytes at `buf`, held until our drop.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.view.len as usize) }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        // Released with the GIL held: a `Bytes` only lives inside calls
        // that hold it (it is never sent across a `detach`).
        // SAFETY: the view was filled by PyObject_GetBuffer and not released yet.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
        let _ = self.text.take();
    }
}

/// Fills `view` for an export of `len` bytes at `ptr` by `owner`.
///
/// # Safety
///
/// `view` is the pointer CPython passed to `__getbuffer__`; the memory at
/// `ptr` stays valid until the matching `__releasebuffer__`.
pub(crate) unsafe fn export(
    owner: &Bound<'_, PyAny>,
    view: *mut ffi::Py_buffer,
    flags: c_int,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
) -> PyResult<()> {
    if view.is_null() {
        return Err(PyBufferError::new_err("NULL view"));
    }
    // SAFETY: the caller's contract; FillInfo takes a new reference to `owner`.
    let r = unsafe {
        ffi::PyBuffer_FillInfo(view, owner.as_ptr(), ptr.cast(), len as ffi::Py_ssize_t, readonly as c_int, flags)
    };
    if r != 0 {
        return Err(PyErr::fetch(owner.py()));
    }
    Ok(())
}
