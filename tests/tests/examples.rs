//! The newcomer check: every program in `client/examples/` is built and run
//! as the README says (`HYBUS_SOCKET` pointing at a real `hybusd`), stops
//! by itself, and prints what its comments promise.
//!
//! The examples are built here with the cargo that runs the tests (same
//! profile, same target directory), so that `cargo test -p hybus-tests
//! --test examples` alone checks them too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hybus_tests::{target_bin, DaemonProc, TempDir, SOON};

/// A bound for one example run (each takes well under a second).
const RUN: Duration = Duration::from_secs(60);

/// The examples' directory, built once for all the tests of this file.
fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let hybusd = target_bin("hybusd");
        let profile_dir = hybusd.parent().expect("target profile dir").to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "hybus", "--examples", "--features", "tokio", "--manifest-path"])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", profile_dir.parent().expect("target dir"));
        if release {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build --examples");
        assert!(out.status.success(), "the examples do not build:\n{}", String::from_utf8_lossy(&out.stderr));
        profile_dir.join("examples")
    })
}

/// `example ARGS` with `HYBUS_SOCKET=socket`, stdout and stderr piped.
fn example(name: &str, socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(examples().join(name));
    cmd.args(args).env("HYBUS_SOCKET", socket).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Waits for `child` to exit by itself within `RUN` (killed and failed otherwise).
fn finish(mut child: Child, name: &str) -> Output {
    let end = Instant::now() + RUN;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= end {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!("{name} did not stop by itself within {RUN:?}; stdout:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Runs an example to its end; its stdout, after checking it exited 0.
fn run(name: &str, socket: &Path, args: &[&str]) -> String {
    let out = finish(example(name, socket, args).spawn().expect("spawn example"), name);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout.into_owned()
}

fn has(out: &str, line: &str) {
    assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
}

fn has_prefix(out: &str, prefix: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
        .to_owned()
}

#[test]
fn echo() {
    let d = DaemonProc::start(None);
    let out = run("echo", d.socket(), &[]);
    for line in ["zero → ZERO", "copy → COPY", "bus → BUS", "drained: the serving loop returned"] {
        has(&out, line);
    }
}

/// kv_service and kv_client as two processes; a second kv_service is refused
/// (exclusive), a `--replace` one takes over and the first exits by itself.
#[test]
fn kv_service_and_client() {
    let d = DaemonProc::start(None);
    let mut service = example("kv_service", d.socket(), &["--requests", "6"]).spawn().expect("spawn kv_service");
    let mut first_line = String::new();
    {
        // Its first line says it serves: only then is the name taken.
        let stdout = service.stdout.as_mut().expect("stdout");
        let mut byte = [0u8; 1];
        while !first_line.ends_with('\n') {
            assert_eq!(stdout.read(&mut byte).expect("read"), 1, "kv_service ended early: {first_line:?}");
            first_line.push(byte[0] as char);
        }
    }
    assert!(first_line.starts_with("serving example.kv"), "{first_line}");

    let second = finish(example("kv_service", d.socket(), &[]).spawn().expect("spawn"), "kv_service");
    assert_eq!(second.status.code(), Some(2), "a second exclusive registration is refused");
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(why.contains("held exclusively") && why.contains("replace"), "{why}");

    let out = run("kv_client", d.socket(), &[]);
    has(&out, "put colour blue → ok");
    has(&out, "get colour → blue");
    has(&out, "get size → error 404: no key \"size\"");
    has(&out, "keys → colour shape");
    // The whole message, past the descriptor's 40 bytes.
    has(&out, "frobnicate → error 400: bad command: \"frobnicate\" (want 'put K V', 'get K', 'del K' or 'keys')");
    let rest = finish(service, "kv_service");
    assert!(rest.status.success(), "{rest:?}");
    assert!(String::from_utf8_lossy(&rest.stdout).contains("drained after 6 requests"), "{rest:?}");

    // Hot replacement: the old instance drains and exits, the new one serves.
    let old = example("kv_service", d.socket(), &[]).spawn().expect("spawn old");
    hybus_tests::eventually(SOON, || d.connect().resolve("example.kv").ok()).expect("old kv_service serves");
    let new = example("kv_service", d.socket(), &["--replace", "--requests", "1"]).spawn().expect("spawn new");
    let old = finish(old, "replaced kv_service");
    assert!(old.status.success() && String::from_utf8_lossy(&old.stdout).contains("drained after 0 requests"));
    let bus = d.connect();
    let route = bus.resolve("example.kv").expect("the new one serves");
    assert_eq!(&*bus.call(&route, b"put a b", SOON).expect("served by the new one"), b"ok");
    assert!(finish(new, "new kv_service").status.success());
}

#[test]
fn typed() {
    let d = DaemonProc::start(None);
    let out = run("typed", d.socket(), &[]);
    has(&out, "receipt: ada bought 5 pieces");
    let refused = has_prefix(&out, "wrong type refused: ");
    assert!(refused.contains("typed::Order") && refused.contains("-byte payload"), "{refused}");
}

#[test]
fn pubsub() {
    let d = DaemonProc::start(None);
    let out = run("pubsub", d.socket(), &[]);
    has(&out, "published 100000 ticks without waiting for anyone");
    let slow = has_prefix(&out, "slow subscriber: ");
    let got: u64 = slow["slow subscriber: ".len()..].split(' ').next().and_then(|n| n.parse().ok()).expect("count");
    assert!(got < 100_000, "the slow subscriber lost its oldest: {slow}");
    assert!(slow.ends_with("(up to tick 99999)"), "and kept the newest: {slow}");
    has_prefix(&out, "fast subscriber: ");
}

#[test]
fn streams() {
    let d = DaemonProc::start(None);
    let out = run("streams", d.socket(), &[]);
    has(&out, "stream: 1 4 9 16 25 36 49 64 81 100");
    has(&out, "stream refused: service error 413: 5000 squares is too many (at most 1000)");
    has(&out, "channel: BOTH WAYS AT ONCE");
}

#[test]
fn direct() {
    let d = DaemonProc::start(None);
    let out = run("direct", d.socket(), &[]);
    has_prefix(&out, "brokered (through hybusd): 10000 calls");
    has(&out, "direct channel 1 open: is_direct = true");
    has_prefix(&out, "direct (ring to ring): 10000 calls");
    has(&out, "the channel carried 20000 messages; the daemon routed none of them");
    has_prefix(&out, "brokered again: 10000 calls");
}

#[test]
fn async_api() {
    let d = DaemonProc::start(None);
    let out = run("async_api", d.socket(), &[]);
    has(&out, "\"async\" → \"cnysa\"");
    has(&out, "\"\" → service error 400: empty request");
    has(&out, "three calls at once: eno owt xis");
    has(&out, "drained: the async serving loop returned");
}

/// The example starts and kills its own daemon (the test only picks the socket).
#[test]
fn restart() {
    let dir = TempDir::new("example-restart");
    let socket = dir.path().join("bus.sock");
    let hybusd = target_bin("hybusd");
    let out = run("restart", &socket, &["--daemon", hybusd.to_str().expect("utf-8 path")]);
    let before = has_prefix(&out, "before: answer 1 from pid ");
    let after = has_prefix(&out, "after: answer ");
    let pid = before.rsplit(' ').next().expect("pid");
    assert!(after.contains(&format!("from pid {pid} (the same serving loop)")), "{after}");
    has(&out, "done: the serving loop returned once drained");
}
