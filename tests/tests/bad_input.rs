//! Hostile and broken clients against the real `hybusd` binary (DESIGN §2,
//! §7): garbage, truncated and oversized datagrams, wrong versions,
//! requests out of order, stray file descriptors, silent clients, clients
//! that never read, connection floods, bad names. Each gets a clear error
//! or a disconnect of that one client, and after each case the daemon still
//! serves everyone else: a client connected before keeps calling, a fresh
//! client can register, resolve and call through a `serve` peer, and the
//! daemon process is still running with no descriptor leaked.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use hybus::{Bus, Error, Route};
use hybus_layout::control::{
    self, ClientMessage, DaemonMessage, ErrorCode, Preamble, Reply, Request, MAX_FDS, MAX_MESSAGE, PROTOCOL_VERSION,
};
use hybus_layout::header::LAYOUT_HASH;
use hybus_os::socket::{ControlSocket, RecvError};
use hybus_tests::{eventually, DaemonProc, Peer, OPEN_TO_ALL, SOON};

/// A daemon with a `serve` peer and a client that was there before the
/// misbehaviour started.
struct Bench {
    d: DaemonProc,
    _server: Peer,
    bystander: Bus,
    route: Route,
    fds: usize,
    round: u32,
}

impl Bench {
    fn start(config: Option<&str>) -> Bench {
        let d = DaemonProc::start(config);
        let (server, _) = Peer::ready(d.socket(), &["serve", "bad.echo"]);
        let bystander = d.connect();
        let route = bystander.resolve("bad.echo").unwrap();
        assert_eq!(&*bystander.call(&route, b"ab", SOON).unwrap(), b"ba");
        let mut b = Bench { fds: 0, d, _server: server, bystander, route, round: 0 };
        b.settle();
        b.fds = b.daemon_fds();
        b
    }

    /// Waits until only the server and the bystander are connected.
    fn settle(&self) {
        let ok = eventually(SOON, || (self.bystander.status().ok()?.clients == 2).then_some(()));
        assert!(ok.is_some(), "clients did not go: {:?}", self.bystander.status());
    }

    fn daemon_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.d.pid())).map(|r| r.count()).unwrap_or(0)
    }

    fn raw(&self) -> ControlSocket {
        ControlSocket::connect(self.d.socket()).expect("connect")
    }

    /// A raw connection past the handshake.
    fn raw_hello(&self) -> ControlSocket {
        let s = self.raw();
        send(&s, &hello(PROTOCOL_VERSION, LAYOUT_HASH));
        let (m, fds) = recv(&s).expect("Welcome");
        assert!(matches!(m, DaemonMessage::Reply { id: 1, result: Ok(Reply::Welcome(_)) }), "{m:?}");
        assert_eq!(fds.len(), 4);
        s
    }

    /// Everyone else is still served, and nothing of the bad clients stays.
    fn still_serving(&mut self) {
        assert!(self.d.is_running(), "hybusd died; log:\n{}", self.d.log_text());
        assert_eq!(&*self.bystander.call(&self.route, b"abc", SOON).unwrap(), b"cba", "the bystander lost service");
        let fresh = self.d.connect();
        self.round += 1;
        let svc = fresh.register(&format!("bad.fresh{}", self.round)).expect("a fresh client registers");
        let route = fresh.resolve("bad.echo").unwrap();
        assert_eq!(&*fresh.call(&route, b"xyz", SOON).unwrap(), b"zyx");
        drop(svc);
        drop(fresh);
        self.settle();
        let want = self.fds;
        let fds = eventually(SOON, || {
            let n = self.daemon_fds();
            (n <= want).then_some(n)
        });
        assert!(fds.is_some(), "daemon holds {} descriptors, {} before", self.daemon_fds(), want);
    }
}

fn hello(version: u32, layout_hash: u64) -> ClientMessage {
    ClientMessage {
        id: 1,
        request: Request::Hello { version, layout_hash, label: "bad-input".into(), reuse_pool: false },
    }
}

/// `m` encoded; a Hello starts with this build's preamble, as a client's
/// first message must (a later one may, too).
fn bytes(m: &ClientMessage) -> Vec<u8> {
    match m.request {
        Request::Hello { .. } => control::encode_first(m).expect("encode"),
        _ => control::encode(m).expect("encode").to_vec(),
    }
}

fn send(s: &ControlSocket, m: &ClientMessage) {
    s.send(&bytes(m), &[]).expect("send");
}

/// The next message from the daemon; panics if none comes within [`SOON`].
fn recv(s: &ControlSocket) -> Result<(DaemonMessage, Vec<OwnedFd>), RecvError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfd = [PollFd::new(s.fd(), PollFlags::POLLIN)];
    let n = poll(&mut pfd, PollTimeout::try_from(SOON.as_millis() as i32).unwrap()).expect("poll");
    assert!(n > 0, "the daemon neither answered nor closed");
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = s.recv(&mut buf)?;
    let m = control::decode::<DaemonMessage>(&buf[..n]).expect("the daemon sent garbage");
    Ok((m, fds))
}

/// Expects an error reply with `code` (and no descriptors); returns its message.
fn expect_error(s: &ControlSocket, code: ErrorCode) -> String {
    match recv(s) {
        Ok((DaemonMessage::Reply { result: Err(e), .. }, fds)) => {
            assert_eq!(e.code, code, "{}", e.message);
            assert!(fds.is_empty());
            assert!(!e.message.is_empty());
            e.message
        }
        other => panic!("expected a {code:?} error, got {other:?}"),
    }
}

fn expect_closed(s: &ControlSocket) {
    match recv(s) {
        Err(RecvError::Closed) => {}
        other => panic!("expected the daemon to close the connection, got {other:?}"),
    }
}

/// Deterministic pseudo-random bytes.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (*seed >> 33) as u8
        })
        .collect()
}

#[test]
fn garbage_datagrams_disconnect_only_the_sender() {
    let mut b = Bench::start(None);
    let mut seed = 0x5eed;
    for len in [1, 2, 3, 7, 8, 16, 24, 31, 64, 100, 1000, 4096, MAX_MESSAGE] {
        // Before the handshake...
        let s = b.raw();
        s.send(&garbage(&mut seed, len), &[]).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
        // ...and after it.
        let s = b.raw_hello();
        s.send(&garbage(&mut seed, len), &[]).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
    }
    // An empty datagram looks like a hang-up to SOCK_SEQPACKET readers: the
    // sender is dropped, with or without a word.
    for welcomed in [false, true] {
        let s = if welcomed { b.raw_hello() } else { b.raw() };
        s.send(&[], &[]).expect("send");
        match recv(&s) {
            Err(RecvError::Closed) => {}
            Ok((DaemonMessage::Reply { result: Err(e), .. }, _)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
                expect_closed(&s);
            }
            other => panic!("an empty datagram: {other:?}"),
        }
    }
    b.still_serving();
}

#[test]
fn truncated_messages_disconnect_only_the_sender() {
    let mut b = Bench::start(None);
    let full = bytes(&hello(PROTOCOL_VERSION, LAYOUT_HASH));
    for cut in [1, 4, 8, full.len() / 2, full.len() - 1] {
        let s = b.raw();
        s.send(&full[..full.len() - cut], &[]).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
    }
    let register = bytes(&ClientMessage {
        id: 2,
        request: Request::Register {
            name: "bad.truncated".into(),
            version: 1,
            weight: 1,
            exclusive: false,
            replace: false,
        },
    });
    for cut in [1, register.len() / 2] {
        let s = b.raw_hello();
        s.send(&register[..register.len() - cut], &[]).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
    }
    match b.bystander.resolve("bad.truncated") {
        Err(Error::NotFound(_)) => {}
        other => panic!("a truncated Register registered something: {other:?}"),
    }
    b.still_serving();
}

#[test]
fn oversized_datagrams_disconnect_only_the_sender() {
    let mut b = Bench::start(None);
    for len in [MAX_MESSAGE + 1, 2 * MAX_MESSAGE] {
        let s = b.raw();
        s.send(&vec![0xa5; len], &[]).expect("send");
        let msg = expect_error(&s, ErrorCode::BadRequest);
        assert!(msg.contains("larger than"), "{msg}");
        expect_closed(&s);
        let s = b.raw_hello();
        s.send(&vec![0x5a; len], &[]).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
    }
    b.still_serving();
}

#[test]
fn wrong_version_or_layout_is_refused_clearly() {
    let mut b = Bench::start(None);
    for (version, hash) in
        [(PROTOCOL_VERSION + 1, LAYOUT_HASH), (0, LAYOUT_HASH), (PROTOCOL_VERSION, LAYOUT_HASH ^ 1), (u32::MAX, 0)]
    {
        let s = b.raw();
        send(&s, &hello(version, hash));
        match recv(&s) {
            Ok((DaemonMessage::Reply { id: 1, result: Err(e) }, fds)) => {
                assert_eq!(e.code, ErrorCode::VersionMismatch, "{}", e.message);
                assert!(fds.is_empty(), "segments handed to a mismatched client");
                assert!(
                    e.message.contains(&version.to_string()),
                    "the message does not say which version: {}",
                    e.message
                );
            }
            other => panic!("expected VersionMismatch, got {other:?}"),
        }
        expect_closed(&s);
    }
    b.still_serving();
}

/// A client of another build (another protocol, control schema or memory
/// layout in its preamble) gets the daemon's preamble back, raw, and is
/// closed: it can say which versions met instead of misreading a reply.
/// A first message without a preamble gets a plain error.
#[test]
fn another_build_is_told_which_build_it_met() {
    let mut b = Bench::start(None);
    let ours = Preamble::OURS;
    for theirs in [
        Preamble { protocol: ours.protocol + 1, ..ours },
        Preamble { schema: ours.schema ^ 1, ..ours },
        Preamble { layout: ours.layout ^ 1, ..ours },
    ] {
        let s = b.raw();
        let mut first = theirs.to_bytes().to_vec();
        first.extend_from_slice(&control::encode(&hello(PROTOCOL_VERSION, LAYOUT_HASH)).expect("encode"));
        s.send(&first, &[]).expect("send");
        assert!(s.wait_readable(SOON).unwrap_or(false), "no answer to {theirs}");
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, fds) = s.recv(&mut buf).expect("recv");
        assert_eq!(Preamble::parse(&buf[..n]), Some(ours), "the answer to {theirs}");
        assert!(fds.is_empty(), "segments handed to another build");
        expect_closed(&s);
    }
    let s = b.raw();
    s.send(&control::encode(&hello(PROTOCOL_VERSION, LAYOUT_HASH)).expect("encode"), &[]).expect("send");
    assert!(expect_error(&s, ErrorCode::BadRequest).contains("preamble"));
    expect_closed(&s);
    b.still_serving();
}

/// The client library, met by a daemon of another build, says so: which
/// versions met, not a misread reply.
#[test]
fn the_client_names_both_builds_on_a_mismatch() {
    use nix::sys::socket::{accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = hybus_tests::TempDir::new("mismatch");
    let path = dir.path().join("bus.sock");
    let listener = socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).unwrap();
    bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
    listen(&listener, Backlog::new(1).unwrap()).unwrap();
    let theirs = Preamble { schema: Preamble::OURS.schema ^ 0xff, ..Preamble::OURS };
    let fake = std::thread::spawn(move || {
        // SAFETY: accept returned a new descriptor that nothing else owns.
        let conn = ControlSocket::from_fd(unsafe { OwnedFd::from_raw_fd(accept(listener.as_raw_fd()).unwrap()) });
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (n, _) = conn.recv(&mut buf).unwrap();
        assert_eq!(Preamble::parse(&buf[..n]), Some(Preamble::OURS), "the client's first message");
        conn.send(&theirs.to_bytes(), &[]).unwrap();
    });
    match Bus::connect_to(&path) {
        Err(Error::VersionMismatch(m)) => {
            assert!(m.contains(&format!("{:#018x}", theirs.schema)), "{m}");
            assert!(m.contains(&format!("{:#018x}", Preamble::OURS.schema)), "{m}");
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    fake.join().unwrap();
}

#[test]
fn requests_before_hello_are_refused() {
    let mut b = Bench::start(None);
    for request in [
        Request::Status,
        Request::List,
        Request::Register { name: "bad.early".into(), version: 1, weight: 1, exclusive: false, replace: false },
        Request::Resolve { name: "bad.echo".into() },
    ] {
        let s = b.raw();
        // With the preamble: past that check, to the one this is about.
        s.send(&control::encode_first(&ClientMessage { id: 9, request }).expect("encode"), &[]).expect("send");
        let msg = expect_error(&s, ErrorCode::BadRequest);
        assert!(msg.contains("Hello"), "{msg}");
        expect_closed(&s);
    }
    match b.bystander.resolve("bad.early") {
        Err(Error::NotFound(_)) => {}
        other => panic!("a Register before Hello registered something: {other:?}"),
    }
    b.still_serving();
}

#[test]
fn hello_twice_is_refused_but_the_connection_stays_usable() {
    let mut b = Bench::start(None);
    let s = b.raw_hello();
    send(&s, &ClientMessage { id: 2, ..hello(PROTOCOL_VERSION, LAYOUT_HASH) });
    match recv(&s) {
        Ok((DaemonMessage::Reply { id: 2, result: Err(e) }, fds)) => {
            assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message);
            assert!(fds.is_empty(), "a second set of segments was handed out");
        }
        other => panic!("expected BadRequest for the second Hello, got {other:?}"),
    }
    send(&s, &ClientMessage { id: 3, request: Request::Status });
    match recv(&s) {
        Ok((DaemonMessage::Reply { id: 3, result: Ok(Reply::Status(st)) }, _)) => assert_eq!(st.clients, 3),
        other => panic!("the connection is not usable after a second Hello: {other:?}"),
    }
    drop(s);
    b.still_serving();
}

/// A pipe whose write end we hand out; its read end sees EOF once every
/// copy of the write end, ours and the daemon's, is closed.
fn pipe() -> (OwnedFd, OwnedFd) {
    // CLOEXEC: processes other tests spawn meanwhile must not inherit it.
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe")
}

#[track_caller]
fn assert_eof(r: &OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut pfd = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut pfd, PollTimeout::try_from(SOON.as_millis() as i32).unwrap()).expect("poll");
    assert!(n > 0, "the daemon kept a descriptor a client attached");
    let mut buf = [0u8; 8];
    assert_eq!(nix::unistd::read(r, &mut buf).expect("read"), 0, "not EOF");
}

#[test]
fn attached_descriptors_are_closed_and_ignored() {
    let mut b = Bench::start(None);
    // On Hello: still welcomed, the descriptor closed.
    let (r, w) = pipe();
    let s = b.raw();
    s.send(&bytes(&hello(PROTOCOL_VERSION, LAYOUT_HASH)), &[w.as_fd()]).expect("send");
    drop(w);
    match recv(&s) {
        Ok((DaemonMessage::Reply { result: Ok(Reply::Welcome(_)), .. }, fds)) => assert_eq!(fds.len(), 4),
        other => panic!("expected Welcome, got {other:?}"),
    }
    assert_eof(&r);
    // On a later request: answered as usual, the descriptors closed.
    let (r, w) = pipe();
    let ev = nix::sys::eventfd::EventFd::new().expect("eventfd");
    s.send(&bytes(&ClientMessage { id: 2, request: Request::List }), &[w.as_fd(), ev.as_fd(), w.as_fd()])
        .expect("send");
    drop(w);
    match recv(&s) {
        Ok((DaemonMessage::Reply { id: 2, result: Ok(Reply::Services(_)) }, fds)) => assert!(fds.is_empty()),
        other => panic!("expected the service list, got {other:?}"),
    }
    assert_eof(&r);
    drop(s);
    // Garbage with descriptors: same.
    let (r, w) = pipe();
    let s = b.raw();
    s.send(&garbage(&mut 7, 77), &[w.as_fd()]).expect("send");
    drop(w);
    expect_error(&s, ErrorCode::BadRequest);
    expect_closed(&s);
    assert_eof(&r);
    // A Hello that claims to bring its old pool but attaches a pipe: the
    // daemon may refuse it or start afresh, but it must not keep the pipe.
    let (r, w) = pipe();
    let s = b.raw();
    let mut claim = hello(PROTOCOL_VERSION, LAYOUT_HASH);
    if let Request::Hello { reuse_pool, .. } = &mut claim.request {
        *reuse_pool = true;
    }
    s.send(&bytes(&claim), &[w.as_fd()]).expect("send");
    drop(w);
    match recv(&s) {
        Ok((DaemonMessage::Reply { result: Err(e), .. }, _)) => {
            assert!(!e.message.is_empty());
            expect_closed(&s);
        }
        Ok((DaemonMessage::Reply { result: Ok(Reply::Welcome(_)), .. }, _)) => {}
        other => panic!("a pipe offered as a pool: {other:?}"),
    }
    drop(s);
    assert_eof(&r);
    // The same claim with no descriptor at all.
    let s = b.raw();
    s.send(&bytes(&claim), &[]).expect("send");
    match recv(&s) {
        Ok((DaemonMessage::Reply { result: Err(e), .. }, _)) => {
            assert!(!e.message.is_empty());
            expect_closed(&s);
        }
        Ok((DaemonMessage::Reply { result: Ok(Reply::Welcome(_)), .. }, _)) => {}
        other => panic!("a pool claimed and not attached: {other:?}"),
    }
    drop(s);
    // A datagram of descriptors and no bytes.
    let (r, w) = pipe();
    let s = b.raw();
    s.send(&[], &[w.as_fd()]).expect("send");
    drop(w);
    expect_error(&s, ErrorCode::BadRequest);
    expect_closed(&s);
    assert_eof(&r);
    b.still_serving();
}

/// More descriptors than [`MAX_FDS`] do not fit the daemon's control buffer
/// (`MSG_CTRUNC`): a protocol violation, and the ones that did arrive must
/// be closed, or any client can exhaust the daemon's descriptor table.
#[test]
fn more_descriptors_than_max_fds_are_closed() {
    let mut b = Bench::start(None);
    let before = b.daemon_fds();
    let (r, w) = pipe();
    for _ in 0..4 {
        let s = b.raw_hello();
        let many: Vec<_> = (0..MAX_FDS + 2).map(|_| w.as_fd()).collect();
        s.send(&bytes(&ClientMessage { id: 2, request: Request::Status }), &many).expect("send");
        expect_error(&s, ErrorCode::BadRequest);
        expect_closed(&s);
    }
    drop(w);
    b.settle();
    let leaked = b.daemon_fds().saturating_sub(before);
    assert_eq!(leaked, 0, "the daemon leaked {leaked} descriptors");
    assert_eof(&r);
    b.still_serving();
}

#[test]
fn silent_clients_are_dropped_after_the_hello_timeout() {
    let mut b = Bench::start(Some("[limits]\nhello_timeout_ms = 300\n"));
    let silent: Vec<ControlSocket> = (0..5).map(|_| b.raw()).collect();
    // Others keep working while the silent ones wait.
    assert_eq!(&*b.bystander.call(&b.route, b"12", SOON).unwrap(), b"21");
    for s in &silent {
        let msg = expect_error(s, ErrorCode::BadRequest);
        assert!(msg.contains("Hello"), "{msg}");
        expect_closed(s);
    }
    // A client that is slow but in time is still welcome: the deadline is
    // per connection, and a welcomed one has none.
    let s = b.raw_hello();
    std::thread::sleep(Duration::from_millis(600));
    send(&s, &ClientMessage { id: 2, request: Request::List });
    assert!(
        matches!(recv(&s), Ok((DaemonMessage::Reply { id: 2, result: Ok(Reply::Services(_)) }, _))),
        "a welcomed client was dropped by the hello timeout"
    );
    drop(s);
    drop(silent);
    b.still_serving();
}

#[test]
fn a_client_that_never_reads_is_disconnected_not_waited_for() {
    let mut b = Bench::start(None);
    let s = b.raw_hello();
    send(&s, &ClientMessage { id: 2, request: Request::Watch { prefix: "".into() } });
    // Every registration sends the watcher two events; it reads none.
    let churn = b.d.connect();
    let dropped = eventually(SOON, || {
        for _ in 0..50 {
            drop(churn.register("bad.churn").expect("register"));
        }
        b.d.log_text().contains("does not read its control socket").then_some(())
    });
    assert!(dropped.is_some(), "the daemon still queues for a client that does not read; log:\n{}", b.d.log_text());
    // What it had been sent is still readable, then the end.
    loop {
        match recv(&s) {
            Ok(_) => continue,
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    drop(churn);
    b.still_serving();
}

#[test]
fn connection_flood_opened_and_closed() {
    let mut b = Bench::start(Some("[limits]\nconnections_per_uid = 64\n"));
    for i in 0..2000 {
        let s = b.raw();
        if i % 2 == 1 {
            // Half of them say Hello first and leave without waiting.
            let _ = s.send(&bytes(&hello(PROTOCOL_VERSION, LAYOUT_HASH)), &[]);
        }
        drop(s);
    }
    // Every one of them was counted out again: the quota is free.
    b.settle();
    // And nothing of them keeps the daemon busy.
    let ticks = b.d.ticks_during(Duration::from_secs(1));
    assert!(ticks < 20, "idle daemon used {ticks} ticks in 1 s after the flood");
    b.still_serving();
    let held: Vec<Bus> = (0..60).map(|_| b.d.connect()).collect();
    drop(held);
    b.still_serving();
}

#[test]
fn connection_flood_held_open_hits_the_quota() {
    const LIMIT: u32 = 64;
    let mut b = Bench::start(Some(&format!("[limits]\nconnections_per_uid = {LIMIT}\n")));
    // The server and the bystander hold two of the uid's connections.
    let held: Vec<Bus> = (0..LIMIT - 2).map(|_| b.d.connect()).collect();
    assert_eq!(held[0].status().unwrap().clients, LIMIT);
    // Connection 65 and later: a clear error at Hello (the quota counts
    // connections that said Hello; silent ones have a budget of their own,
    // `tests/tests/floods.rs`), then closed.
    for _ in 0..3 {
        let s = b.raw();
        send(&s, &hello(PROTOCOL_VERSION, LAYOUT_HASH));
        let msg = expect_error(&s, ErrorCode::QuotaExceeded);
        assert!(msg.contains(&LIMIT.to_string()), "{msg}");
        expect_closed(&s);
    }
    // (Which error a full client sees is racy: see
    // quota_refusal_survives_a_hello_already_sent.)
    assert!(Bus::connect_to(b.d.socket()).is_err(), "no quota on connections");
    // Those in get served meanwhile, and nobody was counted twice.
    assert_eq!(&*held[0].call(&b.route, b"ok", SOON).unwrap(), b"ko");
    assert_eq!(held[0].status().unwrap().clients, LIMIT);
    drop(held);
    b.settle();
    b.still_serving();
    let again: Vec<Bus> = (0..LIMIT - 3).map(|_| b.d.connect()).collect();
    drop(again);
    b.still_serving();
}

/// Stops the daemon (SIGSTOP) and waits until it is stopped.
fn stop(d: &DaemonProc) {
    d.signal(nix::sys::signal::Signal::SIGSTOP);
    let stopped = eventually(SOON, || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
        (state == "T").then_some(())
    });
    assert!(stopped.is_some(), "hybusd did not stop");
}

/// Waits until the daemon has closed its end of `s`.
fn wait_hangup(s: &ControlSocket) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let hung_up = eventually(SOON, || {
        let mut pfd = [PollFd::new(s.fd(), PollFlags::empty())];
        poll(&mut pfd, PollTimeout::try_from(100).unwrap()).ok()?;
        let r = pfd[0].revents()?;
        r.contains(PollFlags::POLLHUP).then_some(())
    });
    assert!(hung_up.is_some(), "the daemon did not close the connection");
}

/// A refused client has usually sent its Hello before the daemon accepts
/// and closes: closing a Unix socket with unread data makes the peer's
/// next recv fail with ECONNRESET before it may read the queued reply, and
/// `ControlSocket::recv` takes that for the end. The client then reports
/// "connection closed by peer" instead of the quota.
#[test]
fn quota_refusal_survives_a_hello_already_sent() {
    use nix::sys::signal::Signal;
    const LIMIT: u32 = 8;
    let mut b = Bench::start(Some(&format!("[limits]\nconnections_per_uid = {LIMIT}\n")));
    let held: Vec<Bus> = (0..LIMIT - 2).map(|_| b.d.connect()).collect();
    // Make sure the Hello is queued before the daemon accepts.
    stop(&b.d);
    let s = b.raw();
    send(&s, &hello(PROTOCOL_VERSION, LAYOUT_HASH));
    b.d.signal(Signal::SIGCONT);
    // Read only once the daemon has closed its end (a client cannot know
    // when that happens; reading earlier just happens to win the race).
    wait_hangup(&s);
    expect_error(&s, ErrorCode::QuotaExceeded);
    expect_closed(&s);
    // The same through the client library (racy: fails most of the time).
    stop(&b.d);
    let pending = {
        let path = b.d.socket().to_owned();
        std::thread::spawn(move || Bus::connect_to(path).map(drop))
    };
    std::thread::sleep(Duration::from_millis(200));
    b.d.signal(Signal::SIGCONT);
    match pending.join().expect("connect thread") {
        Err(Error::QuotaExceeded(_)) => {}
        other => panic!("connection over the quota: {other:?}"),
    }
    drop(held);
    b.settle();
    b.still_serving();
}

/// Clients that send Hello and leave before the Welcome, handled in one
/// batch with clients that stay: the daemon must forget everything of the
/// ones that left. (A regression test: with io_uring, a doorbell registered
/// for a client already gone outlived its fd; the fd number then belonged to
/// another client's memfd, always readable, and the loop never slept.)
#[test]
fn clients_gone_before_the_welcome_leave_the_daemon_idle() {
    let mut b = Bench::start(None);
    let hello = bytes(&hello(PROTOCOL_VERSION, LAYOUT_HASH));
    let mut stay = Vec::new();
    for pattern in ["yyxx", "yyxxyy", "xyxy"] {
        // Queue the whole pattern while the daemon is stopped, so that one
        // batch of events handles it.
        stop(&b.d);
        for c in pattern.chars() {
            let s = b.raw();
            s.send(&hello, &[]).expect("send");
            if c == 'y' {
                stay.push(s);
            }
        }
        b.d.signal(nix::sys::signal::Signal::SIGCONT);
        let welcomed = eventually(SOON, || {
            let n = b.bystander.status().ok()?.clients as usize;
            (n == 2 + stay.len()).then_some(())
        });
        assert!(welcomed.is_some(), "{:?}", b.bystander.status());
        let ticks = b.d.ticks_during(Duration::from_secs(1));
        assert!(ticks < 20, "after {pattern:?} the idle daemon used {ticks} ticks in 1 s");
    }
    drop(stay);
    b.still_serving();
}

#[test]
fn bad_names_are_refused_and_the_connection_stays_usable() {
    const NOBODY: u32 = 65534;
    let mut b = Bench::start(Some(OPEN_TO_ALL));
    let bus = b.d.connect();
    let long = "x".repeat(300);
    let long_dotted = format!("{}.{}", "a".repeat(200), "b".repeat(100));
    for name in ["", ".", "a..b", ".a", "a.", "a b", "a/b", "ä", &long, &long_dotted] {
        match bus.register(name) {
            Err(Error::BadRequest(_)) => {}
            other => panic!("register {name:?}: {other:?}"),
        }
        match bus.resolve(name) {
            Err(Error::BadRequest(_)) => {}
            other => panic!("resolve {name:?}: {other:?}"),
        }
        match bus.subscribe(name) {
            Err(Error::BadRequest(_)) => {}
            other => panic!("subscribe {name:?}: {other:?}"),
        }
    }
    // The longest allowed name is fine.
    let max = "m".repeat(control::MAX_NAME);
    let svc = bus.register(&max).expect("a 255-byte name");
    drop(svc);
    // A name another uid serves is not ours to take (and the other way round).
    let mut thief = Peer::spawn_as(b.d.socket(), &["serve", "bad.echo"], NOBODY, NOBODY);
    let line = thief.expect_line("error");
    assert!(line.contains("already owned"), "{line}");
    let mut other = Peer::spawn_as(b.d.socket(), &["serve", "bad.nobodys"], NOBODY, NOBODY);
    other.expect_line("ready");
    match bus.register("bad.nobodys") {
        Err(Error::NameOwned(_)) => {}
        other => panic!("took a name another uid serves: {other:?}"),
    }
    drop(other);
    drop(thief);
    // The same connection still works.
    let route = bus.resolve("bad.echo").unwrap();
    assert_eq!(&*bus.call(&route, b"ok", SOON).unwrap(), b"ko");
    drop(bus);
    b.still_serving();
}

/// Names are bounded (`limits.names`): a name keeps its route while the
/// daemon runs, so without a bound a client creating topics or registering
/// fresh names would grow the daemon without end (the session fuzz target
/// saw it grow by every name it made up). Past the limit a new name is
/// refused with a quota error; the names the bus holds keep working. Topic
/// names are checked like service names.
#[test]
fn new_names_past_the_limit_are_refused() {
    let d = DaemonProc::start(Some("[limits]\nnames = 3\n"));
    let bus = d.connect();
    let svc = bus.register("names.one").unwrap();
    let _publisher = bus.publisher("names.two").unwrap();
    let _subscription = bus.subscribe("names.three").unwrap();
    assert!(matches!(bus.register("names.four"), Err(Error::QuotaExceeded(_))), "a fourth service name");
    assert!(matches!(bus.publisher("names.five"), Err(Error::QuotaExceeded(_))), "a fourth topic name");
    assert!(matches!(bus.subscribe("names.six"), Err(Error::QuotaExceeded(_))), "a fourth subscription name");
    assert!(matches!(bus.publisher("not a name!"), Err(Error::BadRequest(_))), "a malformed topic name");
    // What the bus holds still works, and a name outlives its instances with its route.
    let route = bus.resolve("names.one").unwrap();
    drop(svc);
    let again = bus.register("names.one").unwrap();
    assert_eq!(bus.resolve("names.one").unwrap().id(), route.id());
    drop(again);
    assert!(bus.publisher("names.two").is_ok());
    assert!(bus.status().is_ok(), "the daemon serves on; log:\n{}", d.log_text());
}

/// Names are charged to the uid that makes them (`limits.names_per_uid`):
/// a uid past its share gets a quota error naming it, and another uid still
/// makes names (so no uid can take every name the bus may hold).
#[test]
fn one_uid_cannot_take_every_name() {
    const NOBODY: u32 = 65534;
    let d = DaemonProc::start(Some(&format!("[limits]\nnames = 100\nnames_per_uid = 2\n{OPEN_TO_ALL}")));
    let bus = d.connect();
    let _svc = bus.register("quota.one").unwrap();
    let _publisher = bus.publisher("quota.two").unwrap();
    match bus.subscribe("quota.three") {
        Err(Error::QuotaExceeded(m)) => {
            assert!(m.contains("names_per_uid") && m.contains(&format!("uid {}", nix::unistd::getuid())), "{m}")
        }
        other => panic!("a third name for one uid: {other:?}"),
    }
    // Names that exist cost nothing more.
    let _sub = bus.subscribe("quota.two").unwrap();
    let mut other = Peer::spawn_as(d.socket(), &["serve", "quota.nobodys"], NOBODY, NOBODY);
    other.expect_line("ready");
    assert!(bus.resolve("quota.nobodys").is_ok());
}

/// Requests in flight are bounded per uid (`limits.in_flight_per_uid`): a
/// server that never answers cannot make the daemon keep an entry for every
/// request its callers send. Past the limit a request of that uid, from any
/// of its connections, is refused at once with a quota error; as the
/// exchanges end (here: the server dies), the uid may send again.
#[test]
fn requests_in_flight_are_bounded_per_uid() {
    use hybus_layout::control::DataError;
    use hybus_layout::{Descriptor, Kind};
    let d = DaemonProc::start(Some("[limits]\nin_flight_per_uid = 4\n"));
    let (holder, _) = Peer::ready(d.socket(), &["serve", "quota.hold", "hold"]);
    let (_echo, _) = Peer::ready(d.socket(), &["serve", "quota.echo"]);
    let mut raw = hybus_tests::raw::Raw::connect(d.socket().to_str().unwrap()).unwrap();
    let hold = raw.resolve("quota.hold").unwrap();
    for corr in 1..=5 {
        raw.send(&Descriptor::new(Kind::Request, hold, corr).with_inline(b"x").unwrap()).unwrap();
    }
    let refused = raw.wait_for(Kind::Error, SOON).unwrap();
    assert_eq!((refused.correlation, refused.aux), (5, DataError::QuotaExceeded as u64));
    // Another connection of the same uid is bound by the same count.
    let bus = d.connect();
    let echo = bus.resolve("quota.echo").unwrap();
    match bus.call(&echo, b"ab", SOON) {
        Err(Error::QuotaExceeded(_)) => {}
        other => panic!("a fifth request in flight for one uid: {other:?}"),
    }
    holder.kill9();
    for _ in 0..4 {
        let gone = raw.wait_for(Kind::Error, SOON).unwrap();
        assert_eq!(gone.aux, DataError::PeerGone as u64);
    }
    assert_eq!(&*bus.call(&echo, b"ab", SOON).unwrap(), b"ba");
}

/// Pools are charged to their uid (`limits.pool_bytes_per_uid`): a
/// connection whose pool would pass it is refused at Hello with a quota
/// error; one that goes gives its share back.
#[test]
fn pool_bytes_are_bounded_per_uid() {
    let pool = hybus_layout::pool::PoolGeometry::default_classes().size();
    let d = DaemonProc::start(Some(&format!("[limits]\npool_bytes_per_uid = {}\n", pool * 5 / 2)));
    let first = d.connect();
    let second = d.connect();
    match Bus::connect_to(d.socket()) {
        Err(Error::QuotaExceeded(m)) => assert!(m.contains("pool_bytes_per_uid"), "{m}"),
        other => panic!("a third pool: {other:?}"),
    }
    drop(second);
    let again = eventually(SOON, || Bus::connect_to(d.socket()).ok());
    assert!(again.is_some(), "a pool given back is not counted; log:\n{}", d.log_text());
    assert!(first.status().is_ok());
}

/// Every registration and unregistration is matched against every watch
/// of every connection: one connection may watch a bounded number of
/// prefixes, each at most a name long (asking twice is asking once).
#[test]
fn watches_are_bounded_per_connection() {
    let d = DaemonProc::start(None);
    let bus = d.connect();
    for i in 0..64 {
        bus.watch(&format!("w{i}.")).unwrap();
    }
    bus.watch("w0.").unwrap();
    assert!(matches!(bus.watch("w64."), Err(hybus::Error::QuotaExceeded(_))));
    assert!(matches!(bus.watch(&"x".repeat(300)), Err(hybus::Error::BadRequest(_))));
    // Still connected, and the watches work.
    let server = d.connect();
    let _svc = server.register("w3.svc").unwrap();
    let up = hybus_tests::eventually(SOON, || match bus.next_event(Duration::from_millis(50)) {
        Ok(Some(hybus::BusEvent::ServiceUp { name, .. })) if name == "w3.svc" => Some(()),
        _ => None,
    });
    assert!(up.is_some(), "no ServiceUp for a watched prefix");
}

/// A client that never reads its ring cannot grow the daemon's queue for
/// it without bound, whatever the daemon queues for it: here errors for
/// fires at a route with no instance, which are never refused like
/// requests. Past a fixed cap it is cut off, and the bus goes on.
#[test]
fn a_client_that_never_reads_is_cut_off_at_the_queue_cap() {
    use hybus_layout::{Descriptor, Kind};
    let d = DaemonProc::start(None);
    let bus = d.connect();
    let svc = bus.register("ovf.gone").unwrap();
    let mut raw = hybus_tests::raw::Raw::connect(d.socket().to_str().unwrap()).unwrap();
    let route = raw.resolve("ovf.gone").unwrap();
    drop(svc);
    let batch: Vec<Descriptor> =
        (0..256u64).map(|i| Descriptor::new(Kind::Fire, route, (1 << 62) | i).with_inline(b"x").unwrap()).collect();
    let end = std::time::Instant::now() + Duration::from_secs(60);
    let mut sent = 0u64;
    let mut round = 0u64;
    loop {
        round += 1;
        if round % 256 == 0 && raw.wait_closed(Duration::from_millis(1)) {
            break;
        }
        assert!(std::time::Instant::now() < end, "still connected after {sent} unread errors");
        match raw.send_batch(&batch) {
            Ok(()) => sent += 256,
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    let log = d.log_text();
    let cap = format!("it left {} descriptors unread", hybusd::session::QUEUE_CAP);
    assert!(log.contains(&cap), "cut off for another reason after {sent} fires: {log}");
    assert!(bus.status().is_ok());
}

/// Adopting a channel after a restart is asked like a channel: a caller
/// side needs the policy's leave to have one to that service, a service
/// side must serve it, the name must be a name; and a client may be a side
/// of a bounded number of channels (each costs the daemon a mapping and a
/// descriptor).
#[test]
fn adopting_a_channel_is_checked_like_asking_for_one() {
    use hybus_layout::channel::ChannelLayout;
    use hybus_layout::control::Request;
    use hybus_layout::header::SegmentKind;
    use hybus_os::segment::Segment;
    let d = DaemonProc::start(None);
    let server = d.connect();
    let _svc = server.register("adopt.svc").unwrap();
    let mut raw = hybus_tests::raw::Raw::connect(d.socket().to_str().unwrap()).unwrap();
    let layout = ChannelLayout::new(64);
    let seg = Segment::create(c"adopt-test", SegmentKind::Channel, layout.size, 64).unwrap();
    let mut adopt = |side: u8, service: &str, token: u64| {
        let request = Request::AdoptChannel { token, side, service: service.into(), peer_pid: 1 };
        raw.control_with_fds(request, &[seg.fd()]).map_err(|e| e.to_string())
    };
    let e = adopt(0, "not a name!", 1).unwrap_err();
    assert!(e.contains("contains"), "{e}");
    let e = adopt(1, "adopt.svc", 2).unwrap_err();
    assert!(e.contains("only a client serving"), "{e}");
    // The owner's uid may have channels: up to the cap, then no more.
    for token in 0..256 {
        adopt(0, "adopt.svc", 100 + token).unwrap();
    }
    let e = adopt(0, "adopt.svc", 9999).unwrap_err();
    assert!(e.contains("at most 256"), "{e}");
    assert!(server.status().is_ok());
}

/// A reply too large for one control message (a `list` of more services
/// than fit) is answered with why, at once, rather than dropped and left
/// for its requester to wait for.
#[test]
fn a_reply_too_large_for_a_message_fails_at_once() {
    let d = DaemonProc::start(None);
    let server = d.connect();
    let mut held = Vec::new();
    for i in 0..400 {
        held.push(server.register(&format!("big.{i:03}.{}", "n".repeat(200))).unwrap());
    }
    let t = std::time::Instant::now();
    match server.list() {
        Err(Error::QuotaExceeded(m)) => assert!(m.contains("does not fit"), "{m}"),
        other => panic!("{:?}", other.map(|l| l.len())),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "it took {:?}", t.elapsed());
    assert!(server.status().is_ok());
}
