//! The async API (feature `tokio`) with the real daemon and a real server
//! process: calls, an async service answering a blocking caller,
//! subscriptions, and timeouts — on a current-thread runtime, so every wait
//! completes through tokio's reactor (the doorbell and the control socket),
//! with no thread polling on the side.

use std::time::Duration;

use hybus::{Bus, Error, Incoming};
use hybus_tests::{DaemonProc, Peer, SOON};

const T: Duration = Duration::from_secs(10);

/// A current-thread runtime: every wait must complete through tokio's
/// reactor, with no other thread to poll on the side.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `work` on a current-thread runtime of its own thread, and fails
/// (rather than hangs) if it does not finish in a minute: the symptom of a
/// wait that blocks the executor.
fn within_a_minute<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(current_thread().block_on(work));
    });
    finished.recv_timeout(Duration::from_secs(60)).expect("the runtime is stuck in a blocking wait")
}

#[test]
fn async_calls_services_and_subscriptions() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.async"]);
    let rt = current_thread();
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

/// Streams and channels from async code: a request-stream item by item and
/// packed in batches, a request-channel echoed item by item, and the
/// errors for sending on a stream or using one on another connection.
#[test]
fn async_streams_and_channels() {
    let d = DaemonProc::start(None);
    let (_server, _) = Peer::ready(d.socket(), &["serve", "svc.astream"]);
    let rt = current_thread();
    rt.block_on(async {
        let bus = d.connect().to_async().unwrap();
        let route = bus.bus().resolve("svc.astream").unwrap();
        for ask in ["n=100", "n=1000 batch"] {
            let n = if ask.contains("batch") { 1000 } else { 100 };
            let mut st = bus.bus().request_stream(&route, ask.as_bytes(), 8).unwrap();
            for i in 0..n {
                let item = bus.next_item(&mut st, T).await.unwrap().unwrap_or_else(|| panic!("{ask}: ended at {i}"));
                assert_eq!(&*item, format!("item-{i}").as_bytes(), "{ask}");
            }
            assert!(bus.next_item(&mut st, T).await.unwrap().is_none(), "{ask}: more than {n} items");
            assert!(matches!(bus.send_item(&mut st, b"x", T).await, Err(Error::BadRequest(_))));
        }
        let mut ch = bus.bus().request_channel(&route, b"open", 4).unwrap();
        for i in 0..50u32 {
            bus.send_item(&mut ch, &i.to_le_bytes(), T).await.unwrap();
            assert_eq!(&*bus.next_item(&mut ch, T).await.unwrap().unwrap(), &i.to_le_bytes());
        }
        ch.end().unwrap();
        assert!(bus.next_item(&mut ch, T).await.unwrap().is_none());
        let other = d.connect().to_async().unwrap();
        let mut st = bus.bus().request_stream(&route, b"n=1", 1).unwrap();
        assert!(matches!(other.next_item(&mut st, T).await, Err(Error::BadRequest(_))));
    });
}

/// An async sender whose pool runs out awaits chunks coming back instead
/// of blocking its thread: here the receiver that gives them back is a task
/// on the same current-thread runtime, so a blocking wait would never end.
#[test]
fn async_fires_await_pool_space_without_blocking_the_runtime() {
    const N: usize = 1000;
    let d = DaemonProc::start(None);
    let socket = d.socket().to_owned();
    let got = within_a_minute(async move {
        let svc_bus = Bus::connect_to(&socket).unwrap();
        let svc = svc_bus.register("svc.asink").unwrap();
        let server = svc_bus.to_async().unwrap();
        let firer = Bus::connect_to(&socket).unwrap().to_async().unwrap();
        let route = firer.bus().resolve("svc.asink").unwrap();
        // 60 KB each: the pool holds 36 chunks that large.
        let sending = async {
            for i in 0..N {
                firer.fire(&route, &vec![i as u8; 60_000]).await.unwrap();
            }
        };
        let receiving = async {
            let mut got = 0;
            while got < N {
                match server.next_incoming(&svc, T).await.unwrap() {
                    Some(Incoming::Fire(s)) => {
                        assert!(s.len() == 60_000 && s.iter().all(|&b| b == got as u8), "fire {got}");
                        got += 1;
                    }
                    other => panic!("expected fire {got}, got {other:?}"),
                }
            }
            got
        };
        tokio::join!(sending, receiving).1
    });
    assert_eq!(got, N);
}

/// An async service serves a request-stream and a request-channel: its
/// sends await the caller's credits, and its reads grant credits, without
/// blocking the executor. Here the caller is a task on the same
/// current-thread runtime, so a blocking send (`StreamRequest::send`) would
/// wait for ever for credits only that task can grant.
#[test]
fn async_services_serve_streams_and_channels() {
    const N: u32 = 100;
    let d = DaemonProc::start(None);
    let socket = d.socket().to_owned();
    let (streamed, echoed) = within_a_minute(async move {
        let svc_bus = Bus::connect_to(&socket).unwrap();
        let svc = svc_bus.register("svc.aserve").unwrap();
        let server = svc_bus.to_async().unwrap();
        let caller = Bus::connect_to(&socket).unwrap().to_async().unwrap();
        let route = caller.bus().resolve("svc.aserve").unwrap();
        let serving = async {
            for _ in 0..2 {
                let Some(Incoming::Stream(mut st)) = server.next_incoming(&svc, T).await.unwrap() else {
                    panic!("expected a stream");
                };
                if st.is_channel() {
                    while let Some(item) = server.next_item(&mut st, T).await.unwrap() {
                        server.send_item(&mut st, &item, T).await.unwrap();
                    }
                } else {
                    assert!(server.next_item(&mut st, T).await.unwrap().is_none(), "a stream brings no items");
                    for i in 0..N {
                        server.send_item(&mut st, &i.to_le_bytes(), T).await.unwrap();
                    }
                }
                st.end().unwrap();
            }
        };
        let calling = async {
            let number = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
            // Windows of 4: the server waits for new credits 25 times each way.
            let mut st = caller.bus().request_stream(&route, b"count", 4).unwrap();
            let mut streamed = Vec::new();
            while let Some(item) = caller.next_item(&mut st, T).await.unwrap() {
                streamed.push(number(&item));
            }
            let mut ch = caller.bus().request_channel(&route, b"echo", 4).unwrap();
            let mut echoed = Vec::new();
            for i in 0..N {
                caller.send_item(&mut ch, &i.to_le_bytes(), T).await.unwrap();
                echoed.push(number(&caller.next_item(&mut ch, T).await.unwrap().unwrap()));
            }
            ch.end().unwrap();
            assert!(caller.next_item(&mut ch, T).await.unwrap().is_none(), "the channel did not end");
            (streamed, echoed)
        };
        tokio::join!(serving, calling).1
    });
    assert_eq!(streamed, (0..N).collect::<Vec<_>>());
    assert_eq!(echoed, (0..N).collect::<Vec<_>>());
}

/// An async call whose future is dropped before the answer (here by a
/// timeout around it, the usual way) is undone like one whose deadline
/// passed: the server is told, and the daemon's exchange ends, instead of
/// staying open (and in the caller's table) for good.
#[test]
fn a_dropped_async_call_is_cancelled() {
    let d = DaemonProc::start(None);
    let (_holder, _) = Peer::ready(d.socket(), &["serve", "svc.ahold", "hold"]);
    let rt = current_thread();
    rt.block_on(async {
        let bus = d.connect().to_async().unwrap();
        let route = bus.bus().resolve("svc.ahold").unwrap();
        for _ in 0..3 {
            let call = bus.call(&route, b"x", Duration::from_secs(3600));
            assert!(tokio::time::timeout(Duration::from_millis(20), call).await.is_err(), "the held call was answered");
        }
        // Still connected (a caller that leaves ends its exchanges anyway).
        let status = || bus.bus().status().unwrap();
        let ended = hybus_tests::eventually(SOON, || (status().exchanges == 0).then_some(()));
        assert!(ended.is_some(), "exchanges still open: {:?}", status());
    });
}

/// An async send dropped while it waits for ring room (a `timeout` around
/// a fire at a stopped server's full channel) gives its chunk back: each
/// such drop kept one for good.
#[test]
fn an_async_send_dropped_while_it_waits_gives_its_chunk_back() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let d = DaemonProc::start(None);
    let (server, _) = Peer::ready(d.socket(), &["serve", "svc.afull"]);
    let rt = current_thread();
    rt.block_on(async {
        let bus = d.connect().to_async().unwrap();
        let route = bus.bus().resolve("svc.afull").unwrap();
        bus.bus().request_direct(&route).unwrap();
        kill(Pid::from_raw(server.pid()), Signal::SIGSTOP).unwrap();
        hybus_tests::stopped(server.pid());
        // Chunk payloads (not inline); the channel's ring fills before the pool.
        let payload = [1u8; 100];
        let mut dropped = 0;
        for _ in 0..5000 {
            if tokio::time::timeout(Duration::from_millis(20), bus.fire(&route, &payload)).await.is_err() {
                dropped += 1;
                if dropped == 3 {
                    break;
                }
            }
        }
        assert_eq!(dropped, 3, "the ring never filled");
        kill(Pid::from_raw(server.pid()), Signal::SIGCONT).unwrap();
        // Our pool gets back what the server read; reading the control
        // socket's replies pumps the return ring too.
        let back = hybus_tests::eventually(SOON, || {
            bus.bus().status().unwrap();
            (bus.bus().chunks_in_use() == 0).then_some(())
        });
        assert!(back.is_some(), "{} chunks never came back", bus.bus().chunks_in_use());
    });
}

/// Tasks sharing one `AsyncBus` do not steal each other's wake-ups: one
/// that wakes on its own short timeouts again and again (and pumps the
/// rings for everyone as it does) must not leave another, waiting long for
/// publications, asleep when they come.
#[test]
fn tasks_sharing_an_async_bus_each_wake_for_their_own() {
    const N: usize = 1000;
    let d = DaemonProc::start(None);
    let publisher = d.connect().publisher("shared.wake").unwrap();
    let bus = d.connect();
    let sub = bus.subscribe("shared.wake").unwrap();
    let took = within_a_minute(async move {
        let abus = std::sync::Arc::new(bus.to_async().unwrap());
        let tickers: Vec<_> = (0..20)
            .map(|_| {
                let abus = abus.clone();
                tokio::spawn(async move {
                    loop {
                        let _ = abus.next_event(Duration::from_millis(1)).await;
                    }
                })
            })
            .collect();
        let waiter = {
            let abus = abus.clone();
            tokio::spawn(async move {
                let mut got = 0;
                while got < N {
                    match abus.next_publication(&sub, Duration::from_secs(30)).await {
                        Ok(Some(_)) => got += 1,
                        other => panic!("after {got}: {other:?}"),
                    }
                }
            })
        };
        let t = std::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            for i in 0..N {
                publisher.publish(&i.to_le_bytes()).unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .await
        .unwrap();
        waiter.await.unwrap();
        for t in tickers {
            t.abort();
        }
        t.elapsed()
    });
    assert!(took < Duration::from_secs(10), "{N} publications took {took:?} to be noticed");
}

/// A blocking wait on the same connection, woken by its own timeout, does
/// not disarm the rings under an async task that sleeps on: the task still
/// hears of its publication. (It used to sleep until its own deadline: the
/// blocking waiter withdrew the parking announcement on every ring, so the
/// daemon rang nobody.)
#[test]
fn a_blocking_timeout_does_not_disarm_the_rings_under_a_sleeping_task() {
    let d = DaemonProc::start(None);
    let bus = d.connect();
    let sub_async = bus.subscribe("t.mixed.async").unwrap();
    let sub_blocking = bus.subscribe("t.mixed.blocking").unwrap();
    let (parked, is_parked) = std::sync::mpsc::channel();
    let (got, arrived) = std::sync::mpsc::channel();
    let task_bus = bus.clone();
    let task = std::thread::spawn(move || {
        current_thread().block_on(async move {
            let abus = task_bus.to_async().unwrap();
            let _ = parked.send(());
            // A deadline far beyond the test's patience: only a wake-up ends this wait in time.
            let r = abus.next_publication(&sub_async, Duration::from_secs(120)).await;
            let _ = got.send(r.map(|s| s.map(|s| s.to_vec())));
        })
    });
    is_parked.recv().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Blocking waits that time out (each parks on the doorbell, then wakes on its timer).
    for _ in 0..3 {
        assert!(sub_blocking.next(Duration::from_millis(50)).unwrap().is_none());
    }
    d.connect().publisher("t.mixed.async").unwrap().publish(b"for the task").unwrap();
    let r = arrived.recv_timeout(Duration::from_secs(20)).expect("the sleeping task never heard of its publication");
    assert_eq!(r.unwrap().as_deref(), Some(&b"for the task"[..]));
    task.join().unwrap();
}
