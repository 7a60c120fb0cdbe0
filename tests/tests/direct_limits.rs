//! Direct channel opens are rate-limited per caller uid
//! (`limits.direct_opens_per_s`, `limits.direct_open_burst`), with the real
//! daemon: a caller opening and closing channels in a loop is refused
//! clearly past the rate, its server sees no more DirectOpens than the
//! bucket allows, and other uids and brokered calls are not affected.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{BusEvent, Error};
use hybus_tests::{eventually, DaemonProc, Peer, SOON};

const NOBODY: u32 = 65534;
const RATE: u32 = 20;
const BURST: u32 = 10;

#[test]
fn an_open_close_loop_is_refused_past_the_rate() {
    let config = format!(
        "[limits]\ndirect_opens_per_s = {RATE}\ndirect_open_burst = {BURST}\n[[policy.rules]]\nallow = [\"all\"]\n"
    );
    let d = DaemonProc::start(Some(&config));
    // The server, in this process: it counts the DirectOpens it gets.
    let server = d.connect();
    let svc = server.register("svc.flood").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let counter = {
        let (server, stop, opened) = (server.clone(), stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Serving keeps the control socket read as well.
                if let Ok(Some(hybus::Incoming::Request(r))) = svc.next(Duration::from_millis(5)) {
                    let mut v = r.payload().to_vec();
                    v.reverse();
                    r.reply(&v).unwrap();
                    answered += 1;
                }
                while let Ok(Some(ev)) = server.next_event(Duration::ZERO) {
                    if matches!(ev, BusEvent::DirectOpened { .. }) {
                        opened.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            answered
        })
    };

    let caller = d.connect();
    let route = caller.resolve("svc.flood").unwrap();
    let (mut granted, mut refused) = (0u64, 0u64);
    let mut refusal = String::new();
    let start = Instant::now();
    // Bounded: 700 ms (refused tries 1 ms apart, so that the bucket
    // refills meanwhile), at most 5 000 tries.
    while granted + refused < 5_000 && start.elapsed() < Duration::from_millis(700) {
        match caller.request_direct(&route) {
            Ok(ch) => {
                granted += 1;
                caller.close_direct(ch).unwrap();
            }
            Err(Error::QuotaExceeded(m)) => {
                refused += 1;
                refusal = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = BURST as f64 + RATE as f64 * elapsed;
    eprintln!("{granted} opens granted, {refused} refused in {elapsed:.3} s (at most {allowed:.1} allowed)");
    assert!(refused > 0, "{granted} opens in {elapsed:.2} s, none refused");
    assert!(
        refusal.contains("limits.direct_opens_per_s") && refusal.contains("uid 0"),
        "the refusal should name the setting and the uid: {refusal}"
    );
    assert!(granted >= BURST as u64, "only {granted} opens granted: the burst is {BURST}");
    assert!(granted as f64 <= allowed + 1.0, "{granted} opens granted in {elapsed:.2} s, at most {allowed:.1} allowed");

    // Another uid has its own budget; brokered calls of the same uid go on.
    let mut other = Peer::spawn_as(d.socket(), &["direct", "svc.flood"], NOBODY, NOBODY);
    let line = other.expect_line("ready");
    assert!(line.starts_with("ready channel="), "{line}");
    let plain = d.connect();
    let r = plain.resolve("svc.flood").unwrap();
    assert_eq!(&*plain.call(&r, b"abc", SOON).unwrap(), b"cba");

    // The server saw each granted open (and the other uid's), no more.
    let want = granted + 1;
    let seen = eventually(SOON, || {
        std::thread::sleep(Duration::from_millis(20));
        let n = opened.load(Ordering::Relaxed);
        (n >= want).then_some(n)
    });
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let answered = counter.join().unwrap();
    let opened = opened.load(Ordering::Relaxed);
    assert!(seen.is_some(), "the server got {opened} DirectOpens for {granted} + 1 granted");
    assert_eq!(opened, want, "the server got {opened} DirectOpens for {granted} + 1 granted");
    assert!(answered >= 1);
    assert!(opened as f64 <= allowed + 2.0, "the server saw {opened} opens in {elapsed:.2} s");
}
