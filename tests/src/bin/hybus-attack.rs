//! `hybus-attack`: an unprivileged receiver trying to write a sender's pool.
//!
//! `hybus-attack SOCKET SERVICE PID...` calls `SERVICE` with a 100 kB
//! payload (the echo service answers in a chunk of its own pool, so we are
//! handed a read-only view of that pool), keeps the answer, and then tries
//! every way we know to turn what it was handed into a writable mapping,
//! or to write the pool some other way: through the view's descriptor,
//! through `/proc/self`, and through `/proc/<pid>` and pidfds of each `PID`
//! (the server, the daemon). One line per try:
//!
//! `try WAY: refused ERRNO` or `try WAY: WRITABLE`, then
//! `done tries=N writable=M`. Exit status 0 when nothing was writable.
//!
//! The tests run it as a second uid (`tests/tests/segment_access.rs`); the
//! reasons each way is closed are in `hybus_os::segment::OWNER_READ_ONLY`.
//!
//! # Safety
//!
//! `mmap`/`mprotect`/`munmap` of the pool view (fresh mappings the kernel
//! places; never dereferenced but for one byte of a private copy-on-write
//! mapping of our own), and the raw `pidfd_getfd`, `ptrace` and
//! `process_vm_writev` system calls, which take plain integers.

#![allow(unsafe_code)]

use std::ffi::c_void;
use std::fs;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::mman::{mmap, mprotect, munmap, MapFlags, ProtFlags};
use nix::sys::stat::Mode;

const PAYLOAD: usize = 100_000;

/// What the tries found.
#[derive(Default)]
struct Tally {
    tries: u32,
    writable: u32,
}

impl Tally {
    /// Records one try: `Ok` means the way gave write access.
    fn record(&mut self, way: &str, r: Result<(), Errno>) {
        self.tries += 1;
        match r {
            Ok(()) => {
                self.writable += 1;
                println!("try {way}: WRITABLE");
            }
            Err(e) => println!("try {way}: refused {e:?}"),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: hybus-attack SOCKET SERVICE PID...");
        std::process::exit(2);
    }
    match attack(&args[0], &args[1], &args[2..]) {
        Ok(t) => {
            println!("done tries={} writable={}", t.tries, t.writable);
            std::process::exit(if t.writable == 0 { 0 } else { 1 });
        }
        Err(e) => {
            println!("error {e}");
            std::process::exit(3);
        }
    }
}

fn attack(socket: &str, service: &str, pids: &[String]) -> Result<Tally, Box<dyn std::error::Error>> {
    let bus = hybus::Bus::connect_to(socket)?;
    let route = bus.resolve(service)?;
    let answer = bus.call(&route, &vec![7u8; PAYLOAD], Duration::from_secs(20))?;
    println!("answer len={} zero_copy={} uid={}", answer.len(), answer.is_zero_copy(), nix::unistd::geteuid());
    let views = read_only_pools()?;
    println!("views {}", views.len());
    if views.is_empty() {
        return Err("no read-only pool view among our descriptors".into());
    }
    let mut t = Tally::default();
    for &fd in &views {
        // SAFETY: `fd` is open in this process (listed under /proc/self/fd)
        // and the client library keeps it open while `answer` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        try_descriptor(&mut t, fd)?;
    }
    for pid in pids {
        let pid: i32 = pid.parse()?;
        try_process(&mut t, pid);
    }
    drop(answer);
    Ok(t)
}

/// Our descriptors that are read-only hybus pools (the views the daemon handed us).
fn read_only_pools() -> std::io::Result<Vec<RawFd>> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc/self/fd")? {
        let e = e?;
        let Ok(fd) = e.file_name().to_string_lossy().parse::<RawFd>() else { continue };
        let Ok(target) = fs::read_link(e.path()) else { continue };
        if !target.to_string_lossy().contains("hybus-pool") {
            continue;
        }
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(-1);
        if flags >= 0 && flags & libc::O_ACCMODE == libc::O_RDONLY {
            out.push(fd);
        }
    }
    Ok(out)
}

fn len_of(fd: BorrowedFd<'_>) -> Result<NonZeroUsize, Errno> {
    let st = nix::sys::stat::fstat(fd)?;
    NonZeroUsize::new(st.st_size as usize).ok_or(Errno::EINVAL)
}

/// A shared mapping of `fd` with `prot`, unmapped again at once.
fn map_shared(fd: BorrowedFd<'_>, prot: ProtFlags) -> Result<(), Errno> {
    let len = len_of(fd)?;
    // SAFETY: a fresh mapping the kernel places; unmapped before return.
    let p = unsafe { mmap(None, len, prot, MapFlags::MAP_SHARED, fd, 0) }?;
    // SAFETY: the mapping just made.
    let _ = unsafe { munmap(p, len.get()) };
    Ok(())
}

fn try_descriptor(t: &mut Tally, fd: BorrowedFd<'_>) -> Result<(), Box<dyn std::error::Error>> {
    let n = fd.as_raw_fd();
    let reopen = |path: &str| open(path, OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map(drop);
    t.record(&format!("reopen /proc/self/fd/{n} O_RDWR"), reopen(&format!("/proc/self/fd/{n}")));
    t.record("mmap the view PROT_WRITE MAP_SHARED", map_shared(fd, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE));
    t.record("mprotect a read-only shared mapping to PROT_WRITE", {
        let len = len_of(fd)?;
        // SAFETY: a fresh read-only mapping the kernel places; unmapped below.
        let p = unsafe { mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, fd, 0) }?;
        // SAFETY: `p..p+len` is the mapping just made.
        let r = unsafe { mprotect(p, len.get(), ProtFlags::PROT_READ | ProtFlags::PROT_WRITE) };
        // SAFETY: the mapping just made.
        let _ = unsafe { munmap(p, len.get()) };
        r
    });
    t.record("fchmod the view 0666", nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(0o666)));
    t.record("fchown the view to us", nix::unistd::fchown(fd, Some(nix::unistd::geteuid()), None));
    t.record("pwrite the view", nix::sys::uio::pwrite(fd, b"x", 4096).map(drop));
    t.record("ftruncate the view", nix::unistd::ftruncate(fd, 0));
    for (start, end) in own_mappings_of_pools()? {
        t.record(
            &format!("open /proc/self/map_files/{start:x}-{end:x} O_RDWR"),
            reopen(&format!("/proc/self/map_files/{start:x}-{end:x}")),
        );
    }
    t.record("a private writable mapping reaches the shared pages", private_write_reaches(fd));
    Ok(())
}

/// The address ranges of our shared read-only mappings of hybus pools.
fn own_mappings_of_pools() -> std::io::Result<Vec<(u64, u64)>> {
    let maps = fs::read_to_string("/proc/self/maps")?;
    Ok(maps
        .lines()
        .filter(|l| l.contains("hybus-pool") && l.split_whitespace().nth(1) == Some("r--s"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect())
}

/// `MAP_PRIVATE | PROT_WRITE` is allowed on a read-only descriptor, but it
/// is copy-on-write: `Ok` only if a byte written there shows through a
/// fresh shared mapping (it must not).
fn private_write_reaches(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    let len = len_of(fd)?;
    let at = 4096usize;
    if len.get() <= at {
        return Err(Errno::EINVAL);
    }
    let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
    // SAFETY: fresh mappings the kernel places, unmapped below; the
    // private one is ours alone, so writing one byte of it is sound, and
    // the shared one is only read.
    unsafe {
        let private = mmap(None, len, prot, MapFlags::MAP_PRIVATE, fd, 0)?;
        let shared = mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, fd, 0)?;
        let p = private.cast::<u8>().as_ptr().add(at);
        let s = shared.cast::<u8>().as_ptr().add(at);
        let was = std::ptr::read_volatile(s);
        std::ptr::write_volatile(p, was.wrapping_add(1));
        let now = std::ptr::read_volatile(s);
        let _ = munmap(private, len.get());
        let _ = munmap(shared, len.get());
        if now != was {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }
}

/// Ways into another process (`pid`: the server, the daemon).
fn try_process(t: &mut Tally, pid: i32) {
    t.record(&format!("list /proc/{pid}/fd"), fs::read_dir(format!("/proc/{pid}/fd")).map(drop).map_err(io_errno));
    t.record(
        &format!("list /proc/{pid}/map_files"),
        fs::read_dir(format!("/proc/{pid}/map_files")).map(drop).map_err(io_errno),
    );
    // Blind, without the listing: every low descriptor number.
    let mut first_err = None;
    let mut opened = false;
    for n in 0..64 {
        match open(format!("/proc/{pid}/fd/{n}").as_str(), OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(_) => opened = true,
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    t.record(
        &format!("open /proc/{pid}/fd/0..63 O_RDWR"),
        if opened { Ok(()) } else { Err(first_err.unwrap_or(Errno::ENOENT)) },
    );
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        t.record(&format!("pidfd_open {pid}"), Err(Errno::last()));
    } else {
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
        let mut got = false;
        let mut err = Errno::ENOENT;
        for n in 0..64 {
            // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
            let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_fd().as_raw_fd(), n, 0) };
            if r >= 0 {
                got = true;
                // SAFETY: a descriptor the kernel just gave us; closed here.
                drop(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
            } else {
                err = Errno::last();
            }
        }
        t.record(&format!("pidfd_getfd {pid} 0..63"), if got { Ok(()) } else { Err(err) });
    }
    // SAFETY: PTRACE_ATTACH takes a pid; on success we detach at once.
    let r = unsafe {
        libc::ptrace(libc::PTRACE_ATTACH, pid, std::ptr::null_mut::<c_void>(), std::ptr::null_mut::<c_void>())
    };
    if r == 0 {
        // SAFETY: as above.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, pid, std::ptr::null_mut::<c_void>(), std::ptr::null_mut::<c_void>())
        };
    }
    t.record(&format!("ptrace attach {pid}"), if r == 0 { Ok(()) } else { Err(Errno::last()) });
    let mut byte = 0u8;
    let local = libc::iovec { iov_base: (&mut byte as *mut u8).cast(), iov_len: 1 };
    // Anywhere: the kernel checks the right to write before the address.
    let remote = libc::iovec { iov_base: 0x1000 as *mut c_void, iov_len: 1 };
    // SAFETY: both iovecs describe one byte; the local one is ours.
    let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    let r = if r >= 0 {
        Ok(())
    } else {
        match Errno::last() {
            // The right was granted; only the address was wrong.
            Errno::EFAULT => Ok(()),
            e => Err(e),
        }
    };
    t.record(&format!("process_vm_writev {pid}"), r);
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}
