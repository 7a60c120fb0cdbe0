//! Rate limits for log lines a peer can trigger.
//!
//! A client that floods the daemon with what it refuses (connections over
//! quota, malformed messages, protocol violations) must not make the daemon
//! write a line per refusal: 1.8 M identical warnings in 30 s filled a disk
//! and buried everything else in the journal. Each kind of line is limited
//! per uid: the first [`BURST`] of a window of [`WINDOW`] are logged, the
//! rest counted, and when the window ends one line says how many were left
//! out (`… and 183422 more in the last 10 s`).
//!
//! The table holds one entry per (kind, uid) that logged in the last window;
//! [`RateLog::flush`], called from the loop's slow tick, reports and drops
//! the finished ones, so it stays as small as the set of recent offenders.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines of one kind for one uid logged in full per window.
pub const BURST: u32 = 5;

/// The window over which [`BURST`] lines are allowed.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What a peer can make the daemon log, one limit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogKind {
    /// A connection refused or evicted by a connection quota.
    ConnectionQuota,
    /// A control message that did not decode, or came out of order.
    Malformed,
    /// A protocol violation on the data plane (the client is cut off).
    Violation,
    /// A send or request refused by policy or quota.
    Refused,
    /// A report from a client about another client (a corrupt pool).
    Report,
}

impl LogKind {
    fn name(self) -> &'static str {
        match self {
            Self::ConnectionQuota => "connection quota",
            Self::Malformed => "malformed control message",
            Self::Violation => "protocol violation",
            Self::Refused => "refused",
            Self::Report => "peer report",
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    logged: u32,
    left_out: u64,
}

/// The per-(kind, uid) counters. See the module docs.
#[derive(Debug, Default)]
pub struct RateLog {
    windows: HashMap<(LogKind, u32), Window>,
}

impl RateLog {
    /// Whether a line of `kind` caused by `uid` may be written now. Counts it
    /// as left out if not.
    pub fn admit(&mut self, kind: LogKind, uid: u32, now: Instant) -> bool {
        let w = self.windows.entry((kind, uid)).or_insert(Window { start: now, logged: 0, left_out: 0 });
        if now.duration_since(w.start) >= WINDOW {
            if w.left_out > 0 {
                report(kind, uid, w.left_out, now.duration_since(w.start));
            }
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

    /// Reports the windows that ended with lines left out, and forgets the
    /// ended ones. Call it now and then (the loop's 100 ms tick).
    pub fn flush(&mut self, now: Instant) {
        if self.windows.is_empty() {
            return;
        }
        self.windows.retain(|&(kind, uid), w| {
            let age = now.duration_since(w.start);
            if age < WINDOW {
                return true;
            }
            if w.left_out > 0 {
                report(kind, uid, w.left_out, age);
            }
            false
        });
    }

    /// When the earliest window with lines left out ends (its report is due).
    pub fn next_report(&self) -> Option<Instant> {
        self.windows.values().filter(|w| w.left_out > 0).map(|w| w.start + WINDOW).min()
    }

    /// How many (kind, uid) windows are open (for tests).
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }
}

#[cold]
fn report(kind: LogKind, uid: u32, n: u64, over: Duration) {
    tracing::warn!(uid, "… and {n} more {} lines for uid {uid} in the last {} s", kind.name(), over.as_secs().max(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_count_per_kind_and_uid() {
        let mut rl = RateLog::default();
        let t0 = Instant::now();
        let admitted = (0..1000).filter(|_| rl.admit(LogKind::Malformed, 7, t0)).count();
        assert_eq!(admitted, BURST as usize);
        // Another uid, another kind: their own bursts.
        assert!(rl.admit(LogKind::Malformed, 8, t0));
        assert!(rl.admit(LogKind::Violation, 7, t0));
        assert_eq!(rl.windows[&(LogKind::Malformed, 7)].left_out, 1000 - BURST as u64);
        // A new window logs again; flush forgets ended windows.
        assert!(rl.admit(LogKind::Malformed, 7, t0 + WINDOW));
        rl.flush(t0 + WINDOW * 3);
        assert_eq!(rl.open_windows(), 0);
    }
}
