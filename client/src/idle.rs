//! The idle strategy a connection's waits follow: the one it was given, or
//! its backed-off form while more parties spin than there are CPUs.
//!
//! A client whose strategy spins without yielding
//! ([`IdleStrategy::holds_core`], e.g. [`IdleStrategy::BUSY`]) tells the
//! daemon so when it connects (`Request::Idle`); the daemon answers with
//! how many clients spin, whether it does, and on how many CPUs
//! ([`Crowding`]), and tells it again whenever that changes
//! (`Event::Crowding`). A wait on the brokered path has the daemon as a
//! third party that must run for each message, spinning or not; a wait on
//! a direct channel has only the peer. While the parties of a wait's path
//! outnumber the CPUs — the daemon's, or this thread's own
//! (`sched_getaffinity`), whichever are fewer — it follows
//! [`IdleStrategy::backed_off`]: a short spin, then `sched_yield`, so that
//! a party that shares our CPU runs at once instead of after the scheduler
//! preempts us (a brokered round trip with BUSY at both ends took 0.7 ms
//! to tens of ms on two CPUs; with yields some µs).

use hybus_layout::control::Crowding;
use hybus_layout::IdleStrategy;

use crate::bus::{Bus, Shared};
use crate::error::{Error, Result};
use hybus_layout::control::{Reply, Request};

/// What `configured` becomes for a wait on the brokered path (`brokered`)
/// or on a direct channel, for a client on `own_cpus` CPUs, given what the
/// daemon last said (`None`: nothing yet, or the client does not spin).
pub(crate) fn effective(
    configured: IdleStrategy,
    own_cpus: u32,
    crowding: Option<Crowding>,
    brokered: bool,
) -> IdleStrategy {
    match crowding {
        Some(c) if configured.holds_core() && if brokered { c.brokered(own_cpus) } else { c.direct(own_cpus) } => {
            configured.backed_off()
        }
        _ => configured,
    }
}

impl Shared {
    /// The strategy a wait on the brokered path (`brokered`) or on a direct
    /// channel follows now (see the module docs).
    #[inline]
    pub(crate) fn effective_idle(&self, crowding: Option<Crowding>, brokered: bool) -> IdleStrategy {
        if crowding.is_none() {
            return self.idle;
        }
        effective(self.idle, self.cpus, crowding, brokered)
    }
}

impl Bus {
    /// Tells the daemon our idle strategy if it holds a core, and keeps
    /// its answer (after a connect and after each reconnect).
    pub(crate) fn declare_idle(&self) -> Result<()> {
        let idle = self.shared.idle;
        if !idle.holds_core() {
            return Ok(());
        }
        match self.control(Request::Idle { spins: idle.spins, yields: idle.yields, park: idle.park })? {
            Reply::Crowding(c) => {
                self.shared.lock().crowding = Some(c);
                Ok(())
            }
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// The idle strategy this connection's waits on the brokered path follow
    /// now: the one in [`BusOptions::idle`](crate::BusOptions::idle), or,
    /// while the parties that spin without yielding — with the daemon, a
    /// party of every brokered exchange — outnumber the CPUs, its
    /// [`backed_off`](IdleStrategy::backed_off) form (a short spin, then
    /// `sched_yield`), which the daemon's log announces once. Waits on a
    /// direct channel back off only when the spinners outnumber the CPUs
    /// without the daemon ([`idle_strategy_direct`](Self::idle_strategy_direct)).
    ///
    /// What each strategy costs: [`IdleStrategy::BUSY`] a CPU for as long
    /// as a call or `next` waits, for the lowest latency while every
    /// spinning party has a CPU of its own; [`IdleStrategy::DEFAULT`] a few
    /// microseconds of spinning and up to a millisecond of yields per wait,
    /// then nothing (a parked waiter is woken through its doorbell, which
    /// adds a wake-up, some µs, to a message that finds it asleep);
    /// [`IdleStrategy::PARK`] a wake-up per message and no CPU at all.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), hybus::Error> {
    /// use hybus::{Bus, BusOptions, IdleStrategy};
    /// let bus = Bus::connect_with(BusOptions { idle: IdleStrategy::BUSY, ..BusOptions::default() })?;
    /// if bus.idle_strategy() != IdleStrategy::BUSY {
    ///     println!("too many spinners for the CPUs: waits spin briefly, then yield");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn idle_strategy(&self) -> IdleStrategy {
        let crowding = self.shared.lock().crowding;
        self.shared.effective_idle(crowding, true)
    }

    /// The idle strategy this connection's waits on direct channels follow
    /// now (see [`idle_strategy`](Self::idle_strategy)).
    pub fn idle_strategy_direct(&self) -> IdleStrategy {
        let crowding = self.shared.lock().crowding;
        self.shared.effective_idle(crowding, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_only_a_spinner_that_is_outnumbered() {
        let c = |spinners, daemon_spins, cpus| Some(Crowding { spinners, daemon_spins, cpus });
        let busy = IdleStrategy::BUSY;
        assert_eq!(effective(busy, 2, None, true), busy);
        // One spinning client and the daemon on two CPUs: no crowding.
        assert_eq!(effective(busy, 2, c(1, false, 2), true), busy);
        // Two spinning clients and the daemon: brokered waits back off,
        // a direct pair (the daemon not in its path, not spinning) does not.
        assert_eq!(effective(busy, 2, c(2, false, 2), true), busy.backed_off());
        assert_eq!(effective(busy, 2, c(2, false, 2), false), busy);
        assert_eq!(effective(busy, 2, c(2, true, 2), false), busy.backed_off());
        // Our own CPU set counts too.
        assert_eq!(effective(busy, 1, c(1, false, 4), true), busy.backed_off());
        // A strategy that yields or parks is left alone.
        assert_eq!(effective(IdleStrategy::DEFAULT, 1, c(9, true, 1), true), IdleStrategy::DEFAULT);
    }
}
