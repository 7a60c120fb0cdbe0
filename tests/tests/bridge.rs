//! Services and topics across hosts: real daemons on separate sockets (one
//! per "host"), real `hybus-bridge` processes joined over Zenoh on
//! `tcp/127.0.0.1:<free port>` (multicast and gossip scouting off: nothing
//! leaves the host), real client processes and clients of the real library.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hybus::{Bus, Error, Incoming};
use hybus_tests::{eventually, exit_within, start_daemon_at, target_bin, DaemonProc, Peer, TempDir, SOON};

/// The liveliness timeout the bridges of these tests run with.
const LIVELINESS_MS: u64 = 1000;

/// A free TCP port on 127.0.0.1 (bound once and let go).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A real `hybus-bridge` process.
struct BridgeProc {
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl BridgeProc {
    /// Starts `hybus-bridge --socket SOCKET --config <toml>`; `name` is its
    /// bridge name, `listen`/`connect` its ports, `extra` more TOML.
    fn start(socket: &Path, name: &str, listen: Option<u16>, connect: &[u16], extra: &str) -> BridgeProc {
        let dir = TempDir::new("bridge");
        let listen: Vec<String> = listen.iter().map(|p| format!("\"tcp/127.0.0.1:{p}\"")).collect();
        let connect: Vec<String> = connect.iter().map(|p| format!("\"tcp/127.0.0.1:{p}\"")).collect();
        let toml = format!(
            "name = \"{name}\"\nlisten = [{}]\nconnect = [{}]\nliveliness_timeout_ms = {LIVELINESS_MS}\n{extra}\n",
            listen.join(", "),
            connect.join(", ")
        );
        let config = dir.path().join("bridge.toml");
        std::fs::write(&config, toml).expect("write bridge config");
        let log = dir.path().join("bridge.log");
        let child = Command::new(target_bin("hybus-bridge"))
            .arg("--socket")
            .arg(socket)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,zenoh=warn")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("bridge log"))
            .spawn()
            .expect("spawn hybus-bridge");
        BridgeProc { child: Some(child), log, _dir: dir }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::SIGTERM);
            if exit_within(&mut c, Duration::from_secs(5)).is_none() {
                let _ = c.wait();
            }
        }
    }
}

/// The instances of `name` on `bus` that are remote, by the bridge they come through.
fn remote_vias(bus: &Bus, name: &str) -> Vec<String> {
    let list = bus.list().unwrap_or_default();
    let mut v: Vec<String> = list
        .iter()
        .filter(|s| s.name == name)
        .flat_map(|s| s.instances.iter().filter_map(|i| i.remote.as_ref().map(|r| r.via.clone())))
        .collect();
    v.sort();
    v
}

/// Waits until `bus` lists exactly `vias` as the remote instances of `name`.
fn await_remote(bus: &Bus, name: &str, vias: &[&str], logs: &[&BridgeProc]) {
    let want: Vec<String> = vias.iter().map(|s| s.to_string()).collect();
    let ok = eventually(SOON, || (remote_vias(bus, name) == want).then_some(()));
    if ok.is_none() {
        let logs: Vec<String> = logs.iter().map(|b| b.log_text()).collect();
        panic!(
            "{name}: remote instances {:?}, want {want:?}; bridge logs:\n{}",
            remote_vias(bus, name),
            logs.join("\n---\n")
        );
    }
}

/// A server in this process: answers `<tag>:<payload>` (or fails with
/// `boom` when asked `fail`, or answers `size` with that many bytes) until stopped.
struct Server {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    /// Requests `wait-cancel` whose caller cancelled while they were served.
    cancelled: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(socket: &Path, name: &str, tag: &'static str) -> Server {
        let bus = Bus::connect_to(socket).expect("server connects");
        let svc = bus.register(name).expect("register");
        let (stop, served) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let cancelled = Arc::new(AtomicU64::new(0));
        let (s, n, c) = (stop.clone(), served.clone(), cancelled.clone());
        let thread = std::thread::spawn(move || {
            let _bus = bus;
            let mut drained = false;
            loop {
                if s.load(Ordering::Acquire) && !drained {
                    let _ = svc.drain();
                    drained = true;
                }
                match svc.next(Duration::from_millis(50)) {
                    Ok(Some(Incoming::Request(req))) => {
                        n.fetch_add(1, Ordering::AcqRel);
                        let p = req.payload().to_vec();
                        if p == b"fail" {
                            let _ = req.fail("boom");
                        } else if let Some(size) = p.strip_prefix(b"size ") {
                            let size: usize = std::str::from_utf8(size).unwrap().parse().unwrap();
                            let _ = req.reply(&vec![7u8; size]);
                        } else if p == b"wait-cancel" {
                            // Works until the caller gives up (a minute at most).
                            let end = Instant::now() + Duration::from_secs(60);
                            while !req.is_cancelled() && Instant::now() < end {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            if req.is_cancelled() {
                                c.fetch_add(1, Ordering::AcqRel);
                            }
                            let _ = req.fail("cancelled");
                        } else if p == b"deadline" {
                            // How long the caller on the other host still waits, as this side sees it.
                            let left = req.deadline().map(|d| d.saturating_duration_since(std::time::Instant::now()));
                            let _ = req.reply(format!("{}", left.map_or(u128::MAX, |l| l.as_millis())).as_bytes());
                        } else if p == b"hold" {
                            std::mem::forget(req);
                        } else {
                            let mut a = tag.as_bytes().to_vec();
                            a.push(b':');
                            a.extend_from_slice(&p);
                            let _ = req.reply(&a);
                        }
                    }
                    Ok(None) if drained => break,
                    _ => {}
                }
            }
            let _ = svc.unregister();
        });
        Server { stop, served, cancelled, thread: Some(thread) }
    }

    /// Drains (no new requests), answers what is in flight, unregisters.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts the publications of `topic` a subscription on `socket` gets, in a thread.
fn count_publications(
    socket: &Path,
    topic: &str,
) -> (Arc<AtomicU64>, Arc<AtomicBool>, std::thread::JoinHandle<Vec<Vec<u8>>>) {
    let bus = Bus::connect_to(socket).expect("subscriber connects");
    let sub = bus.subscribe(topic).expect("subscribe");
    let (count, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (c, s) = (count.clone(), stop.clone());
    let t = std::thread::spawn(move || {
        let _bus = bus;
        let mut got = Vec::new();
        while !s.load(Ordering::Acquire) {
            if let Ok(Some(p)) = sub.next(Duration::from_millis(50)) {
                got.push(p.to_vec());
                c.fetch_add(1, Ordering::AcqRel);
            }
        }
        got
    });
    (count, stop, t)
}

#[test]
fn a_client_and_hybusctl_on_host_a_call_a_service_on_host_b() {
    let (a, b) = (DaemonProc::start(None), DaemonProc::start(None));
    let port = free_port();
    // A's bridge starts first: Zenoh on B is not reachable yet, and A keeps trying.
    let ba = BridgeProc::start(a.socket(), "host-a", None, &[port], "[[import]]\nservices = [\"kv.*\"]");
    let waiting = eventually(SOON, || ba.log_text().contains("no Zenoh peer").then_some(()));
    assert!(waiting.is_some(), "A's bridge does not say it waits for Zenoh:\n{}", ba.log_text());
    // ... and says so on the bus too.
    let status = |sock: &Path, name: &str| {
        let out =
            Command::new(target_bin("hybusctl")).arg("--socket").arg(sock).args(["call", name, "status"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let waiting =
        eventually(SOON, || status(a.socket(), "hybus-bridge.host-a").contains("zenoh=waiting").then_some(()));
    assert!(waiting.is_some(), "{}", status(a.socket(), "hybus-bridge.host-a"));
    let server = Server::start(b.socket(), "kv.store", "B");
    let _fires = Peer::ready(b.socket(), &["serve", "kv.log"]);
    let bb = BridgeProc::start(b.socket(), "host-b", Some(port), &[], "[[export]]\nservices = [\"kv.*\"]");
    let bus = a.connect();
    await_remote(&bus, "kv.store", &["host-b"], &[&ba, &bb]);

    // The Rust client: small, chunked and large payloads, unchanged code.
    let route = bus.resolve("kv.store").unwrap();
    assert_eq!(&*bus.call(&route, b"hello", SOON).unwrap(), b"B:hello");
    let big = vec![b'x'; 300_000];
    let answer = bus.call(&route, &big, SOON).unwrap();
    assert_eq!(answer.len(), big.len() + 2);
    assert!(answer.starts_with(b"B:x") && answer.iter().skip(2).all(|&c| c == b'x'));
    // Errors keep their kind.
    assert_eq!(bus.call(&route, b"fail", SOON).unwrap_err(), Error::Service { code: 0, message: "boom".into() });
    // The caller's deadline travels: the server on B sees what the caller
    // on A has left of its 3 s (the bridges' call_timeout_ms is 30 s).
    let left: u128 =
        std::str::from_utf8(&bus.call(&route, b"deadline", Duration::from_secs(3)).unwrap()).unwrap().parse().unwrap();
    assert!(left > 0 && left <= 3_050, "the server on B sees {left} ms left of the caller's 3 s");
    // A caller's cancel travels too: the server on B sees it, long before the call's 60 s.
    let pending = bus.begin_call(&route, b"wait-cancel", Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pending.cancel();
    let seen = eventually(SOON, || (server.cancelled.load(Ordering::Acquire) == 1).then_some(()));
    assert!(seen.is_some(), "the server on B never saw the caller's cancel");
    // hybusctl on A, as a user would type it.
    let out = Command::new(target_bin("hybusctl"))
        .arg("--socket")
        .arg(a.socket())
        .args(["call", "kv.store", "from-hybusctl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "B:from-hybusctl");
    let out = Command::new(target_bin("hybusctl")).arg("--socket").arg(a.socket()).arg("list").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("remote via host-b"));
    let st = status(a.socket(), "hybus-bridge.host-a");
    assert!(st.contains("zenoh=connected peers=1") && st.contains("imported=2"), "{st}");
    let st = status(b.socket(), "hybus-bridge.host-b");
    assert!(st.contains("zenoh=connected") && st.contains("exported=2"), "{st}");
    // A fire arrives as a put, and the server on B sees it.
    let mut fires = _fires.0;
    await_remote(&bus, "kv.log", &["host-b"], &[&ba, &bb]);
    let log = bus.resolve("kv.log").unwrap();
    bus.fire(&log, b"fired-from-a").unwrap();
    assert!(fires.expect_line("fire").contains("data=fired-from-a"));
    assert!(server.served.load(Ordering::Acquire) >= 4);
}

#[test]
fn publications_cross_both_ways_once_and_large_ones_too() {
    let (a, b) = (DaemonProc::start(None), DaemonProc::start(None));
    let port = free_port();
    let ba = BridgeProc::start(
        a.socket(),
        "host-a",
        Some(port),
        &[],
        "[[export]]\ntopics = [\"a.t\"]\n[[import]]\ntopics = [\"b.*\", \"a.*\"]",
    );
    let bb = BridgeProc::start(
        b.socket(),
        "host-b",
        None,
        &[port],
        "[[export]]\ntopics = [\"b.t\", \"a.t\"]\n[[import]]\ntopics = [\"a.*\"]",
    );
    let (on_b, stop_b, tb) = count_publications(b.socket(), "a.t");
    let (on_a, stop_a, ta) = count_publications(a.socket(), "b.t");
    let (echo_a, stop_e, te) = count_publications(a.socket(), "a.t");
    let (pa, pb) = (a.connect(), b.connect());
    let (pub_a, pub_b) = (pa.publisher("a.t").unwrap(), pb.publisher("b.t").unwrap());
    // Until both bridges are up and joined, publications may be lost: probe until one crosses.
    let crossed = eventually(SOON, || {
        let _ = pub_a.publish(b"probe");
        let _ = pub_b.publish(b"probe");
        std::thread::sleep(Duration::from_millis(50));
        (on_b.load(Ordering::Acquire) > 0 && on_a.load(Ordering::Acquire) > 0).then_some(())
    });
    assert!(crossed.is_some(), "A:\n{}\nB:\n{}", ba.log_text(), bb.log_text());
    std::thread::sleep(Duration::from_millis(300));
    let (b0, a0, e0) = (on_b.load(Ordering::Acquire), on_a.load(Ordering::Acquire), echo_a.load(Ordering::Acquire));
    const N: u64 = 50;
    for i in 0..N {
        pub_a.publish(format!("a-{i}").as_bytes()).unwrap();
        pub_b.publish(format!("b-{i}").as_bytes()).unwrap();
    }
    pub_a.publish(&vec![5u8; 200_000]).unwrap();
    let all = eventually(SOON, || {
        (on_b.load(Ordering::Acquire) > b0 + N && on_a.load(Ordering::Acquire) >= a0 + N).then_some(())
    });
    assert!(
        all.is_some(),
        "got {} on B, {} on A",
        on_b.load(Ordering::Acquire) - b0,
        on_a.load(Ordering::Acquire) - a0
    );
    // Nothing comes twice, and nothing published on A comes back to A
    // (B imports a.* and exports a.t: its republications must not be sent out again).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(on_b.load(Ordering::Acquire), b0 + N + 1);
    assert_eq!(on_a.load(Ordering::Acquire), a0 + N);
    assert_eq!(echo_a.load(Ordering::Acquire) - e0, N + 1, "A's own publications, each once, none echoed");
    for s in [&stop_a, &stop_b, &stop_e] {
        s.store(true, Ordering::Release);
    }
    let got_b = tb.join().unwrap();
    let _ = (ta.join().unwrap(), te.join().unwrap());
    let last = got_b.last().unwrap();
    assert_eq!(last.len(), 200_000);
    assert!(last.iter().all(|&c| c == 5));
    // Published in a burst, they cross in batches (several to a Zenoh
    // put): each one, in order.
    let tail: Vec<String> = got_b[got_b.len() - 1 - N as usize..got_b.len() - 1]
        .iter()
        .map(|v| String::from_utf8_lossy(v).into())
        .collect();
    let want: Vec<String> = (0..N).map(|i| format!("a-{i}")).collect();
    assert_eq!(tail, want, "in order");
    // A's bridge counts what it sent and the puts it took.
    let st = pa.call(&pa.resolve("hybus-bridge.host-a").unwrap(), b"status", SOON).unwrap();
    let st = String::from_utf8_lossy(&st).into_owned();
    let field = |k: &str| -> u64 {
        st.split_whitespace().find_map(|w| w.strip_prefix(k)?.parse().ok()).unwrap_or_else(|| panic!("no {k} in {st}"))
    };
    let (published, puts) = (field("published="), field("puts="));
    assert!(published > N && (1..=published).contains(&puts), "{st}");
}

#[test]
fn three_bridges_in_a_ring_deliver_each_message_once() {
    let hosts = [DaemonProc::start(None), DaemonProc::start(None), DaemonProc::start(None)];
    let ports = [free_port(), free_port(), free_port()];
    let names = ["host-a", "host-b", "host-c"];
    let extra = "[[export]]\nservices = [\"ring.*\"]\ntopics = [\"ring.t\"]\n[[import]]\nservices = [\"ring.*\"]\ntopics = [\"ring.*\"]";
    // A → B → C → A.
    let bridges: Vec<BridgeProc> = (0..3)
        .map(|i| BridgeProc::start(hosts[i].socket(), names[i], Some(ports[i]), &[ports[(i + 1) % 3]], extra))
        .collect();
    let logs: Vec<&BridgeProc> = bridges.iter().collect();
    let _server = Server::start(hosts[0].socket(), "ring.svc", "A");
    let buses: Vec<Bus> = hosts.iter().map(|h| h.connect()).collect();
    // B and C see A's instance once each, through A; nobody re-exports it.
    await_remote(&buses[1], "ring.svc", &["host-a"], &logs);
    await_remote(&buses[2], "ring.svc", &["host-a"], &logs);
    assert!(remote_vias(&buses[0], "ring.svc").is_empty());
    for bus in &buses[1..] {
        let r = bus.resolve("ring.svc").unwrap();
        assert_eq!(&*bus.call(&r, b"x", SOON).unwrap(), b"A:x");
    }
    // Topics: a publication on A reaches B and C once each.
    let subs: Vec<_> = hosts.iter().map(|h| count_publications(h.socket(), "ring.t")).collect();
    let publisher = buses[0].publisher("ring.t").unwrap();
    let ok = eventually(SOON, || {
        let _ = publisher.publish(b"probe");
        std::thread::sleep(Duration::from_millis(50));
        subs[1..].iter().all(|s| s.0.load(Ordering::Acquire) > 0).then_some(())
    });
    assert!(ok.is_some(), "no publication crossed the ring");
    std::thread::sleep(Duration::from_millis(300));
    let base: Vec<u64> = subs.iter().map(|s| s.0.load(Ordering::Acquire)).collect();
    const N: u64 = 30;
    for i in 0..N {
        // Inline and in a chunk: a republisher publishes each its own way.
        let body = if i % 2 == 0 { format!("m-{i}").into_bytes() } else { vec![i as u8; 4096] };
        publisher.publish(&body).unwrap();
    }
    let all = eventually(SOON, || {
        subs.iter().enumerate().all(|(i, s)| s.0.load(Ordering::Acquire) >= base[i] + N).then_some(())
    });
    assert!(all.is_some());
    std::thread::sleep(Duration::from_millis(700));
    for (i, s) in subs.iter().enumerate() {
        assert_eq!(s.0.load(Ordering::Acquire) - base[i], N, "host {i} got a message more than once");
    }
    for s in subs {
        s.1.store(true, Ordering::Release);
        let _ = s.2.join();
    }
    // Still no instance went round.
    assert_eq!(remote_vias(&buses[1], "ring.svc"), vec!["host-a".to_string()]);
    assert_eq!(remote_vias(&buses[2], "ring.svc"), vec!["host-a".to_string()]);
}

/// Calls `name` on `socket` back to back until stopped; counts answers by
/// their first byte and failures by kind.
struct Caller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(Vec<u8>, Vec<Error>)>>,
    answers: Arc<AtomicU64>,
}

impl Caller {
    fn start(socket: &Path, name: &str) -> Caller {
        let bus = Bus::connect_to(socket).unwrap();
        let route = bus.resolve(name).unwrap();
        let (stop, answers) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, n) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            let (mut firsts, mut errors) = (Vec::new(), Vec::new());
            while !s.load(Ordering::Acquire) {
                match bus.call(&route, b"ping", Duration::from_secs(10)) {
                    Ok(a) => {
                        firsts.push(a.first().copied().unwrap_or(0));
                        n.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => errors.push(e),
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (firsts, errors)
        });
        Caller { stop, thread: Some(thread), answers }
    }

    /// Waits until `more` answers came after now.
    fn await_answers(&self, more: u64) {
        let base = self.answers.load(Ordering::Acquire);
        assert!(eventually(SOON, || (self.answers.load(Ordering::Acquire) >= base + more).then_some(())).is_some());
    }

    fn finish(mut self) -> (Vec<u8>, Vec<Error>) {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn a_service_moves_from_host_a_to_host_b_under_steady_calls() {
    let (a, b) = (DaemonProc::start(None), DaemonProc::start(None));
    let port = free_port();
    let ba = BridgeProc::start(a.socket(), "host-a", Some(port), &[], "[[import]]\nservices = [\"kv.*\"]");
    let bb = BridgeProc::start(b.socket(), "host-b", None, &[port], "[[export]]\nservices = [\"kv.*\"]");
    let local = Server::start(a.socket(), "kv.store", "A");
    let caller = Caller::start(a.socket(), "kv.store");
    caller.await_answers(20);
    // B's instance comes up; A keeps using its local one (local first).
    let remote = Server::start(b.socket(), "kv.store", "B");
    await_remote(&a.connect(), "kv.store", &["host-b"], &[&ba, &bb]);
    caller.await_answers(50);
    assert_eq!(remote.served.load(Ordering::Acquire), 0, "a remote instance stands in only while no local one serves");
    // A's instance drains and leaves: the calls go to B, and none fails.
    local.stop();
    caller.await_answers(100);
    // Back: a local instance in a process of its own, then killed with kill -9.
    let (peer, _) = Peer::ready(a.socket(), &["serve", "kv.store"]);
    let served_b = remote.served.load(Ordering::Acquire);
    caller.await_answers(50);
    let b_meanwhile = remote.served.load(Ordering::Acquire) - served_b;
    peer.kill9();
    caller.await_answers(100);
    let (firsts, errors) = caller.finish();
    let from_b = firsts.iter().filter(|&&c| c == b'B').count();
    assert!(from_b >= 200, "{from_b} answers from B");
    assert!(
        firsts.contains(&b'A') && firsts.contains(&b'g'),
        "the local instances served (g: the peer's reversed ping)"
    );
    // Calls to B while the peer served: only those sent before it registered.
    assert!(b_meanwhile <= 2, "{b_meanwhile} calls went to B while a local instance served");
    // The drain lost nothing; the kill -9 at most the one call in flight.
    assert!(errors.len() <= 1, "failed calls: {errors:?}");
    assert!(errors.iter().all(|e| *e == Error::PeerGone), "{errors:?}");
}

#[test]
fn a_killed_bridge_and_a_killed_remote_daemon_take_their_instances_along() {
    let a = DaemonProc::start(None);
    let port = free_port();
    let ba = BridgeProc::start(a.socket(), "host-a", Some(port), &[], "[[import]]\nservices = [\"kv.*\"]");
    let bus = a.connect();
    for round in ["bridge", "daemon"] {
        let bdir = TempDir::new("host-b");
        let bsock = bdir.path().join("bus.sock");
        let mut bd = start_daemon_at(&bsock, &bdir.path().join("hybusd.log"));
        let mut bb = BridgeProc::start(&bsock, "host-b", None, &[port], "[[export]]\nservices = [\"kv.*\"]");
        let server = Server::start(&bsock, "kv.store", "B");
        await_remote(&bus, "kv.store", &["host-b"], &[&ba, &bb]);
        let route = bus.resolve("kv.store").unwrap();
        assert_eq!(&*bus.call(&route, b"1", SOON).unwrap(), b"B:1");
        // A call in flight: the server holds it.
        let held = bus.begin_call(&route, b"hold", SOON).unwrap();
        assert!(eventually(SOON, || (server.served.load(Ordering::Acquire) >= 2).then_some(())).is_some());
        let t0 = Instant::now();
        match round {
            "bridge" => bb.kill9(),
            _ => {
                let _ = bd.kill();
                let _ = bd.wait();
            }
        }
        assert_eq!(held.wait().unwrap_err(), Error::PeerGone, "{round}: the call in flight");
        let gone = eventually(SOON, || remote_vias(&bus, "kv.store").is_empty().then(|| t0.elapsed()));
        let gone = gone.unwrap_or_else(|| panic!("{round}: the remote instance stayed; A:\n{}", ba.log_text()));
        // The bound of item 7 (the liveliness timeout), with room for a loaded machine.
        assert!(gone < Duration::from_millis(LIVELINESS_MS) + Duration::from_secs(3), "{round}: gone after {gone:?}");
        // Later calls fail fast: no instance.
        assert_eq!(bus.call(&route, b"2", SOON).unwrap_err(), Error::NoInstance);
        drop(server);
        let _ = bd.kill();
        let _ = bd.wait();
    }
}

#[test]
fn bridges_declare_everything_again_after_a_daemon_restart() {
    let adir = TempDir::new("host-a");
    let asock = adir.path().join("bus.sock");
    let mut ad = start_daemon_at(&asock, &adir.path().join("hybusd.log"));
    let b = DaemonProc::start(None);
    let port = free_port();
    let ba = BridgeProc::start(&asock, "host-a", Some(port), &[], "[[import]]\nservices = [\"kv.*\"]");
    let bb = BridgeProc::start(b.socket(), "host-b", None, &[port], "[[export]]\nservices = [\"kv.*\"]");
    let _server = Server::start(b.socket(), "kv.store", "B");
    await_remote(&Bus::connect_to(&asock).unwrap(), "kv.store", &["host-b"], &[&ba, &bb]);
    // A's daemon restarts: the bridge reconnects and registers the remote instance again.
    let _ = ad.kill();
    let _ = ad.wait();
    let _ = std::fs::remove_file(&asock);
    ad = start_daemon_at(&asock, &adir.path().join("hybusd2.log"));
    let bus = Bus::connect_to(&asock).unwrap();
    await_remote(&bus, "kv.store", &["host-b"], &[&ba, &bb]);
    let route = bus.resolve("kv.store").unwrap();
    assert_eq!(&*bus.call(&route, b"again", SOON).unwrap(), b"B:again");
    let _ = ad.kill();
    let _ = ad.wait();
}

#[test]
fn an_answer_larger_than_the_local_pool_is_a_clear_error() {
    let small = "[[pool]]\nchunk_size = 4096\ncount = 64\n";
    let (a, b) = (DaemonProc::start(Some(small)), DaemonProc::start(None));
    let port = free_port();
    let ba = BridgeProc::start(a.socket(), "host-a", Some(port), &[], "[[import]]\nservices = [\"kv.*\"]");
    let bb = BridgeProc::start(b.socket(), "host-b", None, &[port], "[[export]]\nservices = [\"kv.*\"]");
    let _server = Server::start(b.socket(), "kv.store", "B");
    let bus = a.connect();
    await_remote(&bus, "kv.store", &["host-b"], &[&ba, &bb]);
    let route = bus.resolve("kv.store").unwrap();
    assert_eq!(bus.call(&route, b"size 4000", SOON).unwrap().len(), 4000);
    match bus.call(&route, b"size 100000", SOON) {
        Err(Error::Service { message: m, .. }) => assert!(m.contains("100000") && m.contains("4096"), "{m}"),
        other => panic!("{other:?}"),
    }
    // And the bridge still serves.
    assert_eq!(&*bus.call(&route, b"ok", SOON).unwrap(), b"B:ok");
}

#[test]
fn a_flood_of_bad_publications_from_a_peer_is_logged_a_few_times_and_harms_nothing() {
    use zenoh::Wait;
    let b = DaemonProc::start(None);
    let port = free_port();
    let bb = BridgeProc::start(b.socket(), "host-b", Some(port), &[], "[[import]]\ntopics = [\"h.*\"]");
    let (on_b, stop, t) = count_publications(b.socket(), "h.t");
    // A raw Zenoh peer, configured as a bridge is (loopback, scouting off),
    // that claims to be bridge "evil" and puts batches whose lengths do not
    // add up: each is dropped, and would be a warning.
    let config = hybus_bridge::Config {
        connect: vec![format!("tcp/127.0.0.1:{port}")],
        ..hybus_bridge::Config::parse("").unwrap()
    };
    let session = zenoh::open(config.zenoh().unwrap()).wait().expect("open a Zenoh session");
    let key = hybus_bridge::keys::topic_key("h.t", "evil");
    let bogus = hybus_bridge::wire::encode_batch([4usize, 4].into_iter());
    const FLOOD: usize = 2000;
    // Until the bridge's subscription is known to this peer, puts go nowhere:
    // put good ones until one arrives, then the flood, then good ones again.
    let joined = eventually(SOON, || {
        session.put(&key, b"good".to_vec()).wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        (on_b.load(Ordering::Acquire) > 0).then_some(())
    });
    assert!(joined.is_some(), "B:\n{}", bb.log_text());
    for _ in 0..FLOOD {
        session.put(&key, vec![0u8; 10]).attachment(bogus.clone()).wait().unwrap();
    }
    let before = on_b.load(Ordering::Acquire);
    let after = eventually(SOON, || {
        session.put(&key, b"good".to_vec()).wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        (on_b.load(Ordering::Acquire) > before).then_some(())
    });
    assert!(after.is_some(), "the bridge stopped republishing after the flood:\n{}", bb.log_text());
    std::thread::sleep(Duration::from_millis(200));
    let warned = bb.log_text().matches("a publication from another host is dropped").count();
    assert!(
        (1..=hybus_bridge::ratelog::BURST as usize).contains(&warned),
        "{warned} warnings for {FLOOD} dropped puts:\n{}",
        bb.log_text()
    );
    stop.store(true, Ordering::Release);
    let got = t.join().unwrap();
    assert!(got.iter().all(|p| p == b"good"), "only the good publications are republished");
}
