//! Rate limits for the log lines another host can trigger.
//!
//! A remote bridge decides how often this one drops what it sends (a
//! batch whose lengths do not add up, a pool that is full at a million
//! publications a second): a warning per drop would let it fill this
//! host's journal. As in the daemon (`hybusd`'s `ratelog`), the first
//! [`BURST`] lines about one peer in a window of [`WINDOW`] are written,
//! the rest counted, and one line says how many were left out when the
//! window ends (`… and 183422 more from bridge b in the last 10 s`).
//!
//! Unlike the daemon's table, this one is shared by Zenoh's threads (a
//! mutex, taken only on the path that drops something) and keyed by the
//! peer bridge's name, which the peer chooses: at most [`MAX_PEERS`]
//! names are told apart, the rest share one window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines about one peer written in full per window.
pub const BURST: u32 = 5;

/// The window over which [`BURST`] lines are allowed.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Peers with a window of their own; further names share one window.
pub const MAX_PEERS: usize = 64;

/// The shared window of the peers past [`MAX_PEERS`].
const OTHERS: &str = "(other bridges)";

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    left_out: u64,
}

/// Per-peer counters of one kind of line, `what` (e.g. "dropped
/// publications"). See the module docs.
#[derive(Debug)]
pub struct RateLog {
    what: &'static str,
    windows: Mutex<HashMap<String, Window>>,
}

impl RateLog {
    /// An empty table for lines about `what`.
    pub fn new(what: &'static str) -> Self {
        Self { what, windows: Mutex::default() }
    }

    /// Whether a line about `peer` may be written now; counts it as left
    /// out if not.
    pub fn admit(&self, peer: &str, now: Instant) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let peer = if windows.contains_key(peer) || windows.len() < MAX_PEERS { peer } else { OTHERS };
        if !windows.contains_key(peer) {
            windows.insert(peer.to_owned(), Window { start: now, logged: 0, left_out: 0 });
        }
        let Some(w) = windows.get_mut(peer) else {
            return false;
        };
        if now.duration_since(w.start) >= WINDOW {
            self.report(peer, w, now);
            *w = Window { start: now, logged: 0, left_out: 0 };
        }
        if w.logged < BURST {
            w.logged += 1;
            true
        } else {
            w.left_out += 1;
            false
        }
    }

    /// Reports the ended windows that left lines out and forgets every
    /// ended window. Call it now and then (a thread's slow tick).
    pub fn flush(&self, now: Instant) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|peer, w| {
            let ended = now.duration_since(w.start) >= WINDOW;
            if ended {
                self.report(peer, w, now);
            }
            !ended
        });
    }

    /// How many peers have an open window (for tests).
    pub fn open_windows(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    #[cold]
    fn report(&self, peer: &str, w: &Window, now: Instant) {
        if w.left_out > 0 {
            let secs = now.duration_since(w.start).as_secs().max(1);
            tracing::warn!(from = peer, "… and {} more {} from {peer} in the last {secs} s", w.left_out, self.what);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_peer_then_a_count_and_a_bounded_table() {
        let rl = RateLog::new("dropped publications");
        let t0 = Instant::now();
        assert_eq!((0..1000).filter(|_| rl.admit("b", t0)).count(), BURST as usize);
        assert!(rl.admit("c", t0), "another peer has its own burst");
        // Names past MAX_PEERS share one window: a peer inventing names
        // neither grows the table nor escapes the limit.
        let invented = (0..1000).filter(|i| rl.admit(&format!("x{i}"), t0)).count();
        assert_eq!(invented, MAX_PEERS - 2 + BURST as usize);
        assert_eq!(rl.open_windows(), MAX_PEERS + 1);
        // A new window writes again; flush forgets ended windows.
        assert!(rl.admit("b", t0 + WINDOW));
        rl.flush(t0 + WINDOW * 3);
        assert_eq!(rl.open_windows(), 0);
    }
}
