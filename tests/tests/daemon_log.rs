//! What `hybusd` writes to its stderr (issue 19, item 8): no colour codes
//! off a terminal, sd-daemon priority prefixes for the journal, and a
//! second daemon on a live socket that refuses before it says `listening`.

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use hybus_tests::{exit_within, target_bin, DaemonProc, TempDir, SOON};

/// A daemon whose stderr is a file logs plain lines: no ANSI escape.
#[test]
fn a_log_file_gets_no_colour() {
    let d = DaemonProc::start(None);
    let _ = d.connect().status().expect("status");
    let log = d.log_text();
    assert!(log.contains("listening"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file:\n{log:?}");
}

/// With `JOURNAL_STREAM` naming its stderr, every line starts with its
/// syslog priority (`<6>` info), which journald turns into the entry's
/// priority; no colour, no timestamp (journald stamps lines itself).
#[test]
fn the_journal_gets_priorities() {
    let dir = TempDir::new("journal");
    let socket = dir.path().join("bus.sock");
    let log = dir.path().join("hybusd.log");
    std::fs::write(&log, b"").expect("log file");
    let meta = std::fs::metadata(&log).expect("stat log");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut cmd = Command::new(target_bin("hybusd"));
    cmd.arg("--socket").arg(&socket).env("JOURNAL_STREAM", &stream);
    let d = DaemonProc::start_command(dir, socket, cmd);
    let _ = d.connect().status().expect("status");
    let text = d.log_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().any(|l| l.starts_with("<6>") && l.contains("listening")), "{text}");
    assert!(lines.iter().all(|l| ["<3>", "<4>", "<6>", "<7>"].iter().any(|p| l.starts_with(p))), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");

    // A JOURNAL_STREAM inherited by a process whose stderr went elsewhere
    // does not count (systemd's rule: device and inode must match).
    let dir = TempDir::new("journal-stale");
    let socket = dir.path().join("bus.sock");
    let mut cmd = Command::new(target_bin("hybusd"));
    cmd.arg("--socket").arg(&socket).env("JOURNAL_STREAM", "1:1");
    let d = DaemonProc::start_command(dir, socket, cmd);
    let _ = d.connect().status().expect("status");
    let text = d.log_text();
    assert!(text.lines().all(|l| !l.starts_with('<')), "{text}");
}

/// A second daemon on the socket of a live one exits non-zero with one
/// sentence, and never logs `listening` (it is not).
#[test]
fn a_second_daemon_refuses_before_listening() {
    let d = DaemonProc::start(None);
    let mut second = Command::new(target_bin("hybusd"))
        .arg("--socket")
        .arg(d.socket())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second hybusd");
    let status = exit_within(&mut second, SOON).expect("the second hybusd did not exit");
    let mut err = String::new();
    use std::io::Read;
    second.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    assert!(!status.success(), "{err}");
    assert!(err.contains("another hybusd is already listening"), "{err}");
    assert!(
        !err.lines().any(|l| l.contains("INFO") && l.contains("listening")),
        "logged `listening` before refusing:\n{err}"
    );
    // The first one still serves.
    let _ = d.connect().status().expect("the first daemon still answers");
}
