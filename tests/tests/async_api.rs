//! The async API (feature `tokio`) with the real daemon and a real server
//! process: calls, an async service answering a blocking caller,
//! subscriptions, and timeouts — on a current-thread runtime, so every wait
//! completes through tokio's reactor (the doorbell and the control socket),
//! with no thread polling on the side.

use std::time::Duration;

use hybus::{Bus, Incoming};
use hybus_tests::{DaemonProc, Peer};

const T: Duration = Duration::from_secs(10);

#[test]
fn async_calls_services_and_subscriptions() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.async"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Calls from async code to a server process.
        let bus = d.connect().to_async().unwrap();
        let route = bus.bus().resolve("svc.async").unwrap();
        for i in 0..200u32 {
            let a = bus.call(&route, &i.to_le_bytes(), T).await.unwrap();
            let mut want = i.to_le_bytes();
            want.reverse();
            assert_eq!(&*a, &want);
        }
        let big = vec![3u8; 100_000];
        assert_eq!(bus.call(&route, &big, T).await.unwrap().len(), big.len());

        // An async service answering a blocking caller on another thread.
        let svc_bus = d.connect();
        let svc = svc_bus.register("svc.async2").unwrap();
        let server = svc_bus.to_async().unwrap();
        let socket = d.socket().to_owned();
        let caller = std::thread::spawn(move || {
            let b = Bus::connect_to(&socket).unwrap();
            let r = b.resolve("svc.async2").unwrap();
            (0..20).map(|i: u8| b.call(&r, &[i], T).unwrap()[0]).collect::<Vec<u8>>()
        });
        for _ in 0..20 {
            match server.next_incoming(&svc, T).await.unwrap() {
                Some(Incoming::Request(r)) => {
                    let v = r.payload()[0] + 1;
                    r.reply(&[v]).unwrap();
                }
                other => panic!("expected a request, got {other:?}"),
            }
        }
        assert_eq!(caller.join().unwrap(), (1..=20).collect::<Vec<u8>>());

        // Subscriptions and timeouts.
        let sub_bus = d.connect();
        let sub = sub_bus.subscribe("t.async").unwrap();
        let subscriber = sub_bus.to_async().unwrap();
        assert!(subscriber.next_publication(&sub, Duration::from_millis(50)).await.unwrap().is_none());
        let publisher = d.connect().publisher("t.async").unwrap();
        publisher.publish(b"hello").unwrap();
        let s = subscriber.next_publication(&sub, T).await.unwrap().unwrap();
        assert_eq!(&*s, b"hello");
        assert!(subscriber.next_event(Duration::from_millis(20)).await.unwrap().is_none());
    });
}

#[test]
fn to_async_outside_a_runtime_is_an_error_not_a_panic() {
    let d = DaemonProc::start(None);
    assert!(d.connect().to_async().is_err());
}
