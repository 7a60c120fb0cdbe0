//! Direct channels end to end, with the real `hybusd` and separate
//! processes: transparency, switching under traffic without loss,
//! the peer killed, a hostile peer, a daemon restart, visibility.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{Bus, BusEvent, Error};
use hybus_tests::{eventually, field, start_daemon_at, DaemonProc, Peer, TempDir, SOON};

const T: Duration = Duration::from_secs(30);

/// The same application code, whatever the path: calls with inline and
/// chunk payloads, a fire, a stream. Returns what it observed.
fn workload(bus: &Bus, name: &str) -> Vec<String> {
    let route = bus.resolve(name).unwrap();
    let mut out = Vec::new();
    for i in 0..50u32 {
        let a = bus.call(&route, format!("msg-{i}").as_bytes(), T).unwrap();
        out.push(String::from_utf8_lossy(&a).into_owned());
    }
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let a = bus.call(&route, &big, T).unwrap();
    let mut rev = big.clone();
    rev.reverse();
    assert_eq!(&*a, &rev[..]);
    out.push(format!("big {}", a.len()));
    drop(a);
    let mut s = bus.request_stream(&route, b"n=20", 4).unwrap();
    while let Some(item) = s.next(T).unwrap() {
        out.push(String::from_utf8_lossy(&item).into_owned());
    }
    let mut ch = bus.request_channel(&route, b"", 4).unwrap();
    for w in ["a", "bb", "ccc"] {
        ch.send(w.as_bytes(), T).unwrap();
    }
    ch.end().unwrap();
    while let Some(item) = ch.next(T).unwrap() {
        out.push(format!("echo {}", String::from_utf8_lossy(&item)));
    }
    out
}

#[test]
fn same_code_same_results_with_and_without_a_direct_channel() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.echo"]);
    let plain = d.connect();
    let brokered = workload(&plain, "svc.echo");

    let direct = d.connect();
    let route = direct.resolve("svc.echo").unwrap();
    direct.request_direct(&route).unwrap();
    assert!(direct.is_direct(&route));
    let via_direct = workload(&direct, "svc.echo");
    assert_eq!(brokered, via_direct);
    assert!(direct.is_direct(&route), "still direct after the workload");

    // The daemon carried none of it, and still shows it.
    let stats = direct.stats().unwrap();
    let ch = stats.channels.iter().find(|c| c.service == "svc.echo").expect("channel in stats");
    assert!(ch.a_messages >= 50 && ch.b_messages >= 50, "{ch:?}");
    assert!(ch.a_bytes >= 200_000 && ch.b_bytes >= 200_000, "{ch:?}");
    assert_eq!(direct.chunks_in_use(), 0);
    assert_eq!(plain.chunks_in_use(), 0);
}

#[test]
fn switching_back_and_forth_under_traffic_loses_nothing() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.order"]);
    let caller = d.connect();
    let route = caller.resolve("svc.order").unwrap();
    // Steady traffic from another thread of the same process; the main
    // thread flips the path a fixed number of times, then stops it (a fixed
    // number of calls could finish before the first switch on a fast day).
    // Each answer is checked against its request, and the order of answers
    // is the order of calls.
    let bus = caller.clone();
    let r2 = route.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut i = 0u32;
        while !stop2.load(Ordering::Relaxed) || i < 1_000 {
            let payload =
                if i % 7 == 0 { vec![(i % 256) as u8; 1000 + i as usize % 3000] } else { i.to_le_bytes().to_vec() };
            let a =
                bus.call(&r2, &payload, T).unwrap_or_else(|e| panic!("call {i} failed: {e}\n{}", bus.debug_state()));
            let mut rev = payload.clone();
            rev.reverse();
            assert_eq!(&*a, &rev[..], "answer {i}");
            i += 1;
        }
        i
    });
    let mut switches = 0;
    while switches < 6 && !traffic.is_finished() {
        let ch = caller.request_direct(&route).unwrap();
        std::thread::sleep(Duration::from_millis(15));
        caller.close_direct(ch).unwrap();
        std::thread::sleep(Duration::from_millis(15));
        switches += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let n = traffic.join().unwrap();
    println!("{n} calls, {switches} switches each way");
    assert_eq!(switches, 6, "the traffic stopped before the switching was done");
    assert!(eventually(SOON, || (caller.chunks_in_use() == 0).then_some(())).is_some());
}

#[test]
fn fires_keep_their_order_across_switches() {
    // Fire-and-forget has no answer to check against: the server sees the
    // sequence and we ask it at the end. A dedicated role counts and checks.
    let d = DaemonProc::start(None);
    let (mut server, _) = Peer::ready(d.socket(), &["serve", "svc.fires"]);
    let caller = d.connect();
    let route = caller.resolve("svc.fires").unwrap();
    let n = if cfg!(debug_assertions) { 2_000 } else { 20_000 };
    let mut ch = None;
    for i in 0..n {
        if i % 500 == 100 {
            ch = Some(caller.request_direct(&route).unwrap());
        }
        if i % 500 == 350 {
            if let Some(c) = ch.take() {
                caller.close_direct(c).unwrap();
            }
        }
        caller.fire(&route, format!("{i}").as_bytes()).unwrap();
    }
    // The peer prints `fire len=.. data=<i>` per fire, in the order it got them.
    for i in 0..n {
        let line = server.expect_line("fire");
        assert_eq!(field(&line, "data"), Some(i.to_string().as_str()), "fire {i} out of order: {line}");
    }
}

#[test]
fn peer_killed_mid_call_fails_fast_and_falls_back() {
    let d = DaemonProc::start(None);
    let (holder, _) = Peer::ready(d.socket(), &["serve", "svc.kill", "hold"]);
    let caller = d.connect();
    let route = caller.resolve("svc.kill").unwrap();
    caller.request_direct(&route).unwrap();
    assert!(caller.is_direct(&route));
    // A chunk of ours the peer holds, and a call in flight.
    let bus = caller.clone();
    let r2 = route.clone();
    let call = std::thread::spawn(move || {
        let t = Instant::now();
        let r = bus.call(&r2, &vec![1u8; 5000], Duration::from_secs(60));
        (r, t.elapsed())
    });
    let mut holder = holder;
    holder.expect_line("holding 1");
    assert!(caller.chunks_in_use() >= 1);
    // A second instance to fall back to.
    let (_other, _) = Peer::ready(d.socket(), &["serve", "svc.kill"]);
    holder.kill9();
    let (r, took) = call.join().unwrap();
    assert_eq!(r.unwrap_err(), Error::PeerGone, "in-flight direct call must fail with peer gone");
    assert!(took < Duration::from_secs(30), "peer gone took {took:?}: that is a timeout, not detection");
    assert!(eventually(SOON, || (!caller.is_direct(&route)).then_some(())).is_some());
    assert!(
        eventually(SOON, || (caller.chunks_in_use() == 0).then_some(())).is_some(),
        "chunks the dead peer held come back"
    );
    // Falls back to the brokered path, to the other instance.
    let a = caller.call(&route, b"abc", T).unwrap();
    assert_eq!(&*a, b"cba");
}

#[test]
fn direct_channels_survive_a_daemon_restart() {
    let dir = TempDir::new("restart");
    let socket = dir.path().join("bus.sock");
    let log = dir.path().join("hybusd.log");
    let mut daemon = start_daemon_at(&socket, &log);
    let (_server, line) = Peer::ready(&socket, &["serve", "svc.survive"]);
    let _ = field(&line, "instance");
    let caller = Bus::connect_to(&socket).unwrap();
    let route = caller.resolve("svc.survive").unwrap();
    caller.request_direct(&route).unwrap();
    for i in 0..10u32 {
        caller.call(&route, &i.to_le_bytes(), T).unwrap();
    }
    // Kill the daemon hard. Direct traffic goes on.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let t = Instant::now();
    let mut during = 0;
    while t.elapsed() < Duration::from_millis(500) {
        let a = caller.call(&route, b"while-down", T).expect("direct call while the daemon is down");
        assert_eq!(&*a, b"nwod-elihw");
        during += 1;
    }
    assert!(during > 0);
    // A new daemon on the same socket: both sides reconnect by themselves,
    // re-register, and tell it about the channel.
    let _ = std::fs::remove_file(&socket);
    let mut daemon2 = start_daemon_at(&socket, &log);
    let probe = Bus::connect_to(&socket).unwrap();
    let ok = eventually(SOON, || {
        // Keep traffic flowing so the caller notices and reconnects.
        let _ = caller.call(&route, b"x", T);
        let s = probe.stats().ok()?;
        let listed = probe.list().ok()?.iter().any(|s| s.name == "svc.survive");
        // Both sides: the server may be back well before the caller's next
        // try (one every 200 ms; its last may have found no daemon yet).
        let both = listed && caller.is_connected();
        (both && s.channels.iter().any(|c| c.service == "svc.survive")).then_some(())
    });
    assert!(
        ok.is_some(),
        "the caller did not come back, or the new daemon did not learn the service and its channel; caller: {}; log:\n{}",
        caller.debug_state(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for i in 0..10u32 {
        let a = caller.call(&route, &i.to_le_bytes(), T).unwrap();
        assert_eq!(a.len(), 4);
    }
    assert!(caller.is_connected());
    let _ = daemon2.kill();
    let _ = daemon2.wait();
}

#[test]
fn events_tell_the_application_about_channels() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.events"]);
    let caller = d.connect();
    let route = caller.resolve("svc.events").unwrap();
    let ch = caller.request_direct(&route).unwrap();
    let mut opened = false;
    while let Some(ev) = caller.next_event(Duration::from_millis(300)).unwrap() {
        if let BusEvent::DirectOpened { channel, service, .. } = ev {
            assert_eq!((channel, service.as_str()), (ch, "svc.events"));
            opened = true;
        }
    }
    assert!(opened);
    // And the callee side shows the channel in `hybusctl stats`-style counters.
    caller.call(&route, b"hello", T).unwrap();
    let s = d.connect().stats().unwrap();
    assert_eq!(s.channels.len(), 1);
    assert!(s.channels[0].reason.contains("requested"));
}

#[test]
fn a_peer_writing_garbage_into_the_channel_is_cut_off() {
    let d = DaemonProc::start(None);
    let (mut server, _) = Peer::ready(d.socket(), &["serve", "svc.rogue", "corrupt_after=5"]);
    let caller = d.connect();
    let route = caller.resolve("svc.rogue").unwrap();
    caller.request_direct(&route).unwrap();
    for i in 0..5u32 {
        caller.call(&route, &i.to_le_bytes(), T).unwrap();
    }
    server.expect_line("corrupted 1");
    // The garbage is noticed at the next poll: the channel is closed with a
    // reason, and calls go through the daemon again.
    let mut reason = None;
    let end = Instant::now() + SOON;
    while reason.is_none() && Instant::now() < end {
        let _ = caller.call(&route, b"probe", Duration::from_millis(500));
        while let Some(ev) = caller.next_event(Duration::from_millis(10)).unwrap() {
            if let BusEvent::DirectClosed { reason: r, .. } = ev {
                reason = Some(r);
            }
        }
    }
    let reason = reason.expect("the channel was not closed");
    assert!(reason.contains("broke the protocol"), "{reason}");
    assert!(!caller.is_direct(&route));
    let a = caller.call(&route, b"after", T).unwrap();
    assert_eq!(&*a, b"retfa");
}

#[test]
fn busy_pairs_are_promoted_automatically() {
    let d = DaemonProc::start(Some("[promotion]\nenabled = true\nmin_rate = 500\nfor_ms = 300\n"));
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.busy"]);
    let caller = d.connect();
    let route = caller.resolve("svc.busy").unwrap();
    let end = Instant::now() + SOON;
    while !caller.is_direct(&route) && Instant::now() < end {
        for _ in 0..50 {
            caller.call(&route, b"x", T).unwrap();
        }
    }
    assert!(caller.is_direct(&route), "the busy pair was not promoted");
    let s = d.connect().stats().unwrap();
    let ch = s.channels.iter().find(|c| c.service == "svc.busy").unwrap();
    assert!(ch.reason.starts_with("promoted:"), "{}", ch.reason);
    // It says why: the measured rate against the threshold.
    assert!(ch.reason.contains("≥ 500") && ch.reason.contains("300 ms"), "{}", ch.reason);
}

#[test]
fn configured_pairs_go_direct_across_processes() {
    let d = DaemonProc::start(Some("[[direct]]\ncaller = \"cam.front\"\nservice = \"cam.detector\"\n"));
    let (_server, _) = Peer::ready(d.socket(), &["serve", "cam.detector"]);
    let cam = d.connect();
    let _me = cam.register("cam.front").unwrap();
    let route = cam.resolve("cam.detector").unwrap();
    assert!(cam.is_direct(&route));
    let frame = vec![9u8; 300_000];
    let a = cam.call(&route, &frame, T).unwrap();
    assert_eq!(a.len(), frame.len());
    let other = d.connect();
    let r2 = other.resolve("cam.detector").unwrap();
    assert!(!other.is_direct(&r2), "a client that does not own cam.front stays brokered");
    let s = other.stats().unwrap();
    assert!(s.channels.iter().any(|c| c.reason.contains("configured")));
}

/// What an in-process server of [`tagged_server`] is told to do.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// Stop taking new work (`Service::drain`); keep answering.
    Drain,
    /// Unregister, the connection staying up and in use, as in a process
    /// that serves other things too.
    Unregister,
    /// Close the connection; the thread (the process) lives on.
    Disconnect,
    /// End the thread.
    Stop,
}

/// A server of `name` on its own connection, on a thread, answering every
/// call with `tag` until told otherwise.
fn tagged_server(
    d: &DaemonProc,
    name: &str,
    tag: &'static str,
) -> (std::sync::mpsc::Sender<Order>, std::thread::JoinHandle<()>) {
    let (orders, inbox) = std::sync::mpsc::channel();
    let bus = d.connect();
    let svc = bus.register(name).unwrap();
    let h = std::thread::spawn(move || {
        let mut svc = Some(svc);
        let mut bus = Some(bus);
        loop {
            match inbox.try_recv() {
                Ok(Order::Drain) => svc.as_ref().unwrap().drain().unwrap(),
                Ok(Order::Unregister) => svc = None,
                Ok(Order::Disconnect) => (svc, bus) = (None, None),
                Ok(Order::Stop) => return,
                Err(_) => {}
            }
            let Some(bus) = &bus else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            match &svc {
                Some(s) => {
                    if let Some(hybus::Incoming::Request(r)) = s.next(Duration::from_millis(5)).unwrap() {
                        r.reply(tag.as_bytes()).unwrap();
                    }
                }
                // Still using the connection: what comes for the old instance is read.
                None => drop(bus.next_event(Duration::from_millis(5)).unwrap()),
            }
        }
    });
    (orders, h)
}

/// Calls until the answer is `want`: every call gets an answer, or fails
/// at once with "peer gone" if it raced an unregistration; none waits for
/// its deadline.
fn calls_until(caller: &Bus, route: &hybus::Route, want: &str) {
    let end = Instant::now() + SOON;
    loop {
        let t0 = Instant::now();
        match caller.call(route, b"x", Duration::from_secs(5)) {
            Ok(a) if &*a == want.as_bytes() => return,
            Ok(_) | Err(Error::PeerGone) => {}
            Err(e) => panic!("a call failed with {e:?} after {:?}", t0.elapsed()),
        }
        assert!(Instant::now() < end, "no answer from {want:?}");
    }
}

/// With `caller` on a direct channel to the instance that answers
/// `old_tag`, an instance answering `new_tag` comes up and the old one is
/// given `order`: the caller's calls end up with the new one, through the
/// daemon. Returns the new one.
fn hand_over(
    d: &DaemonProc,
    caller: &Bus,
    route: &hybus::Route,
    (old, old_tag): (&std::sync::mpsc::Sender<Order>, &str),
    order: Order,
    new_tag: &'static str,
) -> (std::sync::mpsc::Sender<Order>, std::thread::JoinHandle<()>) {
    caller.request_direct(route).unwrap();
    assert!(caller.is_direct(route));
    assert_eq!(&*caller.call(route, b"x", T).unwrap(), old_tag.as_bytes());
    let new = tagged_server(d, route.name(), new_tag);
    old.send(order).unwrap();
    calls_until(caller, route, new_tag);
    assert!(eventually(SOON, || (!caller.is_direct(route)).then_some(())).is_some(), "still direct after {order:?}");
    new
}

/// A channel ends at a process, not at an instance: when the instance it
/// serves unregisters while its process lives on, or drains for a newer one
/// (hot replacement), the daemon closes the channel, and the caller's calls
/// go on through the daemon to the instance that serves. A server that
/// leaves the bus with its process alive counts as gone.
#[test]
fn a_leaving_or_draining_instance_hands_its_direct_callers_over() {
    let d = DaemonProc::start(None);
    let one = tagged_server(&d, "hot.svc", "one");
    let caller = d.connect();
    let route = caller.resolve("hot.svc").unwrap();
    let two = hand_over(&d, &caller, &route, (&one.0, "one"), Order::Unregister, "two");
    let three = hand_over(&d, &caller, &route, (&two.0, "two"), Order::Drain, "three");
    // Gone from the bus while its process lives on (no pidfd says anything):
    // the caller is told the peer is gone and reclaims the channel at once.
    let four = hand_over(&d, &caller, &route, (&three.0, "three"), Order::Disconnect, "four");
    let reclaimed = eventually(SOON, || (!caller.debug_state().contains("  channel ")).then_some(()));
    assert!(reclaimed.is_some(), "a channel is left: {}", caller.debug_state());
    assert_eq!(caller.chunks_in_use(), 0);
    for (orders, thread) in [one, two, three, four] {
        orders.send(Order::Stop).unwrap();
        thread.join().unwrap();
    }
}

/// The daemon reads how many descriptors wait in each direction of a
/// channel (it is not in their path): fires at a stopped server pile up in
/// `hybusctl stats` and drain when it runs again.
#[test]
fn stats_show_what_waits_in_a_channel() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let d = DaemonProc::start(None);
    let (server, _) = Peer::ready(d.socket(), &["serve", "svc.queued"]);
    let caller = d.connect();
    let route = caller.resolve("svc.queued").unwrap();
    caller.request_direct(&route).unwrap();
    assert_eq!(&*caller.call(&route, b"ab", T).unwrap(), b"ba");
    let queued = || {
        let stats = caller.stats().unwrap();
        let ch = stats.channels.iter().find(|c| c.service == "svc.queued").cloned().expect("the channel in stats");
        (ch.a_queued, ch.b_queued)
    };
    kill(Pid::from_raw(server.pid()), Signal::SIGSTOP).unwrap();
    hybus_tests::stopped(server.pid());
    for i in 0..25u32 {
        caller.fire(&route, &i.to_le_bytes()).unwrap();
    }
    assert_eq!(queued(), (25, 0));
    kill(Pid::from_raw(server.pid()), Signal::SIGCONT).unwrap();
    assert!(eventually(SOON, || (queued() == (0, 0)).then_some(())).is_some(), "{:?}", queued());
}

/// The daemon is not in the path of a direct call, so the caller times one
/// call in 64 into the channel segment, and stats show it.
#[test]
fn stats_show_the_round_trip_of_direct_calls() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.timed", "delay_ms=30"]);
    let caller = d.connect();
    let route = caller.resolve("svc.timed").unwrap();
    caller.request_direct(&route).unwrap();
    let channel = || caller.stats().unwrap().channels.into_iter().find(|c| c.service == "svc.timed").unwrap();
    assert_eq!((channel().timed_calls, channel().latency_ns), (0, [0; 4]), "nothing timed before a call");
    // The first call of each 64 is timed: 65 calls, two of them.
    for i in 0..65u32 {
        let q = i.to_le_bytes();
        caller.call(&route, &q, T).unwrap();
    }
    let ch = channel();
    assert_eq!(ch.timed_calls, 2, "{ch:?}");
    let [p50, p99, _, max] = ch.latency_ns;
    // Each took the server's 30 ms at least; the figures are bucket middles, within an eighth.
    assert!(p50 >= 30_000_000 * 7 / 8 && p50 <= max && p99 <= max, "{ch:?}");
    assert!(max < 10_000_000_000, "{ch:?}");
}

/// Each side of a channel keeps a gauge of its open exchanges, and the
/// service counts its error answers; stats show both.
#[test]
fn stats_show_exchanges_in_flight_and_errors_on_a_channel() {
    use hybus::Incoming;
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("svc.gauge").unwrap();
    let caller = d.connect();
    let route = caller.resolve("svc.gauge").unwrap();
    caller.request_direct(&route).unwrap();
    let channel = || caller.stats().unwrap().channels.into_iter().find(|c| c.service == "svc.gauge").unwrap();
    let calls: Vec<_> = (0..3).map(|_| caller.begin_call(&route, b"q", T).unwrap()).collect();
    let held: Vec<_> = (0..3)
        .map(|_| match svc.next(T).unwrap() {
            Some(Incoming::Request(r)) => r,
            other => panic!("{other:?}"),
        })
        .collect();
    let ch = channel();
    assert_eq!((ch.a_in_flight, ch.b_in_flight, ch.b_errors), (3, 3, 0), "{ch:?}");
    let mut held = held.into_iter();
    held.next().unwrap().fail("no").unwrap();
    held.next().unwrap().reply(b"yes").unwrap();
    drop(held); // the third: an error answer too ("dropped without an answer")
    let outcomes: Vec<_> = calls.into_iter().map(|c| c.wait().map(|s| s.to_vec())).collect();
    assert!(
        matches!(&outcomes[..], [Err(hybus::Error::Service { .. }), Ok(_), Err(hybus::Error::Service { .. })]),
        "{outcomes:?}"
    );
    let ch = channel();
    assert_eq!((ch.a_in_flight, ch.b_in_flight, ch.b_errors), (0, 0, 2), "{ch:?}");
}

/// A closed channel is remembered by the daemon only until both its members
/// have forgotten it: a client that opens and closes channels all its life
/// does not pile them up there.
#[test]
fn closed_channels_are_forgotten_once_both_sides_are_done() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.cycle"]);
    let caller = d.connect();
    let route = caller.resolve("svc.cycle").unwrap();
    for i in 0..20u32 {
        let channel = caller.request_direct(&route).unwrap();
        assert!(caller.is_direct(&route));
        let q = i.to_le_bytes();
        let mut want = q;
        want.reverse();
        assert_eq!(&*caller.call(&route, &q, T).unwrap(), &want[..]);
        caller.close_direct(channel).unwrap();
        // Back on the daemon's path once both sides have downgraded.
        assert!(eventually(SOON, || (!caller.is_direct(&route)).then_some(())).is_some());
    }
    let remembered = || caller.status().unwrap().channels_remembered;
    let forgotten = eventually(SOON, || {
        // Both sides finish downgrading as they pump; a call keeps ours pumping.
        caller.call(&route, b"ab", T).unwrap();
        (remembered() == 0).then_some(())
    });
    assert!(forgotten.is_some(), "{} closed channels still remembered", remembered());
}
