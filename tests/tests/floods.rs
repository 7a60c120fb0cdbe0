//! Floods of connections, bounded: they cost the flooding uid only its own
//! budget of silent connections, never the quota its tools need, and the
//! daemon's log stays a few lines long however long the flood goes on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hybus_os::socket::ControlSocket;
use hybus_tests::{eventually, DaemonProc, SOON};

/// How long each flood runs (bounded in count too).
const FLOOD: Duration = Duration::from_secs(3);
const MAX_CONNECTIONS: u32 = 200_000;

/// Opens and closes connections as fast as it can, from another thread,
/// for [`FLOOD`] (at most [`MAX_CONNECTIONS`]); returns how many.
fn flood(socket: PathBuf, keep_silent: usize) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let end = Instant::now() + FLOOD;
        let mut n = 0;
        // Some held open without a word, the rest closed at once.
        let mut silent = Vec::new();
        while Instant::now() < end && n < MAX_CONNECTIONS {
            if let Ok(s) = ControlSocket::connect(&socket) {
                if silent.len() < keep_silent {
                    silent.push(s);
                }
            }
            n += 1;
        }
        n
    })
}

/// A connect/close flood of two threads of the same uid as the tools: the
/// tools keep connecting and getting answers throughout (the flood's
/// hang-ups are reaped before new connections are counted, and silent
/// connections have their own budget), and the log does not grow with it.
#[test]
fn a_connection_flood_locks_out_nobody_and_stays_out_of_the_log() {
    let d = DaemonProc::start(Some("[limits]\nconnections_per_uid = 64\npre_hello_per_uid = 16\n"));
    let floods = [flood(d.socket().to_owned(), 0), flood(d.socket().to_owned(), 40)];
    let mut tries = 0;
    let end = Instant::now() + FLOOD;
    while Instant::now() < end {
        // What `hybusctl status` does: a new connection, Hello, one request.
        let bus = hybus::Bus::connect_to(d.socket()).unwrap_or_else(|e| panic!("locked out: {e}"));
        let st = bus.status().unwrap_or_else(|e| panic!("status failed during the flood: {e}"));
        assert!(st.clients <= 64, "{st:?}");
        tries += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let made: u32 = floods.into_iter().map(|f| f.join().expect("flood thread")).sum();
    eprintln!("{made} connections in the flood; {tries} status calls during it, none refused");
    assert!(tries >= 10, "the status loop barely ran ({tries})");
    // Everything of the flood is gone again.
    let bus = d.connect();
    let settled = eventually(SOON, || (bus.status().ok()?.clients == 1).then_some(()));
    assert!(settled.is_some(), "{:?}", bus.status());
    // The log: a handful of lines, not one per connection.
    let log = d.log_text();
    let lines = log.lines().count();
    assert!(lines < 60, "{lines} log lines for a flood of {made} connections:\n{log}");
    assert!(!log.contains("disconnected"), "per-connection lines at the default level:\n{log}");
    assert!(log.contains("have not said Hello"), "the evictions were not logged at all:\n{log}");
}

/// The lines a peer can trigger are counted past the first few, and the
/// count is written when the window ends: `… and N more`.
#[test]
fn lines_left_out_of_the_log_are_counted() {
    let d = DaemonProc::start(Some("[limits]\npre_hello_per_uid = 2\n"));
    // Silent connections past the budget: each evicts an older one, each
    // eviction is a line the flooding uid triggered.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(ControlSocket::connect(d.socket()).expect("connect"));
    }
    let summary = eventually(Duration::from_secs(30), || {
        let log = d.log_text();
        log.lines().find(|l| l.contains("more connection quota lines")).map(str::to_owned)
    });
    let log = d.log_text();
    let line = summary.unwrap_or_else(|| panic!("no summary line:\n{log}"));
    let left_out: u64 = line
        .split_whitespace()
        .skip_while(|w| *w != "and")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let written = log.lines().filter(|l| l.contains("have not said Hello")).count() as u64;
    assert!(written <= 5, "{written} eviction lines:\n{log}");
    assert!(written + left_out >= 150, "{written} written, {left_out} counted:\n{log}");
    drop(held);
}
