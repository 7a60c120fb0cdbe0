//! Who spins, on how many CPUs, and what the daemon's own idle loop does
//! about it.
//!
//! A brokered round trip hands a cache line from caller to daemon to
//! server and back. While each party that spins has a CPU of its own that
//! takes a few microseconds; with three parties spinning on two CPUs one
//! of them always waits off-CPU for a party that will not let go of its
//! CPU until the scheduler preempts it, and a round trip took 0.7–1 ms
//! here (issue 19: 20 000 calls in 31–46 s with `IdleStrategy::BUSY` at
//! both ends). So the daemon counts the parties that spin — itself, since
//! it polls every active ring while brokered traffic flows, and every
//! client that said in [`Request::Idle`](hybus_layout::control::Request::Idle)
//! that its strategy holds a core — against the CPUs it may run on
//! ([`hybus_layout::cpus::usable`]). When they outnumber the CPUs it
//! follows the backed-off form of its strategy
//! ([`IdleStrategy::backed_off`]: a short spin, then `sched_yield`) and
//! tells each spinning client the count, whose waits back off the same
//! way; the first time, it says so in the log.

use hybus_layout::control::{Crowding, DaemonMessage, Event};
use hybus_layout::IdleStrategy;

use crate::daemon::Daemon;

impl Daemon {
    /// The parties that spin and the daemon's CPUs, as they are now.
    pub(crate) fn crowding(&self) -> Crowding {
        let clients = self.sessions.values().filter(|s| s.spins).count() as u32;
        Crowding { spinners: clients.saturating_add(1), cpus: self.cpus }
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
        let c = self.crowding();
        let crowded = c.spinners > c.cpus;
        self.idle = if crowded { self.configured_idle.backed_off() } else { self.configured_idle };
        if crowded && !self.crowding_warned {
            self.crowding_warned = true;
            tracing::warn!(
                spinners = c.spinners,
                cpus = c.cpus,
                "more parties spin than there are CPUs to run them: the daemon and every client whose idle \
                 strategy spins without parking back off to a short spin and then sched_yield (pure spinning \
                 would leave a party waiting for a time slice on every hand-over)"
            );
        }
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
