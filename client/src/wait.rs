//! How a thread waits for something to arrive: [`Shared::wait`] and its
//! variants, following the connection's idle strategy (spin, yield, park on
//! the doorbells), and the checks the sends and allocations wait with.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus_layout::Descriptor;

use crate::bus::{Bus, Shared};
use crate::core::{Core, Hot, Origin};
use crate::error::{Error, Result};
use crate::park::Woke;

/// How often a wait for pool space looks again while parked, whatever rings
/// or does not ring us (belt and braces: a waiter arms the return rings, see
/// `Core::want_releases`).
pub(crate) const POOL_POLL: Duration = Duration::from_millis(1);

/// How often a wait for room in a ring looks again once parked: nobody
/// rings us when the peer drains it.
pub(crate) const ROOM_POLL: Duration = Duration::from_millis(1);

/// A wait's check that pushes `d` on the path `origin` once its ring has
/// room; for the blocking and the async sends alike. `epoch`: the
/// connection epoch `d`'s chunk was taken on (see [`push_built`]).
pub(crate) fn room_check(
    origin: Origin,
    d: &Descriptor,
    epoch: Option<u64>,
) -> impl FnMut(&mut Core) -> Result<Option<()>> + '_ {
    move |core| match push_built(core, origin, d, epoch) {
        Ok(()) => Ok(Some(())),
        Err(Error::WouldBlock) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pushes `d`, whose chunk (if any) was taken on connection `epoch`:
/// refused if a reconnect came since. The reconnect reclaimed every chunk
/// no loan or channel peer held, so that one may be another payload's by
/// now (and the receiver's release of it would free it twice).
pub(crate) fn push_built(core: &mut Core, origin: Origin, d: &Descriptor, epoch: Option<u64>) -> Result<()> {
    if epoch.is_some_and(|e| e != core.epoch) {
        return Err(crate::bus::stale_payload());
    }
    core.try_send_on(origin, d)
}

/// A wait's check that takes something from our pool with `take`; while
/// the pool is exhausted it has the parked waiter arm the channels' return
/// rings (`Core::want_releases`). For the blocking and the async waits alike.
pub(crate) fn pool_check<T>(
    mut take: impl FnMut(&mut Core) -> Result<T>,
) -> impl FnMut(&mut Core) -> Result<Option<T>> {
    move |core| match take(core) {
        Ok(v) => Ok(Some(v)),
        Err(Error::OutOfPool { .. }) => {
            core.want_releases = true;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The instant `timeout` from now. A timeout too long to represent (a
/// caller's `Duration::MAX` for "no limit") is a century: no wait lasts
/// that long, and `Instant + Duration` would panic.
pub(crate) fn deadline_in(timeout: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(timeout).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}

/// Microseconds of `clock`, a monotonic clock.
fn micros(clock: nix::time::ClockId) -> u64 {
    nix::time::clock_gettime(clock).map_or(0, |t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
}

/// The deadline `due` as a request carries it (see `Kind::Request`):
/// microseconds of the host's `CLOCK_MONOTONIC`, which every process of
/// the host reads alike (outside time namespaces), so that it names the
/// same instant to the server. 0 for none. Never earlier than the
/// caller's own deadline, and at most 2 µs later.
///
/// The precise clock, not the coarse one, though it costs more on the
/// path of every call (22 ns a read against 6 on a 2-vCPU VM): the coarse
/// clock lags by a tick and more when a tick is late (4.15 ms behind with
/// a 4 ms tick there), so a deadline counted from it can end before the
/// caller's own.
pub(crate) fn wire_deadline(due: Due) -> u64 {
    let left = match due {
        Due::Never => return 0,
        Due::After(t) => t,
        Due::At(at) => at.saturating_duration_since(Instant::now()),
    };
    // Both the clock read and `left` truncate to whole microseconds: one
    // up for each.
    let left = u64::try_from(left.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX);
    micros(nix::time::ClockId::CLOCK_MONOTONIC).saturating_add(left).saturating_add(1)
}

/// The instant a request's wire deadline `aux` names (see
/// [`wire_deadline`]); `None` for none. A peer writes what it likes there:
/// any value maps to some instant, from now to a year on.
pub(crate) fn deadline_of_wire(aux: u64) -> Option<Instant> {
    const YEAR: u64 = 365 * 24 * 3600 * 1_000_000;
    if aux == 0 {
        return None;
    }
    let left = aux.saturating_sub(micros(nix::time::ClockId::CLOCK_MONOTONIC)).min(YEAR);
    Some(Instant::now() + Duration::from_micros(left))
}

/// When a wait gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Never.
    Never,
    /// At this instant.
    At(Instant),
    /// This long after the wait first reads the clock. A spinning wait reads
    /// it after its first 64 polls, so a call answered within them never
    /// does: a clock read costs 25 ns on this project's VM, and reading it
    /// at the start of every call and every wait took four of them per
    /// direct round trip. The deadline so starts up to 64 polls (a few µs)
    /// late; a zero duration is taken at once.
    After(Duration),
}

impl Due {
    /// `After` resolved against `now`; the others as they are.
    pub(crate) fn at(self, now: Instant) -> Due {
        match self {
            Due::After(t) => now.checked_add(t).map_or(Due::Never, Due::At),
            d => d,
        }
    }

    /// The instant it falls due, `After` counted from `now`; `None` for never.
    pub(crate) fn deadline(self, now: Instant) -> Option<Instant> {
        match self.at(now) {
            Due::At(t) => Some(t),
            _ => None,
        }
    }
}

impl From<Option<Instant>> for Due {
    fn from(d: Option<Instant>) -> Due {
        d.map_or(Due::Never, Due::At)
    }
}

impl Shared {
    /// Waits until `check` yields a value, the connection is lost, or `deadline` passes.
    ///
    /// Follows the idle strategy: spin, yield, then park on the doorbell
    /// (and the control socket, so that a dying daemon wakes us). Only one
    /// thread parks on the doorbell; others wait on a condvar and are woken
    /// when it has pumped.
    pub(crate) fn wait<T>(
        self: &Arc<Self>,
        due: impl Into<Due>,
        control: bool,
        check: impl FnMut(&mut Core) -> Result<Option<T>>,
    ) -> Result<T> {
        self.wait_inner(due, control, None, Hot::All, check)
    }

    /// [`wait`](Self::wait) for what `hot` brings: while it spins, most
    /// rounds poll only that (see [`Core::pump_hot`]).
    pub(crate) fn wait_hot<T>(
        self: &Arc<Self>,
        due: impl Into<Due>,
        hot: Hot,
        check: impl FnMut(&mut Core) -> Result<Option<T>>,
    ) -> Result<T> {
        self.wait_inner(due, false, None, hot, check)
    }

    /// [`wait`](Self::wait), sleeping at most `cap` at a time: for waits no
    /// doorbell announces (room in a ring the peer drains never rings us).
    pub(crate) fn wait_capped<T>(
        self: &Arc<Self>,
        due: impl Into<Due>,
        control: bool,
        cap: Option<Duration>,
        check: impl FnMut(&mut Core) -> Result<Option<T>>,
    ) -> Result<T> {
        self.wait_inner(due, control, cap, Hot::All, check)
    }

    fn wait_inner<T>(
        self: &Arc<Self>,
        due: impl Into<Due>,
        control: bool,
        cap: Option<Duration>,
        hot: Hot,
        mut check: impl FnMut(&mut Core) -> Result<Option<T>>,
    ) -> Result<T> {
        let mut due = due.into();
        if matches!(due, Due::After(t) if t.is_zero()) {
            due = due.at(Instant::now());
        }
        let mut idle;
        let mut round: u32 = 0;
        let mut yield_start: Option<Instant> = None;
        loop {
            let mut core = self.lock();
            // Read every round: the daemon may say at any time that the
            // spinners outnumber the CPUs (a field load when nothing spins).
            // A direct call's answer, and a server's requests once it
            // serves a channel, come without the daemon: fewer parties.
            idle = match core.crowding {
                None => self.idle,
                Some(_) => {
                    let brokered = match hot {
                        Hot::Answer { .. } => false,
                        Hot::Inbox(_) => !core.channels.values().any(|c| c.side == hybus_layout::channel::Side::B),
                        Hot::All => true,
                    };
                    self.effective_idle(core.crowding, brokered)
                }
            };
            if self.reconnect_due(&mut core) {
                // Direct channels keep working meanwhile.
                drop(core);
                let _ = (Bus { shared: self.clone() }).reconnect();
                continue;
            }
            if core.releases_queued {
                core.flush_releases();
            }
            // Every 64th round pumps everything, but a direct call's first
            // round does not: the answer is on its channel's ring, and the
            // full pump (the daemon's ring, every channel's two rings, a
            // dispatch into the call table) cost ~1 100 instructions of
            // the ~1 950 from the first poll to the return (callgrind,
            // benches/examples/call_count.rs). Returned chunks are still
            // taken back on the 64th round, and at once by a loan that
            // finds the pool empty.
            let first_answer_round = round == 0 && matches!(hot, Hot::Answer { .. });
            if (round % 64 == 0 && !first_answer_round) || round > idle.spins {
                core.pump_data();
            } else {
                core.pump_hot(hot);
            }
            // Read the control socket now and then even when every wait is
            // short (a busy direct channel): that is how a dead daemon is
            // noticed. Every 4096 rounds is every ~0.2 ms of spinning; those
            // two system calls take ~2 µs, so every 256 rounds (one direct
            // call in ~40) set the p99 of a spinning round trip.
            core.waits = core.waits.wrapping_add(1);
            if control || round % 1024 == 1023 || core.waits % 4096 == 0 {
                core.pump_control();
                if !core.channels.is_empty() {
                    core.check_peers();
                }
            }
            let checked = check(&mut core);
            // A check that did not want what `pump_hot` took for it (it failed).
            core.untake();
            if let Some(v) = checked? {
                return Ok(v);
            }
            if let Some(g) = &core.gone {
                if core.channels.is_empty() && !self.auto_reconnect {
                    return Err(Error::BusGone(g.clone()));
                }
            }
            round = round.wrapping_add(1);
            // The clock costs as much as a poll (25 ns here): read it every
            // 64 rounds while spinning, every round once yielding or parking.
            let now = if round <= idle.spins && round % 64 != 0 { None } else { Some(Instant::now()) };
            if let Some(now) = now {
                due = due.at(now);
                if matches!(due, Due::At(d) if now >= d) {
                    return Err(Error::DeadlineExceeded);
                }
            }
            if round <= idle.spins {
                drop(core);
                std::hint::spin_loop();
                continue;
            }
            // Yield for at most `yields` rounds and at most 1 ms (a yield can
            // take a whole time slice on a busy machine), then park.
            if (round <= idle.spins.saturating_add(idle.yields)
                && yield_start.get_or_insert_with(Instant::now).elapsed() < Duration::from_millis(1))
                || !idle.park
            {
                drop(core);
                std::thread::yield_now();
                continue;
            }
            let now = now.unwrap_or_else(Instant::now);
            let remaining = due.deadline(now).map(|d| d.saturating_duration_since(now));
            if core.parked_waiter {
                let t = remaining.unwrap_or(Duration::from_millis(50)).min(Duration::from_millis(50));
                core.cv_waiters += 1;
                let mut core = self.cv.wait_timeout(core, t).map_or_else(|p| p.into_inner().0, |(g, _)| g);
                core.cv_waiters = core.cv_waiters.saturating_sub(1);
                continue;
            }
            match core.prepare_park() {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err(Error::BusGone(format!("daemon ring corrupt: {e}"))),
            }
            core.parked_waiter = true;
            // While the daemon is gone, wake up to retry the connection.
            let remaining = if core.gone.is_some() && self.auto_reconnect {
                Some(remaining.map_or(Duration::from_millis(200), |r| r.min(Duration::from_millis(200))))
            } else {
                remaining
            };
            let remaining = match cap {
                Some(c) => Some(remaining.map_or(c, |r| r.min(c))),
                None => remaining,
            };
            let mut parker = self.parker.lock().unwrap_or_else(|p| p.into_inner());
            let synced = parker.sync(&core);
            drop(core);
            let woke = match synced {
                Ok(()) => parker.sleep(remaining),
                Err(_) => {
                    // epoll_ctl fails only short of kernel memory: sleep a
                    // little instead, then look at everything.
                    std::thread::sleep(Duration::from_millis(1));
                    Woke { control: true, peer_exit: true }
                }
            };
            drop(parker);
            let mut core = self.lock();
            core.parked_waiter = false;
            core.leave_park();
            // A wait for pool space sets it again on its next round if it still waits.
            core.want_releases = false;
            // Only the sources that spoke: every syscall here is on the
            // path of each message when the parties park between messages.
            if woke.control {
                core.pump_control();
            }
            if woke.peer_exit {
                core.check_peers();
            }
            // A condvar notify is a futex syscall whether or not anyone
            // waits: only when someone does (one syscall per message saved).
            let waiters = core.cv_waiters > 0;
            drop(core);
            if waiters {
                self.cv.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_deadline_names_the_caller_s_instant_or_a_little_later() {
        let t = Duration::from_millis(1500);
        let before = Instant::now();
        for due in [Due::After(t), Due::At(before + t)] {
            let at = deadline_of_wire(wire_deadline(due)).unwrap();
            assert!(at >= before + t, "{due:?}: earlier than the caller's deadline");
            assert!(at <= Instant::now() + t + Duration::from_millis(1), "{due:?}: later than the caller's deadline");
        }
        assert_eq!(wire_deadline(Due::Never), 0);
        assert_eq!(deadline_of_wire(0), None);
    }

    #[test]
    fn any_word_a_peer_writes_is_some_instant_within_a_year() {
        let year = Duration::from_secs(365 * 24 * 3600);
        for aux in [1, 2, u64::MAX / 2, u64::MAX] {
            let at = deadline_of_wire(aux).unwrap();
            assert!(at <= Instant::now() + year, "{aux}");
        }
        // A century's timeout saturates rather than wraps.
        assert!(wire_deadline(Due::After(Duration::MAX)) > wire_deadline(Due::After(Duration::from_secs(1))));
    }
}
