//! The real `hybusd` binary under (or pretending to be under) systemd,
//! DESIGN §8: it reports `READY=1`, `STATUS=`, `WATCHDOG=1` and
//! `STOPPING=1` on `NOTIFY_SOCKET`; SIGTERM lets calls in flight finish,
//! disconnects every client and exits 0 with the socket file removed; SIGHUP reloads limits and policy
//! at once and keeps the old configuration when the new one is broken;
//! socket activation works through `systemd-socket-activate` and through
//! a hand-made `LISTEN_FDS` handoff, and a wrong socket type is a clear
//! error.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hybus::{BusEvent, Error};
use hybus_tests::{eventually, exit_within, target_bin, DaemonProc, Peer, TempDir, OPEN_TO_ALL, SOON};
use nix::sys::signal::Signal;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

/// Collects notify datagrams into `seen` until one has a line starting
/// with `want`; false if none came within [`SOON`].
fn await_notify(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> bool {
    if seen.iter().any(|m| m.lines().any(|l| l.starts_with(want))) {
        return true;
    }
    sock.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let end = Instant::now() + SOON;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < end {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let hit = m.lines().any(|l| l.starts_with(want));
        seen.push(m);
        if hit {
            return true;
        }
    }
    false
}

/// A `hybusd ARGS` command run through `sh` so that
/// `prefix` (environment assignments, `$$` being the daemon's own pid after
/// `exec`) applies to it, as systemd's `WATCHDOG_PID`/`LISTEN_PID` do.
fn via_sh<A: AsRef<std::ffi::OsStr>>(prefix: &str, args: impl IntoIterator<Item = A>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!(r#"{prefix} exec "$0" "$@""#)).arg(target_bin("hybusd"));
    cmd.args(args);
    cmd.env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    cmd
}

#[test]
fn notify_ready_status_watchdog_and_stopping() {
    let dir = TempDir::new("notify");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let socket = dir.path().join("bus.sock");
    // systemd sets WATCHDOG_PID beside WATCHDOG_USEC; so do we.
    let mut cmd = via_sh("WATCHDOG_PID=$$", [Path::new("--socket"), &socket]);
    cmd.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "200000");
    let mut d = DaemonProc::start_command(dir, socket.clone(), cmd);

    let mut seen = Vec::new();
    assert!(await_notify(&notify, "READY=1", &mut seen), "no READY=1; got {seen:?}; log:\n{}", d.log_text());
    assert!(await_notify(&notify, "STATUS=", &mut seen), "got {seen:?}");
    // Pings keep coming while the daemon sleeps (nothing else wakes it).
    for _ in 0..3 {
        let mut pings = Vec::new();
        assert!(
            await_notify(&notify, "WATCHDOG=1", &mut pings),
            "no WATCHDOG=1; got {seen:?} then {pings:?}; log:\n{}",
            d.log_text()
        );
        seen.append(&mut pings);
    }

    d.signal(Signal::SIGTERM);
    assert!(await_notify(&notify, "STOPPING=1", &mut seen), "no STOPPING=1; got {seen:?}");
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(!socket.exists(), "socket file left behind");
}

/// Without `WATCHDOG_PID`, libsystemd's `sd_watchdog_enabled()` treats
/// `WATCHDOG_USEC` as meant for the reader; hybusd ignores it.
#[test]
fn watchdog_without_watchdog_pid() {
    let dir = TempDir::new("notify");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    let d = DaemonProc::start_with(None, &[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &notify_path).env("WATCHDOG_USEC", "200000");
    });
    let mut seen = Vec::new();
    assert!(await_notify(&notify, "READY=1", &mut seen), "got {seen:?}");
    assert!(await_notify(&notify, "WATCHDOG=1", &mut seen), "no WATCHDOG=1; got {seen:?}; log:\n{}", d.log_text());
}

/// SIGTERM lets calls in flight finish (`shutdown_grace_ms`, 2 s by
/// default): a service answering slowly when the daemon is told to stop
/// still gets its answer to the caller; then the daemon exits 0.
#[test]
fn sigterm_lets_calls_in_flight_finish() {
    let mut d = DaemonProc::start(None);
    let (_slow, _) = Peer::ready(d.socket(), &["serve", "term.slow", "delay_ms=300"]);
    let caller = d.connect();
    let route = caller.resolve("term.slow").unwrap();
    let pending = std::thread::spawn(move || caller.call(&route, b"abc", SOON).map(|s| s.to_vec()));
    let bus = d.connect();
    assert!(eventually(SOON, || (bus.status().ok()?.exchanges == 1).then_some(())).is_some(), "no call in flight");
    d.signal(Signal::SIGTERM);
    assert_eq!(pending.join().unwrap().expect("the call in flight failed"), b"cba");
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigterm_disconnects_clients_and_exits_cleanly() {
    let mut d = DaemonProc::start(None);
    let (server, _) = Peer::ready(d.socket(), &["serve", "term.echo"]);
    let (mut holder, _) = Peer::ready(d.socket(), &["serve", "term.hold", "hold"]);
    let bus = d.connect();
    let echo = bus.resolve("term.echo").unwrap();
    assert_eq!(&*bus.call(&echo, b"abc", SOON).unwrap(), b"cba");
    // A call still in flight when the grace period ends fails instead of hanging.
    let caller = d.connect();
    let held = caller.resolve("term.hold").unwrap();
    let pending = std::thread::spawn(move || caller.call(&held, b"x", SOON).map(|s| s.to_vec()));
    holder.expect_line("holding 1");

    d.signal(Signal::SIGTERM);
    let status = d.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(!d.socket().exists(), "socket file left behind");

    let event = loop {
        match bus.next_event(SOON) {
            Ok(Some(BusEvent::Disconnected { reason })) => break Ok(reason),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no Disconnected event within {SOON:?}"),
            Err(e) => break Err(e),
        }
    };
    match event {
        Ok(_) | Err(Error::BusGone(_)) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
    // With no daemon a call fails (how soon depends on the client's
    // reconnect policy, which may wait for a restarted daemon).
    let late = bus.call(&echo, b"abc", Duration::from_secs(2));
    assert!(late.is_err(), "a call answered with no daemon: {late:?}");
    // A call in flight can never be answered: it fails at once.
    match pending.join().expect("caller thread") {
        Err(Error::BusGone(_) | Error::PeerGone) => {}
        other => panic!("in-flight call at shutdown: {other:?}"),
    }
    // (The serving peers reconnect by default, waiting for a new daemon.)
    drop((server, holder));
}

#[test]
fn sighup_reloads_limits_and_policy_and_keeps_old_config_when_broken() {
    const NOBODY: u32 = 65534;
    let mut d = DaemonProc::start(Some(&format!("[limits]\ninstances_per_uid = 16\n{OPEN_TO_ALL}")));
    let (_server, _) = Peer::ready(d.socket(), &["serve", "hup.echo"]);
    let bus = d.connect();
    // Before the reload: a second and third instance are fine, and another uid may own names.
    let a = bus.register("hup.a").unwrap();
    let b = bus.register("hup.b").unwrap();
    drop((a, b));
    let mut allowed = Peer::spawn_as(d.socket(), &["serve", "hup.nobody"], NOBODY, NOBODY);
    allowed.expect_line("ready");
    assert!(eventually(SOON, || (bus.status().ok()?.instances == 2).then_some(())).is_some(), "{:?}", bus.status());

    // Root's instances: 2 of them (the echo server and ours); nobody holds one more.
    std::fs::write(d.config_path(), "[limits]\ninstances_per_uid = 2\n[policy]\ndefault_deny = true\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        eventually(SOON, || d.log_text().contains("configuration reloaded").then_some(())).is_some(),
        "no reload in the log:\n{}",
        d.log_text()
    );
    let check_new_config = |d: &DaemonProc| {
        let bus = d.connect();
        let a = bus.register("hup.a").expect("second instance of root");
        match bus.register("hup.b") {
            Err(Error::QuotaExceeded(_)) => {}
            other => panic!("third instance of root: {other:?}"),
        }
        drop(a);
        // default_deny binds everyone but root.
        let mut denied = Peer::spawn_as(d.socket(), &["serve", "hup.denied"], NOBODY, NOBODY);
        let line = denied.expect_line("error");
        assert!(line.contains("access denied"), "{line}");
        // Root still calls.
        let echo = bus.resolve("hup.echo").unwrap();
        assert_eq!(&*bus.call(&echo, b"ab", SOON).unwrap(), b"ba");
    };
    check_new_config(&d);
    // nobody's instance was unregistered by the reload (the policy no
    // longer lets it own the name); root's echo server is left.
    let line = allowed.expect_line("error");
    assert!(line.contains("revoked by a policy reload"), "{line}");
    assert!(eventually(SOON, || (bus.status().ok()?.instances == 1).then_some(())).is_some(), "{:?}", bus.status());

    // A broken file: the daemon says so, keeps the configuration it has, and keeps serving.
    std::fs::write(d.config_path(), "[limits\ninstances_per_uid = \"many\"\n").unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        eventually(SOON, || d.log_text().contains("keeping the old configuration").then_some(())).is_some(),
        "no refusal in the log:\n{}",
        d.log_text()
    );
    assert!(d.is_running());
    check_new_config(&d);
    // And a file with a bad value (not just bad syntax) is refused the same way.
    std::fs::write(d.config_path(), "ring_capacity = 1000\n").unwrap();
    let refusals = d.log_text().matches("keeping the old configuration").count();
    d.signal(Signal::SIGHUP);
    assert!(
        eventually(SOON, || (d.log_text().matches("keeping the old configuration").count() > refusals).then_some(()))
            .is_some(),
        "no refusal in the log:\n{}",
        d.log_text()
    );
    check_new_config(&d);
    assert!(d.is_running());
}

/// `systemd-socket-activate` listens, passes the socket as fd 3 and execs
/// hybusd on the first connection.
#[test]
fn socket_activation_with_systemd_socket_activate() {
    let Some(tool) = find_on_path("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate not on PATH: skipped");
        return;
    };
    let dir = TempDir::new("activate");
    let socket = dir.path().join("bus.sock");
    let mut cmd = Command::new(tool);
    cmd.arg("--seqpacket")
        .arg("-l")
        .arg(&socket)
        .arg("--fdname=hybus")
        .arg(target_bin("hybusd"))
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET");
    let mut d = DaemonProc::start_command(dir, socket.clone(), cmd);
    assert!(d.log_text().contains("using the socket passed by systemd"), "log:\n{}", d.log_text());
    let _server = serve_and_call(&d, "activated.echo");
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success());
}

/// The same handoff without systemd: our own listening socket as fd 3,
/// `LISTEN_PID` set to the daemon's pid by the shell it `exec`s from.
#[test]
fn socket_activation_with_inherited_listener() {
    let dir = TempDir::new("activate");
    let socket = dir.path().join("bus.sock");
    let listener = listen(&socket, SockType::SeqPacket);
    let mut d = DaemonProc::start_command(dir, socket.clone(), inherit_listener(&listener));
    // The daemon has its own copy now; ours must not keep the socket alive.
    drop(listener);
    assert!(d.log_text().contains("using the socket passed by systemd"), "log:\n{}", d.log_text());
    assert!(!Path::new("/nonexistent/unused").exists());
    let _server = serve_and_call(&d, "inherited.echo");
    let status = d.connect().status().unwrap();
    assert_eq!(status.instances, 1);
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit().success(), "log:\n{}", d.log_text());
    // The socket file belongs to whoever made it (systemd), not to hybusd.
    assert!(socket.exists(), "hybusd removed a socket it did not create");
}

#[test]
fn socket_activation_with_a_stream_socket_is_a_clear_error() {
    let dir = TempDir::new("activate");
    let socket = dir.path().join("bus.sock");
    let listener = listen(&socket, SockType::Stream);
    let log = dir.path().join("hybusd.log");
    let mut cmd = inherit_listener(&listener);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("spawn hybusd");
    drop(listener);
    let status = wait_bounded(child);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "hybusd accepted a stream socket; log:\n{text}");
    assert!(text.contains("not SOCK_SEQPACKET"), "unclear error for a stream socket:\n{text}");
}

/// A `serve` peer on `name`, and a call to it through a fresh connection.
fn serve_and_call(d: &DaemonProc, name: &str) -> Peer {
    let (server, _) = Peer::ready(d.socket(), &["serve", name]);
    let bus = d.connect();
    let route = bus.resolve(name).unwrap();
    assert_eq!(&*bus.call(&route, b"hello", SOON).unwrap(), b"olleh");
    server
}

/// A listening Unix socket of type `ty` at `path`.
fn listen(path: &Path, ty: SockType) -> OwnedFd {
    let fd = socket::socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    socket::listen(&fd, socket::Backlog::new(64).unwrap()).unwrap();
    fd
}

/// `hybusd --socket /nonexistent/unused` with `listener` as fd 3 and the
/// `LISTEN_*` variables naming it, as systemd passes a `.socket` unit's fd.
fn inherit_listener(listener: &OwnedFd) -> Command {
    let raw = listener.as_raw_fd();
    let mut cmd = via_sh("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=hybus", ["--socket", "/nonexistent/unused"]);
    // SAFETY: dup2 and fcntl are async-signal-safe; `raw` stays open in the
    // parent until spawn returns, so it is valid in the forked child. dup2
    // gives fd 3 without FD_CLOEXEC; if the listener already is fd 3, clear
    // the flag instead (dup2 onto itself would leave it set).
    unsafe {
        cmd.pre_exec(move || {
            let r = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(raw, 3) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn wait_bounded(mut child: std::process::Child) -> ExitStatus {
    exit_within(&mut child, SOON).unwrap_or_else(|| panic!("hybusd neither started nor exited"))
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}
