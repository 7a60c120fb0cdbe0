//! The idle strategy a connection's waits follow: the one it was given, or
//! its backed-off form while more parties spin than there are CPUs.
//!
//! A client whose strategy holds a core ([`IdleStrategy::holds_core`],
//! e.g. [`IdleStrategy::BUSY`]) tells the daemon so when it connects
//! (`Request::Idle`); the daemon answers with how many parties spin and on
//! how many CPUs, and tells it again whenever that changes
//! (`Event::Crowding`). While the spinners outnumber the CPUs — the
//! daemon's, or this thread's own (`sched_getaffinity`), whichever are
//! fewer — the waits follow [`IdleStrategy::backed_off`]: a short spin,
//! then `sched_yield`, so that a party that shares our CPU runs at once
//! instead of after the scheduler preempts us (a brokered round trip with
//! three pure spinners on two CPUs took 0.7–1 ms; with yields a few µs).

use hybus_layout::control::Crowding;
use hybus_layout::IdleStrategy;

use crate::bus::{Bus, Shared};
use crate::error::{Error, Result};
use hybus_layout::control::{Reply, Request};

/// What `configured` becomes for a client on `own_cpus` CPUs, given what
/// the daemon last said (`None`: nothing yet, or the client does not spin).
pub(crate) fn effective(configured: IdleStrategy, own_cpus: u32, crowding: Option<Crowding>) -> IdleStrategy {
    match crowding {
        Some(c) if configured.holds_core() && c.spinners > c.cpus.min(own_cpus).max(1) => configured.backed_off(),
        _ => configured,
    }
}

impl Shared {
    /// The strategy a wait follows now (see the module docs).
    #[inline]
    pub(crate) fn effective_idle(&self, crowding: Option<Crowding>) -> IdleStrategy {
        if crowding.is_none() {
            return self.idle;
        }
        effective(self.idle, self.cpus, crowding)
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

    /// The idle strategy this connection's waits follow now: the one in
    /// [`BusOptions::idle`](crate::BusOptions::idle), or, while more parties
    /// spin than there are CPUs to run them, its
    /// [`backed_off`](IdleStrategy::backed_off) form (a short spin, then
    /// `sched_yield`), which the daemon's log announces once.
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
        self.shared.effective_idle(crowding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_only_a_spinner_that_is_outnumbered() {
        let c = |spinners, cpus| Some(Crowding { spinners, cpus });
        let busy = IdleStrategy::BUSY;
        assert_eq!(effective(busy, 2, None), busy);
        assert_eq!(effective(busy, 2, c(2, 2)), busy);
        assert_eq!(effective(busy, 2, c(3, 2)), busy.backed_off());
        // Our own CPU set counts too: two spinners, and we may use one CPU.
        assert_eq!(effective(busy, 1, c(2, 4)), busy.backed_off());
        // A strategy that parks is left alone.
        assert_eq!(effective(IdleStrategy::DEFAULT, 1, c(9, 1)), IdleStrategy::DEFAULT);
    }
}
