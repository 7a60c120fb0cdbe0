//! On-demand activation with the real daemon and real processes: the
//! daemon starts `hybus-activated` (`[[activate]]`) on the first call,
//! holds the calls until it registers, fails them with the exit status or
//! the timeout, backs off, obeys the policy, and stops idle instances.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use hybus::{ActivationInfo, Bus, Error};
use hybus_tests::{eventually, target_bin, DaemonProc, Peer, TempDir, SOON};

const NOBODY: u32 = 65534;

/// An `[[activate]]` entry running `hybus-activated --count COUNT ARGS`.
fn entry(name: &str, count: &Path, args: &[&str], extra: &str) -> String {
    let mut exec = vec![target_bin("hybus-activated").display().to_string(), "--count".into()];
    exec.push(count.display().to_string());
    exec.extend(args.iter().map(|a| a.to_string()));
    let exec: Vec<String> = exec.iter().map(|a| format!("{a:?}")).collect();
    format!("[[activate]]\nname = \"{name}\"\nexec = [{}]\n{extra}\n", exec.join(", "))
}

/// Processes started so far, as the service counted them.
fn starts(count: &Path) -> usize {
    std::fs::read_to_string(count).map_or(0, |s| s.lines().filter(|l| l.starts_with("start ")).count())
}

fn activation(bus: &Bus, name: &str) -> ActivationInfo {
    bus.activations().unwrap().into_iter().find(|a| a.name == name).unwrap_or_else(|| panic!("{name} not activatable"))
}

struct Setup {
    daemon: DaemonProc,
    count: PathBuf,
    _dir: TempDir,
}

fn setup(config: impl FnOnce(&Path) -> String) -> Setup {
    let dir = TempDir::new("activation");
    let count = dir.path().join("starts");
    let daemon = DaemonProc::start(Some(&config(&count)));
    Setup { daemon, count, _dir: dir }
}

#[test]
fn the_first_call_starts_the_service() {
    let s = setup(|c| entry("act.kv", c, &["--serve", "act.kv"], ""));
    let bus = s.daemon.connect();
    assert_eq!(activation(&bus, "act.kv").state, "inactive");
    assert!(bus.list().unwrap().iter().all(|svc| svc.name != "act.kv"), "running before any call");
    let list =
        Command::new(target_bin("hybusctl")).arg("--socket").arg(s.daemon.socket()).arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("act.kv") && text.contains("activatable"), "{text}");

    let route = bus.resolve("act.kv").expect("an activatable name resolves");
    assert_eq!(&*bus.call(&route, b"abc", SOON).unwrap(), b"cba");
    assert_eq!(&*bus.call(&route, b"xy", SOON).unwrap(), b"yx");
    assert_eq!(starts(&s.count), 1);
    let a = activation(&bus, "act.kv");
    assert_eq!((a.state.as_str(), a.activations, a.activation_failures), ("running", 1, 0), "{a:?}");
    assert!(a.pid > 0);
    let status = Command::new(target_bin("hybusctl"))
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["status", "act.kv"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("activation: running") && text.contains(&format!("pid {}", a.pid)), "{text}");
    let prom = Command::new(target_bin("hybusctl"))
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["stats", "--prometheus"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&prom.stdout);
    assert!(text.contains("hybus_activations_total{service=\"act.kv\"} 1"), "{text}");
}

/// A call without resolving first (the route from an earlier resolve,
/// after the instance went away) starts it too: covered by the idle test.
/// Here: a hundred callers at once, each on its own connection.
#[test]
fn a_hundred_first_calls_start_one_process() {
    let s = setup(|c| entry("act.many", c, &["--serve", "act.many"], ""));
    let n = 100;
    let barrier = Arc::new(Barrier::new(n));
    let socket = s.daemon.socket().to_path_buf();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let socket = socket.clone();
            std::thread::spawn(move || {
                let bus = Bus::connect_to(&socket).unwrap();
                barrier.wait();
                let route = bus.resolve("act.many")?;
                let payload = format!("call-{i}");
                let answer = bus.call(&route, payload.as_bytes(), SOON)?;
                let want: Vec<u8> = payload.bytes().rev().collect();
                assert_eq!(&*answer, &want[..]);
                Ok::<(), Error>(())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("every first call succeeds");
    }
    assert_eq!(starts(&s.count), 1, "one process for a hundred first calls");
    assert_eq!(activation(&s.daemon.connect(), "act.many").activations, 1);
}

#[test]
fn an_exit_before_registering_fails_the_held_calls_with_its_status() {
    let s = setup(|c| entry("act.bad", c, &["--exit-code", "3"], "backoff_ms = 100"));
    let bus = s.daemon.connect();
    let route = bus.resolve("act.bad").unwrap();
    let e = bus.call(&route, b"x", SOON).unwrap_err();
    assert!(matches!(e, Error::ActivationFailed { .. }), "{e:?}");
    assert_eq!(e.to_string(), "activation of act.bad failed: exited with status 3");
    // The resolve started it; it may have failed before the call came, and
    // the call then waited out the back-off for a second start.
    let a = activation(&bus, "act.bad");
    let first = a.failures;
    assert!((1..=2).contains(&first), "{a:?}");
    assert_eq!((a.backoff_ms, a.activations, a.activation_failures), (100 << (first - 1), first as u64, first as u64));
    assert_eq!(a.last_exit, "exited with status 3");
    // The next call waits out the back-off, then tries again, and fails the same way.
    let e = bus.call(&route, b"x", SOON).unwrap_err();
    assert_eq!(e.to_string(), "activation of act.bad failed: exited with status 3");
    let a = activation(&bus, "act.bad");
    let n = first + 1;
    assert_eq!((a.failures, a.backoff_ms, a.activations), (n, 100 << (n - 1), n as u64), "{a:?}");
    assert_eq!(starts(&s.count), n as usize);
    let status = Command::new(target_bin("hybusctl"))
        .arg("--socket")
        .arg(s.daemon.socket())
        .args(["status", "act.bad"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let backoff = format!("back-off: {} ms", 100 << (n - 1));
    assert!(text.contains("exited with status 3") && text.contains(&backoff), "{text}");
    let logged = format!("the next start waits {} ms", 100 << (n - 1));
    assert!(s.daemon.log_text().contains(&logged), "{}", s.daemon.log_text());
}

#[test]
fn a_process_that_never_registers_fails_the_calls_at_the_timeout() {
    let s = setup(|c| entry("act.mute", c, &["--never-register"], "timeout_ms = 1500"));
    let bus = s.daemon.connect();
    let route = bus.resolve("act.mute").unwrap();
    // A call whose own deadline comes first fails with it, and is no longer held.
    let e = bus.call(&route, b"early", Duration::from_millis(200)).unwrap_err();
    assert_eq!(e, Error::DeadlineExceeded);
    eventually(SOON, || (activation(&bus, "act.mute").held == 0).then_some(()))
        .expect("the expired call is still held");
    // One with a longer deadline waits for the activation's.
    let e = bus.call(&route, b"late", SOON).unwrap_err();
    assert_eq!(e.to_string(), "activation of act.mute failed: did not register in 1500 ms");
    // The process was killed and reaped.
    let a = eventually(SOON, || Some(activation(&bus, "act.mute")).filter(|a| !a.last_exit.is_empty())).unwrap();
    assert_eq!(a.last_exit, "killed by signal 9 (SIGKILL)");
    assert_eq!((a.pid, a.failures), (0, 1));
    assert_eq!(starts(&s.count), 1);
}

#[test]
fn an_unknown_name_fails_at_once() {
    let s = setup(|c| entry("act.kv", c, &["--serve", "act.kv"], ""));
    let bus = s.daemon.connect();
    match bus.resolve("act.other") {
        Err(Error::NotFound(m)) => assert!(m.contains("act.other"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(starts(&s.count), 0);
}

/// `hybusctl call NAME` run as `nobody` (the tests run as root).
fn call_as_nobody(socket: &Path, name: &str) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(target_bin("hybusctl"))
        .uid(NOBODY)
        .gid(NOBODY)
        .arg("--socket")
        .arg(socket)
        .args(["call", name, "ab", "--timeout", "20s"])
        .output()
        .expect("run hybusctl as nobody");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_uid_without_the_call_permission_cannot_start_it() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client as another uid");
        return;
    }
    let dir = TempDir::new("activation-policy");
    let closed = dir.path().join("closed");
    let open = dir.path().join("open");
    let config = format!(
        "{}{}[[policy.rules]]\nuid = {NOBODY}\nprefix = \"pub.\"\nallow = [\"call\"]\n",
        entry("act.closed", &closed, &["--serve", "act.closed"], ""),
        entry("pub.open", &open, &["--serve", "pub.open"], "")
    );
    let d = DaemonProc::start(Some(&config));
    let (ok, text) = call_as_nobody(d.socket(), "act.closed");
    assert!(!ok && text.contains("access denied"), "{text}");
    assert_eq!(starts(&closed), 0, "a refused resolve started the service");
    // With the permission, the same uid starts it.
    let (ok, text) = call_as_nobody(d.socket(), "pub.open");
    assert!(ok && text.contains("ba"), "{text}");
    assert_eq!(starts(&open), 1);

    // On the data plane, where any route id can be written: the route of
    // an activatable name with no instance, written by hand, starts nothing.
    let bad = dir.path().join("bad");
    let d = DaemonProc::start(Some(&entry("act.fails", &bad, &["--exit-code", "3"], "backoff_ms = 1")));
    let bus = d.connect();
    let route = bus.resolve("act.fails").unwrap();
    assert!(matches!(bus.call(&route, b"x", SOON), Err(Error::ActivationFailed { .. })));
    let before = starts(&bad);
    assert_eq!(activation(&bus, "act.fails").activations, before as u64);
    let mut p = Peer::spawn_as(d.socket(), &["raw", &route.id().to_string(), "request"], NOBODY, NOBODY);
    p.expect_line("ready");
    assert_eq!(p.expect_line("answer"), "answer kind=Error code=9", "not refused as access denied");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(starts(&bad), before, "a refused request started the service");
    assert_eq!(activation(&bus, "act.fails").activations, before as u64);
}

#[test]
fn an_idle_instance_stops_and_the_next_call_starts_it_again() {
    let s = setup(|c| entry("act.idle", c, &["--serve", "act.idle"], "stop_when_idle_s = 1"));
    let bus = s.daemon.connect();
    let route = bus.resolve("act.idle").unwrap();
    assert_eq!(&*bus.call(&route, b"12", SOON).unwrap(), b"21");
    let first = activation(&bus, "act.idle").pid;
    // Idle for a second: asked to drain; it exits.
    let a =
        eventually(SOON, || Some(activation(&bus, "act.idle")).filter(|a| a.idle_stops == 1)).expect("no idle stop");
    assert_eq!(a.activations, 1);
    // Calls made while it drains and exits, and after: none is lost, a new process serves them.
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let bus = bus.clone();
            let route = route.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(i * 30));
                bus.call(&route, format!("n{i}").as_bytes(), SOON).map(|s| s.to_vec())
            })
        })
        .collect();
    for (i, c) in callers.into_iter().enumerate() {
        let got = c.join().unwrap().unwrap_or_else(|e| panic!("call {i} lost: {e}"));
        assert_eq!(got, format!("{i}n").into_bytes());
    }
    let a = eventually(SOON, || Some(activation(&bus, "act.idle")).filter(|a| a.last_exit == "exited with status 0"))
        .expect("the idle process did not exit");
    assert_eq!(a.activations, 2, "{a:?}");
    assert_ne!(a.pid, first);
    assert_eq!(starts(&s.count), 2);
}

/// Serving (not draining) instances of `name`.
fn serving(bus: &Bus, name: &str) -> usize {
    bus.list()
        .unwrap()
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.instances.iter().filter(|i| !i.draining).count())
        .sum()
}

/// `hybusctl scale`, a client like any other, raises the instances of a
/// service from one to three under a load and lets them go after it.
#[test]
fn the_scaler_follows_the_load() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = DaemonProc::start(None);
    let bus = d.connect();
    let mut cmd = Command::new(target_bin("hybusctl"));
    cmd.arg("--socket").arg(d.socket()).args([
        "scale",
        "act.scaled",
        "--min",
        "1",
        "--max",
        "3",
        "--low",
        "20",
        "--high",
        "60",
        "--interval",
        "200ms",
        "--settle",
        "500ms",
        "--duration",
        "120s",
        "--",
    ]);
    cmd.arg(target_bin("hybus-activated")).args(["--serve", "act.scaled", "--delay-ms", "5"]);
    let (mut scaler, _stdin, lines) = hybus_tests::spawn_with_lines(&mut cmd);
    eventually(SOON, || (serving(&bus, "act.scaled") == 1).then_some(()))
        .expect("the scaler started no first instance");
    let route = bus.resolve("act.scaled").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..6)
        .map(|_| {
            let (bus, route, stop) = (bus.clone(), route.clone(), stop.clone());
            std::thread::spawn(move || {
                let end = std::time::Instant::now() + 2 * SOON;
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                    if bus.call(&route, b"load", SOON).is_err() {
                        failed += 1;
                    }
                }
                failed
            })
        })
        .collect();
    let up = eventually(SOON, || (serving(&bus, "act.scaled") == 3).then_some(()));
    stop.store(true, Ordering::Relaxed);
    let failed: u32 = load.into_iter().map(|t| t.join().unwrap()).sum();
    let said: Vec<String> = lines.try_iter().collect();
    assert!(up.is_some(), "the scaler did not reach 3 instances under load; it said:\n{}", said.join("\n"));
    assert_eq!(failed, 0, "calls failed while the scaler started instances");
    let down = eventually(SOON, || (serving(&bus, "act.scaled") == 1).then_some(()));
    let said: Vec<String> = lines.try_iter().collect();
    assert!(down.is_some(), "the scaler did not come back to 1 instance; it said:\n{}", said.join("\n"));
    // Stopped instances drained: calls go on to the one left.
    assert_eq!(&*bus.call(&route, b"ab", SOON).unwrap(), b"ba");
    let _ = scaler.kill();
    let _ = scaler.wait();
}

/// What is held goes on in the order it came: fires and a call of one
/// client, sent while the process takes its time to start.
#[test]
fn held_requests_go_on_in_arrival_order() {
    let dir = TempDir::new("activation-order");
    let log = dir.path().join("log");
    let s = setup(|c| {
        let log = log.display().to_string();
        entry("act.order", c, &["--serve", "act.order", "--delay-start-ms", "300", "--log", &log], "")
    });
    let bus = s.daemon.connect();
    let route = bus.resolve("act.order").unwrap();
    for i in 0..20 {
        bus.fire(&route, format!("fire-{i}").as_bytes()).unwrap();
    }
    assert_eq!(&*bus.call(&route, b"last", SOON).unwrap(), b"tsal");
    let got = std::fs::read_to_string(&log).unwrap();
    let want: Vec<String> = (0..20).map(|i| format!("fire-{i}")).chain(["last".to_owned()]).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    assert_eq!(starts(&s.count), 1);
}

/// A program that cannot be run fails the calls at once, saying why; the
/// whole story (the path) is in `hybusctl status`.
#[test]
fn a_program_that_cannot_run_fails_the_calls_saying_why() {
    let s = setup(|_| "[[activate]]\nname = \"act.gone\"\nexec = [\"/nonexistent/kv-store\"]\n".to_owned());
    let bus = s.daemon.connect();
    let route = bus.resolve("act.gone").unwrap();
    let e = bus.call(&route, b"x", SOON).unwrap_err();
    assert_eq!(e.to_string(), "activation of act.gone failed: cannot exec: No such file or directory");
    let a = activation(&bus, "act.gone");
    assert_eq!(a.last_error, "cannot start /nonexistent/kv-store: No such file or directory");
}

/// `unit =` runs the real `systemctl start --no-block UNIT`. The test
/// machine runs no systemd (or has no such unit), so systemctl fails, and
/// that failure reaches the callers.
#[test]
fn a_unit_is_started_through_systemctl() {
    if Command::new("systemctl").arg("--version").output().is_err() {
        eprintln!("skipped: no systemctl on this machine");
        return;
    }
    let s = setup(|_| "[[activate]]\nname = \"act.unit\"\nunit = \"hybus-test-no-such-unit.service\"\n".to_owned());
    let bus = s.daemon.connect();
    let route = bus.resolve("act.unit").unwrap();
    let e = bus.call(&route, b"x", SOON).unwrap_err().to_string();
    assert!(e.starts_with("activation of act.unit failed: systemctl exited with status "), "{e}");
    let a = activation(&bus, "act.unit");
    assert_eq!(a.command, "unit hybus-test-no-such-unit.service");
    assert!(s.daemon.log_text().contains("systemctl start --no-block hybus-test-no-such-unit.service"));
}

/// `user =` runs the process as that user, and it registers only what that
/// uid may own: refused, it exits and the callers hear its status; allowed,
/// it serves, as the user.
#[test]
fn the_started_process_runs_as_its_user_under_the_usual_policy() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: user = needs hybusd to run as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("activation-user");
    // The service writes its start count as nobody.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let denied = dir.path().join("denied");
    let allowed = dir.path().join("allowed");
    let user = format!("user = \"{NOBODY}\"");
    let config = format!(
        "{}{}[[policy.rules]]\nuid = {NOBODY}\nprefix = \"nob.\"\nallow = [\"own\"]\n",
        entry("act.root-only", &denied, &["--serve", "act.root-only"], &user),
        entry("nob.kv", &allowed, &["--serve", "nob.kv"], &user)
    );
    let d = DaemonProc::start(Some(&config));
    let bus = d.connect();
    let route = bus.resolve("act.root-only").unwrap();
    let e = bus.call(&route, b"x", SOON).unwrap_err();
    assert_eq!(e.to_string(), "activation of act.root-only failed: exited with status 1");
    assert!(starts(&denied) >= 1, "it did not start");
    let route = bus.resolve("nob.kv").unwrap();
    assert_eq!(&*bus.call(&route, b"ab", SOON).unwrap(), b"ba");
    let svc = bus.list().unwrap().into_iter().find(|s| s.name == "nob.kv").unwrap();
    assert_eq!(svc.instances[0].uid, NOBODY);
}

/// Past `max_held` requests waiting for the process, a request fails at
/// once with "queue full"; the others wait (here: for their deadline).
#[test]
fn past_max_held_a_request_fails_with_queue_full() {
    let s = setup(|c| entry("act.slow", c, &["--never-register"], "max_held = 2\ntimeout_ms = 10000"));
    let bus = s.daemon.connect();
    let route = bus.resolve("act.slow").unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let (bus, route) = (bus.clone(), route.clone());
            std::thread::spawn(move || bus.call(&route, b"x", Duration::from_secs(2)).unwrap_err())
        })
        .collect();
    let errors: Vec<Error> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert_eq!(errors.iter().filter(|e| **e == Error::QueueFull).count(), 1, "{errors:?}");
    assert_eq!(errors.iter().filter(|e| **e == Error::DeadlineExceeded).count(), 2, "{errors:?}");
}

/// SIGHUP takes new `[[activate]]` entries.
#[test]
fn a_reload_adds_activatable_names() {
    let dir = TempDir::new("activation-reload");
    let count = dir.path().join("starts");
    let d = DaemonProc::start(Some("# nothing activatable yet\n"));
    let bus = d.connect();
    assert!(matches!(bus.resolve("act.late"), Err(Error::NotFound(_))));
    std::fs::write(d.config_path(), entry("act.late", &count, &["--serve", "act.late"], "")).unwrap();
    d.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(SOON, || bus.activations().ok().filter(|a| !a.is_empty())).expect("not reloaded");
    let route = bus.resolve("act.late").unwrap();
    assert_eq!(&*bus.call(&route, b"ok", SOON).unwrap(), b"ko");
    assert_eq!(starts(&count), 1);
}

/// Calls over a direct channel keep an activated instance from counting
/// as idle (the daemon does not carry them; the channel's counters say
/// so); once they stop, it is stopped.
#[test]
fn direct_calls_keep_an_activated_instance_alive() {
    let s = setup(|c| entry("act.direct", c, &["--serve", "act.direct"], "stop_when_idle_s = 1"));
    let bus = s.daemon.connect();
    let route = bus.resolve("act.direct").unwrap();
    assert_eq!(&*bus.call(&route, b"go", SOON).unwrap(), b"og");
    bus.request_direct(&route).unwrap();
    assert!(bus.is_direct(&route));
    let end = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < end {
        assert_eq!(&*bus.call(&route, b"ab", SOON).unwrap(), b"ba");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = activation(&bus, "act.direct");
    assert_eq!((a.idle_stops, a.activations), (0, 1), "drained while it was called directly: {a:?}");
    eventually(SOON, || (activation(&bus, "act.direct").idle_stops == 1).then_some(()))
        .expect("never stopped once idle");
}

/// A service that ignores the request to drain is sent SIGTERM once it
/// has nothing in flight and `timeout_ms` has passed.
#[test]
fn an_instance_that_ignores_the_drain_is_terminated() {
    let s = setup(|c| {
        entry("act.deaf", c, &["--serve", "act.deaf", "--ignore-drain"], "stop_when_idle_s = 1\ntimeout_ms = 500")
    });
    let bus = s.daemon.connect();
    let route = bus.resolve("act.deaf").unwrap();
    assert_eq!(&*bus.call(&route, b"hi", SOON).unwrap(), b"ih");
    let a = eventually(SOON, || Some(activation(&bus, "act.deaf")).filter(|a| !a.last_exit.is_empty()))
        .expect("the instance that ignored the drain was not stopped");
    // Its SIGTERM handler drains and exits cleanly.
    assert_eq!((a.last_exit.as_str(), a.idle_stops), ("exited with status 0", 1));
    assert!(s.daemon.log_text().contains("it did not exit: SIGTERM"), "{}", s.daemon.log_text());
}
