//! A daemon restart under brokered traffic only (no direct channel to keep
//! things going): callers, publishers and subscribers of the real client
//! library reconnect by themselves, blocking and async alike, and a route
//! or a topic resolved before the restart never reaches another name under
//! the new daemon's ids.

use std::process::Child;
use std::time::Duration;

use hybus::Bus;
use hybus_tests::{eventually, proc_cpu_ticks, start_daemon_at, Peer, TempDir, SOON};

const SHORT: Duration = Duration::from_millis(200);

struct Restartable {
    dir: TempDir,
    daemon: Child,
}

impl Restartable {
    fn start(tag: &str) -> Restartable {
        let dir = TempDir::new(tag);
        let daemon = start_daemon_at(&dir.path().join("bus.sock"), &dir.path().join("hybusd.log"));
        Restartable { dir, daemon }
    }

    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("bus.sock")
    }

    /// Stops the daemon (SIGSTOP): it reads nothing until killed.
    fn stop(&self) {
        let pid = self.daemon.id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).unwrap();
        hybus_tests::stopped(pid);
    }

    /// Kills the daemon hard and starts another on the same socket.
    fn restart(&mut self) {
        self.daemon.kill().unwrap();
        self.daemon.wait().unwrap();
        let _ = std::fs::remove_file(self.socket());
        self.daemon = start_daemon_at(&self.socket(), &self.dir.path().join("hybusd2.log"));
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[test]
fn brokered_clients_come_back_by_themselves() {
    let mut d = Restartable::start("restart-brokered");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "back.echo"]);
    let caller = Bus::connect_to(d.socket()).unwrap();
    let route = caller.resolve("back.echo").unwrap();
    assert_eq!(&*caller.call(&route, b"abc", SOON).unwrap(), b"cba");
    let subscriber = Bus::connect_to(d.socket()).unwrap();
    let sub = subscriber.subscribe("back.topic").unwrap();
    let publisher = Bus::connect_to(d.socket()).unwrap().publisher("back.topic").unwrap();
    publisher.publish(b"before").unwrap();
    assert_eq!(&*sub.next(SOON).unwrap().unwrap(), b"before");
    // A subscriber already waiting, with a long timeout, when the daemon goes.
    let patient = std::thread::spawn({
        let bus = Bus::connect_to(d.socket()).unwrap();
        let sub = bus.subscribe("back.topic").unwrap();
        move || sub.next(SOON).map(|s| s.map(|s| s.to_vec()))
    });

    d.restart();
    // Another name first, so that the old ids mean something else now.
    let other = Bus::connect_to(d.socket()).unwrap();
    let decoy = other.subscribe("back.decoy").unwrap();
    let decoy2 = other.subscribe("back.decoy2").unwrap();

    // The caller: its calls fail while the daemon is away, then go through.
    let answered = eventually(SOON, || caller.call(&route, b"xyz", SHORT).ok());
    let log = std::fs::read_to_string(d.dir.path().join("hybusd2.log")).unwrap_or_default();
    assert_eq!(&*answered.unwrap_or_else(|| panic!("the caller did not come back; log:\n{log}")), b"zyx");
    // The publisher and the subscriber: the topic again, under its new id.
    let got = eventually(SOON, || {
        let _ = publisher.publish(b"after");
        sub.next(SHORT).ok().flatten()
    });
    assert_eq!(&*got.expect("the publication did not come through"), b"after");
    let waited = patient.join().unwrap().unwrap();
    assert_eq!(waited.as_deref(), Some(&b"after"[..]), "the waiting subscriber missed it");
    // Nothing went to the other names.
    assert!(decoy.next(SHORT).unwrap().is_none());
    assert!(decoy2.next(SHORT).unwrap().is_none());
}

/// The async API across a restart: an async caller comes back, and its
/// waits afterwards sleep on the new connection (not on the old socket,
/// whose hang-up would wake them at once, forever).
#[test]
fn async_clients_come_back_and_sleep_again() {
    let mut d = Restartable::start("restart-async");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "back.async"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bus = rt.block_on(async { Bus::connect_to(d.socket()).unwrap().to_async().unwrap() });
    let route = bus.bus().resolve("back.async").unwrap();
    assert_eq!(&*rt.block_on(bus.call(&route, b"abc", SOON)).unwrap(), b"cba");
    d.restart();
    let answered = eventually(SOON, || rt.block_on(bus.call(&route, b"xyz", SHORT)).ok());
    assert_eq!(&*answered.expect("the async caller did not come back"), b"zyx");
    // The events the restart brought (the connection lost, and back).
    while rt.block_on(bus.next_event(Duration::from_millis(50))).unwrap().is_some() {}
    // An idle wait of 300 ms: asleep, it costs next to no CPU.
    let before = thread_cpu();
    assert!(rt.block_on(bus.next_event(Duration::from_millis(300))).unwrap().is_none());
    let spent = thread_cpu() - before;
    assert!(spent < Duration::from_millis(100), "an idle async wait spun for {spent:?} of CPU");
}

/// CPU time of this thread so far.
fn thread_cpu() -> Duration {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer, to `ts`.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A client waiting while the daemon is away sleeps: the closed control
/// socket reads as ready for ever, and a waiter woken by it spun at 100 %
/// of a CPU for as long as the daemon stayed away. It wakes every 200 ms to
/// try again, and serves again once a daemon is back.
#[test]
fn a_waiting_client_sleeps_while_the_daemon_is_away() {
    let mut d = Restartable::start("restart-idle");
    let (server, _) = Peer::ready(&d.socket(), &["serve", "back.idle"]);
    d.daemon.kill().unwrap();
    d.daemon.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_cpu_ticks(server.pid());
    std::thread::sleep(Duration::from_secs(1));
    let spent = proc_cpu_ticks(server.pid()) - before;
    // 100 ticks a second: a spinning waiter takes about 100.
    assert!(spent < 20, "the waiting server used {spent} ticks of CPU in one second");
    let _ = std::fs::remove_file(d.socket());
    d.daemon = start_daemon_at(&d.socket(), &d.dir.path().join("hybusd2.log"));
    let caller = Bus::connect_to(d.socket()).unwrap();
    let answered = eventually(SOON, || {
        let route = caller.resolve("back.idle").ok()?;
        caller.call(&route, b"abc", SHORT).ok()
    });
    assert_eq!(&*answered.expect("the server did not come back"), b"cba");
}

/// A watch outlives a daemon restart: the watcher is told it was cut off,
/// and then, without asking again, of the instances serving under the new
/// daemon (the server comes back by itself) and of those that come and go.
#[test]
fn a_watch_goes_on_after_a_restart() {
    use hybus::BusEvent;
    let mut d = Restartable::start("restart-watch");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "watched.echo"]);
    let watcher = Bus::connect_to(d.socket()).unwrap();
    watcher.watch("watched.").unwrap();
    let up = |name: &str| {
        eventually(SOON, || match watcher.next_event(SHORT) {
            Ok(Some(BusEvent::ServiceUp { name: n, .. })) if n == name => Some(()),
            _ => None,
        })
        .is_some()
    };
    assert!(up("watched.echo"), "no ServiceUp before the restart");
    d.restart();
    assert!(up("watched.echo"), "no ServiceUp for the server that came back");
    let other = Bus::connect_to(d.socket()).unwrap();
    drop(other.register("watched.new").unwrap());
    assert!(up("watched.new"), "no ServiceUp for a service new after the restart");
}

/// A loan the application holds while the daemon restarts stays its own:
/// the reconnect keeps the pool and must not hand the loan's chunk to
/// another payload while the application may still be writing it.
#[test]
fn a_loan_held_across_a_restart_stays_the_application_s() {
    let mut d = Restartable::start("restart-loan");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "loan.sink"]);
    let bus = Bus::connect_to(d.socket()).unwrap();
    let route = bus.resolve("loan.sink").unwrap();
    let mut loan = bus.loan(1000, SOON).unwrap();
    loan.fill(0xA5);
    let for_a_call = bus.loan(100, SOON).unwrap();
    assert_eq!(bus.chunks_in_use(), 2);
    d.restart();
    assert!(eventually(SOON, || bus.status().ok()).is_some(), "no reconnect");
    assert_eq!(bus.chunks_in_use(), 2, "the loans' chunks were reclaimed");
    // The sink is back too (it reconnects by itself): the route resolves again.
    assert!(eventually(SOON, || bus.call(&route, b"ab", SHORT).ok()).is_some(), "the sink did not come back");
    let others: Vec<_> = (0..50)
        .map(|_| {
            let mut l = bus.loan(1000, SOON).unwrap();
            l.fill(0x5A);
            l
        })
        .collect();
    assert!(loan.iter().all(|&b| b == 0xA5), "another loan got the chunk");
    drop(others);
    // Made on the old connection, it is refused, and its chunk goes back.
    let refused = bus.fire_loan(&route, loan);
    assert!(matches!(refused, Err(hybus::Error::BusGone(_))), "{refused:?}");
    let refused = bus.call_loan(&route, for_a_call, SOON);
    assert!(matches!(refused, Err(hybus::Error::BusGone(_))), "{refused:?}");
    assert_eq!(bus.chunks_in_use(), 0);
    // And a loan made now goes out.
    let mut fresh = bus.loan(4, SOON).unwrap();
    fresh.copy_from_slice(b"late");
    bus.fire_loan(&route, fresh).unwrap();
}

/// The stale-loan window: a loan that passed its epoch check and then waits
/// at its push (the ring is full) while the daemon restarts is refused at
/// the push, and its chunk still goes back to the pool. (It used to stay
/// lent for good: the reconnect kept it as a loan, and the push's refusal,
/// seeing a chunk of an older epoch, did not free it.) The daemon is
/// stopped so that the ring fills, then killed and replaced while the loan
/// waits.
#[test]
fn a_loan_refused_at_its_push_by_a_restart_gives_its_chunk_back() {
    let mut d = Restartable::start("restart-loan-window");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "loan.late"]);
    let bus = Bus::connect_to(d.socket()).unwrap();
    let route = bus.resolve("loan.late").unwrap();
    let mut loan = bus.loan(1000, SOON).unwrap();
    loan.fill(7);
    d.stop();
    // Fill the ring to the stopped daemon with inline fires.
    let mut pushed = 0;
    while bus.try_fire(&route, b"x").is_ok() {
        pushed += 1;
        assert!(pushed < 1_000_000, "the ring never filled");
    }
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        d.restart();
        d
    });
    // Waits for ring room; the restart comes first.
    let refused = bus.fire_loan(&route, loan);
    assert!(matches!(refused, Err(hybus::Error::BusGone(_))), "{refused:?}");
    let _d = restarter.join().unwrap();
    assert_eq!(bus.chunks_in_use(), 0, "the refused loan kept its chunk");
    // The pool is whole: every chunk of the loan's size class can be lent again.
    assert!(eventually(SOON, || bus.status().ok()).is_some(), "no reconnect");
    let mut again = bus.loan(1000, SOON).unwrap();
    again.fill(8);
    drop(again);
    assert_eq!(bus.chunks_in_use(), 0);
}

/// A route id read before a restart never reaches the new daemon, whose
/// numbering may give it to another name: a fire that read its route,
/// then waited for pool space (the pool's largest chunks all sent into a
/// stopped daemon) while the daemon restarted, is refused once it has its
/// chunk. (It used to go out with the old id: here that id is the new
/// daemon's first, a service that registered first there.)
#[test]
fn a_fire_that_waited_through_a_restart_does_not_reach_another_name() {
    let mut d = Restartable::start("restart-route");
    let (target, _) = Peer::ready(&d.socket(), &["serve", "route.target"]);
    let bus = Bus::connect_to(d.socket()).unwrap();
    let route = bus.resolve("route.target").unwrap();
    // The target does not come back: in the new daemon its old id is the victim's.
    target.kill9();
    d.stop();
    // Four 1 MiB chunks in the default pool: all of them go into the stopped daemon's ring.
    let big = vec![0xEEu8; 500_000];
    for _ in 0..4 {
        bus.fire_within(&route, &big, Duration::from_secs(1)).unwrap();
    }
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        d.restart();
        let victim_bus = Bus::connect_to(d.socket()).unwrap();
        let victim = victim_bus.register("route.victim").unwrap();
        (d, victim_bus, victim)
    });
    // Waits for a chunk: the reconnect after the restart reclaims them.
    let r = bus.fire(&route, &big);
    let (_d, _victim_bus, victim) = restarter.join().unwrap();
    assert!(matches!(r, Err(hybus::Error::BusGone(_))), "a fire with the old daemon's route id went out: {r:?}");
    assert!(victim.next(Duration::from_millis(300)).unwrap().is_none(), "the victim got the target's fire");
    // The connection goes on: the route resolves afresh (no instance of the target now).
    assert!(bus.status().is_ok());
    assert!(matches!(bus.fire(&route, b"x"), Err(hybus::Error::NotFound(_) | hybus::Error::NoInstance)));
}

/// An answer that came through the old daemon and was not collected before
/// it died lies in a pool that is gone: collecting it after the reconnect
/// fails like any call in flight at the restart ("peer gone"), and the
/// connection goes on (its chunk is not "released" to the new daemon,
/// which would take that as a protocol violation).
#[test]
fn an_answer_left_uncollected_across_a_restart_fails_cleanly() {
    let mut d = Restartable::start("restart-answer");
    let (_server, _) = Peer::ready(&d.socket(), &["serve", "late.echo"]);
    let bus = Bus::connect_to(d.socket()).unwrap();
    let route = bus.resolve("late.echo").unwrap();
    let call = bus.begin_call(&route, &[3u8; 50_000], SOON).unwrap();
    // The daemon closes the exchange once it has passed the answer on; the
    // wait for its reply to `status` takes the answer into the call table.
    let passed = eventually(SOON, || (bus.status().unwrap().exchanges == 0).then_some(()));
    assert!(passed.is_some(), "the answer never came");
    d.restart();
    assert!(eventually(SOON, || bus.status().ok()).is_some(), "no reconnect");
    assert!(matches!(call.wait(), Err(hybus::Error::PeerGone)));
    let answered = eventually(SOON, || bus.call(&route, b"xyz", SHORT).ok());
    assert_eq!(&*answered.expect("the connection did not go on"), b"zyx");
    assert!(bus.is_connected());
}

/// Stream items the old daemon brought in chunks and nobody read before
/// it died are not handed out after the reconnect (their pools are gone):
/// the stream ends with the restart's error, and the connection goes on.
#[test]
fn unread_stream_items_across_a_restart_end_the_stream_cleanly() {
    use hybus::Incoming;
    let mut d = Restartable::start("restart-stream");
    let server = Bus::connect_to(d.socket()).unwrap();
    let svc = server.register("late.stream").unwrap();
    let bus = Bus::connect_to(d.socket()).unwrap();
    let route = bus.resolve("late.stream").unwrap();
    let mut s = bus.request_stream(&route, b"", 8).unwrap();
    let Some(Incoming::Stream(mut st)) = svc.next(SOON).unwrap() else { panic!("no stream") };
    for _ in 0..3 {
        st.send(&[7u8; 5000], SOON).unwrap();
    }
    st.end().unwrap();
    // Once the daemon has passed everything on, its exchange is closed; the
    // wait for the reply to `status` takes the items into the stream's queue.
    let passed = eventually(SOON, || (bus.status().unwrap().exchanges == 0).then_some(()));
    assert!(passed.is_some(), "the items never came");
    d.restart();
    assert!(eventually(SOON, || bus.status().ok()).is_some(), "no reconnect");
    let r = s.next(SOON);
    assert!(matches!(r, Err(hybus::Error::BusGone(_))), "{:?}", r.map(|o| o.map(|i| i.len())));
    drop(s);
    let ok = eventually(SOON, || bus.list().ok());
    assert!(ok.is_some() && bus.is_connected(), "the connection did not go on");
}

/// A daemon started on the socket of one just killed with `kill -9` (and
/// reaped), without removing the socket file, as a supervisor restarts it:
/// for some milliseconds the killed daemon's listener still takes
/// connections, and the new daemon must take it for the stale socket it is,
/// not for "another hybusd already listening". Thirty rounds, each with
/// clients connected when the daemon dies (they make the window wider).
#[test]
fn a_restart_right_after_kill_9_takes_the_socket() {
    let dir = TempDir::new("rekill");
    let socket = dir.path().join("bus.sock");
    let log = dir.path().join("hybusd.log");
    for round in 0..30 {
        let mut daemon = std::process::Command::new(hybus_tests::target_bin("hybusd"))
            .arg("--socket")
            .arg(&socket)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let up = eventually(SOON, || {
            if let Ok(Some(status)) = daemon.try_wait() {
                return Some(Err(status));
            }
            Bus::connect_to(&socket).ok().map(|_| Ok(()))
        });
        match up {
            Some(Ok(())) => {}
            Some(Err(status)) => panic!(
                "round {round}: hybusd exited ({status}) instead of taking the socket of the daemon killed before it: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
            None => panic!("round {round}: hybusd did not come up"),
        }
        let clients: Vec<Peer> = (0..3).map(|_| Peer::ready(&socket, &["connect", "20"]).0).collect();
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        drop(clients);
    }
}
