//! A monitor sees the traffic of the names it asked for and no other, on
//! both sides of an exchange: a server writes its instance id where a
//! caller writes the route id, and the two number spaces overlap.

use std::time::{Duration, Instant};

use hybus::BusEvent;
use hybus_layout::control::{Reply, Request};
use hybus_tests::{DaemonProc, Peer, SOON};

#[test]
fn a_monitor_sees_only_its_own_names_answers() {
    let d = DaemonProc::start(None);
    // Topics first, so that route ids 1.. belong to `other.*` names...
    let mut raw = hybus_tests::raw::Raw::connect(d.socket().to_str().unwrap()).unwrap();
    let mut others = Vec::new();
    for i in 0..8 {
        match raw.control(Request::Topic { name: format!("other.t{i}") }).unwrap() {
            Reply::Resolved { route, .. } => others.push(route),
            r => panic!("{r:?}"),
        }
    }
    // ...and the instance of `mon.x` has the number of one of them.
    let (_server, _) = Peer::ready(d.socket(), &["serve", "mon.x"]);
    let bus = d.connect();
    let instance = bus.list().unwrap().into_iter().find(|s| s.name == "mon.x").unwrap().instances[0].instance;
    assert!(others.contains(&instance), "no overlap to test: instance {instance}, other routes {others:?}");

    let mon = d.connect();
    mon.monitor("other.").unwrap();
    let route = bus.resolve("mon.x").unwrap();
    for _ in 0..3 {
        assert_eq!(&*bus.call(&route, b"ab", SOON).unwrap(), b"ba");
    }
    // A publication on an `other.` name: the monitor does work.
    bus.publisher("other.t0").unwrap().publish(b"news").unwrap();
    let end = Instant::now() + SOON;
    loop {
        assert!(Instant::now() < end, "the monitor saw nothing of other.t0");
        match mon.next_event(Duration::from_millis(100)).unwrap() {
            Some(BusEvent::Traffic { kind, route, .. }) => {
                assert_eq!(kind, hybus_layout::Kind::Publish as u8, "mon.x traffic reached the other. monitor");
                assert_eq!(route, others[0]);
                break;
            }
            _ => continue,
        }
    }
}
