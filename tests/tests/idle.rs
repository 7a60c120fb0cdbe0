//! Issue 19, item 4: spinners that outnumber the CPUs back off.
//!
//! `IdleStrategy::BUSY` at both ends of a brokered call, with a spinning
//! daemon in between, is three parties that never let go of a CPU. On one
//! or two CPUs each hand-over then waits for the scheduler to preempt a
//! spinner (0.7–1 ms a round trip, measured). These tests run the real
//! daemon and a real server process on a CPU set of one (then two) — they
//! inherit this test thread's affinity mask, narrowed with
//! `sched_setaffinity` — and check the behaviour: the daemon counts the
//! spinners, says in its status and its log that it backs off, each BUSY
//! client follows the backed-off strategy, and a bounded number of calls
//! completes. How fast is `hybusctl bench`'s business
//! (`brokered/rpc-idle-busy` beside `brokered/rpc-idle-default`).

use std::time::Duration;

use hybus::{Bus, BusOptions, IdleStrategy};
use hybus_tests::{DaemonProc, Peer, SOON};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// A daemon that never parks and never yields: a third pure spinner.
const BUSY_DAEMON: &str = "[idle]\nspins = 4294967295\nyields = 4294967295\npark = false\n";

/// This thread confined to the first `n` CPUs it may use, until dropped
/// (processes it spawns meanwhile inherit the mask). `None` if it may use fewer.
struct Confined(CpuSet);

impl Confined {
    fn to(n: usize) -> Option<Confined> {
        let before = sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
        let cpus: Vec<usize> = (0..CpuSet::count()).filter(|&c| before.is_set(c).unwrap_or(false)).take(n).collect();
        if cpus.len() < n {
            return None;
        }
        let mut set = CpuSet::new();
        for c in cpus {
            set.set(c).expect("CPU set");
        }
        sched_setaffinity(Pid::from_raw(0), &set).expect("sched_setaffinity");
        Some(Confined(before))
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        let _ = sched_setaffinity(Pid::from_raw(0), &self.0);
    }
}

fn busy_bus(d: &DaemonProc) -> Bus {
    let opts = BusOptions { path: Some(d.socket().to_owned()), idle: IdleStrategy::BUSY, ..BusOptions::default() };
    Bus::connect_with(opts).expect("connect")
}

/// A BUSY server process; returns it with the strategy it says it follows.
fn busy_server(d: &DaemonProc, name: &str) -> (Peer, String) {
    let mut p = Peer::spawn(d.socket(), &["serve", name, "idle=busy"]);
    let idle = p.expect_line("idle ");
    p.expect_line("ready");
    (p, idle)
}

/// Calls `route` `n` times, checking every answer (each call bounded by [`SOON`]).
fn calls(bus: &Bus, name: &str, n: u32) {
    let route = bus.resolve(name).expect("resolve");
    for i in 0..n {
        let p = i.to_le_bytes();
        let a = bus.call(&route, &p, SOON).unwrap_or_else(|e| panic!("call {i}: {e}"));
        let mut want = p;
        want.reverse();
        assert_eq!(&*a, &want, "answer {i}");
    }
}

#[test]
fn three_spinners_on_one_cpu_back_off() {
    let _one = Confined::to(1).expect("at least one CPU");
    let d = DaemonProc::start(Some(BUSY_DAEMON));
    // The daemon alone spins on its one CPU: nothing to back off from.
    let s = d.connect().status().expect("status");
    let c = s.crowding;
    assert_eq!((c.spinners, c.daemon_spins, c.cpus, s.idle_backed_off), (0, true, 1, false), "{s:?}");

    let (_server, server_idle) = busy_server(&d, "idle.echo");
    // Daemon and server: two spinners, one CPU. The server heard it in
    // the answer to its own declaration.
    let backed = IdleStrategy::BUSY.backed_off();
    assert_eq!(server_idle, format!("idle spins={} park=false", backed.spins), "the server backs off");
    let caller = busy_bus(&d);
    assert_eq!(caller.idle_strategy(), backed, "the caller backs off");
    assert_eq!(caller.idle_strategy_direct(), backed, "two spinning clients on one CPU, even without the daemon");
    let s = caller.status().expect("status");
    let c = s.crowding;
    assert_eq!((c.spinners, c.daemon_spins, c.cpus), (2, false, 1), "{s:?}");
    assert!(s.idle_backed_off, "the daemon backs off: {s:?}");

    calls(&caller, "idle.echo", 2_000);

    let log = d.log_text();
    assert_eq!(log.matches("more parties spin than there are CPUs").count(), 1, "warned once:\n{log}");
}

#[test]
fn spinners_back_off_when_they_outnumber_two_cpus_and_not_before() {
    let Some(_two) = Confined::to(2) else {
        eprintln!("skipped: this process may use fewer than two CPUs");
        return;
    };
    let d = DaemonProc::start(None);
    let first = busy_bus(&d);
    // hybusd and one BUSY client on two CPUs: each has one.
    assert_eq!(first.idle_strategy(), IdleStrategy::BUSY);
    let s = first.status().expect("status");
    let c = s.crowding;
    assert_eq!((c.spinners, c.daemon_spins, c.cpus, s.idle_backed_off), (1, false, 2, false), "{s:?}");
    assert!(!d.log_text().contains("more parties spin"), "{}", d.log_text());

    // A BUSY server makes three parties on a brokered path: the brokered
    // waits of both clients back off (the first hears it as an event,
    // read by the time its next control request is answered); a direct
    // channel between the two, without the daemon, has a CPU for each.
    let (server, server_idle) = busy_server(&d, "idle.echo2");
    let backed = IdleStrategy::BUSY.backed_off();
    assert_eq!(server_idle, format!("idle spins={} park=false", backed.spins));
    let s = first.status().expect("status");
    assert_eq!(s.crowding.spinners, 2, "{s:?}");
    assert_eq!(first.idle_strategy(), backed);
    assert_eq!(first.idle_strategy_direct(), IdleStrategy::BUSY);
    calls(&first, "idle.echo2", 2_000);
    assert!(d.log_text().contains("more parties spin than there are CPUs"), "{}", d.log_text());
    let route = first.resolve("idle.echo2").expect("resolve");
    first.request_direct(&route).expect("a direct channel");
    calls(&first, "idle.echo2", 2_000);
    assert!(first.is_direct(&route), "the calls went over the channel");

    // The server goes: one spinner again, and the first spins as asked.
    server.kill9();
    let mut restored = false;
    for _ in 0..200 {
        let s = first.status().expect("status");
        if s.crowding.spinners == 1 {
            restored = first.idle_strategy() == IdleStrategy::BUSY;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(restored, "back to BUSY once the server left");
}
