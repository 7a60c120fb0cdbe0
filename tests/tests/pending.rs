//! Calls held as [`PendingCall`]s, with the real `hybusd` and separate
//! processes: several in flight from one thread, collected in any order;
//! cancelled by their owner, by dropping, or from another thread while
//! their owner waits; over the daemon and over a direct channel.

use std::time::{Duration, Instant};

use hybus::{Bus, Error, Incoming, PendingCall};
use hybus_tests::{eventually, DaemonProc, Peer, SOON};

const T: Duration = Duration::from_secs(30);

/// A connection to `name`, over a direct channel if `direct`.
fn caller(d: &DaemonProc, name: &str, direct: bool) -> (Bus, hybus::Route) {
    let bus = d.connect();
    let route = bus.resolve(name).unwrap();
    if direct {
        bus.request_direct(&route).unwrap();
        assert!(bus.is_direct(&route));
    }
    (bus, route)
}

/// Waits until the daemon has no exchange open.
fn no_exchange_open(bus: &Bus) {
    let ended = eventually(SOON, || (bus.status().unwrap().exchanges == 0).then_some(()));
    assert!(ended.is_some(), "exchanges still open: {:?}", bus.status().unwrap());
}

#[test]
fn many_calls_in_flight_from_one_thread_are_each_answered() {
    let d = DaemonProc::start(None);
    let (mut server, _) = Peer::ready(d.socket(), &["serve", "svc.pend"]);
    for direct in [false, true] {
        let (bus, route) = caller(&d, "svc.pend", direct);
        let big: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
        let mut calls: Vec<(Vec<u8>, PendingCall)> = (0..64u32)
            .map(|i| {
                let payload = if i % 16 == 15 { big.clone() } else { format!("call-{i}").into_bytes() };
                let call = bus.begin_call(&route, &payload, T).unwrap();
                (payload, call)
            })
            .collect();
        // Collected last first: each answer reaches its own call.
        while let Some((mut payload, call)) = calls.pop() {
            payload.reverse();
            let n = calls.len();
            let a =
                call.wait().unwrap_or_else(|e| panic!("direct: {direct}: call {n}: {e}: {}", server.expect_line("")));
            assert_eq!(&*a, &payload[..], "direct: {direct}");
        }
        // The zero-copy twin, and an answer taken by polling.
        let mut loan = bus.loan(4, T).unwrap();
        loan.copy_from_slice(b"loan");
        let mut call = bus.begin_call_loan(&route, loan, T).unwrap();
        let answer = eventually(SOON, || call.try_answer().unwrap()).expect("no answer");
        assert_eq!(&*answer, b"naol");
        drop(answer);
        assert!(matches!(call.try_answer(), Err(Error::BadRequest(_))), "a call is over once answered");
        // "No limit" as the longest duration there is.
        let mut call = bus.begin_call(&route, b"max", Duration::MAX).unwrap();
        assert_eq!(&*call.wait_timeout(Duration::MAX).unwrap().expect("an answer"), b"xam");
        assert_eq!(bus.chunks_in_use(), 0, "direct: {direct}");
        no_exchange_open(&bus);
    }
}

#[test]
fn a_call_cancelled_from_another_thread_wakes_its_waiter_and_tells_the_server() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("svc.cancel").unwrap();
    for direct in [false, true] {
        let (bus, route) = caller(&d, "svc.cancel", direct);
        // Its deadline is past the test's patience: only the cancel ends it in time.
        let call = bus.begin_call(&route, b"wait for me", Duration::from_secs(25)).unwrap();
        let Some(Incoming::Request(req)) = svc.next(T).unwrap() else { panic!("no request") };
        let canceller = call.canceller();
        // Long enough for the waiter to have gone to sleep on its doorbell.
        let cancelling = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            canceller.cancel()
        });
        let t = Instant::now();
        let r = call.wait();
        assert!(matches!(r, Err(Error::Cancelled)), "direct: {direct}: {r:?}");
        assert!(cancelling.join().unwrap(), "the call was not waiting when cancelled");
        assert!(t.elapsed() < Duration::from_secs(15), "the waiter was not woken");
        // The server hears of it, and its late answer is refused.
        let told = eventually(SOON, || req.is_cancelled().then_some(()));
        assert!(told.is_some(), "direct: {direct}: the server was not told");
        assert!(matches!(req.reply(b"too late"), Err(Error::Cancelled)));
        no_exchange_open(&bus);
    }
}

#[test]
fn a_pending_call_given_up_ends_its_exchange_and_returns_a_late_answer() {
    let d = DaemonProc::start(None);
    let (_holder, _) = Peer::ready(d.socket(), &["serve", "svc.held", "hold"]);
    let server = d.connect();
    let svc = server.register("svc.late").unwrap();
    for direct in [false, true] {
        let (bus, held) = caller(&d, "svc.held", direct);
        // Not answered: polling and a short wait leave it pending; cancel and drop end it.
        let mut call = bus.begin_call(&held, b"x", T).unwrap();
        assert!(call.try_answer().unwrap().is_none());
        assert!(call.wait_timeout(Duration::from_millis(50)).unwrap().is_none());
        call.cancel();
        drop(bus.begin_call(&held, b"y", T).unwrap());
        // A canceller of a call already over has nothing to do.
        let late = bus.begin_call(&held, b"z", Duration::from_millis(100)).unwrap();
        let canceller = late.canceller();
        assert!(matches!(late.wait(), Err(Error::DeadlineExceeded)));
        assert!(!canceller.cancel());
        no_exchange_open(&bus);

        // An answer (in a chunk of the server's pool) that came before its
        // call was given up goes back to the server.
        let (bus, route) = caller(&d, "svc.late", direct);
        let call = bus.begin_call(&route, b"big", T).unwrap();
        let Some(Incoming::Request(req)) = svc.next(T).unwrap() else { panic!("no request") };
        let mut loan = server.loan(64 * 1024, T).unwrap();
        loan.fill(7);
        req.reply_loan(loan).unwrap();
        // Once the answer is on the caller's ring (the daemon has passed it
        // on, or the server pushed it on the channel), the canceller finds
        // the call answered, and dropping the call returns the chunk.
        no_exchange_open(&bus);
        assert!(!call.canceller().cancel(), "direct: {direct}: the call was not over");
        drop(call);
        let back = eventually(SOON, || {
            let _ = svc.next(Duration::from_millis(10));
            (server.chunks_in_use() == 0).then_some(())
        });
        assert!(back.is_some(), "direct: {direct}: the late answer's chunk did not go back");
    }
}
