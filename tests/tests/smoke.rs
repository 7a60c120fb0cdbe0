//! Quick in-process smoke test: embedded daemon, two connections.
use std::time::Duration;

use hybus::{Bus, Incoming};

#[test]
fn call_round_trip_inline_and_chunk() {
    let dir = std::env::temp_dir().join(format!("hybus-smoke-{}", std::process::id()));
    let path = dir.join("bus.sock");
    let _d = hybusd::Embedded::start(&path, hybusd::Config::default()).unwrap();
    let server = Bus::connect_to(&path).unwrap();
    let svc = server.register("demo.echo").unwrap();
    let t = std::thread::spawn(move || {
        let mut n = 0;
        while n < 3 {
            if let Some(Incoming::Request(r)) = svc.next(Duration::from_secs(5)).unwrap() {
                let mut v = r.payload().to_vec();
                v.reverse();
                r.reply(&v).unwrap();
                n += 1;
            }
        }
    });
    let bus = Bus::connect_to(&path).unwrap();
    let route = bus.resolve("demo.echo").unwrap();
    let a = bus.call(&route, b"abc", Duration::from_secs(5)).unwrap();
    assert_eq!(&*a, b"cba");
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let b = bus.call(&route, &big, Duration::from_secs(5)).unwrap();
    assert!(b.is_zero_copy());
    let mut rev = big.clone();
    rev.reverse();
    assert_eq!(&*b, &rev[..]);
    drop(b);
    let c = bus.call(&route, &big, Duration::from_secs(5)).unwrap();
    assert_eq!(c.len(), big.len());
    drop(c);
    t.join().unwrap();
    assert_eq!(bus.chunks_in_use(), 0);
}
