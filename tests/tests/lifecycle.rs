//! Issue 3's main scenario with the real `hybusd` binary and real client
//! processes: register, resolve, list, watch; SIGKILL one client and see its
//! services go down and everything it held released.

use std::time::Duration;

use hybus::{Bus, BusEvent, Error};
use hybus_tests::{eventually, field, DaemonProc, Peer, SOON};

#[test]
fn register_resolve_list_watch_and_kill() {
    let d = DaemonProc::start(None);
    let watcher = d.connect();
    watcher.watch("kv.").unwrap();

    let (a, a_line) = Peer::ready(d.socket(), &["serve", "kv.store"]);
    let (b, _) = Peer::ready(d.socket(), &["serve", "kv.store"]);
    let (c, _) = Peer::ready(d.socket(), &["serve", "camera.front"]);
    let a_instance: u32 = field(&a_line, "instance").unwrap().parse().unwrap();

    // Watch: two ServiceUp for kv.*, none for camera.
    let mut ups = Vec::new();
    while ups.len() < 2 {
        match watcher.next_event(SOON).unwrap() {
            Some(BusEvent::ServiceUp { name, instance, pid, .. }) => {
                assert_eq!(name, "kv.store");
                ups.push((instance, pid));
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(ups.contains(&(a_instance, a.pid())));

    // List shows owners as the kernel saw them.
    let list = watcher.list().unwrap();
    let kv = list.iter().find(|s| s.name == "kv.store").unwrap();
    assert_eq!(kv.instances.len(), 2);
    let me = nix::unistd::getuid().as_raw();
    assert!(kv.instances.iter().all(|i| i.uid == me));
    let pids: Vec<i32> = kv.instances.iter().map(|i| i.pid).collect();
    assert!(pids.contains(&a.pid()) && pids.contains(&b.pid()));
    assert!(list.iter().any(|s| s.name == "camera.front" && s.instances[0].pid == c.pid()));

    // Resolve and call both instances.
    let caller = d.connect();
    let route = caller.resolve("kv.store").unwrap();
    for _ in 0..4 {
        let r = caller.call(&route, b"abc", SOON).unwrap();
        assert_eq!(&*r, b"cba");
    }
    // A big payload leaves a chunk with the server until it answers; the
    // answer's chunk is the server's. Keep one answer alive across the kill.
    let big = vec![7u8; 10_000];
    let held = caller.call(&route, &big, SOON).unwrap();
    assert!(held.is_zero_copy());
    let before = d.connect().status().unwrap();
    assert_eq!(before.instances, 3);

    // SIGKILL a: its instance goes down, watchers hear it, the daemon releases it.
    a.kill9();
    let down = loop {
        match watcher.next_event(SOON).unwrap() {
            Some(BusEvent::ServiceDown { instance, pid, .. }) => break (instance, pid),
            Some(_) => continue,
            None => panic!("no ServiceDown within {SOON:?}"),
        }
    };
    assert_eq!(down.0, a_instance);
    let status = eventually(SOON, || {
        let s = d.connect().status().ok()?;
        (s.instances == 2).then_some(s)
    })
    .expect("instance count back to 2");
    assert_eq!(status.clients, before.clients - 1);
    let kv = caller.list().unwrap().into_iter().find(|s| s.name == "kv.store").unwrap();
    assert_eq!(kv.instances.len(), 1);
    // The surviving instance still serves.
    for _ in 0..4 {
        assert_eq!(&*caller.call(&route, b"xy", SOON).unwrap(), b"yx");
    }
    drop(held);
    // Nothing of ours stays lent.
    assert!(eventually(SOON, || (caller.chunks_in_use() == 0).then_some(())).is_some());

    // Kill everyone else: no instance, a clear error.
    b.kill9();
    assert!(eventually(SOON, || match caller.resolve("kv.store") {
        Err(Error::NotFound(_)) => Some(()),
        _ => None,
    })
    .is_some());
    drop(c);
    let s = eventually(SOON, || {
        let s = d.connect().status().ok()?;
        (s.instances == 0 && s.chunks_lent == 0 && s.exchanges == 0).then_some(s)
    });
    assert!(s.is_some(), "daemon still holds resources: {:?}", d.connect().status());
    let _ = Duration::ZERO;
}

/// Services the idle-watcher tests bring up and down while the watcher does not look.
const FLOOD: usize = 300;

/// A watcher of `idle.` that does not look while [`FLOOD`] services come
/// and go: its events overflow its control socket (about 250 fit), and the
/// daemon keeps the rest for it instead of cutting it off. Returns the
/// watcher and the services' owner.
fn flood_an_idle_watcher(d: &DaemonProc) -> (Bus, Bus) {
    let watcher = d.connect();
    watcher.watch("idle.").unwrap();
    let owner = d.connect();
    for i in 0..FLOOD {
        drop(owner.register(&format!("idle.s{i}")).unwrap());
    }
    // What did not fit is counted while it waits.
    assert!(owner.status().unwrap().control_backlog > 0);
    (watcher, owner)
}

/// Reads the flood's events, checking each; all must come, in order, with
/// nothing else said to the daemon (the rest leaves the outbox as the
/// socket drains).
fn read_the_flood(d: &DaemonProc, watcher: &Bus, owner: &Bus) {
    for i in 0..FLOOD {
        let name = format!("idle.s{i}");
        match watcher.next_event(SOON) {
            Ok(Some(BusEvent::ServiceUp { name: n, .. })) if n == name => {}
            other => panic!("event for {name} up: {other:?}; log:\n{}", d.log_text()),
        }
        match watcher.next_event(SOON) {
            Ok(Some(BusEvent::ServiceDown { name: n, .. })) if n == name => {}
            other => panic!("event for {name} down: {other:?}; log:\n{}", d.log_text()),
        }
    }
    assert_eq!(watcher.events_dropped(), 0);
    assert!(eventually(SOON, || (owner.status().ok()?.control_backlog == 0).then_some(())).is_some());
}

/// A watcher that does not look while hundreds of services come and go
/// gets every event once it does, in order.
#[test]
fn an_idle_watcher_misses_no_event() {
    let d = DaemonProc::start(None);
    let (watcher, owner) = flood_an_idle_watcher(&d);
    read_the_flood(&d, &watcher, &owner);
}

/// While a client leaves its full control socket unread, the daemon
/// sleeps: the poller tells it when the socket has room. (It looked every
/// millisecond before, so a stopped client kept an idle daemon waking a
/// thousand times a second for as long as it lived.)
///
/// On both event loops: io_uring (where the kernel allows it) and epoll.
#[test]
fn an_unread_control_socket_does_not_keep_the_daemon_awake() {
    for config in [None, Some("force_epoll = true")] {
        let d = DaemonProc::start(config);
        let (watcher, owner) = flood_an_idle_watcher(&d);
        let before = d.wakeups();
        std::thread::sleep(Duration::from_millis(500));
        let woke = d.wakeups() - before;
        assert!(
            woke < 50,
            "{config:?}: the daemon woke {woke} times in 500 ms with nothing to do but wait for a reader"
        );
        read_the_flood(&d, &watcher, &owner);
    }
}
