//! The serving side as a newcomer writes it, against the real daemon:
//! the serving loop (`Service::serve`, `serving()`, `next_blocking`, the
//! async twin), service errors of any length with codes (brokered and
//! direct, requests and streams), exclusive and replacing registrations,
//! and the typed helpers at both ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hybus::{rkyv, Error, Reply, ServiceError, ServiceOptions};
use hybus_tests::{eventually, DaemonProc, SOON};

/// The message of the issue that arrived cut to 40 bytes.
const BAD_COMMAND: &str = "bad command: \"frobnicate\" (want 'put K V' or 'get K')";

/// One serving loop goes on through a fire, a stream, a handler's error, a
/// caller that gave up, idleness, and ends (Ok) only once drained.
#[test]
fn the_serving_loop_survives_everything_but_a_drain() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("serve.loop").unwrap();
    let fires = AtomicU64::new(0);
    std::thread::scope(|s| {
        let serving = s.spawn(|| {
            svc.serving()
                .on_fire(|_| {
                    fires.fetch_add(1, Ordering::Relaxed);
                })
                .on_stream(|st| {
                    for i in 0..3u8 {
                        st.send(&[i], SOON)?;
                    }
                    if st.payload() == b"fail" {
                        return Err(ServiceError::new(7, BAD_COMMAND));
                    }
                    Ok(())
                })
                .run(|req| match req.payload() {
                    b"slow" => {
                        std::thread::sleep(Duration::from_millis(300));
                        Ok(b"late".into())
                    }
                    b"bad" => Err(ServiceError::new(400, BAD_COMMAND)),
                    b"parse" => {
                        let n: u32 = "x".parse()?;
                        Ok(n.to_string().into())
                    }
                    p => Ok(p.to_ascii_uppercase().into()),
                })
        });
        let caller = d.connect();
        let route = caller.resolve("serve.loop").unwrap();
        caller.fire(&route, b"one").unwrap();
        let mut st = caller.request_stream(&route, b"items", 2).unwrap();
        let mut items = Vec::new();
        while let Some(i) = st.next(SOON).unwrap() {
            items.push(i[0]);
        }
        assert_eq!(items, [0, 1, 2]);
        let mut st = caller.request_stream(&route, b"fail", 2).unwrap();
        let mut n = 0;
        let end = loop {
            match st.next(SOON) {
                Ok(Some(_)) => n += 1,
                other => break other,
            }
        };
        assert_eq!(n, 3);
        assert_eq!(end.map(|_| ()), Err(Error::Service { code: 7, message: BAD_COMMAND.into() }), "whole");
        assert_eq!(e_of(&caller, &route, b"bad"), Error::Service { code: 400, message: BAD_COMMAND.into() });
        let Err(Error::Service { code: 0, message }) = caller.call(&route, b"parse", SOON) else {
            panic!("a handler's `?` is a service error");
        };
        assert!(message.contains("invalid digit"), "{message}");
        // A caller that gives up: the handler's late answer is dropped, the loop goes on.
        assert_eq!(
            caller.call(&route, b"slow", Duration::from_millis(50)).map(|s| s.to_vec()),
            Err(Error::DeadlineExceeded)
        );
        // Idle for a while (the README's old loop stopped at its own timeout).
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(&*caller.call(&route, b"still here", SOON).unwrap(), b"STILL HERE");
        assert!(eventually(SOON, || (fires.load(Ordering::Relaxed) == 1).then_some(())).is_some());
        assert!(!serving.is_finished());
        svc.drain().unwrap();
        assert_eq!(serving.join().unwrap(), Ok(()), "drained: the loop ends");
    });
    assert!(svc.is_drained());
    // `next_blocking` says the same.
    assert!(svc.next_blocking().unwrap().is_none());
}

/// Error texts longer than the descriptor travel whole in a chunk (and
/// the chunk comes back to the service), brokered and over a direct
/// channel; past `MAX_ERROR_MESSAGE` they are cut with a visible `…`.
#[test]
fn long_errors_arrive_whole_brokered_and_direct() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("serve.errors").unwrap();
    let huge: String = "é".repeat(hybus::MAX_ERROR_MESSAGE); // two bytes each: twice the limit
    let served = {
        let huge = huge.clone();
        std::thread::spawn(move || {
            svc.serve(|req| match req.payload() {
                b"huge" => Err(ServiceError::new(1, huge.clone())),
                b"short" => Err("short".into()),
                _ => Err(ServiceError::new(2, BAD_COMMAND)),
            })
        })
    };
    let caller = d.connect();
    let route = caller.resolve("serve.errors").unwrap();
    for direct in [false, true] {
        if direct {
            caller.request_direct(&route).unwrap();
            assert!(caller.is_direct(&route));
        }
        let chunks_before = server.chunks_in_use();
        for _ in 0..200 {
            let e = caller.call(&route, b"long", SOON).unwrap_err();
            assert_eq!(e, Error::Service { code: 2, message: BAD_COMMAND.into() }, "direct: {direct}");
        }
        assert_eq!(e_of(&caller, &route, b"short"), Error::Service { code: 0, message: "short".into() });
        let Error::Service { code: 1, message } = e_of(&caller, &route, b"huge") else { panic!("huge") };
        assert!(message.len() <= hybus::MAX_ERROR_MESSAGE, "{}", message.len());
        assert!(message.ends_with('…') && message.starts_with("éé"), "cut visibly");
        assert!(message.len() > hybus::MAX_ERROR_MESSAGE - 4, "cut at the limit, not before");
        // The error chunks went back to the service's pool (one may wait at
        // the caller of a direct channel for its next push or wait).
        let back = eventually(SOON, || (server.chunks_in_use() <= chunks_before + 1).then_some(()));
        assert!(back.is_some(), "{} chunks in use, {chunks_before} before (direct: {direct})", server.chunks_in_use());
    }
    // The daemon counted the brokered error texts as payload bytes out.
    let stats = caller.stats().unwrap();
    let st = stats.instances.iter().find(|i| i.name == "serve.errors").expect("stats");
    assert!(st.bytes_out >= 200 * BAD_COMMAND.len() as u64, "{st:?}");
    drop(caller);
    drop(served);
}

fn e_of(bus: &hybus::Bus, route: &hybus::Route, payload: &[u8]) -> Error {
    bus.call(route, payload, SOON).map(|s| s.to_vec()).unwrap_err()
}

/// `exclusive()` refuses a served name and then every other registration;
/// `replace()` drains the holder (its serving loop returns once its request
/// in flight is answered) and takes over; the default still load-balances.
#[test]
fn exclusive_names_and_replacement() {
    let d = DaemonProc::start(None);
    let a = d.connect();
    let b = d.connect();
    // Shared by default: two instances.
    let s1 = a.register("names.shared").unwrap();
    let s2 = b.register("names.shared").unwrap();
    let refused = b.register_with("names.shared", ServiceOptions::default().exclusive()).unwrap_err();
    assert!(matches!(&refused, Error::NameOwned(m) if m.contains("served by 2")), "{refused}");
    drop((s1, s2));

    let old = a.register_with("names.alone", ServiceOptions::default().exclusive()).unwrap();
    for opts in [ServiceOptions::default(), ServiceOptions::default().exclusive()] {
        let e = b.register_with("names.alone", opts).unwrap_err();
        let want = format!("held exclusively by instance {}", old.instance());
        assert!(matches!(&e, Error::NameOwned(m) if m.contains(&want) && m.contains("replace")), "{e}");
    }
    let caller = d.connect();
    let route = caller.resolve("names.alone").unwrap();
    let in_handler = Arc::new(AtomicU64::new(0));
    let seen = in_handler.clone();
    let old_loop = std::thread::spawn(move || {
        let r = old.serve(|req| {
            seen.fetch_add(1, Ordering::SeqCst);
            if req.payload() == b"slow" {
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(b"old".into())
        });
        (r, old)
    });
    assert_eq!(&*caller.call(&route, b"x", SOON).unwrap(), b"old");
    // A slow request in flight while the replacement registers: answered by the old one.
    let slow = caller.begin_call(&route, b"slow", SOON).unwrap();
    assert!(eventually(SOON, || (in_handler.load(Ordering::SeqCst) == 2).then_some(())).is_some());
    let new = b.register_with("names.alone", ServiceOptions::default().exclusive().replace()).unwrap();
    let new_loop = std::thread::spawn(move || new.serve(|_| Ok(b"new".into())));
    assert_eq!(&*slow.wait().unwrap(), b"old", "the request in flight is finished by the old instance");
    let (r, old) = old_loop.join().unwrap();
    assert_eq!(r, Ok(()), "the replaced instance's loop ends by itself");
    assert!(old.is_drained());
    for _ in 0..5 {
        assert_eq!(&*caller.call(&route, b"x", SOON).unwrap(), b"new");
    }
    // The newcomer holds the name exclusively in turn.
    let e = a.register("names.alone").unwrap_err();
    assert!(matches!(e, Error::NameOwned(_)), "{e}");
    let list = caller.list().unwrap();
    let info = list.iter().find(|s| s.name == "names.alone").unwrap();
    assert!(info.instances.iter().any(|i| i.exclusive && !i.draining), "{info:?}");
    drop(old);
    drop(new_loop);
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
#[rkyv(crate = hybus::rkyv)]
struct Put {
    key: String,
    value: Vec<u32>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
#[rkyv(crate = hybus::rkyv)]
struct Stored {
    key: String,
    total: u64,
}

/// `call_typed` / `Request::decode` / `Reply::typed` / `reply_typed` at
/// both ends; a value of the wrong type is refused with a message that
/// names the type and the size (rkyv's release builds say nothing).
#[test]
fn typed_helpers_at_both_ends() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let svc = server.register("typed.helpers").unwrap();
    let raw = server.register("typed.raw").unwrap();
    std::thread::spawn(move || {
        svc.serve(|req| {
            let put = req.decode::<Put>()?;
            let seen = req.checked::<Put>()?;
            assert_eq!(seen.key.as_str(), put.key);
            Ok(Reply::typed(&Stored { key: put.key, total: put.value.iter().map(|&v| u64::from(v)).sum() })?)
        })
    });
    std::thread::spawn(move || {
        while let Some(hybus::Incoming::Request(req)) = raw.next_blocking().unwrap() {
            let _ = req.reply_typed(&Stored { key: "raw".into(), total: 1 });
        }
    });
    let caller = d.connect();
    let route = caller.resolve("typed.helpers").unwrap();
    for n in [1u32, 5000] {
        let put = Put { key: format!("k{n}"), value: (0..n).collect() };
        let stored: Stored = caller.call_typed(&route, &put, SOON).unwrap();
        assert_eq!(stored, Stored { key: put.key.clone(), total: u64::from(n) * u64::from(n - 1) / 2 });
    }
    // The service decodes a Stored sent as a Put: its error says what failed.
    let wrong = Stored { key: "not a put".into(), total: 3 };
    let e = caller.call_typed::<Stored, Stored>(&route, &wrong, SOON).unwrap_err();
    let Error::Service { message, .. } = &e else { panic!("{e}") };
    let len = hybus::typed::to_payload(&wrong).unwrap().len();
    assert!(message.contains("Put") && message.contains(&format!("{len}-byte")), "{message}");
    assert!(!message.contains("without error information"), "{message}");
    // And the caller decoding an answer of the wrong type says the same.
    let raw_route = caller.resolve("typed.raw").unwrap();
    let stored: Stored = caller.call_typed(&raw_route, &wrong, SOON).unwrap();
    assert_eq!(stored.key, "raw");
    let e = caller.call_typed::<Stored, Put>(&raw_route, &wrong, SOON).unwrap_err();
    assert!(matches!(&e, Error::BadPayload(m) if m.contains("Put") && m.contains("-byte")), "{e}");
}

/// The async twin: `AsyncBus::serve` with an async handler, fires to their
/// own handler, a long error, and the end at a drain.
#[test]
fn async_serving_loop() {
    let d = DaemonProc::start(None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let caller = d.connect();
    let path = d.socket().to_owned();
    let fired = Arc::new(AtomicU64::new(0));
    let f2 = fired.clone();
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let bus = hybus::Bus::connect_to(&path).unwrap().to_async().unwrap();
            let svc = bus.bus().register("async.serve").unwrap();
            let big = vec![7u8; 100_000];
            bus.serving(&svc)
                .on_fire(async |_s: hybus::Sample| {
                    f2.fetch_add(1, Ordering::Relaxed);
                })
                .run(async |req: &hybus::Request| {
                    tokio::task::yield_now().await;
                    match req.payload() {
                        b"big" => Ok(big.clone().into()),
                        b"bad" => Err(ServiceError::new(9, BAD_COMMAND)),
                        b"drain" => {
                            svc.drain()?;
                            Ok(b"draining".into())
                        }
                        p => Ok(p.to_ascii_uppercase().into()),
                    }
                })
                .await
        })
    });
    let route = eventually(SOON, || caller.resolve("async.serve").ok()).unwrap();
    caller.fire(&route, b"f").unwrap();
    assert_eq!(&*caller.call(&route, b"abc", SOON).unwrap(), b"ABC");
    assert_eq!(caller.call(&route, b"big", SOON).unwrap().len(), 100_000);
    assert_eq!(e_of(&caller, &route, b"bad"), Error::Service { code: 9, message: BAD_COMMAND.into() });
    assert!(eventually(SOON, || (fired.load(Ordering::Relaxed) == 1).then_some(())).is_some());
    assert_eq!(&*caller.call(&route, b"drain", SOON).unwrap(), b"draining");
    assert_eq!(server.join().unwrap(), Ok(()), "drained: the async loop ends");
}

/// A serving loop whose name another instance took exclusively while the
/// daemon was restarting ends with that refusal (it is unregistered for
/// good), instead of retrying the reconnect for ever; the bus's other
/// registrations come back.
#[test]
fn a_loop_whose_name_was_taken_during_a_restart_ends() {
    let dir = hybus_tests::TempDir::new("serve-taken");
    let socket = dir.path().join("bus.sock");
    let mut daemon = hybus_tests::start_daemon_at(&socket, &dir.path().join("hybusd.log"));
    let bus = hybus::Bus::connect_to(&socket).unwrap();
    let taken = bus.register_with("taken.name", ServiceOptions::default().exclusive()).unwrap();
    let kept = bus.register("kept.name").unwrap();
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let _ = std::fs::remove_file(&socket);
    let mut daemon = hybus_tests::start_daemon_at(&socket, &dir.path().join("hybusd2.log"));
    // Nothing waits on `bus` yet, so nothing reconnected it: the name is free for another.
    let other = hybus::Bus::connect_to(&socket).unwrap();
    let thief = other.register_with("taken.name", ServiceOptions::default().exclusive()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = taken.serve(|_| Ok(b"old".into()));
        let _ = tx.send(r);
    });
    let r = rx.recv_timeout(SOON).expect("the loop ended (it retried the reconnect for ever before)");
    assert!(matches!(&r, Err(Error::NameOwned(m)) if m.contains("held exclusively")), "{r:?}");
    // The other registration came back, and the thief keeps its name.
    let kept_loop = std::thread::spawn(move || kept.serve(|_| Ok(b"kept".into())));
    let route = eventually(SOON, || other.resolve("kept.name").ok()).unwrap();
    assert_eq!(&*other.call(&route, b"?", SOON).unwrap(), b"kept");
    assert_eq!(other.list().unwrap().iter().find(|s| s.name == "taken.name").map(|s| s.instances.len()), Some(1));
    drop(thief);
    let _ = daemon.kill();
    let _ = daemon.wait();
    drop(kept_loop);
}
