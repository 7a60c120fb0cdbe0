//! End-to-end test support: start the real `hybusd` binary on a private
//! socket, spawn real client processes (`hybus-peer`), and turn hangs into
//! failures with deadlines.
//!
//! Tests assert behaviour, never timing: every deadline here only bounds
//! how long a broken build may hang.

pub mod counting;
pub mod fuzz;
pub mod raw;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A generous bound for anything that should happen "at once".
pub const SOON: Duration = Duration::from_secs(20);

/// Path of a binary built by this workspace (next to the test executable's directory).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(p.exists(), "{} is not built; run the tests with `cargo test --workspace`", p.display());
    p
}

/// A private directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "hybus-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A policy rule that lets every uid do everything: for tests that run
/// clients as another user (the default lets only the daemon's own uid, and
/// root, do anything). Append it to a config.
pub const OPEN_TO_ALL: &str = "[[policy.rules]]\nallow = [\"all\"]\n";

/// The real `hybusd`, started the way the README says, on a private socket.
#[derive(Debug)]
pub struct DaemonProc {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    config: Option<PathBuf>,
    _dir: TempDir,
}

impl DaemonProc {
    /// Starts `hybusd --socket DIR/bus.sock` (with `config` as its TOML config, if given).
    pub fn start(config: Option<&str>) -> DaemonProc {
        DaemonProc::start_with(config, &[], |_| {})
    }

    /// Starts with extra arguments and a hook to adjust the command (env, fds).
    pub fn start_with(config: Option<&str>, args: &[&str], adjust: impl FnOnce(&mut Command)) -> DaemonProc {
        let dir = TempDir::new("daemon");
        let socket = dir.path().join("bus.sock");
        let log = dir.path().join("hybusd.log");
        let mut cmd = Command::new(target_bin("hybusd"));
        cmd.arg("--socket").arg(&socket).args(args);
        let mut config_path = None;
        if let Some(c) = config {
            let p = dir.path().join("hybusd.toml");
            std::fs::write(&p, c).expect("write config");
            cmd.arg("--config").arg(&p);
            config_path = Some(p);
        }
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn hybusd");
        let d = DaemonProc { child: Some(child), socket, log, config: config_path, _dir: dir };
        d.wait_ready();
        d
    }

    /// Starts the daemon as another user (the tests run as root): its
    /// directory is given to `uid`, so it can make its socket there.
    pub fn start_as(config: Option<&str>, uid: u32, gid: u32) -> DaemonProc {
        use std::os::unix::process::CommandExt;
        DaemonProc::start_with(config, &[], |cmd| {
            let socket = cmd.get_args().skip_while(|a| *a != "--socket").nth(1).map(PathBuf::from);
            if let Some(dir) = socket.as_deref().and_then(Path::parent) {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("give the daemon its directory");
            }
            cmd.uid(uid).gid(gid);
        })
    }

    /// Starts a daemon from a command the test built itself (through a
    /// wrapper such as `systemd-socket-activate` or `sh`, or with an
    /// inherited listener). Clients connect at `socket`; stdin and stdout
    /// are nulled and stderr goes to `DIR/hybusd.log`; `dir` lives as long
    /// as the daemon. Waits until a client can connect.
    pub fn start_command(dir: TempDir, socket: PathBuf, mut cmd: Command) -> DaemonProc {
        let log = dir.path().join("hybusd.log");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("spawn hybusd");
        let d = DaemonProc { child: Some(child), socket, log, config: None, _dir: dir };
        d.wait_ready();
        d
    }

    /// The `--config` file the daemon was started with (rewrite it, then
    /// send SIGHUP to reload).
    pub fn config_path(&self) -> &Path {
        self.config.as_deref().expect("the daemon was started without a config file")
    }

    /// Waits until a client can connect.
    pub fn wait_ready(&self) {
        let ok = eventually(SOON, || hybus::Bus::connect_to(&self.socket).ok());
        assert!(ok.is_some(), "hybusd did not come up; log:\n{}", self.log_text());
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A new client connection.
    pub fn connect(&self) -> hybus::Bus {
        hybus::Bus::connect_to(&self.socket).unwrap_or_else(|e| panic!("connect: {e}; log:\n{}", self.log_text()))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for the daemon to exit (bounded) and returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        match exit_within(self.child.as_mut().expect("running"), SOON) {
            Some(s) => {
                self.child = None;
                s
            }
            None => panic!("hybusd did not exit; log:\n{}", self.log_text()),
        }
    }

    /// CPU time (user + system) the daemon has used, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        proc_cpu_ticks(self.pid())
    }

    /// CPU ticks the daemon uses during the next `window` (it should use
    /// about none while nobody sends: a behaviour, not a timing).
    pub fn ticks_during(&self, window: Duration) -> u64 {
        let before = self.cpu_ticks();
        std::thread::sleep(window);
        self.cpu_ticks().saturating_sub(before)
    }

    /// How often the daemon's threads went to sleep so far (voluntary
    /// context switches): an idle daemon adds none, one woken by a timer
    /// adds one per tick.
    pub fn wakeups(&self) -> u64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum()
    }

    /// Resident memory of the daemon in KiB.
    pub fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Raises this process's soft open-files limit to the hard limit (a test
/// that holds hundreds of connections needs five descriptors for each).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Waits until process `pid` is stopped (a SIGSTOP takes effect a moment
/// after `kill` returns; a process spinning on another CPU may still run).
pub fn stopped(pid: i32) {
    let ok = eventually(SOON, || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
        (state == "T" || state == "t").then_some(())
    });
    assert!(ok.is_some(), "process {pid} did not stop");
}

/// User + system CPU ticks of a process, from /proc.
pub fn proc_cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces, so split after ')').
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// A client process (`hybus-peer`). Its stdout lines arrive on a channel;
/// closing its stdin (drop) makes it exit; [`Peer::kill9`] kills it hard.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `hybus-peer SOCKET ARGS...`.
    pub fn spawn(socket: &Path, args: &[&str]) -> Peer {
        Peer::spawn_adjusted(socket, args, |_| {})
    }

    /// Starts `hybus-peer SOCKET ARGS...` as another user (the tests run as
    /// root, whom policy never restricts).
    pub fn spawn_as(socket: &Path, args: &[&str], uid: u32, gid: u32) -> Peer {
        use std::os::unix::process::CommandExt;
        Peer::spawn_adjusted(socket, args, |cmd| {
            cmd.uid(uid).gid(gid);
        })
    }

    fn spawn_adjusted(socket: &Path, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Peer {
        let mut cmd = Command::new(target_bin("hybus-peer"));
        adjust(&mut cmd);
        cmd.arg(socket).args(args);
        let (child, stdin, lines) = spawn_with_lines(&mut cmd);
        Peer { child, stdin, lines }
    }

    /// Starts a peer and waits for its `ready` line; returns the peer and that line.
    pub fn ready(socket: &Path, args: &[&str]) -> (Peer, String) {
        let mut p = Peer::spawn(socket, args);
        let line = p.expect_line("ready");
        (p, line)
    }

    /// The peer's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line starting with `prefix` (skipping others); panics after [`SOON`].
    pub fn expect_line(&mut self, prefix: &str) -> String {
        let end = Instant::now() + SOON;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => continue,
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!("peer {} gave no line starting with {prefix:?} (exit: {status:?})", self.pid());
                }
            }
        }
    }

    /// Sends a line to the peer's stdin.
    pub fn say(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits (bounded) for a clean exit; returns the status.
    pub fn finish(mut self) -> ExitStatus {
        self.stdin = None;
        exit_within(&mut self.child, SOON).unwrap_or_else(|| panic!("peer did not exit"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd` with piped stdin and stdout; its stdout lines arrive on the
/// returned channel (read by a thread, so the child never blocks on a full pipe).
pub fn spawn_with_lines(cmd: &mut Command) -> (Child, Option<ChildStdin>, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let stdin = child.stdin.take();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, stdin, rx)
}

/// Extracts `key=value` from a peer's line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Waits up to `timeout` for `child` to exit and returns its status; kills
/// it and returns `None` if it does not.
pub fn exit_within(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `hybusd --socket SOCKET` (stderr to `log`) and waits until it
/// takes connections: for tests that stop a daemon and start another on
/// the same socket, which a [`DaemonProc`] (one daemon, one directory) does not.
pub fn start_daemon_at(socket: &Path, log: &Path) -> Child {
    let child = Command::new(target_bin("hybusd"))
        .arg("--socket")
        .arg(socket)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("daemon log"))
        .spawn()
        .expect("spawn hybusd");
    assert!(eventually(SOON, || hybus::Bus::connect_to(socket).ok()).is_some(), "hybusd did not start");
    child
}
