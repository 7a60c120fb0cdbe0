//! End-to-end tests of the `hybusctl` binary against a real `hybusd`.
//!
//! Every test starts its own `hybusd` on a private socket (through
//! [`hybus_tests::DaemonProc`], which waits until `hybus::Bus::connect_to`
//! succeeds and kills the daemon on drop), runs `hybusctl` as a child
//! process and checks what it prints and how it exits. Services the CLI
//! talks to are registered by this test process itself, so their pid is
//! ours. Every child process runs under a deadline: a broken build fails,
//! it never hangs.
//!
//! The daemon binary must be built (`cargo build --workspace`); hybusctl
//! itself is `CARGO_BIN_EXE_hybusctl`.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hybus::Incoming;
use hybus_tests::{eventually, DaemonProc, TempDir, SOON};
use serde_json::Value;

/// The name of the service the fixture registers.
const ECHO: &str = "cli.echo";

/// A bound for the slow subcommands (`bench`, `demo`) in a debug build.
const SLOW: Duration = Duration::from_secs(180);

/// A daemon with `cli.echo` registered by this process: a thread answers
/// each request with the payload reversed and counts fires.
struct Fixture {
    daemon: DaemonProc,
    bus: hybus::Bus,
    route: u32,
    fires: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl Fixture {
    fn start() -> Fixture {
        let daemon = DaemonProc::start(None);
        let bus = hybus::Bus::connect_to(daemon.socket()).expect("connect");
        let svc = bus.register(ECHO).expect("register cli.echo");
        let route = svc.route();
        let fires = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s) = (fires.clone(), stop.clone());
        let server = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match svc.next(Duration::from_millis(50)) {
                    Ok(Some(Incoming::Request(r))) => {
                        let mut v = r.payload().to_vec();
                        v.reverse();
                        let _ = r.reply(&v);
                    }
                    Ok(Some(Incoming::Fire(_))) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => panic!("cli.echo: {e}"),
                }
            }
        });
        Fixture { daemon, bus, route, fires, stop, server: Some(server) }
    }

    fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// Runs `hybusctl --socket SOCKET ARGS...` to completion.
    fn ctl(&self, args: &[&str]) -> Output {
        run(ctl(Some(self.socket()), args), SOON)
    }

    /// Calls `cli.echo` from this process (traffic for stats and monitor).
    fn call(&self, payload: &[u8]) -> Vec<u8> {
        let route = self.bus.resolve(ECHO).expect("resolve");
        self.bus.call(&route, payload, SOON).expect("call cli.echo").to_vec()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

/// What a finished `hybusctl` printed and how it exited.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    /// Panics with everything printed unless the exit was 0.
    fn ok(self) -> Output {
        assert!(self.status.success(), "hybusctl failed: {self:#?}");
        self
    }

    /// Panics unless the exit was non-zero.
    fn failed(self) -> Output {
        assert!(!self.status.success(), "hybusctl should have failed: {self:#?}");
        self
    }

    /// The stdout lines, each parsed as JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
            .collect()
    }

    /// The whole stdout parsed as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// `hybusctl [--socket SOCKET] ARGS...`, with `HYBUS_SOCKET` removed from
/// the environment so only what the test passes counts.
fn ctl(socket: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hybusctl"));
    cmd.env_remove("HYBUS_SOCKET");
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    cmd.args(args);
    cmd
}

/// A running `hybusctl`: stdout and stderr are collected by threads;
/// killed and reaped on drop.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

fn collect(mut r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(String::from_utf8_lossy(&v).into_owned());
    });
    rx
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn hybusctl");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        Running { child, stdout, stderr }
    }

    /// Whether it has exited.
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the exit; kills it and fails the test after `deadline`.
    fn wait(mut self, deadline: Duration) -> Output {
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let out = self.stdout.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                let err = self.stderr.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
                panic!("hybusctl did not finish within {deadline:?}; stdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Grandchildren (bench and demo workers) may hold the pipes a little longer.
        let stdout = self.stdout.recv_timeout(SOON).expect("hybusctl stdout still open");
        let stderr = self.stderr.recv_timeout(SOON).expect("hybusctl stderr still open");
        Output { status, stdout, stderr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion within `deadline`.
fn run(cmd: Command, deadline: Duration) -> Output {
    Running::spawn(cmd).wait(deadline)
}

fn our_pid() -> u64 {
    u64::from(std::process::id())
}

/// The cli.echo entry of a `--json` stats report.
fn echo_stats(report: &Value) -> &Value {
    let inst = report["instances"].as_array().expect("instances array");
    inst.iter().find(|i| i["service"] == ECHO).unwrap_or_else(|| panic!("no cli.echo in {report}"))
}

/// `list` shows a service registered by another process — name, pid and
/// state — as a table (with `--socket` and with `$HYBUS_SOCKET`) and as
/// JSON whose `services[0].instances[0].pid` is the registering process.
#[test]
fn list_shows_a_registered_service() {
    let f = Fixture::start();

    let out = f.ctl(&["list"]).ok();
    let mut lines = out.stdout.lines();
    let head: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(head, ["SERVICE", "ROUTE", "INSTANCE", "STATE", "UID", "PID", "VERSION", "WEIGHT", "WHERE"], "{out:#?}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 1, "one instance: {out:#?}");
    let row = &rows[0];
    assert_eq!(row[0], ECHO);
    assert_eq!(row[1], f.route.to_string(), "route id");
    assert_eq!(row[3], "serving");
    assert_eq!(row[5], our_pid().to_string(), "pid");

    // The same through $HYBUS_SOCKET instead of --socket.
    let mut cmd = ctl(None, &["list"]);
    cmd.env("HYBUS_SOCKET", f.socket());
    let env = run(cmd, SOON).ok();
    assert_eq!(env.stdout, out.stdout, "HYBUS_SOCKET reaches the same daemon");

    let v = f.ctl(&["list", "--json"]).ok().json();
    let s = &v["services"][0];
    assert_eq!(s["name"], ECHO, "{v}");
    assert_eq!(s["route"], u64::from(f.route), "{v}");
    assert_eq!(v["services"].as_array().map(Vec::len), Some(1), "{v}");
    let i = &s["instances"][0];
    assert_eq!(i["pid"], our_pid(), "{v}");
    assert_eq!(i["state"], "serving", "{v}");
    assert_eq!(i["uid"], u64::from(nix::unistd::getuid().as_raw()), "{v}");
}

/// `status` describes the daemon (its pid, counts) and `status NAME` one
/// service, as text and JSON; `status nope` fails with exit 1 and a
/// single sentence on stderr naming the missing service.
#[test]
fn status_of_daemon_and_service() {
    let f = Fixture::start();
    let dpid = f.daemon.pid();

    let out = f.ctl(&["status"]).ok();
    assert!(out.stdout.starts_with(&format!("hybusd pid {dpid} up ")), "{out:#?}");
    assert!(out.stdout.contains("1 services (1 instances)"), "{out:#?}");

    let v = f.ctl(&["status", "--json"]).ok().json();
    assert_eq!(v["pid"], i64::from(dpid), "{v}");
    assert_eq!(v["services"], 1, "{v}");
    assert_eq!(v["instances"], 1, "{v}");
    assert!(v["clients"].as_u64().is_some_and(|c| c >= 2), "this process and hybusctl: {v}");
    assert!(v["backend"].as_str().is_some_and(|b| !b.is_empty()), "{v}");

    assert_eq!(f.call(b"abc"), b"cba");
    let out = f.ctl(&["status", ECHO]).ok();
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some(format!("{ECHO} (route {}), 1 instance(s)", f.route).as_str()), "{out:#?}");
    assert!(lines.next().is_some_and(|m| m.starts_with("mode: shared")), "{out:#?}");
    assert!(lines.next().is_some_and(|h| h.contains("INSTANCE") && h.contains("MODE")), "{out:#?}");
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[1], "serving", "{out:#?}");
    assert_eq!(row[2], "shared", "{out:#?}");
    assert_eq!(row[3], our_pid().to_string(), "{out:#?}");

    let v = f.ctl(&["status", ECHO, "--json"]).ok().json();
    assert_eq!(v["name"], ECHO, "{v}");
    let i = &v["instances"][0];
    assert_eq!(i["pid"], our_pid(), "{v}");
    assert_eq!(i["state"], "serving", "{v}");
    assert!(i["messages_in"].as_u64().is_some_and(|n| n >= 1), "our call was counted: {v}");
    assert_eq!(v["mode"], "shared", "{v}");
    assert_eq!(i["mode"], "shared", "{v}");

    // An exclusive name says so, and who holds it.
    let alone = f.bus.register_with("cli.alone", hybus::ServiceOptions::default().exclusive()).expect("exclusive");
    let out = f.ctl(&["status", "cli.alone"]).ok();
    let held = format!("mode: exclusive (held by instance {};", alone.instance());
    assert!(out.stdout.lines().nth(1).is_some_and(|m| m.starts_with(&held)), "{out:#?}");
    let v = f.ctl(&["status", "cli.alone", "--json"]).ok().json();
    assert_eq!(v["mode"], "exclusive", "{v}");
    assert_eq!(v["holder"], u64::from(alone.instance()), "{v}");
    assert_eq!(v["instances"][0]["mode"], "exclusive", "{v}");

    let out = f.ctl(&["status", "nope"]).failed();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:#?}");
    assert!(out.stderr.starts_with("hybusctl: no service named \"nope\""), "{out:#?}");
}

/// `call` prints the service's answer (text and JSON, payload from the
/// command line or `@FILE`); calling a name nobody registered fails with
/// one line saying so; `fire` exits 0 and the message arrives.
#[test]
fn call_and_fire() {
    let f = Fixture::start();

    let out = f.ctl(&["call", ECHO, "hello"]).ok();
    assert_eq!(out.stdout, "olleh\n", "{out:#?}");
    assert!(out.stderr.is_empty(), "{out:#?}");

    let v = f.ctl(&["call", ECHO, "hello", "--json"]).ok().json();
    assert_eq!(v["service"], ECHO, "{v}");
    assert_eq!(v["payload"], "olleh", "{v}");
    assert_eq!(v["len"], 5, "{v}");
    assert!(v["rtt_ns"].as_u64().is_some_and(|n| n > 0), "{v}");

    let dir = TempDir::new("cli-call");
    let file = dir.path().join("payload");
    std::fs::write(&file, "from a file").expect("write payload");
    let out = f.ctl(&["call", ECHO, &format!("@{}", file.display())]).ok();
    assert_eq!(out.stdout, "elif a morf\n", "{out:#?}");

    let out = f.ctl(&["call", "missing.svc", "x"]).failed();
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:#?}");
    assert!(out.stderr.contains("no service named \"missing.svc\""), "{out:#?}");

    // --json: a failure is a JSON object too, and the exit non-zero.
    let out = f.ctl(&["call", "missing.svc", "x", "--json"]).failed();
    let v = out.json();
    assert_eq!(v["service"], "missing.svc", "{out:#?}");
    assert_eq!(v["kind"], "no-such-service", "{out:#?}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("missing.svc")), "{out:#?}");

    let out = f.ctl(&["fire", ECHO, "x"]).ok();
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:#?}");
    let arrived = eventually(SOON, || (f.fires.load(Ordering::Relaxed) == 1).then_some(()));
    assert!(arrived.is_some(), "the fire reached cli.echo");
}

/// `subscribe --count 3 --json` prints one JSON line per publication and
/// exits 0 after the third; `publish --count 3` delivers them.
#[test]
fn publish_and_subscribe() {
    let f = Fixture::start();
    let mut sub = Running::spawn(ctl(Some(f.socket()), &["subscribe", "t.x", "--count", "3", "--json"]));
    // The subscriber subscribes some time after it starts: publish until it has seen three.
    let end = Instant::now() + SOON;
    let mut rounds = 0;
    while !sub.exited() && Instant::now() < end {
        f.ctl(&["publish", "t.x", "hi", "--count", "3"]).ok();
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rounds > 0);
    let out = sub.wait(Duration::from_secs(1)).ok();
    let lines = out.json_lines();
    assert_eq!(lines.len(), 3, "{out:#?}");
    for l in &lines {
        assert_eq!(l["topic"], "t.x", "{l}");
        assert_eq!(l["payload"], "hi", "{l}");
        assert_eq!(l["len"], 2, "{l}");
    }
    assert!(out.stderr.is_empty(), "nothing but JSON in --json mode: {out:#?}");
}

/// `stats` reports cli.echo's traffic as a table, JSON and Prometheus text
/// (each metric family typed once); `--watch --count 2 --json` prints two
/// JSON lines, the second with rates.
#[test]
fn stats_in_every_format() {
    let f = Fixture::start();
    for _ in 0..5 {
        assert_eq!(f.call(b"ab"), b"ba");
    }
    // Direct channels have their section even when none is open.
    let out = f.ctl(&["stats"]).ok();
    assert!(out.stdout.contains("no direct channels open"), "{out:#?}");
    // And one call over a direct channel, which its caller times.
    let direct = hybus::Bus::connect_to(f.socket()).expect("connect");
    let route = direct.resolve(ECHO).expect("resolve");
    direct.request_direct(&route).expect("a direct channel");
    assert_eq!(&*direct.call(&route, b"xy", SOON).expect("a direct call"), b"yx");

    let out = f.ctl(&["stats"]).ok();
    let head = out.stdout.lines().next().unwrap_or_default();
    assert!(head.starts_with("SERVICE") && head.contains("MSG/S") && head.contains("P99.9"), "{out:#?}");
    assert!(out.stdout.lines().any(|l| l.contains("RTT P50") && l.contains("RTT P99")), "{out:#?}");
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with(ECHO))
        .unwrap_or_else(|| panic!("no cli.echo row: {out:#?}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[2], our_pid().to_string(), "{out:#?}");
    assert_eq!(row[3], "-", "no rate without --watch: {out:#?}");
    assert_eq!(row[7], "2", "DIRECT: the request and the answer that went over the channel: {out:#?}");
    assert!(out.stdout.lines().any(|l| l.starts_with("DIRECT CHANNEL")), "{out:#?}");

    let v = f.ctl(&["stats", "--json"]).ok().json();
    let e = echo_stats(&v);
    assert_eq!(e["pid"], our_pid(), "{v}");
    assert!(e["messages_in"].as_u64().is_some_and(|n| n >= 5), "{v}");
    assert!(e["messages_out"].as_u64().is_some_and(|n| n >= 5), "{v}");
    assert!(e["msgs_per_s"].is_null(), "{v}");
    assert_eq!((e["direct_messages_in"].as_u64(), e["direct_messages_out"].as_u64()), (Some(1), Some(1)), "{v}");
    let ch = &v["channels"][0];
    assert_eq!(ch["timed_calls"], 1, "{v}");
    assert!(ch["latency_ns"]["p50"].as_u64().is_some_and(|n| n > 0), "{v}");

    let out = f.ctl(&["stats", "--prometheus"]).ok();
    let p = &out.stdout;
    assert!(p.contains("# TYPE hybus_messages_in_total counter\n"), "{p}");
    let line = p
        .lines()
        .find(|l| l.starts_with(&format!("hybus_messages_in_total{{service=\"{ECHO}\",")))
        .unwrap_or_else(|| panic!("no cli.echo sample: {p}"));
    let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a value");
    assert!(n >= 5, "{line}");
    assert!(p.lines().any(|l| l.starts_with("hybus_direct_latency_nanoseconds_count{") && l.ends_with(" 1")), "{p}");
    let mut typed: Vec<&str> = p.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let all = typed.len();
    typed.sort_unstable();
    typed.dedup();
    assert_eq!(typed.len(), all, "each metric family is typed once: {p}");
    assert!(p.lines().all(|l| l.is_empty() || l.starts_with('#') || l.starts_with("hybus_")), "{p}");
    // A family's samples follow its TYPE line, all together.
    let mut family = "";
    for l in p.lines().filter(|l| !l.is_empty()) {
        if let Some(t) = l.strip_prefix("# TYPE ") {
            family = t.split(' ').next().unwrap_or_default();
        } else if !l.starts_with('#') {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            assert!(name == family || name.starts_with(&format!("{family}_")), "{name} outside its family: {p}");
        }
    }

    let out = f.ctl(&["stats", "--watch", "--count", "2", "--interval", "100ms", "--json"]).ok();
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(echo_stats(&lines[0])["msgs_per_s"].is_null(), "no rate on the first refresh: {out:#?}");
    assert!(echo_stats(&lines[1])["msgs_per_s"].as_f64().is_some_and(|r| r >= 0.0), "{out:#?}");
}

/// `monitor --count 2 --json` prints the traffic of calls made while it
/// runs, one JSON object with a `kind`, a sender and a receiver per line,
/// and exits 0 after two.
#[test]
fn monitor_prints_traffic() {
    let f = Fixture::start();
    let mut mon = Running::spawn(ctl(Some(f.socket()), &["monitor", "--count", "2", "--json"]));
    // The monitor starts watching some time after it starts: call until it has seen two.
    let end = Instant::now() + SOON;
    while !mon.exited() && Instant::now() < end {
        assert_eq!(f.call(b"xy"), b"yx");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = mon.wait(Duration::from_secs(1)).ok();
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2, "{out:#?}");
    for l in &lines {
        let kind = l["kind"].as_str().unwrap_or_else(|| panic!("no kind: {l}"));
        assert!(["request", "response"].contains(&kind), "{l}");
        assert!(l["len"].is_u64() && l["route"].is_u64() && l["t"].is_f64(), "{l}");
        // Who talks to whom: the instance's client for a request, the caller
        // for its answer (here one connection serves and calls).
        assert!(l["to"].as_u64().is_some_and(|to| to > 0), "{l}");
    }
    assert!(lines.iter().any(|l| l["route"] == u64::from(f.route)), "traffic to cli.echo: {out:#?}");
}

/// A fire has no exchange: `monitor` shows `-` (JSON `null`) for its
/// correlation, not the marker bit its sender sets (2⁶²); and every party
/// is shown with its client id and its pid.
#[test]
fn monitor_shows_pids_and_no_correlation_for_fires() {
    let f = Fixture::start();
    let route = f.bus.resolve(ECHO).expect("resolve");
    let watch = |args: &[&str]| {
        let mut mon = Running::spawn(ctl(Some(f.socket()), args));
        let end = Instant::now() + SOON;
        while !mon.exited() && Instant::now() < end {
            f.bus.fire(&route, b"log").expect("fire");
            std::thread::sleep(Duration::from_millis(20));
        }
        mon.wait(Duration::from_secs(1)).ok()
    };
    let out = watch(&["monitor", "--count", "1", "--json"]);
    let l = &out.json_lines()[0];
    assert_eq!(l["kind"], "fire", "{l}");
    assert!(l["correlation"].is_null(), "{l}");
    assert_eq!(l["from_pid"], our_pid(), "{l}");
    assert_eq!(l["to_pid"], our_pid(), "{l}");
    assert!(l["from"].as_u64().is_some_and(|c| c > 0) && l["to"].as_u64().is_some_and(|c| c > 0), "{l}");

    let out = watch(&["monitor", "--count", "1"]);
    let line = out.stdout.lines().next().unwrap_or_else(|| panic!("no line: {out:#?}"));
    assert!(line.contains(" fire ") && line.contains("corr - "), "{line}");
    assert!(!line.contains("4611686018427387904"), "{line}");
    assert_eq!(line.matches(&format!("(pid {})", our_pid())).count(), 2, "{line}");
}

/// With no daemon at the socket every subcommand that needs one fails
/// with exactly one stderr line naming the path and asking whether hybusd
/// runs; bad arguments fail with clap's usage error (exit 2) before any
/// connection is tried.
#[test]
fn failure_modes() {
    let dir = TempDir::new("cli-nodaemon");
    let socket = dir.path().join("bus.sock");
    for args in [&["list"][..], &["status"], &["status", ECHO], &["stats"], &["call", ECHO, "x"], &["monitor"]] {
        let out = run(ctl(Some(&socket), args), SOON).failed();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:#?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:#?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: one line: {out:#?}");
        let line = out.stderr.trim_end();
        assert!(line.starts_with("hybusctl: no daemon at "), "{args:?}: {line}");
        assert!(line.contains(&socket.display().to_string()), "{args:?}: {line}");
        assert!(line.contains("is hybusd running?"), "{args:?}: {line}");
    }

    let out = run(ctl(Some(&socket), &["list", "--bogus"]), SOON).failed();
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("unexpected argument '--bogus'"), "{out:#?}");
    assert!(out.stderr.contains("Usage: hybusctl list"), "{out:#?}");

    let out = run(ctl(Some(&socket), &["frobnicate"]), SOON).failed();
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("unrecognized subcommand 'frobnicate'"), "{out:#?}");

    let out = run(ctl(Some(&socket), &["stats", "--json", "--prometheus"]), SOON).failed();
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("cannot be used with"), "{out:#?}");

    let out = run(ctl(Some(&socket), &["call", ECHO, "x", "--timeout", "5x"]), SOON).failed();
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("bad duration unit"), "{out:#?}");

    let out = run(ctl(Some(&socket), &["call", ECHO]), SOON).failed();
    assert_eq!(out.status.code(), Some(2), "missing PAYLOAD: {out:#?}");
    assert!(out.stderr.contains("<PAYLOAD>"), "{out:#?}");
}

/// The latency figures of a `bench --json` result: round trips and p50.
fn latency(r: &Value) -> (u64, u64) {
    (r["round_trips"].as_u64().unwrap_or(0), r["rtt_ns"]["p50"].as_u64().unwrap_or(0))
}

/// `bench --quick --json --payload 8 --plot FILE` (embedded daemon)
/// prints the machine and every result — each latency result with round
/// trips and a p50, each throughput result with messages and a rate —
/// and draws an SVG with a curve per latency result; a filtered run
/// against the daemon at `--socket` measures only the matching results.
#[test]
fn bench_quick_json_and_plot() {
    let dir = TempDir::new("cli-bench");
    let svg = dir.path().join("bench.svg");
    let svg_arg = svg.to_str().expect("utf-8 path");
    let out = run(ctl(None, &["bench", "--quick", "--json", "--payload", "8", "--plot", svg_arg]), SLOW).ok();
    let v = out.json();
    assert!(v["machine"]["cpus"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["machine"]["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{v}");
    let results = v["results"].as_array().expect("results");
    let find = |name: &str| results.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no {name} in {v}"));
    // Two-process results run pinned to two CPUs (this test machine has two).
    let pinned = &v["machine"]["pinned_pair"];
    assert!(pinned.is_null() || pinned.as_array().is_some_and(|p| p.len() == 2 && p[0] != p[1]), "{v}");
    let latency_names = [
        "limit/cacheline-2p",
        "limit/cacheline-2p-payload",
        "limit/cacheline-3p",
        "limit/ring-2p",
        "limit/ring-2p-payload",
        "limit/eventfd",
        "baseline/uds",
        "brokered/rpc",
        "brokered/rpc-idle-busy",
        "brokered/rpc-idle-default",
        "brokered/rpc-blocking",
        "direct/rpc",
        "direct/rpc-blocking",
        // hybus-bridge is built beside hybusctl in the workspace.
        "limit/zenoh-query",
        "bridged/rpc",
    ];
    let throughput_names = [
        "brokered/fire",
        "brokered/stream",
        "direct/stream",
        "brokered/pubsub-4",
        "limit/zenoh-pubsub",
        "bridged/pubsub",
    ];
    assert_eq!(results.len(), latency_names.len() + throughput_names.len(), "{v}");
    for name in latency_names {
        let r = find(name);
        assert_eq!(r["payload_bytes"], 8, "{r}");
        let (n, p50) = latency(r);
        assert!(n > 0 && p50 > 0, "{r}");
        assert!(r["rtt_ns"]["p99"].as_u64().is_some_and(|p99| p99 >= p50), "{r}");
    }
    // BUSY against the default at both ends: a ratio, whatever it is (timing is the bench's to judge).
    assert!(v["busy_vs_default_p50"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    for name in ["brokered/rpc", "direct/rpc", "bridged/rpc"] {
        let r = find(name);
        assert!(r["limit"].as_str().is_some_and(|l| l.starts_with("limit/")), "{r}");
        assert!(r["ratio_to_limit_p50"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    for name in throughput_names {
        let r = find(name);
        assert!(r["messages"].as_u64().is_some_and(|n| n > 0), "{r}");
        assert!(r["msgs_per_s"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    // A direct call is set beside the bare ring pair (issue 22's floor).
    assert_eq!(find("direct/rpc")["limit"], "limit/ring-2p", "{v}");
    assert!(find("bridged/pubsub")["ratio_to_limit"].as_f64().is_some_and(|x| x > 0.0), "{v}");

    let plot = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(plot.starts_with("<svg"), "{plot}");
    assert!(plot.trim_end().ends_with("</svg>"), "{plot}");
    assert_eq!(plot.matches("<polyline").count(), latency_names.len(), "a curve per latency result");

    // Against a running daemon, filtered to the brokered round trips: the
    // limits they are compared with are measured too, and nothing else.
    let daemon = DaemonProc::start(None);
    // Two payloads: the larger one is also set beside the 8-byte one.
    let args =
        ["bench", "--quick", "--json", "--payload", "8,4096", "--round-trips", "200", "--filter", "brokered/rpc"];
    let v = run(ctl(Some(daemon.socket()), &args), SLOW).ok().json();
    let names: Vec<(&str, u64)> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| Some((r["name"].as_str()?, r["payload_bytes"].as_u64()?)))
        .collect();
    let want = [
        ("limit/cacheline-3p", 8),
        ("limit/eventfd", 8),
        ("brokered/rpc", 8),
        ("brokered/rpc", 4096),
        ("brokered/rpc-idle-busy", 8),
        ("brokered/rpc-idle-default", 8),
        ("brokered/rpc-blocking", 8),
        ("brokered/rpc-blocking", 4096),
    ];
    assert_eq!(names, want, "{v}");
    let find = |name: &str, payload: u64| {
        v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name && r["payload_bytes"] == payload)
            .cloned()
    };
    assert!(
        find("brokered/rpc", 8).is_some_and(
            |r| r["ratio_to_limit_p50"].as_f64().is_some_and(|x| x > 0.0) && r["ratio_to_8b_p50"].is_null()
        ),
        "{v}"
    );
    assert!(find("brokered/rpc", 4096).is_some_and(|r| r["ratio_to_8b_p50"].as_f64().is_some_and(|x| x > 0.0)), "{v}");
    for r in v["results"].as_array().into_iter().flatten() {
        assert_eq!(latency(r).0, 200, "{r}");
        assert!(latency(r).1 > 0, "{r}");
    }
}

/// `demo` runs an embedded daemon with services in their own processes,
/// walks through every interaction model and prints a latency table, then
/// exits 0.
#[test]
fn demo_runs_every_model() {
    let out = run(ctl(None, &["demo", "--round-trips", "2000"]), SLOW).ok();
    let s = &out.stdout;
    for model in
        ["request/response:", "fire-and-forget:", "request-stream:", "request-channel:", "pipelining:", "zero-copy:"]
    {
        assert!(s.lines().any(|l| l.starts_with(model)), "no {model} line: {out:#?}");
    }
    assert!(s.contains("fire-and-forget: 1000 log lines fired at kv.store, which counted 1000"), "{out:#?}");
    assert!(s.contains("got back: zero copy both ways"), "{out:#?}");
    assert!(s.contains("each got [20, 20, 20]"), "{out:#?}");
    assert!(s.contains("0 still lent"), "{out:#?}");
    assert!(s.contains("16 answers collected in order"), "{out:#?}");
    assert!(
        s.lines().any(|l| l.starts_with("the direct channel in hybusctl stats: ") && l.contains("RTT p50")),
        "{out:#?}"
    );
    assert!(s.contains("latency, 2000 round trips each"), "{out:#?}");
    let head = s.lines().find(|l| l.starts_with("8-byte round trip")).unwrap_or_else(|| panic!("no table: {out:#?}"));
    assert!(head.contains("p50") && head.contains("p99.9"), "{head}");
    for row in ["hybus brokered (via hybusd)", "Unix socket, 2 processes", "machine floor"] {
        let l = s.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no {row} row: {out:#?}"));
        assert!(l.contains(" µs") || l.contains(" ns") || l.contains(" ms"), "{l}");
    }
    let placed = s
        .lines()
        .find(|l| l.starts_with("Unix socket baseline: the caller ran on CPU "))
        .unwrap_or_else(|| panic!("no placement of the socket baseline: {out:#?}"));
    assert!(
        placed.contains("the echo on CPU ") && placed.contains("three processes (caller, hybusd, echo)"),
        "{placed}"
    );
    assert!(s.lines().any(|l| l.starts_with("demo finished in ")), "{out:#?}");
}
