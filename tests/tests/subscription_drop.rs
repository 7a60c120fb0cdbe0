//! Dropping a `Subscription` does not wait for the daemon: an async task's
//! drop runs on the executor, where a control round trip stalled every
//! task of that thread.

use std::time::Duration;

use hybus_tests::{eventually, DaemonProc, SOON};
use nix::sys::signal::Signal;

#[test]
fn dropping_a_subscription_does_not_wait_for_the_daemon() {
    let d = DaemonProc::start(None);
    let bus = d.connect();
    let sub = bus.subscribe("drop.news").unwrap();
    let publisher = bus.publisher("drop.news").unwrap();
    publisher.publish(b"one").unwrap();
    assert_eq!(&*sub.next(SOON).unwrap().unwrap(), b"one");
    // A daemon that does not answer (stopped): the drop still returns.
    d.signal(Signal::SIGSTOP);
    let dropper = std::thread::spawn(move || drop(sub));
    let returned = eventually(Duration::from_secs(5), || dropper.is_finished().then_some(()));
    d.signal(Signal::SIGCONT);
    assert!(returned.is_some(), "the drop waited for a daemon that does not answer");
    dropper.join().unwrap();
    // The daemon took the unsubscription: a new subscriber gets what comes next, alone.
    let again = bus.subscribe("drop.news").unwrap();
    publisher.publish(b"two").unwrap();
    assert_eq!(&*again.next(SOON).unwrap().unwrap(), b"two");
    assert_eq!(bus.status().unwrap().chunks_lent, 0);
}
