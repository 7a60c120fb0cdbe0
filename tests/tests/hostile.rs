//! Clients that write nonsense into their own tx ring (DESIGN §3: "an
//! impossible value … is a protocol violation: the daemon disconnects that
//! client, reclaims what it held, and keeps serving everyone else").
//!
//! Each case is a `hybus-load hostile CASE` process: it does the handshake
//! by hand, maps its rings and pool, and writes one kind of nonsense. The
//! test then checks that its control socket was closed, that the daemon
//! counted one violation, that nothing of it stays lent or in flight, and
//! that a call through another process still succeeds.

mod common;

use common::{num, Load};
use hybus::{Bus, Error, Route};
use hybus_tests::{eventually, DaemonProc, SOON};

/// A daemon, a `serve` process, a `serve … hold` process, and a bystander.
struct Bench {
    d: DaemonProc,
    _echo: Load,
    echo_client: u32,
    _hold: Load,
    bus: Bus,
    route: Route,
}

impl Bench {
    fn start() -> Bench {
        let d = DaemonProc::start(None);
        let (echo, line) = Load::ready(d.socket(), &["serve", "ho.echo"]);
        let (hold, _) = Load::ready(d.socket(), &["serve", "ho.hold", "hold"]);
        let bus = d.connect();
        let route = bus.resolve("ho.echo").unwrap();
        assert_eq!(&*bus.call(&route, b"abc", SOON).unwrap(), b"cba");
        Bench { echo_client: num(&line, "client") as u32, d, _echo: echo, _hold: hold, bus, route }
    }

    /// Runs `hostile ARGS` and checks that it alone was thrown out.
    fn expect_disconnect(&self, args: &[&str]) {
        let before = self.bus.status().unwrap();
        let mut all = vec!["hostile"];
        all.extend_from_slice(args);
        let (mut h, _) = Load::ready(self.d.socket(), &all);
        h.expect_line("sent");
        let verdict = h.expect_line("");
        assert_eq!(verdict, "closed", "{args:?}: the daemon kept the connection; log:\n{}", self.d.log_text());
        self.after(before.violations + 1, before.clients);
    }

    /// The daemon counted the violation, dropped the client, holds nothing
    /// of it, and still serves the others.
    fn after(&self, violations: u64, clients: u32) {
        let s = eventually(SOON, || {
            let s = self.bus.status().ok()?;
            (s.clients == clients && s.chunks_lent == 0 && s.exchanges == 0).then_some(s)
        })
        .unwrap_or_else(|| panic!("not back to normal: {:?}", self.bus.status()));
        assert_eq!(s.violations, violations, "violations counted");
        assert_eq!(&*self.bus.call(&self.route, b"still", SOON).unwrap(), b"llits", "a call through another process");
        let big = vec![5u8; 100_000];
        assert_eq!(self.bus.call(&self.route, &big, SOON).unwrap().len(), big.len());
        assert!(eventually(SOON, || (self.bus.chunks_in_use() == 0).then_some(())).is_some());
    }
}

#[test]
fn request_to_a_route_never_handed_out() {
    Bench::start().expect_disconnect(&["bad-route"]);
}

#[test]
fn chunk_beyond_the_pool() {
    Bench::start().expect_disconnect(&["bad-offset", "ho.echo"]);
}

#[test]
fn chunk_offset_not_on_a_chunk() {
    Bench::start().expect_disconnect(&["misaligned", "ho.echo"]);
}

#[test]
fn chunk_length_larger_than_its_chunk() {
    Bench::start().expect_disconnect(&["too-long", "ho.echo"]);
}

#[test]
fn chunk_of_another_clients_pool() {
    let b = Bench::start();
    let other = format!("other={}", b.echo_client);
    b.expect_disconnect(&["foreign", "ho.echo", &other]);
}

#[test]
fn same_chunk_sent_twice_while_lent() {
    // ho.hold keeps the first request, so the chunk is still lent when the
    // second send names it.
    Bench::start().expect_disconnect(&["double", "ho.hold"]);
}

#[test]
fn release_of_a_chunk_never_lent() {
    Bench::start().expect_disconnect(&["release-unheld"]);
}

#[test]
fn release_of_another_clients_chunk_never_received() {
    let b = Bench::start();
    let other = format!("other={}", b.echo_client);
    b.expect_disconnect(&["release-other", &other]);
}

#[test]
fn tail_index_far_ahead_of_head() {
    Bench::start().expect_disconnect(&["tail-ahead"]);
}

#[test]
fn garbage_kind_byte() {
    Bench::start().expect_disconnect(&["bad-kind", "ho.echo"]);
}

#[test]
fn unknown_flag_bits() {
    Bench::start().expect_disconnect(&["bad-flags", "ho.echo"]);
}

#[test]
fn caller_stream_item_without_credit() {
    // ho.hold accepts the channel but never grants a credit.
    Bench::start().expect_disconnect(&["credit-caller", "ho.hold"]);
}

#[test]
fn server_stream_items_beyond_the_callers_window() {
    let b = Bench::start();
    let before = b.bus.status().unwrap();
    let (mut h, _) = Load::ready(b.d.socket(), &["hostile", "credit-server", "ho.rogue"]);
    h.expect_line("registered");
    let route = b.bus.resolve("ho.rogue").unwrap();
    let mut s = b.bus.request_stream(&route, b"go", 2).unwrap();
    h.expect_line("sent");
    assert_eq!(h.expect_line(""), "closed", "log:\n{}", b.d.log_text());
    // The two items within the window arrive; then the server is gone.
    for i in 0..2 {
        let item = s.next(SOON).unwrap().expect("an item within the window");
        assert_eq!(&*item, format!("item-{i}").as_bytes());
    }
    match s.next(SOON) {
        Err(Error::PeerGone) => {}
        other => panic!("expected PeerGone after the overrun, got {other:?}"),
    }
    drop(s);
    b.after(before.violations + 1, before.clients);
}

#[test]
fn many_hostile_clients_in_a_row_leave_the_daemon_serving() {
    let b = Bench::start();
    let other = format!("other={}", b.echo_client);
    let cases: [&[&str]; 10] = [
        &["bad-offset", "ho.echo"],
        &["misaligned", "ho.echo"],
        &["too-long", "ho.echo"],
        &["foreign", "ho.echo", &other],
        &["double", "ho.hold"],
        &["release-unheld"],
        &["release-other", &other],
        &["tail-ahead"],
        &["bad-kind", "ho.echo"],
        &["bad-flags", "ho.echo"],
    ];
    for case in cases {
        b.expect_disconnect(case);
    }
    assert_eq!(b.bus.status().unwrap().violations, cases.len() as u64);
}
