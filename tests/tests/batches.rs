//! Streams of small items packed in batches (`StreamRequest::send_many`),
//! brokered and direct: every item arrives once and in order whatever the
//! window, through `Stream::next` and `Stream::next_batch`, and the chunks
//! come back.

use std::time::Duration;

use hybus_tests::{eventually, DaemonProc, Peer, SOON};

const T: Duration = Duration::from_secs(20);

fn check(bus: &hybus::Bus, route: &hybus::Route, n: u64, window: u32, by_batch: bool) {
    let mut s = bus.request_stream(route, format!("n={n} batch").as_bytes(), window).unwrap();
    let mut i = 0u64;
    if by_batch {
        while let Some(b) = s.next_batch(T).unwrap() {
            assert!(b.len() <= window as usize, "a batch of {} items beyond a window of {window}", b.len());
            for item in b.iter() {
                assert_eq!(item.unwrap(), format!("item-{i}").as_bytes());
                i += 1;
            }
        }
    } else {
        while let Some(item) = s.next(T).unwrap() {
            assert_eq!(&*item, format!("item-{i}").as_bytes());
            i += 1;
        }
    }
    assert_eq!(i, n);
}

#[test]
fn batched_streams_deliver_every_item_in_order() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.batch"]);
    let bus = d.connect();
    let route = bus.resolve("svc.batch").unwrap();
    let n = if cfg!(debug_assertions) { 20_000 } else { 200_000 };
    for (window, by_batch) in [(1, false), (7, true), (64, false), (4096, true)] {
        check(&bus, &route, n / if window < 8 { 20 } else { 1 }, window, by_batch);
    }
    bus.request_direct(&route).unwrap();
    assert!(bus.is_direct(&route));
    for (window, by_batch) in [(3, true), (4096, false), (65536, true)] {
        check(&bus, &route, n / if window < 8 { 20 } else { 1 }, window, by_batch);
    }
    assert!(eventually(SOON, || (bus.chunks_in_use() == 0).then_some(())).is_some());
    let s = d.connect().status().unwrap();
    assert_eq!(s.violations, 0, "the daemon saw no credit overrun");
}
