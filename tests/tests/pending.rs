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
        // Its late answer is dropped, which is no error of the server's.
        req.reply(b"too late").unwrap();
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

/// A xorshift64 generator: the same random mix on every run for a seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What a call of the random mix may come to.
struct Expected {
    /// Its number in the round.
    id: usize,
    /// What it asked: its answer is this reversed.
    payload: Vec<u8>,
    /// A canceller said it cancelled the call: its outcome is `Error::Cancelled`.
    cancelled: bool,
}

/// A call of the random mix, still pending.
struct Mixed {
    expected: Expected,
    call: PendingCall,
}

/// Checks one outcome of a call: `Ok(None)` (it is still pending) only
/// if no canceller cancelled it, its payload reversed, or
/// `Error::Cancelled` if a canceller did. Returns whether the call is over.
fn check_mixed(at: &str, e: &Expected, r: Result<Option<hybus::Sample>, Error>) -> bool {
    let what = format!("{at}: call {} ({} bytes, cancelled: {})", e.id, e.payload.len(), e.cancelled);
    match r {
        Ok(Some(answer)) => {
            assert!(!e.cancelled, "{what}: answered after a canceller cancelled it");
            let want: Vec<u8> = e.payload.iter().rev().copied().collect();
            let first_wrong = answer.iter().zip(&want).position(|(a, b)| a != b);
            assert!(
                answer.len() == want.len() && first_wrong.is_none(),
                "{what}: wrong answer: {} bytes, first wrong byte at {first_wrong:?}",
                answer.len()
            );
            true
        }
        Ok(None) => {
            assert!(!e.cancelled, "{what}: still pending after a canceller cancelled it");
            false
        }
        Err(Error::Cancelled) if e.cancelled => true,
        Err(err) => panic!("{what}: {err}"),
    }
}

/// Takes call `i` out of `pending`, keeping its canceller in `stale`
/// (a canceller of a call that is over must find nothing to do).
fn take_mixed(pending: &mut Vec<Mixed>, i: usize, stale: &mut Vec<(usize, hybus::CallCanceller)>) -> Mixed {
    let m = pending.remove(i);
    stale.push((m.expected.id, m.call.canceller()));
    m
}

/// Waits for the oldest pending call and checks its outcome.
fn settle_oldest(at: &str, pending: &mut Vec<Mixed>, stale: &mut Vec<(usize, hybus::CallCanceller)>) {
    let m = take_mixed(pending, 0, stale);
    check_mixed(at, &m.expected, m.call.wait().map(Some));
}

/// Serves `svc` until `stop`: answers each request with its payload
/// reversed, after a pause of up to a millisecond (so that cancellations
/// race with answers); an answer refused as cancelled is no error.
/// Returns how many requests it answered.
fn serve_reversed(svc: &hybus::Service, stop: &std::sync::atomic::AtomicBool) -> Result<u64, String> {
    let mut answered = 0u64;
    let mut seen = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let req = match svc.next(Duration::from_millis(5)) {
            Ok(Some(Incoming::Request(req))) => req,
            Ok(None) => continue,
            Ok(Some(_)) => return Err("not a request".into()),
            Err(e) => return Err(format!("next: {e}")),
        };
        seen += 1;
        std::thread::sleep(Duration::from_micros(seen % 4 * 300));
        let mut v = req.payload().to_vec();
        v.reverse();
        match req.reply(&v) {
            Ok(()) => answered += 1,
            Err(Error::Cancelled) => {}
            Err(e) => {
                // Seen in the test's output if a call then waits in vain.
                eprintln!("the server: request {seen}: reply: {e}");
                return Err(format!("request {seen}: reply: {e}"));
            }
        }
    }
    Ok(answered)
}

/// Every way of using a [`PendingCall`], mixed at random (from a fixed
/// seed) over the daemon and over a direct channel, against a server that
/// takes a moment to answer so that cancellations race with answers:
/// calls begun with inline, chunk and loaned payloads; answers taken by
/// waiting, polling and short waits; calls cancelled by their owner, by
/// dropping, and by cancellers from other threads (while the owner waits,
/// or not). Every answer is its request reversed, `Cancelled` comes only
/// to calls a canceller cancelled, a canceller of a call that is over does
/// nothing, and once every call is over no chunk is in use, the daemon has
/// no exchange open and lends no chunk, and the caller still calls.
#[test]
fn random_mixes_of_pending_calls_leave_nothing_behind() {
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    const STEPS: usize = 400;
    const MAX_PENDING: usize = 16;
    let d = DaemonProc::start(None);
    // In this process: `hybus-peer serve` exits when an answer is refused.
    let server = d.connect();
    let svc = server.register("svc.mix").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let serving = std::thread::spawn({
        let stop = stop.clone();
        move || serve_reversed(&svc, &stop)
    });
    for direct in [false, true] {
        let seed = SEED.wrapping_add(direct as u64);
        let mut rng = XorShift(seed);
        let (bus, route) = caller(&d, "svc.mix", direct);
        let big = (bus.max_payload() as usize).min(60_000);
        let mut pending: Vec<Mixed> = Vec::new();
        let mut stale: Vec<(usize, hybus::CallCanceller)> = Vec::new();
        let mut made = 0usize;
        for step in 0..STEPS {
            let at = format!("seed {seed:#x}, direct: {direct}, step {step}");
            let op = rng.below(18);
            if op <= 5 && pending.len() >= MAX_PENDING {
                settle_oldest(&at, &mut pending, &mut stale);
            }
            if op > 5 && op != 17 && pending.is_empty() {
                continue;
            }
            match op {
                // A new call: an inline payload, one in a chunk, or a loan.
                0..=5 => {
                    let len = match op {
                        0..=2 => rng.below(41),
                        3 | 4 => 41 + rng.below(big - 40),
                        _ => 1 + rng.below(big),
                    };
                    let salt = rng.next() as u8;
                    let payload: Vec<u8> = (0..len).map(|i| salt.wrapping_add((i % 251) as u8)).collect();
                    let call = loop {
                        let r = if op == 5 {
                            let loan = bus.loan(len, T);
                            loan.and_then(|mut loan| {
                                loan.copy_from_slice(&payload);
                                bus.begin_call_loan(&route, loan, T)
                            })
                        } else {
                            bus.begin_call(&route, &payload, T)
                        };
                        match r {
                            Ok(call) => break call,
                            Err(Error::OutOfPool { .. }) if !pending.is_empty() => {
                                settle_oldest(&at, &mut pending, &mut stale)
                            }
                            Err(e) => panic!("{at}: begin call {made} ({len} bytes, op {op}): {e}"),
                        }
                    };
                    pending.push(Mixed { expected: Expected { id: made, payload, cancelled: false }, call });
                    made += 1;
                }
                // Waited for.
                6..=8 => {
                    let i = rng.below(pending.len());
                    let m = take_mixed(&mut pending, i, &mut stale);
                    check_mixed(&at, &m.expected, m.call.wait().map(Some));
                }
                // Polled, or waited for a moment.
                9..=12 => {
                    let i = rng.below(pending.len());
                    let m = &mut pending[i];
                    let r = if op <= 10 {
                        m.call.try_answer()
                    } else {
                        m.call.wait_timeout(Duration::from_micros(500 + rng.below(2500) as u64))
                    };
                    if check_mixed(&at, &m.expected, r) {
                        let m = take_mixed(&mut pending, i, &mut stale);
                        let again = format!("{at}: call {}", m.expected.id);
                        let mut call = m.call;
                        assert!(matches!(call.try_answer(), Err(Error::BadRequest(_))), "{again}: over, yet not");
                    }
                }
                // Given up by its owner.
                13 => {
                    let i = rng.below(pending.len());
                    take_mixed(&mut pending, i, &mut stale).call.cancel();
                }
                // Cancelled from another thread while its owner waits.
                14 => {
                    let i = rng.below(pending.len());
                    let m = take_mixed(&mut pending, i, &mut stale);
                    let canceller = m.call.canceller();
                    let pause = Duration::from_micros(rng.below(2000) as u64);
                    let (hit, r) = std::thread::scope(|s| {
                        let cancelling = s.spawn(move || {
                            std::thread::sleep(pause);
                            canceller.cancel()
                        });
                        let r = m.call.wait();
                        (cancelling.join(), r)
                    });
                    let hit = hit.unwrap_or_else(|_| panic!("{at}: the canceller of call {} panicked", m.expected.id));
                    assert!(!(hit && m.expected.cancelled), "{at}: call {} cancelled twice", m.expected.id);
                    let e = Expected { cancelled: m.expected.cancelled || hit, ..m.expected };
                    check_mixed(&at, &e, r.map(Some));
                }
                // Cancelled from another thread; its owner looks later.
                15 => {
                    let i = rng.below(pending.len());
                    let canceller = pending[i].call.canceller();
                    let e = &mut pending[i].expected;
                    let hit = std::thread::spawn(move || canceller.cancel())
                        .join()
                        .unwrap_or_else(|_| panic!("{at}: the canceller of call {} panicked", e.id));
                    assert!(!(hit && e.cancelled), "{at}: call {} cancelled twice", e.id);
                    e.cancelled |= hit;
                }
                // Dropped.
                16 => {
                    let i = rng.below(pending.len());
                    drop(take_mixed(&mut pending, i, &mut stale));
                }
                // The canceller of a call that is over.
                _ => {
                    if !stale.is_empty() {
                        let (id, canceller) = stale.swap_remove(rng.below(stale.len()));
                        assert!(!canceller.cancel(), "{at}: call {id} was over, yet cancelled");
                    }
                }
            }
        }
        // What is left is waited for or dropped.
        let at = format!("seed {seed:#x}, direct: {direct}, at the end");
        while !pending.is_empty() {
            if rng.below(2) == 0 {
                settle_oldest(&at, &mut pending, &mut stale);
            } else {
                drop(take_mixed(&mut pending, 0, &mut stale));
            }
        }
        for (id, canceller) in stale.drain(..) {
            assert!(!canceller.cancel(), "{at}: call {id} was over, yet cancelled");
        }
        let mut last = None;
        let clean = eventually(SOON, || {
            let s = bus.status().unwrap_or_else(|e| panic!("{at}: status: {e}"));
            let in_use = bus.chunks_in_use();
            let clean = in_use == 0 && s.exchanges == 0 && s.chunks_lent == 0;
            last = Some((in_use, s));
            clean.then_some(())
        });
        assert!(clean.is_some(), "{at}: left behind: (chunks in use, daemon status) {last:?}");
        let a = bus.call(&route, b"still here", T).unwrap_or_else(|e| panic!("{at}: a plain call: {e}"));
        assert_eq!(&*a, b"ereh llits", "{at}");
        drop(a);
        // Answers that came too late went back to the server's pool.
        let back = eventually(SOON, || (server.chunks_in_use() == 0).then_some(()));
        assert!(back.is_some(), "{at}: the server has {} chunks in use", server.chunks_in_use());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = serving.join().expect("the server panicked").unwrap_or_else(|e| panic!("the server: {e}"));
    assert!(served > 0, "nothing was served");
}
