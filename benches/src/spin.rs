//! Waiting for the other side without hanging forever.

use std::time::Instant;

use crate::BenchError;

/// The other side of an exchange, as far as a waiter needs to know.
pub(crate) trait Peer {
    /// Whether it has finished (exited, returned): nothing more will come.
    fn gone(&self) -> bool;
}

impl<T> Peer for std::thread::ScopedJoinHandle<'_, T> {
    fn gone(&self) -> bool {
        self.is_finished()
    }
}

impl Peer for std::sync::atomic::AtomicBool {
    fn gone(&self) -> bool {
        self.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Polls between two checks of the peer and of the clock.
const CHECK_EVERY: u64 = 1 << 12;

/// A spin-wait that notices a dead peer or a stall.
///
/// The hot path is one increment and one predictable branch: the clock is
/// read and the peer checked only every [`CHECK_EVERY`] pauses, and the
/// stall clock starts at the first check, so a wait that ends quickly never
/// reads the clock at all.
pub(crate) struct Spinner<'a> {
    n: u64,
    /// Pauses that spin before pauses start to yield the CPU.
    spins: u64,
    since: Option<Instant>,
    peer: Option<&'a dyn Peer>,
}

impl<'a> Spinner<'a> {
    /// Spins forever (until the peer goes or stalls).
    #[inline]
    pub(crate) fn new(peer: Option<&'a dyn Peer>) -> Spinner<'a> {
        Spinner::with_spins(peer, u64::MAX)
    }

    /// Spins `spins` times, then yields the CPU at each pause.
    #[inline]
    pub(crate) fn with_spins(peer: Option<&'a dyn Peer>, spins: u64) -> Spinner<'a> {
        Spinner { n: 0, spins, since: None, peer }
    }

    /// Progress was made: the stall clock starts again.
    #[inline]
    pub(crate) fn reset(&mut self) {
        self.n = 0;
        self.since = None;
    }

    /// One pause. Fails with [`BenchError::PeerGone`] or [`BenchError::Stalled`];
    /// the caller should poll once more before giving up (the peer may have
    /// published its last item just before it went).
    #[inline]
    pub(crate) fn pause(&mut self) -> Result<(), BenchError> {
        self.n += 1;
        if self.n % CHECK_EVERY == 0 {
            self.check()?;
        }
        if self.n <= self.spins {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
        Ok(())
    }

    #[cold]
    fn check(&mut self) -> Result<(), BenchError> {
        if self.peer.is_some_and(|p| p.gone()) {
            return Err(BenchError::PeerGone);
        }
        let now = Instant::now();
        match self.since {
            None => self.since = Some(now),
            Some(s) if now.duration_since(s) > crate::pingpong::STALL => return Err(BenchError::Stalled),
            Some(_) => {}
        }
        Ok(())
    }
}
