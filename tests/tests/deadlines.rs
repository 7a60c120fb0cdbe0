//! A caller's deadline travels with its request: the server reads what is
//! left of it ([`Request::deadline`]), through the daemon and over a direct
//! channel, from blocking, pending and async calls alike. (`hybus-bridge`
//! passes it on across hosts: see `bridge.rs`.)

use std::time::{Duration, Instant};

use hybus::Incoming;
use hybus_tests::DaemonProc;

/// A server on its own connection that answers each request with the
/// milliseconds it sees left of the caller's deadline ("none" if none).
fn deadline_server(d: &DaemonProc, name: &str, n: usize) -> std::thread::JoinHandle<()> {
    let bus = d.connect();
    let svc = bus.register(name).unwrap();
    std::thread::spawn(move || {
        let _bus = bus;
        let mut served = 0;
        while served < n {
            if let Some(Incoming::Request(r)) = svc.next(Duration::from_secs(30)).unwrap() {
                let left = r.deadline().map(|t| t.saturating_duration_since(Instant::now()).as_millis());
                r.reply(left.map_or("none".to_owned(), |l| l.to_string()).as_bytes()).unwrap();
                served += 1;
            }
        }
    })
}

/// The milliseconds an answer of [`deadline_server`] says.
fn left(answer: &[u8]) -> u128 {
    std::str::from_utf8(answer).unwrap().parse().unwrap_or_else(|_| panic!("{:?}", String::from_utf8_lossy(answer)))
}

/// What the server may see of a `timeout_ms` deadline: some of it gone on
/// the way, never more than it (the wire form rounds up by 2 µs at most).
fn plausible(left_ms: u128, timeout_ms: u128) -> bool {
    left_ms > timeout_ms / 2 && left_ms <= timeout_ms
}

#[test]
fn the_server_sees_the_caller_s_deadline_through_the_daemon() {
    let d = DaemonProc::start(None);
    let server = deadline_server(&d, "dl.brokered", 3);
    let bus = d.connect();
    let route = bus.resolve("dl.brokered").unwrap();
    assert!(!bus.is_direct(&route));
    let l = left(&bus.call(&route, b"?", Duration::from_secs(4)).unwrap());
    assert!(plausible(l, 4000), "blocking call: the server saw {l} ms of 4000");
    // Larger than inline: the same descriptor word, whatever the payload.
    let l = left(&bus.call(&route, &vec![1u8; 10_000], Duration::from_millis(2500)).unwrap());
    assert!(plausible(l, 2500), "chunk call: the server saw {l} ms of 2500");
    let l = left(&bus.begin_call(&route, b"?", Duration::from_secs(6)).unwrap().wait().unwrap());
    assert!(plausible(l, 6000), "pending call: the server saw {l} ms of 6000");
    server.join().unwrap();
}

#[test]
fn the_server_sees_the_caller_s_deadline_over_a_direct_channel() {
    let d = DaemonProc::start(Some("[[direct]]\ncaller = \"dl.caller\"\nservice = \"dl.direct\"\n"));
    let server = deadline_server(&d, "dl.direct", 1);
    let bus = d.connect();
    let _me = bus.register("dl.caller").unwrap();
    let route = bus.resolve("dl.direct").unwrap();
    assert!(bus.is_direct(&route), "the configured pair is not direct");
    let l = left(&bus.call(&route, b"?", Duration::from_secs(3)).unwrap());
    assert!(plausible(l, 3000), "direct call: the server saw {l} ms of 3000");
    server.join().unwrap();
}

#[test]
fn the_server_sees_an_async_caller_s_deadline() {
    let d = DaemonProc::start(None);
    let server = deadline_server(&d, "dl.async", 1);
    let bus = d.connect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = rt.block_on(async {
        let abus = bus.to_async().unwrap();
        let route = abus.bus().resolve("dl.async").unwrap();
        abus.call(&route, b"?", Duration::from_secs(5)).await.unwrap()
    });
    let l = left(&answer);
    assert!(plausible(l, 5000), "async call: the server saw {l} ms of 5000");
    server.join().unwrap();
}
