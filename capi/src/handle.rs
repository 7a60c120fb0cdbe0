//! Opaque handles: how a C pointer is checked before it is used.
//!
//! Every handle is a `Box` handed to C as a raw pointer. Each carries a
//! magic word of its type, and the library keeps the set of live handles
//! (address → magic): a pointer is looked up there before it is read, so a
//! NULL, freed, consumed or foreign pointer, or a handle of another type,
//! is `HYBUS_INVALID_HANDLE` rather than a read of freed memory. Freeing
//! removes the handle from the set and clears its word before the memory
//! goes.
//!
//! # Safety
//!
//! The only unsafe code of the module turns a pointer found in the live
//! set back into the reference or `Box` it was made from.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::status::{hybus_status, Fail};

/// Live handles: address → the magic word of their type.
static LIVE: LazyLock<Mutex<HashMap<usize, u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn live() -> MutexGuard<'static, HashMap<usize, u64>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first word of every handle: its type's magic while live, 0 once freed.
#[derive(Debug)]
pub(crate) struct Head(u64);

impl Head {
    /// The head of a live handle of type `T`.
    pub(crate) fn of<T: Handle>() -> Head {
        Head(T::MAGIC)
    }
}

/// A type handed to C behind an opaque pointer.
pub(crate) trait Handle: Sized {
    /// Its magic word (unique per type).
    const MAGIC: u64;
    /// What C calls it, for messages.
    const NAME: &'static str;
    /// Its head.
    fn head(&self) -> &Head;
    /// Its head, to clear.
    fn head_mut(&mut self) -> &mut Head;
}

/// Hands `value` to C: a pointer that stays valid until [`take`]n.
pub(crate) fn give<T: Handle>(value: T) -> *mut T {
    let p = Box::into_raw(Box::new(value));
    live().insert(p as usize, T::MAGIC);
    p
}

fn check<T: Handle>(set: &HashMap<usize, u64>, p: *const T) -> Result<(), Fail> {
    if p.is_null() {
        return Err(Fail::new(hybus_status::HYBUS_INVALID_HANDLE, format!("{} is NULL", T::NAME)));
    }
    match set.get(&(p as usize)) {
        Some(&m) if m == T::MAGIC => Ok(()),
        Some(_) => Err(Fail::new(hybus_status::HYBUS_INVALID_HANDLE, format!("this handle is not a {}", T::NAME))),
        None => Err(Fail::new(
            hybus_status::HYBUS_INVALID_HANDLE,
            format!("this {} was freed or consumed already (or never made by libhybus)", T::NAME),
        )),
    }
}

/// The handle behind `p`, if `p` is a live handle of type `T`.
///
/// The reference must not outlive the handle: the header says which
/// handles may be used from several threads, and that none may be freed
/// while another thread uses it.
pub(crate) fn borrow<'a, T: Handle>(p: *const T) -> Result<&'a T, Fail> {
    check(&live(), p)?;
    // SAFETY: `p` is in the live set, so it came from `Box::into_raw` in
    // `give` and has not been taken back; the caller does not free it
    // while this reference is in use (the header's contract).
    let r = unsafe { &*p };
    debug_assert_eq!(r.head().0, T::MAGIC);
    Ok(r)
}

/// Takes the handle behind `p` back from C: it is no longer live.
pub(crate) fn take<T: Handle>(p: *mut T) -> Result<Box<T>, Fail> {
    {
        let mut set = live();
        check(&set, p)?;
        set.remove(&(p as usize));
    }
    // SAFETY: `p` was in the live set (so it came from `Box::into_raw`) and
    // was removed from it under the same lock: no other `take` can have it.
    let mut b = unsafe { Box::from_raw(p) };
    b.head_mut().0 = 0;
    Ok(b)
}

/// Frees the handle behind `p`: nothing if `p` is NULL.
pub(crate) fn free<T: Handle>(p: *mut T) -> Result<(), Fail> {
    if p.is_null() {
        return Ok(());
    }
    take(p).map(drop)
}

/// Implements [`Handle`] for a handle struct whose first field is `head`.
macro_rules! handle {
    ($t:ident, $magic:expr) => {
        impl $crate::handle::Handle for $t {
            const MAGIC: u64 = $magic;
            const NAME: &'static str = stringify!($t);
            fn head(&self) -> &$crate::handle::Head {
                &self.head
            }
            fn head_mut(&mut self) -> &mut $crate::handle::Head {
                &mut self.head
            }
        }
    };
}
pub(crate) use handle;
