//! Chaos (issue 18, "Done when"): mixed traffic from 20 client processes
//! through the real `hybusd`, random `kill -9` of clients all along, one
//! `kill -9` of the daemon halfway followed by a restart on the same socket
//! (the clients of the library come back by themselves; the killed ones
//! are started again), and a hostile client of a second uid (65534) that
//! writes over everything it can map: its pool, its rings, the direct
//! channels opened to it (`hybus-load scribble`).
//!
//! Afterwards, with every client gone, the restarted daemon holds exactly
//! the descriptors and memfds it held right after it started with only the
//! checker connected, lends no chunk, has no exchange open, and an honest
//! client's calls (inline and 100 kB) succeed.
//!
//! The RNG seed is printed (`cargo test --test chaos -- --nocapture`); set
//! `CHAOS_SEED=<n>` to replay the same kills. Nothing about time is
//! asserted: the phases last a fixed time only to bound the test.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::payload::Rng;
use common::scaled;
use hybus_tests::{eventually, target_bin, Peer, TempDir, OPEN_TO_ALL, SOON};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NOBODY: u32 = 65534;
const TOPIC: &str = "chaos.topic";
const RECEIVERS: [&str; 2] = ["chaos.r0", "chaos.r1"];
const SENDERS: usize = 7;

/// One client process slot: what it runs, and the process running it now.
struct Slot {
    bin: &'static str,
    args: Vec<String>,
    /// Runs as [`NOBODY`], never killed at random.
    hostile: bool,
    /// Keeps its stdout in `slot-N.log` (else discarded: a subscriber's line per sample).
    keep_output: bool,
    /// A `soak-send`, whose seed changes at every start.
    sender: bool,
    child: Option<(Child, ChildStdin)>,
}

impl Slot {
    fn new(bin: &'static str, args: &[&str]) -> Slot {
        Slot {
            bin,
            args: args.iter().map(|a| a.to_string()).collect(),
            hostile: false,
            keep_output: true,
            sender: false,
            child: None,
        }
    }

    /// Starts the slot's process (not waiting for it to be ready: the
    /// daemon may be away, and a client that fails just ends and is
    /// started again).
    fn start(&mut self, socket: &Path, log: &Path, rng: &mut Rng) {
        let mut cmd = Command::new(target_bin(self.bin));
        cmd.arg(socket);
        if self.sender {
            // soak-send ID SEED OPS MAXLEN RT TOPIC TARGET...
            self.args[2] = (rng.next_u64() >> 1).to_string();
        }
        cmd.args(&self.args);
        if self.hostile {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        let out = if self.keep_output {
            Stdio::from(File::options().create(true).append(true).open(log).expect("slot log"))
        } else {
            Stdio::null()
        };
        cmd.stdin(Stdio::piped()).stdout(out).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn a client");
        let stdin = child.stdin.take().expect("stdin");
        self.child = Some((child, stdin));
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|(c, _)| c.id() as i32)
    }

    /// Whether its process ended by itself.
    fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some((c, _)) => matches!(c.try_wait(), Ok(Some(_))),
            None => true,
        }
    }

    fn kill9(&mut self) {
        if let Some((mut c, _)) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A daemon process, killed when dropped (a failing test leaves none behind).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The daemon, started on `socket` with `config`, stderr to `log`; waits until it takes connections.
fn start_daemon(socket: &Path, config: &Path, log: &Path) -> Daemon {
    let mut child = Command::new(target_bin("hybusd"))
        .arg("--socket")
        .arg(socket)
        .arg("--config")
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log).expect("daemon log"))
        .spawn()
        .expect("spawn hybusd");
    if eventually(SOON, || hybus::Bus::connect_to(socket).ok()).is_none() {
        let _ = child.kill();
        panic!("hybusd did not start; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }
    Daemon(child)
}

/// Where each of the daemon's descriptors leads.
fn fd_links(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's /proc fd directory")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn memfds(links: &[String]) -> usize {
    links.iter().filter(|l| l.starts_with("/memfd:")).count()
}

/// The lines of `path` starting with `prefix`.
fn lines_of(path: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(String::from)
        .collect()
}

#[test]
fn chaos_leaves_the_daemon_whole() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the hostile client runs as uid 65534, which needs root (CI runs as root)");
        return;
    }
    hybus_tests::raise_fd_limit();
    let seed: u64 = std::env::var("CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("chaos: seed {seed} (CHAOS_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let phase = Duration::from_secs(scaled(15, 8));

    let dir = TempDir::new("chaos");
    let socket = dir.path().join("bus.sock");
    let config = dir.path().join("hybusd.toml");
    std::fs::write(&config, OPEN_TO_ALL).expect("write config");
    let logs: [PathBuf; 2] = [dir.path().join("hybusd1.log"), dir.path().join("hybusd2.log")];
    let mut daemon = start_daemon(&socket, &config, &logs[0]);

    // 19 honest clients and one hostile: 20 processes.
    let senders = SENDERS.to_string();
    let mut slots: Vec<Slot> = Vec::new();
    for r in RECEIVERS {
        slots.push(Slot::new("hybus-load", &["soak-recv", r, TOPIC, &senders]));
    }
    for i in 0..SENDERS {
        let id = i.to_string();
        // 20 % round trips (calls, streams, channels), the rest fires and publications.
        let mut s = Slot::new("hybus-load", &["soak-send", &id, "0", "100000000", "204800", "2000", TOPIC]);
        s.args.extend(RECEIVERS.iter().map(|r| r.to_string()));
        s.sender = true;
        slots.push(s);
    }
    slots.push(Slot::new("hybus-load", &["sub", TOPIC]));
    slots.push(Slot::new("hybus-load", &["sub", TOPIC, "slow_ms=5"]));
    for hold in [false, true] {
        let mut s = Slot::new("hybus-peer", if hold { &["subscribe", TOPIC, "hold"] } else { &["subscribe", TOPIC] });
        s.keep_output = false;
        slots.push(s);
    }
    slots.push(Slot::new("hybus-peer", &["serve", "chaos.echo"]));
    slots.push(Slot::new("hybus-peer", &["serve", "chaos.echo", "corrupt_after=50"]));
    slots.push(Slot::new("hybus-peer", &["direct", "chaos.echo"]));
    slots.push(Slot::new("hybus-peer", &["direct", "chaos.evil"]));
    slots.push(Slot::new("hybus-peer", &["direct", "chaos.evil"]));
    slots.push(Slot::new("hybus-peer", &["monitor", "chaos"]));
    let scribble_secs = (phase.as_secs() * 2 + 2).to_string();
    let scribble_seed = (rng.next_u64() >> 1).to_string();
    let mut hostile = Slot::new("hybus-load", &["scribble", &scribble_secs, &scribble_seed, "chaos.echo", "chaos.r0"]);
    hostile.hostile = true;
    slots.push(hostile);
    assert_eq!(slots.len(), 20);
    let slot_log = |i: usize| dir.path().join(format!("slot-{i}.log"));
    for (i, s) in slots.iter_mut().enumerate() {
        s.start(&socket, &slot_log(i), &mut rng);
    }

    let (mut kills, mut restarts) = (0u64, 0u64);
    let mut chaos = |slots: &mut Vec<Slot>, rng: &mut Rng, until: Instant| {
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(rng.range(50, 400) as u64));
            let honest = slots.len() - 1;
            let victim = rng.below(honest as u64) as usize;
            slots[victim].kill9();
            kills += 1;
            for (i, s) in slots.iter_mut().enumerate() {
                if s.exited() {
                    s.kill9();
                    s.start(&socket, &slot_log(i), rng);
                    restarts += 1;
                }
            }
        }
    };

    chaos(&mut slots, &mut rng, Instant::now() + phase);

    // The daemon's kill -9, with every client stopped meanwhile so that the
    // new daemon's first state (only the checker) can be measured.
    for s in &slots {
        s.signal(Signal::SIGSTOP);
    }
    daemon.0.kill().expect("kill -9 the daemon");
    let _ = daemon.0.wait();
    let log1 = std::fs::read_to_string(&logs[0]).unwrap_or_default();
    let mut daemon = start_daemon(&socket, &config, &logs[1]);
    let checker = hybus::Bus::connect_to(&socket).expect("the checker connects");
    let _ = checker.status().expect("status");
    let base = fd_links(daemon.0.id());
    println!("chaos: restarted daemon with only the checker: {} fds, {} memfds", base.len(), memfds(&base));
    for s in &slots {
        s.signal(Signal::SIGCONT);
    }

    chaos(&mut slots, &mut rng, Instant::now() + phase);

    // The hostile client's own account, once it has finished.
    let hostile_log = slot_log(slots.len() - 1);
    let done = eventually(SOON, || lines_of(&hostile_log, "done ").pop());
    println!("chaos: {kills} clients killed, {restarts} started again; hostile: {done:?}");

    // Every client stops: hard, as a crash would.
    let mut exited_by_themselves = Vec::new();
    for (i, s) in slots.iter_mut().enumerate() {
        if s.exited() {
            exited_by_themselves.push(i);
        }
        s.kill9();
    }
    println!("chaos: slots that had ended by themselves at the end: {exited_by_themselves:?}");
    // What the clients saw (not asserted: a killed daemon or peer and the
    // hostile client's garbage payloads are errors they must report).
    for (i, slot) in slots.iter().enumerate() {
        let errors = lines_of(&slot_log(i), "error");
        // Numbers (sizes, sequence numbers) masked: one entry per kind of error.
        let mut kinds: Vec<String> = errors
            .iter()
            .map(|e| e.chars().take(60).map(|c| if c.is_ascii_digit() { '#' } else { c }).collect())
            .collect();
        kinds.sort();
        kinds.dedup();
        if !errors.is_empty() {
            println!("chaos: slot {i} ({}): {} errors, {kinds:?}", slot.args[0], errors.len());
        }
    }

    let log2 = || std::fs::read_to_string(&logs[1]).unwrap_or_default();
    assert!(matches!(daemon.0.try_wait(), Ok(None)), "the restarted daemon died; log:\n{}", log2());
    let whole = eventually(SOON, || {
        let now = fd_links(daemon.0.id());
        let st = checker.status().ok()?;
        (now.len() == base.len() && memfds(&now) == memfds(&base) && st.chunks_lent == 0 && st.exchanges == 0)
            .then_some(())
    });
    if whole.is_none() {
        let now = fd_links(daemon.0.id());
        let gone: Vec<&String> = base.iter().filter(|l| !now.contains(l)).collect();
        let extra: Vec<&String> = now.iter().filter(|l| !base.contains(l)).collect();
        panic!(
            "the daemon is not back to its first state: {} fds ({} memfds) against {} ({} memfds); \
             new: {extra:?}; gone: {gone:?}; status: {:?}; log:\n{}",
            now.len(),
            memfds(&now),
            base.len(),
            memfds(&base),
            checker.status(),
            log2()
        );
    }

    // An honest client's calls.
    let (server, _) = Peer::ready(&socket, &["serve", "chaos.final"]);
    let honest = hybus::Bus::connect_to(&socket).expect("an honest client connects");
    let route = honest.resolve("chaos.final").expect("resolve chaos.final");
    let a = honest.call(&route, b"abc", SOON).unwrap_or_else(|e| panic!("inline call: {e}; log:\n{}", log2()));
    assert_eq!(&*a, b"cba");
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let b = honest.call(&route, &big, SOON).unwrap_or_else(|e| panic!("100 kB call: {e}; log:\n{}", log2()));
    let mut want = big.clone();
    want.reverse();
    assert!(*b == *want, "the 100 kB answer is wrong");
    drop(b);
    drop(a);
    assert!(server.finish().success(), "the honest server failed");
    drop(honest);
    let again = eventually(SOON, || (fd_links(daemon.0.id()).len() == base.len()).then_some(()));
    assert!(again.is_some(), "the honest client's descriptors stay in the daemon: {:?}", fd_links(daemon.0.id()));

    for (n, log) in [log1, log2()].iter().enumerate() {
        assert!(!log.contains("panicked"), "daemon {} panicked; log:\n{log}", n + 1);
    }
}
