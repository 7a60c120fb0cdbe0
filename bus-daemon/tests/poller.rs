//! The event loop's two backends, io_uring and epoll, behave alike: tokens
//! for ready fds, level-triggered, nothing after `remove`, timeouts honoured;
//! and the daemon serves calls on each.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hybus::{Bus, Incoming, Service};
use hybusd::config::IdleConfig;
use hybusd::poller::Poller;
use hybusd::{Config, Embedded};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// Whether this kernel (and sandbox) lets us use io_uring, decided the way
/// `Poller::new` decides it.
fn uring_available() -> bool {
    io_uring::IoUring::new(8).map(|r| r.params().is_feature_ext_arg() && r.submit().is_ok()).unwrap_or(false)
}

/// The pollers to test: forced epoll, and the default (io_uring if available).
fn pollers() -> Vec<Poller> {
    let default = Poller::new(false).unwrap();
    let expected = if uring_available() { "io_uring" } else { "epoll" };
    assert_eq!(default.backend(), expected);
    let forced = Poller::new(true).unwrap();
    assert_eq!(forced.backend(), "epoll");
    vec![default, forced]
}

const WATCHDOG: Duration = Duration::from_secs(10);

/// Waits until `token` is reported; panics after the watchdog deadline.
fn wait_for(p: &mut Poller, token: u64) {
    let deadline = Instant::now() + WATCHDOG;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        out.clear();
        p.wait(&mut out, Some(Duration::from_millis(100))).unwrap();
        if out.contains(&token) {
            return;
        }
    }
    panic!("{}: token {token} never reported", p.backend());
}

/// Asserts that `token` is not reported within `d` (waits may return early).
fn assert_quiet(p: &mut Poller, token: u64, d: Duration) {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        out.clear();
        p.wait(&mut out, Some(left)).unwrap();
        assert!(!out.contains(&token), "{}: token {token} reported", p.backend());
    }
}

fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).unwrap()
}

#[test]
fn a_write_reports_its_token() {
    for mut p in pollers() {
        let ev = eventfd();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        p.add(ev.as_fd(), 7).unwrap();
        p.add(a.as_fd(), 8).unwrap();
        assert_quiet(&mut p, 7, Duration::from_millis(20));

        ev.write(1).unwrap();
        wait_for(&mut p, 7);
        ev.read().unwrap();

        b.write_all(b"x").unwrap();
        wait_for(&mut p, 8);
        let mut buf = [0; 8];
        assert_eq!((&a).read(&mut buf).unwrap(), 1);

        // Drained: neither comes back.
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_millis(50))).unwrap();
        assert!(out.is_empty(), "{}: {out:?}", p.backend());

        // A hang-up is readable too.
        drop(b);
        wait_for(&mut p, 8);
        p.remove(a.as_fd());
        p.remove(ev.as_fd());
    }
}

/// Fills `a` (non-blocking) until a write would block; returns the bytes written.
fn fill(mut a: &UnixStream) -> usize {
    let chunk = [0u8; 4096];
    let mut n = 0;
    loop {
        match a.write(&chunk) {
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return n,
            Err(e) => panic!("filling a socket: {e}"),
        }
    }
}

/// Writability is reported once per request, when a full socket drains;
/// at once for one that has room; never after `remove`; and reading goes
/// on under its own token meanwhile.
#[test]
fn writability_is_reported_once_when_asked() {
    for mut p in pollers() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        p.add(a.as_fd(), 1).unwrap();
        let written = fill(&a);
        p.notify_writable(a.as_fd(), 2).unwrap();
        assert_quiet(&mut p, 2, Duration::from_millis(50));

        // Reading still reports its own token while the request waits.
        b.write_all(b"x").unwrap();
        wait_for(&mut p, 1);
        let mut one = [0; 1];
        assert_eq!((&a).read(&mut one).unwrap(), 1);

        let mut buf = vec![0; written];
        b.read_exact(&mut buf).unwrap();
        wait_for(&mut p, 2);
        // Once: the socket stays writable, the token does not come back.
        assert_quiet(&mut p, 2, Duration::from_millis(50));

        // Asked for while writable: reported at once.
        p.notify_writable(a.as_fd(), 3).unwrap();
        wait_for(&mut p, 3);

        // Removed while waiting: never reported.
        let written = fill(&a);
        p.notify_writable(a.as_fd(), 4).unwrap();
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        p.remove(a.as_fd());
        b.read_exact(&mut vec![0; written]).unwrap();
        assert_quiet(&mut p, 4, Duration::from_millis(50));
        assert_quiet(&mut p, 1, Duration::from_millis(10));
    }
}

#[test]
fn a_timeout_with_nothing_ready_returns_nothing() {
    for mut p in pollers() {
        let ev = eventfd();
        p.add(ev.as_fd(), 1).unwrap();
        let t = Instant::now();
        let mut out = Vec::new();
        // The first wait may return early (io_uring arms the poll in it).
        while t.elapsed() < Duration::from_millis(100) {
            p.wait(&mut out, Some(Duration::from_millis(100))).unwrap();
        }
        assert!(out.is_empty(), "{}: {out:?}", p.backend());
        assert!(t.elapsed() >= Duration::from_millis(90));
        // A zero timeout does not block.
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert!(out.is_empty());
    }
}

/// Zero-timeout waits (the daemon's while traffic flows) see events too,
/// from this thread and from others, and keep seeing undrained ones.
#[test]
fn zero_timeout_waits_see_events() {
    fn spin_for(p: &mut Poller, token: u64) {
        let deadline = Instant::now() + WATCHDOG;
        let mut out = Vec::new();
        while !out.contains(&token) {
            assert!(Instant::now() < deadline, "{}: no {token}", p.backend());
            out.clear();
            p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        }
    }
    for mut p in pollers() {
        let ev = std::sync::Arc::new(eventfd());
        p.add(ev.as_fd(), 1).unwrap();
        ev.write(1).unwrap();
        spin_for(&mut p, 1);
        spin_for(&mut p, 1); // not drained: again
        ev.read().unwrap();
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        let writer = {
            let ev = ev.clone();
            std::thread::spawn(move || ev.write(1).unwrap())
        };
        spin_for(&mut p, 1);
        writer.join().unwrap();
        p.remove(ev.as_fd());
    }
}

#[test]
fn removed_fds_are_not_reported() {
    for mut p in pollers() {
        let ev = eventfd();
        let (a, mut b) = UnixStream::pair().unwrap();
        p.add(ev.as_fd(), 1).unwrap();
        p.add(a.as_fd(), 2).unwrap();
        // Arm both, then remove both: one armed in the kernel...
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        p.remove(ev.as_fd());
        p.remove(a.as_fd());
        ev.write(1).unwrap();
        b.write_all(b"x").unwrap();
        assert_quiet(&mut p, 1, Duration::from_millis(50));
        assert_quiet(&mut p, 2, Duration::from_millis(10));

        // ...and one removed while ready, its completion not yet reaped.
        let ev2 = eventfd();
        p.add(ev2.as_fd(), 3).unwrap();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        ev2.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        p.remove(ev2.as_fd());
        assert_quiet(&mut p, 3, Duration::from_millis(50));

        // Re-adding under a new token reports the new token only.
        p.add(ev2.as_fd(), 4).unwrap();
        wait_for(&mut p, 4);
        assert_quiet(&mut p, 3, Duration::from_millis(20));
        p.remove(ev2.as_fd());
    }
}

#[test]
fn undrained_fds_are_reported_again() {
    for mut p in pollers() {
        let ev = eventfd();
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        p.add(ev.as_fd(), 1).unwrap();
        p.add(a.as_fd(), 2).unwrap();
        ev.write(1).unwrap();
        b.write_all(b"xy").unwrap();
        for _ in 0..3 {
            wait_for(&mut p, 1);
            wait_for(&mut p, 2);
        }
        // Half-drained socket: still reported.
        let mut buf = [0; 1];
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        wait_for(&mut p, 2);
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
        ev.read().unwrap();
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_millis(50))).unwrap();
        assert!(out.is_empty(), "{}: {out:?}", p.backend());
        p.remove(ev.as_fd());
        p.remove(a.as_fd());
    }
}

/// Runs `case(poller, old fd number)` until the number of an fd closed by
/// `close` is reused by the next one opened (other tests open fds on other
/// threads meanwhile, so it may take a few tries).
fn with_reused_number(p: &mut Poller, case: impl Fn(&mut Poller, RawFd) -> bool) {
    for _ in 0..100 {
        let ev = eventfd();
        let n = ev.as_raw_fd();
        p.add(ev.as_fd(), 1).unwrap();
        drop(ev); // closed without remove
        if case(p, n) {
            return;
        }
    }
    panic!("{}: the fd number was never reused", p.backend());
}

/// epoll forgets an fd when it is closed; the io_uring backend cannot see
/// the close, but must cope when the fd number comes back.
#[test]
fn an_fd_closed_without_remove_can_be_added_again() {
    for mut p in pollers() {
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        with_reused_number(&mut p, |p, n| {
            let ev = eventfd();
            if ev.as_raw_fd() != n {
                return false;
            }
            p.add(ev.as_fd(), 2).unwrap();
            ev.write(1).unwrap();
            wait_for(p, 2);
            p.remove(ev.as_fd());
            true
        });
    }
}

/// Nor may it leave a poll on the file that gets the number next when that
/// one is never added: a memfd is always readable and would make the loop
/// spin. (The daemon's `hello` closes a doorbell without `remove` when the
/// Welcome cannot be sent.)
#[test]
fn a_closed_fd_does_not_haunt_its_number() {
    for mut p in pollers() {
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        with_reused_number(&mut p, |p, n| {
            let memfd = memfd_create(c"poller-test", MFdFlags::MFD_CLOEXEC).unwrap();
            if memfd.as_raw_fd() != n {
                return false;
            }
            assert_quiet(p, 1, Duration::from_millis(50));
            true
        });
    }
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("hybusd-poller-{}", std::process::id())).join(format!("{name}.sock"))
}

/// Serves `demo.echo` (reversing) on `server` until `n` requests were
/// answered. The service is handed back rather than dropped: unregistering
/// races with the last reply (control socket against data ring), which is
/// not what these tests are about.
fn serve(server: &Bus, n: usize) -> std::thread::JoinHandle<Service> {
    let svc = server.register("demo.echo").unwrap();
    std::thread::spawn(move || {
        let mut done = 0;
        while done < n {
            if let Some(Incoming::Request(r)) = svc.next(WATCHDOG).unwrap() {
                let mut v = r.payload().to_vec();
                v.reverse();
                r.reply(&v).unwrap();
                done += 1;
            }
        }
        svc
    })
}

fn daemon_serves_calls(force_epoll: bool) {
    let expected = if force_epoll || !uring_available() { "epoll" } else { "io_uring" };
    let path = socket_path(expected);
    let config = Config { force_epoll, ..Default::default() };
    let d = Embedded::start(&path, config).unwrap();
    let server = Bus::connect_to(&path).unwrap();
    let t = serve(&server, 3);
    let bus = Bus::connect_to(&path).unwrap();
    assert_eq!(bus.status().unwrap().backend, expected);
    let route = bus.resolve("demo.echo").unwrap();
    for _ in 0..3 {
        // Pause so that the daemon parks and sleeps in the poller.
        std::thread::sleep(Duration::from_millis(20));
        let a = bus.call(&route, b"abc", WATCHDOG).unwrap();
        assert_eq!(&*a, b"cba");
    }
    let svc = t.join().unwrap();
    // A third client comes and goes: the daemon sees the hang-up and
    // removes it (remove before close), the others stay.
    drop(Bus::connect_to(&path).unwrap());
    let deadline = Instant::now() + WATCHDOG;
    while bus.status().unwrap().clients != 2 {
        assert!(Instant::now() < deadline, "the third client was not removed");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(svc);
    drop(server);
    drop(bus);
    d.stop().unwrap();
}

#[test]
fn daemon_serves_calls_on_io_uring_or_its_fallback() {
    daemon_serves_calls(false);
}

#[test]
fn daemon_serves_calls_on_forced_epoll() {
    daemon_serves_calls(true);
}

/// Not a test: times small calls through the embedded daemon on each
/// backend. `cargo test --release -p hybusd --test poller -- --ignored --nocapture`
#[test]
#[ignore]
fn time_calls_per_backend() {
    const CALLS: usize = 20_000;
    for (idle, spins, yields) in [("default idle", None, None), ("park at once", Some(0), Some(0))] {
        for force_epoll in [false, true] {
            let mut config = Config { force_epoll, ..Default::default() };
            if let (Some(spins), Some(yields)) = (spins, yields) {
                config.idle = IdleConfig { spins, yields, park: true };
            }
            let path = socket_path(&format!("time-{force_epoll}-{}", spins.is_some()));
            let d = Embedded::start(&path, config).unwrap();
            let server = Bus::connect_to(&path).unwrap();
            let t = serve(&server, CALLS + 100);
            let bus = Bus::connect_to(&path).unwrap();
            let backend = bus.status().unwrap().backend;
            let route = bus.resolve("demo.echo").unwrap();
            for _ in 0..100 {
                assert_eq!(&*bus.call(&route, b"abc", WATCHDOG).unwrap(), b"cba");
            }
            let start = Instant::now();
            for _ in 0..CALLS {
                bus.call(&route, b"abc", WATCHDOG).unwrap();
            }
            let el = start.elapsed();
            println!(
                "{backend:>8}, {idle}: {CALLS} calls in {el:?} = {:.2} us/call",
                el.as_secs_f64() * 1e6 / CALLS as f64
            );
            drop(t.join().unwrap());
            drop(server);
            drop(bus);
            d.stop().unwrap();
        }
    }
}

/// Not a test: times the poller alone, on one thread (so scheduling does
/// not blur it). `cargo test --release -p hybusd --test poller -- --ignored --nocapture`
#[test]
#[ignore]
fn time_poller_per_backend() {
    const N: u32 = 200_000;
    for round in 0..3 {
        for mut p in pollers() {
            // Idle registrations that must not cost anything per event.
            let idle: Vec<EventFd> = (0..100).map(|_| eventfd()).collect();
            for (i, e) in idle.iter().enumerate() {
                p.add(e.as_fd(), 100 + i as u64).unwrap();
            }
            let ev = eventfd();
            p.add(ev.as_fd(), 1).unwrap();
            let mut out = Vec::new();
            p.wait(&mut out, Some(Duration::ZERO)).unwrap();

            let t = Instant::now();
            for _ in 0..N {
                out.clear();
                p.wait(&mut out, Some(Duration::ZERO)).unwrap();
            }
            let empty = t.elapsed() / N;

            let t = Instant::now();
            for _ in 0..N {
                ev.write(1).unwrap();
                out.clear();
                p.wait(&mut out, None).unwrap();
                assert_eq!(out, [1]);
                ev.read().unwrap();
            }
            let event = t.elapsed() / N;

            let t = Instant::now();
            for i in 0..N / 10 {
                let e = eventfd();
                p.add(e.as_fd(), 1000 + i as u64).unwrap();
                p.remove(e.as_fd());
            }
            let churn = t.elapsed() / (N / 10);
            println!(
                "round {round} {:>8}: empty zero-timeout wait {empty:?}, \
                 write+wait+read {event:?}, eventfd+add+remove {churn:?}",
                p.backend()
            );
            for e in &idle {
                p.remove(e.as_fd());
            }
            p.remove(ev.as_fd());
        }
    }
}
