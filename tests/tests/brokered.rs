//! The brokered data plane end to end: the real `hybusd` binary, and every
//! interaction model between separate client processes (`hybus-load`),
//! with every payload byte checked; then the awkward moments — a server
//! SIGKILLed mid-request and mid-stream, a subscriber SIGKILLed while it
//! holds chunks, hot replacement under steady load, a stalled subscriber
//! on a busy topic, and a stream reader slower than its sender.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::payload::{self, model, Header};
use common::{num, scaled, Load};
use hybus::{Bus, Error, INLINE_PAYLOAD};
use hybus_tests::{eventually, stopped, DaemonProc, SOON};

/// Item sizes of a `size=0` stream of the `serve` role (inline, the inline
/// limit, one past it, a page, 100 KB).
const MIXED: [usize; 5] = [16, 40, 41, 4096, 100_000];

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    payload::fill(&mut v, seed);
    v
}

fn reversed(p: &[u8]) -> Vec<u8> {
    p.iter().rev().copied().collect()
}

/// Waits until nothing is lent or in flight any more, in the daemon and in `bus`.
fn settled(d: &DaemonProc, bus: &Bus) {
    let ok = eventually(SOON, || {
        let s = bus.status().ok()?;
        (bus.chunks_in_use() == 0 && s.chunks_lent == 0 && s.exchanges == 0).then_some(())
    });
    assert!(
        ok.is_some(),
        "resources still held: ours {}, daemon {:?}; log:\n{}",
        bus.chunks_in_use(),
        bus.status(),
        d.log_text()
    );
}

#[test]
fn request_response_inline_and_chunks() {
    let d = DaemonProc::start(None);
    let (_srv, _) = Load::ready(d.socket(), &["serve", "rr.echo"]);
    let bus = d.connect();
    let route = bus.resolve("rr.echo").unwrap();
    let max = bus.max_payload() as usize;
    let sizes = [0, 1, 16, 39, 40, 41, 255, 256, 4096, 65_536, 100_000, max];
    for (i, &len) in sizes.iter().enumerate() {
        let p = pattern(len, i as u64);
        let a = bus.call(&route, &p, SOON).unwrap();
        assert_eq!(a.len(), len);
        assert!(*a == reversed(&p)[..], "answer to a {len}-byte call");
        assert_eq!(a.is_zero_copy(), len > INLINE_PAYLOAD, "len {len}");
    }
    // A loaned chunk written in place, and many calls reusing chunks.
    let mut loan = bus.loan(100_000, SOON).unwrap();
    payload::fill(&mut loan, 99);
    let sent = loan.to_vec();
    let a = bus.call_loan(&route, loan, SOON).unwrap();
    assert!(*a == reversed(&sent)[..]);
    drop(a);
    for i in 0..scaled(2000, 300) {
        let len = [3, 40, 41, 5000, 100_000][i as usize % 5];
        let p = pattern(len, i);
        let a = bus.call(&route, &p, SOON).unwrap();
        assert!(*a == reversed(&p)[..], "call {i} of {len} bytes");
    }
    settled(&d, &bus);
}

#[test]
fn fire_and_forget_every_fire_arrives_once_in_order() {
    let d = DaemonProc::start(None);
    let (mut srv, _) = Load::ready(d.socket(), &["serve", "ff.sink"]);
    let bus = d.connect();
    let route = bus.resolve("ff.sink").unwrap();
    let n = scaled(5000, 800);
    let sizes = [16, 40, 41, 300, 5000, 100_000];
    for i in 0..n {
        let h = Header { sender: 1, model: model::FIRE, seq: i };
        bus.fire(&route, &payload::make(h, sizes[i as usize % sizes.len()])).unwrap();
    }
    // Fires and requests share the instance's queue, in order: the count
    // comes after every fire sent before it.
    let a = bus.call(&route, b"?fires", SOON).unwrap();
    assert_eq!(String::from_utf8_lossy(&a), format!("fires={n} bad=0"));
    drop(a);
    assert_eq!(num(&srv.report(), "fires"), n);
    let ev = bus.next_event(Duration::ZERO).unwrap();
    assert!(ev.is_none(), "no fire failed, yet: {ev:?}");
    settled(&d, &bus);
}

#[test]
fn request_stream_items_arrive_in_order() {
    let d = DaemonProc::start(None);
    let (_srv, _) = Load::ready(d.socket(), &["serve", "rs.src"]);
    let bus = d.connect();
    let route = bus.resolve("rs.src").unwrap();
    let n = scaled(1000, 200);
    for window in [1, 8, 64] {
        let mut s = bus.request_stream(&route, format!("n={n} size=0").as_bytes(), window).unwrap();
        for i in 0..n {
            let item = s.next(SOON).unwrap().unwrap_or_else(|| panic!("stream ended after {i} items"));
            let want = Header { sender: 0, model: model::ITEM, seq: i };
            assert_eq!(payload::parse(&item), Some(want), "window {window} item {i}");
            assert_eq!(item.len(), MIXED[i as usize % MIXED.len()]);
        }
        assert!(s.next(SOON).unwrap().is_none(), "more than {n} items");
    }
    settled(&d, &bus);
}

#[test]
fn request_channel_items_flow_both_ways() {
    let d = DaemonProc::start(None);
    let (_srv, _) = Load::ready(d.socket(), &["serve", "rc.echo"]);
    let bus = d.connect();
    let route = bus.resolve("rc.echo").unwrap();
    let n = scaled(600, 120);
    let mut ch = bus.request_channel(&route, b"open", 4).unwrap();
    let item = |j: u64| {
        let h = Header { sender: 7, model: model::CITEM, seq: j };
        payload::make(h, MIXED[j as usize % MIXED.len()])
    };
    // Lock-step, then four in flight each way.
    let mut j = 0;
    while j < n / 2 {
        ch.send(&item(j), SOON).unwrap();
        let echo = ch.next(SOON).unwrap().expect("echo");
        assert!(*echo == reversed(&item(j))[..], "echo {j}");
        j += 1;
    }
    while j < n {
        let batch: Vec<u64> = (j..(j + 4).min(n)).collect();
        for &k in &batch {
            ch.send(&item(k), SOON).unwrap();
        }
        for &k in &batch {
            let echo = ch.next(SOON).unwrap().expect("echo");
            assert!(*echo == reversed(&item(k))[..], "echo {k}");
        }
        j += batch.len() as u64;
    }
    ch.end().unwrap();
    assert!(ch.next(SOON).unwrap().is_none(), "the service ends too");
    drop(ch);
    settled(&d, &bus);
}

#[test]
fn publish_subscribe_every_subscriber_gets_everything_in_order() {
    let d = DaemonProc::start(None);
    let mut subs: Vec<Load> = (0..3).map(|_| Load::ready(d.socket(), &["sub", "ps.topic"]).0).collect();
    let bus = d.connect();
    let p = bus.publisher("ps.topic").unwrap();
    let n = scaled(3000, 500);
    let sizes = [16, 40, 41, 1000, 4096, 70_000];
    for i in 0..n {
        let h = Header { sender: 0, model: model::PUB, seq: i };
        p.publish(&payload::make(h, sizes[i as usize % sizes.len()])).unwrap();
    }
    for s in &mut subs {
        let r = eventually(SOON, || {
            let r = s.report();
            (num(&r, "n") == n).then_some(r)
        })
        .unwrap_or_else(|| panic!("a subscriber did not get {n}: {}", s.report()));
        assert_eq!(num(&r, "bad"), 0, "{r}");
        assert_eq!(num(&r, "gaps"), 0, "{r}");
        assert_eq!(num(&r, "last"), n - 1, "{r}");
    }
    settled(&d, &bus);
}

#[test]
fn a_publication_names_its_publisher_inline_or_in_a_chunk() {
    let d = DaemonProc::start(None);
    let (a, b) = (d.connect(), d.connect());
    let sub = b.subscribe("who.topic").unwrap();
    let p = a.publisher("who.topic").unwrap();
    for len in [8, INLINE_PAYLOAD, INLINE_PAYLOAD + 1, 100_000] {
        p.publish(&vec![1u8; len]).unwrap();
        let s = sub.next(SOON).unwrap().expect("the publication did not come");
        assert_eq!(s.len(), len);
        assert_eq!(s.is_zero_copy(), len > INLINE_PAYLOAD);
        assert_eq!(s.publisher(), Some(a.client_id()), "{len} B");
    }
    settled(&d, &a);
}

#[test]
fn a_batch_takes_what_has_come_up_to_its_bounds() {
    let d = DaemonProc::start(None);
    let (a, b) = (d.connect(), d.connect());
    let sub = b.subscribe("batch.topic").unwrap();
    let p = a.publisher("batch.topic").unwrap();
    let mut batch = Vec::new();
    // Nothing yet: the wait ends empty.
    assert_eq!(sub.next_batch(&mut batch, 8, usize::MAX, Duration::from_millis(20)).unwrap(), 0);
    for i in 0..10u8 {
        p.publish(&vec![i; 1000]).unwrap();
    }
    // All ten on their way to us: the daemon lent each chunk as it queued it.
    let queued = eventually(SOON, || (a.status().ok()?.chunks_lent == 10).then_some(()));
    assert!(queued.is_some(), "the daemon did not forward the ten publications");
    // Bounded by count; then by bytes (the publication that reaches the
    // bound is the last); then the rest; the order is kept throughout.
    let mut sizes = Vec::new();
    let mut firsts = Vec::new();
    while firsts.len() < 10 {
        let (max, bytes) = match sizes.len() {
            0 => (4, usize::MAX),
            1 => (100, 2500),
            _ => (100, usize::MAX),
        };
        let n = sub.next_batch(&mut batch, max, bytes, SOON).unwrap();
        sizes.push(n);
        firsts.extend(batch.drain(..).map(|s| s[0]));
    }
    assert_eq!(sizes, [4, 3, 3]);
    assert_eq!(firsts, (0..10).collect::<Vec<u8>>());
    // A bound of zero bytes still takes one.
    p.publish(b"one").unwrap();
    p.publish(b"two").unwrap();
    assert_eq!(sub.next_batch(&mut batch, 8, 0, SOON).unwrap(), 1);
    assert_eq!(&*batch[0], b"one");
    batch.clear();
    settled(&d, &a);
}

#[test]
fn server_killed_mid_request_fails_the_call_with_peer_gone() {
    let d = DaemonProc::start(None);
    let (mut srv, _) = Load::ready(d.socket(), &["serve", "pk.hold", "hold"]);
    let bus = d.connect();
    let route = bus.resolve("pk.hold").unwrap();
    // A chunk payload, so that the kill must also give our chunk back.
    let caller = bus.clone();
    let call = std::thread::spawn(move || caller.call(&route, &pattern(100_000, 1), Duration::from_secs(30)));
    srv.expect_line("holding 1");
    assert_eq!(bus.chunks_in_use(), 1, "the server holds our request chunk");
    srv.kill9();
    match call.join().unwrap() {
        Err(Error::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    settled(&d, &bus);

    // The same mid-stream: the stream fails with PeerGone, not a timeout.
    let (mut srv, _) = Load::ready(d.socket(), &["serve", "pk.hold", "hold"]);
    let route = bus.resolve("pk.hold").unwrap();
    let mut s = bus.request_stream(&route, b"n=10", 4).unwrap();
    srv.expect_line("holding-stream 1");
    srv.kill9();
    match s.next(Duration::from_secs(30)) {
        Err(Error::PeerGone) => {}
        other => panic!("expected PeerGone, got {other:?}"),
    }
    drop(s);
    settled(&d, &bus);
}

#[test]
fn subscriber_killed_while_holding_chunks_gives_them_back() {
    let d = DaemonProc::start(None);
    let (mut sub, _) = Load::ready(d.socket(), &["sub", "hk.topic", "hold"]);
    let bus = d.connect();
    let p = bus.publisher("hk.topic").unwrap();
    for i in 0..50 {
        let h = Header { sender: 0, model: model::PUB, seq: i };
        p.publish(&payload::make(h, 1000)).unwrap();
    }
    for i in 0..50 {
        sub.expect_line(&format!("got seq={i} "));
    }
    assert_eq!(bus.chunks_in_use(), 50);
    assert_eq!(bus.status().unwrap().chunks_lent, 50);
    sub.kill9();
    settled(&d, &bus);
    // The topic still works for a new subscriber.
    let (mut sub, _) = Load::ready(d.socket(), &["sub", "hk.topic"]);
    let h = Header { sender: 0, model: model::PUB, seq: 0 };
    p.publish(&payload::make(h, 1000)).unwrap();
    let ok = eventually(SOON, || (num(&sub.report(), "n") == 1).then_some(()));
    assert!(ok.is_some(), "{}", sub.report());
    settled(&d, &bus);
}

#[test]
fn hot_replacement_under_load_loses_nothing() {
    let d = DaemonProc::start(None);
    let (mut v1, _) = Load::ready(d.socket(), &["serve", "hr.svc"]);
    let bus = d.connect();
    let route = bus.resolve("hr.svc").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let caller = {
        let (bus, stop, done) = (bus.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let p = seq.to_le_bytes();
                match bus.call(&route, &p, SOON) {
                    Ok(a) if *a == reversed(&p)[..] => {}
                    Ok(a) => errors.push(format!("call {seq}: wrong answer {:?}", &*a)),
                    Err(e) => errors.push(format!("call {seq}: {e}")),
                }
                seq += 1;
                done.store(seq, Ordering::Relaxed);
            }
            (seq, errors)
        })
    };
    let progress = |more: u64| {
        let target = done.load(Ordering::Relaxed) + more;
        let ok = eventually(SOON, || (done.load(Ordering::Relaxed) >= target).then_some(()));
        assert!(ok.is_some(), "the caller is stuck at {}", done.load(Ordering::Relaxed));
    };
    progress(200);
    let (mut v2, _) = Load::ready(d.socket(), &["serve", "hr.svc"]);
    progress(200);
    v1.say("drain");
    v1.expect_line("draining");
    if let Some(s) = bus.list().unwrap().iter().find(|s| s.name == "hr.svc") {
        let old = s.instances.iter().find(|i| i.pid == v1.pid());
        assert!(old.is_none_or(|i| i.draining), "{s:?}");
    }
    let served1 = num(&v1.expect_line("drained"), "served");
    assert!(v1.wait_exit(SOON).success());
    progress(200);
    stop.store(true, Ordering::Relaxed);
    let (calls, errors) = caller.join().unwrap();
    assert!(errors.is_empty(), "{} errors: {:?}", errors.len(), &errors[..errors.len().min(5)]);
    let served2 = num(&v2.report(), "served");
    assert!(served1 > 0 && served2 > 0, "v1 {served1}, v2 {served2}");
    assert_eq!(served1 + served2, calls, "every call served exactly once");
    let list = bus.list().unwrap();
    let svc = list.iter().find(|s| s.name == "hr.svc").expect("hr.svc listed");
    assert_eq!(svc.instances.len(), 1, "{svc:?}");
    assert_eq!(svc.instances[0].pid, v2.pid());
    assert!(!svc.instances[0].draining);
    settled(&d, &bus);
}

/// Publishes `n` numbered publications on `topic` and checks that `fast`
/// (a `sub` role with `progress=100`) got every one, in order. The fast
/// subscriber is kept at most 512 behind (a ring and a small queue hold
/// more), so that it cannot drop even when descheduled.
fn publish_to_the_fast_one(bus: &Bus, topic: &str, fast: &mut Load, n: u64) {
    let p = bus.publisher(topic).unwrap();
    let (mut published, mut acked) = (0u64, 0u64);
    while published < n {
        while published < n && published - acked < 512 {
            let h = Header { sender: 0, model: model::PUB, seq: published };
            p.publish(&payload::make(h, 16 + published as usize % 25)).unwrap();
            published += 1;
        }
        if published < n {
            acked = num(&fast.expect_line("progress"), "n");
        }
    }
    let r = eventually(SOON, || {
        let r = fast.report();
        (num(&r, "n") == n).then_some(r)
    })
    .unwrap_or_else(|| panic!("the fast subscriber lags: {}", fast.report()));
    assert_eq!((num(&r, "bad"), num(&r, "gaps"), num(&r, "last")), (0, 0, n - 1), "{r}");
}

#[test]
fn slow_subscriber_never_stalls_the_topic() {
    use nix::sys::signal::Signal;
    let d = DaemonProc::start(Some("[limits]\nqueue_per_client = 64\n"));
    let (mut fast, _) = Load::ready(d.socket(), &["sub", "sl.topic", "progress=100", "register=sl.fast"]);
    let (mut slow, _) = Load::ready(d.socket(), &["sub", "sl.topic", "slow_ms=50", "register=sl.slow"]);
    // Slower than any sleep: stopped while the topic is busy. Its ring and
    // queue fill and the daemon must drop for it rather than wait: the
    // drop count is then certain, not a matter of timing.
    slow.signal(Signal::SIGSTOP);
    stopped(slow.pid());
    let bus = d.connect();
    let n = 2000u64;
    // The publisher finishes while one subscriber is stopped.
    publish_to_the_fast_one(&bus, "sl.topic", &mut fast, n);

    let drops_of = |name: &str| {
        let stats = bus.stats().unwrap();
        stats.instances.iter().find(|i| i.name == name).unwrap_or_else(|| panic!("{name} not in stats")).drops
    };
    let slow_drops = drops_of("sl.slow");
    assert!(slow_drops > 0, "the stopped subscriber dropped nothing");
    assert_eq!(drops_of("sl.fast"), 0);
    assert_eq!(d.connect().status().unwrap().drops, slow_drops, "the daemon's total counts the same drops");

    // Resumed (and no longer sleeping), it gets what was kept for it: in
    // order, the newest publication last (drop-oldest), and exactly the
    // daemon's drops missing.
    slow.signal(Signal::SIGCONT);
    slow.say("fast");
    let r = eventually(SOON, || {
        let r = slow.report();
        (num(&r, "n") + num(&r, "gaps") == n).then_some(r)
    })
    .unwrap_or_else(|| panic!("the slow subscriber did not catch up: {}", slow.report()));
    assert_eq!(num(&r, "bad"), 0, "{r}");
    assert_eq!(num(&r, "last"), n - 1, "{r}");
    assert_eq!(num(&r, "gaps"), slow_drops, "{r}");
    assert_eq!(num(&r, "dropped"), 0, "{r}");
    settled(&d, &bus);
}

#[test]
fn stream_window_two_slow_reader_gets_everything_without_overrun() {
    let d = DaemonProc::start(None);
    let (mut srv, srv_line) = Load::ready(d.socket(), &["serve", "cr.src"]);
    let bus = d.connect();
    let route = bus.resolve("cr.src").unwrap();
    let n = scaled(60, 30);
    let mut s = bus.request_stream(&route, format!("n={n} size=0").as_bytes(), 2).unwrap();
    for i in 0..n {
        let item = s.next(SOON).unwrap().expect("item");
        let want = Header { sender: 0, model: model::ITEM, seq: i };
        assert_eq!(payload::parse(&item), Some(want));
        drop(item);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(s.next(SOON).unwrap().is_none());
    drop(s);
    // The daemon enforces credits by disconnecting: the sender is still
    // here, and nobody broke the protocol.
    assert_eq!(bus.status().unwrap().violations, 0);
    let list = bus.list().unwrap();
    let svc = list.iter().find(|s| s.name == "cr.src").expect("listed");
    assert_eq!(svc.instances[0].instance as u64, num(&srv_line, "instance"));
    assert_eq!(num(&srv.report(), "streams"), 1);
    assert_eq!(&*bus.call(&route, b"ab", SOON).unwrap(), b"ba");
    settled(&d, &bus);
}

/// The pool segments a process has open: its own pool and its views of others'.
fn pool_fds(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().contains("memfd:hybus-pool"))
        .count()
}

/// A service keeps no view of the pool of a caller that came and went: the
/// daemon tells it the pool is gone once everything it sent from there is on
/// the service's ring, and the service unmaps it once that is read. Found by
/// the session fuzz target: every departed caller that had sent a chunk left
/// a mapping and a descriptor in the service, until it ran out of descriptors.
#[test]
fn views_of_departed_callers_are_unmapped() {
    let d = DaemonProc::start(None);
    let (srv, _) = Load::ready(d.socket(), &["serve", "views.echo"]);
    let chunk = pattern(INLINE_PAYLOAD + 1000, 7);
    for _ in 0..20 {
        let caller = d.connect();
        let route = caller.resolve("views.echo").unwrap();
        assert_eq!(&caller.call(&route, &chunk, SOON).unwrap()[..], &reversed(&chunk)[..]);
    }
    // One caller stays, to keep the service pumping: its own pool and its
    // view of ours are all the service may keep mapped.
    let stays = d.connect();
    let route = stays.resolve("views.echo").unwrap();
    let left = eventually(SOON, || {
        stays.call(&route, &chunk, SOON).unwrap();
        let n = pool_fds(srv.pid());
        (n <= 2).then_some(n)
    });
    assert!(left.is_some(), "the service still maps {} pools; log:\n{}", pool_fds(srv.pid()), d.log_text());
}

/// A topic whose `[[topic]]` policy is "disconnect" cuts off a subscriber
/// that stops reading once its queue (16 here) is full, instead of dropping
/// its oldest; the subscriber that keeps up gets everything.
#[test]
fn a_disconnect_topic_cuts_off_its_slow_subscriber() {
    use nix::sys::signal::Signal;
    let config = "[[topic]]\nprefix = \"strict.\"\nslow = \"disconnect\"\nqueue = 16\n";
    let d = DaemonProc::start(Some(config));
    let (mut fast, _) = Load::ready(d.socket(), &["sub", "strict.topic", "progress=100", "register=st.fast"]);
    let (slow, _) = Load::ready(d.socket(), &["sub", "strict.topic", "slow_ms=50", "register=st.slow"]);
    slow.signal(Signal::SIGSTOP);
    stopped(slow.pid());
    let bus = d.connect();
    // More than the stopped subscriber's ring (1024) and queue (16) hold.
    publish_to_the_fast_one(&bus, "strict.topic", &mut fast, 2000);
    // The stopped one is gone: its name with it, and the daemon says why.
    let gone = eventually(SOON, || {
        let list = bus.list().ok()?;
        (!list.iter().any(|s| s.name == "st.slow" && !s.instances.is_empty())).then_some(())
    });
    assert!(gone.is_some(), "the slow subscriber is still connected; log:\n{}", d.log_text());
    assert!(d.log_text().contains("too slow for topic \"strict.topic\""), "{}", d.log_text());
    assert!(bus.status().unwrap().drops >= 1);
    slow.signal(Signal::SIGCONT);
    settled(&d, &bus);
}

/// A service busy elsewhere while hundreds of new callers each send it a
/// chunk misses none of them and stays connected. Each caller's first chunk
/// brings the service a pool view over its control socket, which it reads
/// only when it next calls into the bus: about 250 fill the socket, and the
/// daemon used to cut the service off there. Now what does not fit waits
/// in the daemon, and the descriptors wait behind their views.
#[test]
fn an_idle_service_misses_none_of_many_new_callers() {
    const CALLERS: u64 = 400;
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("idle.sink").unwrap();
    for i in 0..CALLERS {
        let caller = d.connect();
        let route = caller.resolve("idle.sink").unwrap();
        caller.fire(&route, &pattern(INLINE_PAYLOAD + 1000, 2 * i + 1)).unwrap();
    }
    let mut seen = vec![false; CALLERS as usize];
    for n in 0..CALLERS {
        match svc.next(SOON) {
            Ok(Some(hybus::Incoming::Fire(p))) => {
                // Odd seeds: the pattern of seed `s` is that of `s | 1`.
                let i = (0..CALLERS).find(|&i| p[..] == pattern(INLINE_PAYLOAD + 1000, 2 * i + 1)[..]);
                let i = i.unwrap_or_else(|| panic!("fire #{n} carries no caller's payload"));
                assert!(!std::mem::replace(&mut seen[i as usize], true), "caller {i}'s fire came twice");
            }
            other => panic!("fire #{n} of {CALLERS}: {other:?}; log:\n{}", d.log_text()),
        }
    }
    assert!(server.status().is_ok(), "the service was cut off; log:\n{}", d.log_text());
}

/// Items a departed caller sent on a channel stay readable: the view of its
/// pool is kept while a served stream still holds chunks from it.
#[test]
fn channel_items_of_a_departed_caller_stay_readable() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("views.chan").unwrap();
    let caller = d.connect();
    let route = caller.resolve("views.chan").unwrap();
    let mut stream = caller.request_channel(&route, b"open", 8).unwrap();
    let Some(hybus::Incoming::Stream(mut ch)) = svc.next(SOON).unwrap() else {
        panic!("no channel request");
    };
    // The first receive grants the caller its window.
    assert!(matches!(ch.recv(Duration::from_millis(50)), Err(Error::DeadlineExceeded)));
    let items: Vec<Vec<u8>> = (0..3).map(|i| pattern(INLINE_PAYLOAD + 500, i)).collect();
    for item in &items {
        stream.send(item, SOON).unwrap();
    }
    // Until the items are here, then the caller leaves.
    let queued = eventually(SOON, || (svc.next(Duration::from_millis(10)).is_ok()).then_some(()));
    assert!(queued.is_some());
    drop(stream);
    drop(caller);
    // Long enough for the daemon to see it go and say so; the server reads on meanwhile.
    for _ in 0..20 {
        let _ = svc.next(Duration::from_millis(10));
    }
    for (i, item) in items.iter().enumerate() {
        match ch.recv(SOON) {
            Ok(Some(sample)) => assert_eq!(&sample[..], &item[..], "item {i}"),
            Ok(None) | Err(Error::PeerGone) => break,
            Err(e) => panic!("item {i} of a departed caller: {e}"),
        }
    }
    assert!(server.status().is_ok());
}

/// Unread events are bounded: an application that never reads them (most
/// never do) does not grow with every watched change, failed fire or
/// channel change. The oldest go first, and are counted.
#[test]
fn unread_events_are_bounded() {
    let d = DaemonProc::start(None);
    let watcher = d.connect();
    watcher.watch("ev.").unwrap();
    let owner = d.connect();
    for i in 0..2100 {
        drop(owner.register(&format!("ev.s{}", i % 10)).unwrap());
        if i % 100 == 99 {
            // Busy with something else, which reads the control socket (a
            // client that never does is cut off by the daemon instead).
            // Every event was sent before the reply to this.
            watcher.status().unwrap();
        }
    }
    assert_eq!(watcher.events_dropped(), 4200 - 4096);
    let mut kept = Vec::new();
    while let Some(e) = watcher.next_event(Duration::ZERO).unwrap() {
        kept.push(e);
    }
    assert_eq!(kept.len(), 4096);
    assert!(
        matches!(kept.last(), Some(hybus::BusEvent::ServiceDown { name, .. }) if name == "ev.s9"),
        "the newest event is kept: {:?}",
        kept.last()
    );
}

/// `balance = "least-outstanding"`: of two instances, one taking 50 ms a
/// request and one answering at once, four concurrent callers are sent to
/// the one with fewer requests in flight, so the slow one gets few of
/// them. (Weighted round-robin, the default, sends it every other one.)
#[test]
fn least_outstanding_spares_a_slow_instance() {
    let d = DaemonProc::start(Some("balance = \"least-outstanding\"\n"));
    let serve = |tag: &'static str, delay: Duration| {
        let svc = d.connect().register("lo.svc").unwrap();
        std::thread::spawn(move || loop {
            match svc.next(Duration::from_millis(100)) {
                Ok(Some(hybus::Incoming::Request(r))) => {
                    std::thread::sleep(delay);
                    let _ = r.reply(tag.as_bytes());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        })
    };
    let _slow = serve("slow", Duration::from_millis(50));
    let _fast = serve("fast", Duration::ZERO);
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let bus = d.connect();
            std::thread::spawn(move || {
                let route = bus.resolve("lo.svc").unwrap();
                (0..10).filter(|_| &*bus.call(&route, b"x", SOON).unwrap() == b"slow").count()
            })
        })
        .collect();
    let slow: usize = callers.into_iter().map(|c| c.join().unwrap()).sum();
    // Round-robin gives it 20 (every other pick); here about 6.
    assert!(slow <= 12, "the slow instance answered {slow} of 40 calls");
}

/// `fire_within` and `publish_within` bound the wait for pool space: while
/// a receiver that stopped reading holds every chunk large enough, they
/// give up with `OutOfPool` once their timeout passes (where `fire` would
/// wait for it), and send again once the chunks come back.
#[test]
fn bounded_fires_and_publications_give_up_while_the_pool_stays_full() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let d = DaemonProc::start(None);
    let (sink, _) = hybus_tests::Peer::ready(d.socket(), &["serve", "bound.sink"]);
    let bus = d.connect();
    let route = bus.resolve("bound.sink").unwrap();
    kill(Pid::from_raw(sink.pid()), Signal::SIGSTOP).unwrap();
    stopped(sink.pid());
    // 60 KB each: the pool holds 36 chunks that large.
    let big = vec![7u8; 60_000];
    let short = Duration::from_millis(100);
    let mut sent = 0;
    let refused = loop {
        match bus.fire_within(&route, &big, short) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100, "the pool never ran out");
    };
    assert!(matches!(refused, Error::OutOfPool { .. }), "{refused:?} after {sent} fires");
    let publisher = bus.publisher("bound.topic").unwrap();
    assert!(matches!(publisher.publish_within(&big, short), Err(Error::OutOfPool { .. })));
    kill(Pid::from_raw(sink.pid()), Signal::SIGCONT).unwrap();
    assert!(eventually(SOON, || bus.fire_within(&route, &big, short).ok()).is_some(), "the chunks never came back");
    assert!(publisher.publish_within(&big, short).is_ok());
}

/// A stream item that cannot be sent (no pool space in time) does not use
/// up the credit the reader granted for it: the next send goes out at once.
#[test]
fn an_item_not_sent_keeps_its_credit() {
    use hybus::Incoming;
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("credit.keep").unwrap();
    let bus = d.connect();
    let route = bus.resolve("credit.keep").unwrap();
    let short = Duration::from_millis(100);
    let long = Duration::from_secs(5);
    // Each of the stream's two windows of one credit: one item, one batch.
    for batch in [false, true] {
        let mut stream = bus.request_stream(&route, b"", 1).unwrap();
        let Some(Incoming::Stream(mut st)) = svc.next(long).unwrap() else { panic!("no stream") };
        // Every chunk of the largest size the server's pool has, held.
        let max = server.max_payload() as usize;
        let held: Vec<_> = std::iter::from_fn(|| server.loan(max, Duration::ZERO).ok()).take(1000).collect();
        assert!(!held.is_empty() && held.len() < 1000);
        let item = vec![5u8; max];
        let send = |st: &mut hybus::StreamRequest, t| {
            if batch {
                st.send_many([&item], t).map(|_| ())
            } else {
                st.send(&item, t)
            }
        };
        let refused = send(&mut st, short);
        assert!(matches!(refused, Err(Error::OutOfPool { .. })), "batch: {batch}: {refused:?}");
        drop(held);
        let again = send(&mut st, long);
        assert!(again.is_ok(), "batch: {batch}: the credit was lost: {again:?}");
        assert_eq!(stream.next(long).unwrap().map(|s| s.len()), Some(max));
        st.end().unwrap();
        assert!(stream.next(long).unwrap().is_none());
    }
}

/// A caller's misuse of one stream costs it that stream, not the
/// connection: an item sent after `end` is refused here (the daemon would
/// take it for a protocol violation and cut the client off). And a
/// channel whose caller never ended its direction does not leave its
/// exchange open at the daemon once the caller is done with it.
#[test]
fn a_channel_misused_or_left_half_open_costs_nothing_else() {
    use hybus::Incoming;
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("chan.half").unwrap();
    let bus = d.connect();
    let route = bus.resolve("chan.half").unwrap();
    let long = Duration::from_secs(5);

    let mut ch = bus.request_channel(&route, b"", 4).unwrap();
    let Some(Incoming::Stream(mut st)) = svc.next(long).unwrap() else { panic!("no channel") };
    // The service's first read grants the caller its credits.
    assert!(matches!(st.recv(Duration::from_millis(1)), Err(Error::DeadlineExceeded) | Ok(None)));
    ch.send(b"one", long).unwrap();
    ch.end().unwrap();
    ch.end().unwrap(); // ending twice is ending once
    assert!(matches!(ch.send(b"two", long), Err(Error::BadRequest(_))));
    assert_eq!(st.recv(long).unwrap().as_deref(), Some(&b"one"[..]));
    assert!(st.recv(long).unwrap().is_none(), "the caller's end did not come");
    st.end().unwrap();
    assert!(ch.next(long).unwrap().is_none());
    assert!(bus.is_connected());

    // The service ends first; the caller reads to the end and drops its
    // stream without ending its own direction.
    let mut ch = bus.request_channel(&route, b"", 4).unwrap();
    let Some(Incoming::Stream(st)) = svc.next(long).unwrap() else { panic!("no channel") };
    st.end().unwrap();
    assert!(ch.next(long).unwrap().is_none());
    drop(ch);
    let closed = eventually(SOON, || (bus.status().unwrap().exchanges == 0).then_some(()));
    assert!(closed.is_some(), "the half-open channel's exchange stayed: {:?}", bus.status().unwrap());
}

/// One subscription per topic and connection (a second would share the
/// first one's publications, not get them all); and a subscription
/// dropped while publications are on their way to it hands every one of
/// them back to the publisher. (One that lands after the unsubscription's
/// reply is read goes back too; that window is too narrow for this test
/// to hit reliably.)
#[test]
fn subscriptions_are_one_per_topic_and_give_everything_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = DaemonProc::start(None);
    let subscriber = d.connect();
    let sub = subscriber.subscribe("give.back").unwrap();
    assert!(matches!(subscriber.subscribe("give.back"), Err(Error::BadRequest(_))));
    let publisher = d.connect();
    let topic = publisher.publisher("give.back").unwrap();
    let payload = vec![9u8; 2000];
    topic.publish(&payload).unwrap();
    assert_eq!(sub.next(SOON).unwrap().map(|s| s.len()), Some(2000));
    // Publications keep coming while the subscription goes.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, topic, payload) = (stop.clone(), topic.clone(), payload.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = topic.publish_within(&payload, Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    drop(sub);
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
    // The subscriber's connection reads on (here: asking for its status).
    let back = eventually(SOON, || {
        subscriber.status().unwrap();
        (publisher.chunks_in_use() == 0).then_some(())
    });
    assert!(back.is_some(), "{} of the publisher's chunks never came back", publisher.chunks_in_use());
    // Subscribed again, it gets what is published from then on.
    let again = subscriber.subscribe("give.back").unwrap();
    topic.publish(b"again").unwrap();
    assert_eq!(again.next(SOON).unwrap().as_deref(), Some(&b"again"[..]));
}
