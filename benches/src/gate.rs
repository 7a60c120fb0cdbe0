//! A start line for a two-sided measurement: the clock starts when both sides are there.

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Release};

use hybus_layout::shm::Line;

use crate::process::AtomicsOnly;
use crate::spin::{Peer, Spinner};
use crate::BenchError;

/// Two words on their own lines: "I am ready" (child) and "go" (parent).
#[repr(C)]
pub(crate) struct Gate {
    ready: Line<AtomicU32>,
    go: Line<AtomicU32>,
}

// SAFETY: `#[repr(C)]`, two atomics on padded lines; zero is "not yet".
unsafe impl AtomicsOnly for Gate {}

impl Gate {
    /// The far side: says it is ready, then waits for the start.
    pub(crate) fn arrive(&self, peer: Option<&dyn Peer>) -> Result<(), BenchError> {
        // SYNC: Release pairs with the Acquire in `open`: the far side's
        // set-up is done before the near side starts its clock.
        self.ready.store(1, Release);
        let mut spin = Spinner::new(peer);
        // SYNC: Acquire pairs with the Release in `open`.
        while self.go.load(Acquire) == 0 {
            spin.pause()?;
        }
        Ok(())
    }

    /// The near side: waits until the far side is ready, then opens the gate.
    pub(crate) fn open(&self, peer: Option<&dyn Peer>) -> Result<(), BenchError> {
        let mut spin = Spinner::new(peer);
        // SYNC: Acquire pairs with the Release in `arrive`.
        while self.ready.load(Acquire) == 0 {
            spin.pause()?;
        }
        // SYNC: Release pairs with the Acquire loop in `arrive`.
        self.go.store(1, Release);
        Ok(())
    }
}
