//! Who spins, on how many CPUs, and what the daemon's own idle loop does
//! about it.
//!
//! A brokered round trip hands a cache line from caller to daemon to
//! server and back. While each party has a CPU when it needs one that
//! takes a few microseconds; with two clients that spin without yielding
//! and a daemon on two CPUs, the daemon (or one of them) always waits
//! off-CPU until the scheduler preempts a spinner, and a round trip took
//! 0.7 ms to tens of ms here (issue 19: 20 000 calls in 31–46 s with
//! `IdleStrategy::BUSY` at both ends). So the daemon counts the clients
//! that said in [`Request::Idle`](hybus_layout::control::Request::Idle)
//! that they spin without yielding, against the CPUs it may run on
//! ([`hybus_os::cpus::usable`]). With itself — a party of every
//! brokered exchange — they may outnumber the CPUs: then the daemon
//! follows the backed-off form of its own strategy
//! ([`IdleStrategy::backed_off`]: a short spin, then `sched_yield`), says
//! so in its log the first time, and tells each spinning client the count
//! ([`Crowding`]), whose brokered waits back off the same way. A direct
//! channel does not need the daemon: its waits back off only when the
//! spinning clients alone (and the daemon, if it still spins) outnumber
//! the CPUs.

use hybus_layout::control::{Crowding, DaemonMessage, Event};
use hybus_layout::IdleStrategy;

use crate::daemon::Daemon;

impl Daemon {
    /// The clients that spin, whether the daemon does, and its CPUs, as they are now.
    pub(crate) fn crowding(&self) -> Crowding {
        let spinners = self.sessions.values().filter(|s| s.spins).count() as u32;
        Crowding { spinners, daemon_spins: self.idle.holds_core(), cpus: self.cpus }
    }

    /// Client `id` follows `idle`; returns the crowding it is answered with.
    pub(crate) fn set_idle(&mut self, id: u32, idle: IdleStrategy) -> Crowding {
        let spins = idle.holds_core();
        let changed = match self.sessions.get_mut(&id) {
            Some(s) if s.spins != spins => {
                s.spins = spins;
                true
            }
            _ => false,
        };
        if changed {
            // The client itself hears it in its reply.
            self.recount_spinners(Some(id));
        }
        self.crowding()
    }

    /// Recounts the spinners after a client came, went or changed its
    /// strategy (or the configuration was reloaded): adapts the daemon's
    /// own idle strategy, and tells every spinning client but `skip` the
    /// new count if it changed.
    pub(crate) fn recount_spinners(&mut self, skip: Option<u32>) {
        let spinners = self.sessions.values().filter(|s| s.spins).count() as u32;
        // The daemon is a party of every brokered exchange.
        let crowded = spinners.saturating_add(1) > self.cpus;
        self.idle = if crowded { self.configured_idle.backed_off() } else { self.configured_idle };
        if crowded && spinners > 0 && !self.crowding_warned {
            self.crowding_warned = true;
            tracing::warn!(
                spinning_clients = spinners,
                cpus = self.cpus,
                "more parties spin than there are CPUs to run them: the daemon and the brokered waits of \
                 every client that spins without yielding (IdleStrategy::BUSY) back off to a short spin \
                 and then sched_yield (pure spinning would leave a party waiting for a time slice on \
                 every hand-over)"
            );
        }
        let c = self.crowding();
        if c == self.last_crowding {
            return;
        }
        self.last_crowding = c;
        let ev = DaemonMessage::Event(Event::Crowding(c));
        let spinners: Vec<u32> =
            self.sessions.values().filter(|s| s.spins && Some(s.id) != skip).map(|s| s.id).collect();
        for id in spinners {
            self.send(id, &ev, &[]);
        }
    }

    /// Whether the daemon follows the backed-off form of its strategy now.
    pub(crate) fn idle_backed_off(&self) -> bool {
        self.idle != self.configured_idle
    }
}
