//! In-process smoke test of direct channels (embedded daemon).
use std::time::Duration;

use hybus::{Bus, BusEvent, Incoming};

/// An embedded daemon at a fresh socket (under a directory named after
/// `tag`) whose config makes `caller` → `service` a direct pair.
fn daemon_with_pair(tag: &str, caller: &str, service: &str) -> (hybusd::Embedded, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("hybus-{tag}-{}", std::process::id()));
    let path = dir.join("bus.sock");
    let mut cfg = hybusd::Config::default();
    cfg.direct.push(hybusd::config::DirectPair { caller: caller.into(), service: service.into(), uid: None });
    (hybusd::Embedded::start(&path, cfg).unwrap(), path)
}

#[test]
fn configured_pair_goes_direct_and_back() {
    let (_d, path) = daemon_with_pair("dsmoke", "cam.front", "det");
    let server = Bus::connect_to(&path).unwrap();
    let svc = server.register("det").unwrap();
    let t = std::thread::spawn(move || {
        let mut n = 0;
        while n < 200 {
            if let Some(Incoming::Request(r)) = svc.next(Duration::from_secs(10)).unwrap() {
                let mut v = r.payload().to_vec();
                v.reverse();
                r.reply(&v).unwrap();
                n += 1;
            }
        }
    });
    let cam = Bus::connect_to(&path).unwrap();
    let _me = cam.register("cam.front").unwrap();
    let route = cam.resolve("det").unwrap();
    assert!(cam.is_direct(&route), "configured pair should be direct after resolve");
    let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    for i in 0..100u32 {
        let a = cam.call(&route, &i.to_le_bytes(), Duration::from_secs(5)).unwrap();
        let mut e = i.to_le_bytes().to_vec();
        e.reverse();
        assert_eq!(&*a, &e[..]);
    }
    let b = cam.call(&route, &big, Duration::from_secs(5)).unwrap();
    assert_eq!(b.len(), big.len());
    drop(b);
    let stats = cam.stats().unwrap();
    assert_eq!(stats.channels.len(), 1);
    assert!(stats.channels[0].a_messages >= 101, "{:?}", stats.channels);
    // Downgrade: traffic goes back through the daemon.
    let ch = stats.channels[0].channel;
    cam.close_direct(ch).unwrap();
    let mut saw_closed = false;
    while let Some(ev) = cam.next_event(Duration::from_millis(200)).unwrap() {
        if let BusEvent::DirectClosed { .. } = ev {
            saw_closed = true;
        }
    }
    assert!(saw_closed);
    assert!(!cam.is_direct(&route));
    for i in 0..99u32 {
        let a = cam.call(&route, &i.to_le_bytes(), Duration::from_secs(5)).unwrap();
        assert_eq!(a.len(), 4);
    }
    t.join().unwrap();
    assert_eq!(cam.chunks_in_use(), 0);
}

/// Chunks the caller is done with go back to the server's pool over the
/// channel: dropped while the caller does nothing else with the bus, all
/// but the last come back at once (one may wait for the caller's next push
/// or wait, which it rides along with).
#[test]
fn released_chunks_come_back_and_an_idle_caller_keeps_at_most_one() {
    let (_d, path) = daemon_with_pair("drel", "rel.caller", "rel.big");
    let server = Bus::connect_to(&path).unwrap();
    let svc = server.register("rel.big").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        // Keeps waiting (and so taking back returned chunks) until told to stop.
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Incoming::Request(r)) = svc.next(Duration::from_millis(10)).unwrap() {
                let n = r.payload()[0] as usize;
                r.reply(&vec![7u8; n]).unwrap();
            }
        }
    });
    let caller = Bus::connect_to(&path).unwrap();
    let _me = caller.register("rel.caller").unwrap();
    let route = caller.resolve("rel.big").unwrap();
    assert!(caller.is_direct(&route));
    let answers: Vec<_> = (0..20).map(|_| caller.call(&route, &[200], Duration::from_secs(5)).unwrap()).collect();
    assert!(answers.iter().all(|a| a.len() == 200 && a.is_zero_copy()));
    assert!(server.chunks_in_use() >= 20, "the caller holds 20 answer chunks");
    drop(answers);
    let settled = |max: u32| {
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while server.chunks_in_use() > max && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        server.chunks_in_use()
    };
    assert!(settled(1) <= 1, "an idle caller keeps at most one chunk: {}", server.chunks_in_use());
    // The next call (inline both ways) takes the last release along.
    assert_eq!(caller.call(&route, &[1], Duration::from_secs(5)).unwrap().len(), 1);
    assert_eq!(settled(0), 0, "every chunk came back");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join().unwrap();
}
