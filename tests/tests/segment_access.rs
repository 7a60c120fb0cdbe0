//! Who can write a pool (issue: a receiver reopened a read-only view for
//! writing). Only the pool's writer holds a writable descriptor, and
//! nothing a receiver of another uid is handed, or can reach, turns into
//! one: `hybus-attack` tries every way we know, as a second uid.
//!
//! And a pool that is corrupt all the same (written by its owner, or by
//! root) fails only the payloads that live in it, at each receiver, with a
//! clear error; the daemon checks the report and cuts the owner off.

use std::process::Command;
use std::time::Duration;

use hybus::Error;
use hybus_tests::{target_bin, DaemonProc, Peer, OPEN_TO_ALL, SOON};

/// Uids the tests run the daemon, a service and the attacker as: any
/// number will do for setuid, no account is needed.
const DAEMON_UID: u32 = 64_000;
const ATTACKER_UID: u32 = 64_001;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED: these tests switch uid, which needs root (CI runs as root)");
    false
}

/// Runs `hybus-attack` as `ATTACKER_UID` against `service` and the given
/// processes, and checks that every way was refused with a reason.
fn attack(d: &DaemonProc, service: &str, pids: &[i32]) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(target_bin("hybus-attack"));
    cmd.arg(d.socket()).arg(service).args(pids.iter().map(|p| p.to_string()));
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID); // (std drops root's supplementary groups)
    let out = cmd.output().expect("run hybus-attack");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("uid={ATTACKER_UID}")), "the attacker did not run as uid {ATTACKER_UID}:\n{text}");
    assert!(text.contains("zero_copy=true"), "the answer did not come in a chunk of the server's pool:\n{text}");
    assert!(!text.contains("WRITABLE"), "a way to write the pool was found:\n{text}");
    assert!(
        out.status.success(),
        "hybus-attack failed ({}):\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The ways that matter, each refused with the errno that says why.
    for (way, errno) in [
        ("reopen /proc/self/fd/", "EACCES"),
        ("mmap the view PROT_WRITE MAP_SHARED", "EACCES"),
        ("mprotect a read-only shared mapping to PROT_WRITE", "EACCES"),
        ("fchmod the view 0666", "EPERM"),
        ("open /proc/self/map_files/", "EPERM"),
        ("a private writable mapping reaches the shared pages", "EACCES"),
    ] {
        let line = text.lines().find(|l| l.contains(way)).unwrap_or_else(|| panic!("{way} was not tried:\n{text}"));
        assert!(line.contains(errno), "{way}: want {errno}:\n{line}");
    }
    for pid in pids {
        for way in
            [format!("open /proc/{pid}/fd/0..63"), format!("pidfd_getfd {pid}"), format!("process_vm_writev {pid}")]
        {
            let line =
                text.lines().find(|l| l.contains(&way)).unwrap_or_else(|| panic!("{way} was not tried:\n{text}"));
            assert!(line.contains("EACCES") || line.contains("EPERM"), "{line}");
        }
    }
    eprintln!("{text}");
}

/// A pool of a service run by root, the daemon run by root: a receiver of
/// another uid cannot write it.
#[test]
fn a_second_uid_cannot_write_a_root_owned_pool() {
    if !root() {
        return;
    }
    let d = DaemonProc::start(Some(OPEN_TO_ALL));
    let (server, _) = Peer::ready(d.socket(), &["serve", "sec.echo"]);
    attack(&d, "sec.echo", &[server.pid(), d.pid()]);
}

/// The daemon and the service run as one ordinary uid, the receiver as
/// another: the same.
#[test]
fn a_second_uid_cannot_write_a_pool_of_the_daemons_uid() {
    if !root() {
        return;
    }
    let d = DaemonProc::start_as(Some(OPEN_TO_ALL), DAEMON_UID, DAEMON_UID);
    let mut server = Peer::spawn_as(d.socket(), &["serve", "sec.echo"], DAEMON_UID, DAEMON_UID);
    server.expect_line("ready");
    attack(&d, "sec.echo", &[server.pid(), d.pid()]);
}

/// Overwrites the segment header of `pid`'s pool through its writable
/// descriptor (as root may): what a hostile owner could do to its own pool.
fn corrupt_pool_of(pid: i32) {
    let mut done = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list the server's descriptors") {
        let e = e.expect("fd entry");
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if !target.to_string_lossy().contains("hybus-pool") {
            continue;
        }
        // Its own pool is the one it holds read-write.
        let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(e.path()) else { continue };
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
            .unwrap_or_default();
        let rw = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
            .is_some_and(|v| v & libc::O_ACCMODE == libc::O_RDWR);
        if !rw {
            continue;
        }
        // The ABI version word (offset 24 in `SegmentHeader`).
        nix::sys::uio::pwrite(&f, &0xb828_4eebu32.to_le_bytes(), 24).expect("write the header");
        done += 1;
    }
    assert_eq!(done, 1, "expected one read-write pool in process {pid}");
}

/// A corrupt pool fails the payloads that live in it, and nothing else: at
/// a receiver that mapped it before (it re-checks on every chunk) and at
/// one that is handed its view only afterwards (it used to lose its whole
/// connection: "bus gone: protocol error: pool view: bad segment header").
/// Inline payloads of the same service, chunks of other services and the
/// receivers' connections go on; the daemon confirms the report on its own
/// mapping and cuts the owner off as a violation.
#[test]
fn a_corrupt_pool_fails_only_its_own_payloads() {
    if !root() {
        return;
    }
    let d = DaemonProc::start(None);
    let (bad, _) = Peer::ready(d.socket(), &["serve", "sec.bad"]);
    let (bad2, _) = Peer::ready(d.socket(), &["serve", "sec.bad2"]);
    let (_good, _) = Peer::ready(d.socket(), &["serve", "sec.good"]);
    let big = vec![3u8; 100_000];

    let early = d.connect();
    let (bad_r, good_r) = (early.resolve("sec.bad").unwrap(), early.resolve("sec.good").unwrap());
    assert!(early.call(&bad_r, &big, SOON).unwrap().is_zero_copy(), "mapped before the corruption");

    corrupt_pool_of(bad.pid());
    corrupt_pool_of(bad2.pid());

    // Inline answers do not touch the pool.
    assert_eq!(&*early.call(&bad_r, b"ab", SOON).unwrap(), b"ba");
    // A chunk of another pool is fine.
    assert_eq!(early.call(&good_r, &big, SOON).unwrap().len(), big.len());
    // A chunk of the corrupt pool fails, that call alone.
    match early.call(&bad_r, &big, SOON) {
        Err(Error::CorruptPool { why, .. }) => assert!(why.contains("ABI version"), "{why}"),
        other => panic!("want CorruptPool, got {:?}", other.map(|s| s.len())),
    }
    assert_eq!(early.call(&good_r, &big, SOON).unwrap().len(), big.len());
    early.status().expect("the receiver's connection lives on");

    // A receiver handed the view of a pool already corrupt.
    let late = d.connect();
    let bad2_r = late.resolve("sec.bad2").unwrap();
    match late.call(&bad2_r, &big, SOON) {
        Err(Error::CorruptPool { why, .. }) => assert!(why.contains("ABI version"), "{why}"),
        other => panic!("want CorruptPool, got {:?}", other.map(|s| s.len())),
    }
    let good_late = late.resolve("sec.good").unwrap();
    assert_eq!(late.call(&good_late, &big, SOON).unwrap().len(), big.len());
    late.status().expect("the late receiver's connection lives on");

    // The daemon agreed with both reports.
    let confirmed = hybus_tests::eventually(SOON, || {
        let log = d.log_text();
        (log.matches("its pool is corrupt").count() >= 2).then_some(())
    });
    assert!(confirmed.is_some(), "the daemon did not confirm the reports:\n{}", d.log_text());
    let st = early.status().unwrap();
    assert!(st.violations >= 2, "{st:?}");
    // The honest service never noticed.
    assert_eq!(early.call(&good_r, &big, Duration::from_secs(5)).unwrap().len(), big.len());
}
