//! How many CPUs this thread may run on.
//!
//! Spinning pays only while every party that spins has a CPU of its own:
//! when more parties spin than there are CPUs, a spinner holds the CPU the
//! party it waits for needs, and each hand-over waits for the scheduler to
//! preempt it (a time slice, milliseconds). The client and the daemon so
//! count the CPUs they may use and back off from pure spinning when the
//! spinners outnumber them ([`IdleStrategy::holds_core`](hybus_layout::IdleStrategy::holds_core),
//! [`IdleStrategy::backed_off`](hybus_layout::IdleStrategy::backed_off)).

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the calling thread may run on (`sched_getaffinity`), at least 1.
///
/// The affinity mask, not the machine's CPU count: `taskset`, a cpuset
/// cgroup or systemd's `CPUAffinity=` narrow it, and they are what decides
/// whether two spinners share a CPU.
pub fn usable() -> u32 {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => ((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).count() as u32).max(1),
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn at_least_one_and_no_more_than_the_machine() {
        let n = super::usable();
        assert!(n >= 1);
        assert!(n as usize <= std::thread::available_parallelism().map_or(usize::MAX, |n| n.get()).max(n as usize));
    }
}
